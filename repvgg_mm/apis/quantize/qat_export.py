"""The trained QAT model as INT8 QDQ ONNX files that the runtimes compute exactly.

torchao's ``convert_pt2e`` folds each BN into its conv and turns the fake quantizers
into quantize/dequantize ops; the conv and fc biases are then put on the INT32 grid
the runtimes compute with (``input scale x weight scale``), in the PyTorch network and
in the file alike (:func:`round_biases_to_int32_grid`, :func:`~.qdq.quantize_biases`):
ONNX Runtime would otherwise round float biases itself, and values near a rounding tie
came out differently with its optimisations on and off (7 of 500 demo predictions).

Two files come from the one trained model, with the same INT8 weights, scales and
biases, each in the layout its runtime wants (:mod:`.qdq`): ``OUTPUT`` for ONNX Runtime
(a Q/DQ pair between each conv and its ReLU, which changes no value and makes ONNX
Runtime run INT8 kernels; INT32 biases) and ``<OUTPUT stem>_tensorrt.onnx`` for TensorRT
(no pair there, narrow-range weights, nothing quantized twice; the same bias values in
float, which TensorRT quantizes itself: its ONNX parser takes no INT32 dequantization).

Before anything is kept, the ONNX Runtime file runs on the config's val images next
to the trained fake-quant model (and with ONNX Runtime's graph optimisations off): an
agreement below the stated threshold refuses the export, naming both top-1s.
"""
import copy
import io
import os.path as osp
from typing import Dict, Optional

import torch
from mmengine.config import Config

from repvgg_mm.models.qat import QATClassifier, example_input

from ..export import image_batches, set_input_kind
from ..runtimes import runtime_session
from .qdq import check_tensorrt_placement, quantize_biases, quantize_conv_outputs

QAT_OPSET = 18  # the lowest torch's ONNX exporter (torch.export-based) writes
# Below this share of val images with the trained model's top-1, no file is written.
MIN_AGREEMENT = 0.995


def tensorrt_path(output: str) -> str:
    """Where the TensorRT file of ``output`` goes: ``<stem>_tensorrt.onnx`` beside it."""
    stem, _ = osp.splitext(output)
    return f'{stem}_tensorrt.onnx'


def _to_onnx(converted: torch.nn.Module, size: int):
    import onnx
    exported = torch.export.export(converted, example_input(size),
                                   dynamic_shapes=({0: torch.export.Dim('batch')}, ))
    with torch.no_grad():
        program = torch.onnx.export(exported, example_input(size), dynamo=True,
                                    opset_version=QAT_OPSET, input_names=['input'],
                                    output_names=['logits'], external_data=False,
                                    verbose=False)
    buffer = io.BytesIO()
    program.save(buffer)
    return onnx.load_from_string(buffer.getvalue())


def _save(proto, path: str) -> None:
    import onnx
    onnx.checker.check_model(proto)
    set_input_kind(proto, 'normalized')
    onnx.save(proto, path)


@torch.no_grad()
def check_agreement(model: QATClassifier, onnx_path: str, cfg: Config,
                    images: int, tensorrt: Optional[str] = None) -> Dict[str, float]:
    """On up to ``images`` of the config's val images: top-1 of the QAT model in eval
    mode (what the INT8 files compute, in PyTorch), of ``onnx_path`` in ONNX Runtime with
    graph optimisations on and off, and of the training graph (float biases); how often
    ONNX Runtime agrees with the QAT model, its two runs with each other, and the
    training graph with the QAT model (what rounding the biases moved); with
    ``tensorrt``, also that file's predictions (run as written, in ONNX Runtime with its
    optimisations off) against the QAT model."""
    was_training = model.training
    model.eval()
    device = next(model.network.parameters()).device
    optimised = runtime_session(onnx_path, 'onnxruntime')
    plain = runtime_session(onnx_path, 'onnxruntime-plain')
    trt = runtime_session(tensorrt, 'onnxruntime-plain') if tensorrt else None
    keys = ('qat', 'graph', 'ort', 'plain')
    correct = dict.fromkeys(keys, 0)
    agree = dict(ort=0, plain=0, graph=0, trt=0)
    total = 0
    try:
        for batch, labels in image_batches(cfg, 'val', normalized=True, limit=images):
            x = torch.from_numpy(batch).to(device)
            predicted = dict(qat=model(x).argmax(1).cpu().numpy(),
                             graph=model.network(x).argmax(1).cpu().numpy(),
                             ort=optimised(batch).argmax(1), plain=plain(batch).argmax(1))
            for key in keys:
                correct[key] += int((predicted[key] == labels).sum())
            agree['ort'] += int((predicted['ort'] == predicted['qat']).sum())
            agree['plain'] += int((predicted['ort'] == predicted['plain']).sum())
            agree['graph'] += int((predicted['graph'] == predicted['qat']).sum())
            if trt is not None:
                agree['trt'] += int((trt(batch).argmax(1) == predicted['qat']).sum())
            total += len(labels)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError(f'the val split of config {cfg.filename!r} has no images to check '
                         'the INT8 file on')
    extra = dict(tensorrt_file_agreement=agree['trt'] / total) if trt is not None else {}
    return dict(check_images=total, trained_top1=100.0 * correct['qat'] / total, **extra,
                ort_top1=100.0 * correct['ort'] / total,
                ort_plain_top1=100.0 * correct['plain'] / total,
                graph_top1=100.0 * correct['graph'] / total,
                agreement=agree['ort'] / total,
                ort_optimised_vs_plain=agree['plain'] / total,
                bias_rounding_agreement=agree['graph'] / total)


def export_qat_onnx(model: QATClassifier, path: str, cfg: Config,
                    tensorrt: Optional[str] = None, check_images: int = 1000,
                    min_agreement: float = MIN_AGREEMENT) -> dict:
    """Write the trained ``model`` as INT8 QDQ ONNX: ``path`` for ONNX Runtime and,
    when given, ``tensorrt`` for TensorRT (temporary paths: the caller renames them);
    check each file's placement, and the ONNX Runtime file's predictions against the
    trained model on up to ``check_images`` val images of ``cfg``.

    Raises:
        RuntimeError: when the ONNX Runtime file agrees with the trained model on less
            than ``min_agreement`` of those images (both top-1s and the agreement named).

    Returns:
        dict: ``opset``, ``convs``, ``int8_convs``, ``qdq_nodes``, ``int32_biases``,
        ``tensorrt`` (the TensorRT file's structure, when written) and
        :func:`check_agreement`'s figures.
    """
    was_training = model.training
    model.eval()  # (restored by check_agreement)
    # what the QAT model computes in eval mode, on the CPU for the exporter
    converted = copy.deepcopy(model.int8_network()).cpu()
    proto = _to_onnx(converted, model.input_size)  # float biases, on the INT32 grid
    report = dict(opset=QAT_OPSET)
    if tensorrt is not None:  # TensorRT takes float biases (and quantizes them itself)
        _save(copy.deepcopy(proto), tensorrt)
        trt = check_tensorrt_placement(tensorrt, runtime='tensorrt')
        report['tensorrt'] = dict(convs=trt['convs'], int8_convs=trt['int8_convs'],
                                  min_weight_code=trt['min_weight_code'])
    quantize_biases(proto)  # (the exporter drops a bias that is all zeros)
    quantize_conv_outputs(proto)
    _save(proto, path)
    structure = check_tensorrt_placement(path)
    if structure['float_biases']:
        raise RuntimeError(f'{structure["float_biases"]} Conv/Gemm biases of {path!r} are '
                           'still float')
    report.update(convs=structure['convs'], int8_convs=structure['int8_convs'],
                  qdq_nodes=structure['ops'].get('QuantizeLinear', 0)
                  + structure['ops'].get('DequantizeLinear', 0),
                  int32_biases=structure['int32_biases'])
    check = check_agreement(model, path, cfg, check_images, tensorrt)
    model.train(was_training)
    report.update(check)
    if check['agreement'] < min_agreement:
        raise RuntimeError(
            f'the INT8 file agrees with the trained fake-quant model on '
            f'{100 * check["agreement"]:.2f} % of {check["check_images"]} val images, below '
            f'the {100 * min_agreement:.1f} % required (ONNX Runtime top-1 '
            f'{check["ort_top1"]:.2f} %, fake-quant model top-1 {check["trained_top1"]:.2f} '
            '%); nothing written')
    return report
