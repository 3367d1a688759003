"""Procedures a user or a tool calls: build and load models, fuse checkpoints, evaluate,
benchmark, inspect schedules."""
from .benchmark import compare_throughput
from .evaluate import split_logits
from .model import (
    build_model,
    deploy_config,
    load_checkpoint_into,
    load_weights_into,
    test_input_size,
)
from .reparam import DEFAULT_TOLERANCE, reparameterize_checkpoint
from .schedule import iters_per_epoch, param_group_table, scaled_lr, simulate_lr
from .train_speed import compare_train_speed

__all__ = ['DEFAULT_TOLERANCE', 'build_model', 'compare_throughput', 'compare_train_speed',
           'deploy_config',
           'iters_per_epoch', 'load_checkpoint_into', 'load_weights_into',
           'param_group_table', 'reparameterize_checkpoint', 'scaled_lr', 'simulate_lr',
           'split_logits', 'test_input_size']
