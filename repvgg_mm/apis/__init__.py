"""Procedures a user or a tool calls: get models by name, classify images, build and
load models, fuse checkpoints, evaluate, benchmark, count FLOPs, inspect schedules and
training logs."""
from .benchmark import compare_throughput
from .complexity import config_complexity, format_flops, model_complexity
from .curves import plot_training_curves
from .evaluate import split_logits
from .inference import RepVGGInferencer, inference_model, top_k
from .model import (
    build_model,
    checkpoint_meta,
    config_class_names,
    deploy_config,
    load_checkpoint_into,
    load_weights_into,
    test_input_size,
)
from .model_zoo import get_model, list_models, model_index
from .reparam import DEFAULT_TOLERANCE, reparameterize_checkpoint
from .schedule import iters_per_epoch, param_group_table, scaled_lr, simulate_lr
from .train_speed import compare_train_speed

__all__ = ['DEFAULT_TOLERANCE', 'RepVGGInferencer', 'build_model', 'checkpoint_meta',
           'compare_throughput', 'compare_train_speed', 'config_class_names',
           'config_complexity', 'deploy_config', 'format_flops', 'get_model',
           'inference_model', 'iters_per_epoch', 'list_models', 'load_checkpoint_into',
           'load_weights_into', 'model_complexity', 'model_index', 'param_group_table',
           'plot_training_curves', 'reparameterize_checkpoint', 'scaled_lr', 'simulate_lr',
           'split_logits', 'test_input_size', 'top_k']
