"""Procedures a user or a tool calls: build and load models, fuse checkpoints, export to
ONNX and quantize to INT8, evaluate, benchmark, inspect schedules."""
from .benchmark import compare_throughput
from .evaluate import split_logits
from .export import (
    compare_onnx_with_pytorch,
    export_onnx,
    image_batches,
    onnx_top1,
    require_deploy_packages,
)
from .model import (
    build_model,
    deploy_config,
    load_checkpoint_into,
    load_weights_into,
    test_input_size,
)
from .quantize import quantize_onnx
from .reparam import DEFAULT_TOLERANCE, load_fused_model, reparameterize_checkpoint
from .schedule import iters_per_epoch, param_group_table, scaled_lr, simulate_lr

__all__ = ['DEFAULT_TOLERANCE', 'build_model', 'compare_onnx_with_pytorch',
           'compare_throughput', 'deploy_config',
           'export_onnx', 'image_batches', 'iters_per_epoch', 'load_checkpoint_into',
           'load_fused_model', 'load_weights_into', 'onnx_top1', 'quantize_onnx',
           'require_deploy_packages',
           'param_group_table', 'reparameterize_checkpoint', 'scaled_lr', 'simulate_lr',
           'split_logits', 'test_input_size']
