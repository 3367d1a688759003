"""Procedures a user or a tool calls: get models by name, classify images, build and
load models, fuse checkpoints, export to ONNX and quantize to INT8, evaluate, benchmark,
count FLOPs, inspect schedules and training logs."""
from .benchmark import compare_throughput
from .complexity import config_complexity, format_flops, model_complexity
from .curves import plot_training_curves
from .evaluate import split_logits
from .export import (
    compare_onnx_with_pytorch,
    export_onnx,
    image_batches,
    onnx_top1,
    require_deploy_packages,
)
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
from .quantize import (
    check_tensorrt_placement,
    quantization_aware_training,
    quantize_onnx,
)
from .reparam import DEFAULT_TOLERANCE, load_fused_model, reparameterize_checkpoint
from .runtimes import compare_runtimes, cpu_description, runtime_session
from .schedule import iters_per_epoch, param_group_table, scaled_lr, simulate_lr
from .train_speed import compare_train_speed

__all__ = ['DEFAULT_TOLERANCE', 'RepVGGInferencer', 'build_model', 'checkpoint_meta',
           'check_tensorrt_placement', 'compare_onnx_with_pytorch', 'compare_throughput',
           'compare_runtimes', 'compare_train_speed', 'config_class_names',
           'config_complexity', 'cpu_description', 'deploy_config',
           'export_onnx', 'format_flops', 'get_model', 'image_batches', 'inference_model',
           'iters_per_epoch', 'list_models', 'load_checkpoint_into', 'load_fused_model',
           'load_weights_into', 'model_complexity', 'model_index', 'onnx_top1',
           'param_group_table', 'plot_training_curves', 'quantization_aware_training',
           'quantize_onnx', 'reparameterize_checkpoint', 'require_deploy_packages',
           'runtime_session', 'scaled_lr',
           'simulate_lr', 'split_logits', 'test_input_size', 'top_k']
