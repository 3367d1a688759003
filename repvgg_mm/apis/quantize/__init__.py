"""INT8 quantization: post-training (ONNX Runtime's static quantization of an exported
model, :mod:`.ptq`) and quantization-aware training of the fused model through the
Runner (torchao, :mod:`.qat`), both written as QDQ ONNX models whose Q/DQ placement
:mod:`.qdq` checks."""
from .ptq import CALIBRATION_METHODS, quantize_onnx
from .qat import (
    calibrate,
    check_qat_options,
    float_config,
    quantization_aware_training,
    start_qat,
)
from .qat_export import export_qat_onnx, tensorrt_path
from .qdq import check_tensorrt_placement, count_qdq_nodes, qdq_structure, quantize_biases

__all__ = ['CALIBRATION_METHODS', 'calibrate', 'check_tensorrt_placement', 'count_qdq_nodes',
           'check_qat_options', 'export_qat_onnx', 'float_config', 'qdq_structure',
           'quantization_aware_training', 'quantize_biases', 'quantize_onnx', 'start_qat',
           'tensorrt_path']
