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

from repvgg_mm.models.qat import QATClassifier, conv2d_patterns_only, example_input

from ..export import INPUT_KEY, image_batches
from ..runtimes import runtime_session
from .qdq import check_tensorrt_placement, quantize_biases, quantize_conv_outputs

QAT_OPSET = 18  # the lowest torch's ONNX exporter (torch.export-based) writes
# Below this share of val images with the trained model's top-1, no file is written.
MIN_AGREEMENT = 0.995


def tensorrt_path(output: str) -> str:
    """Where the TensorRT file of ``output`` goes: ``<stem>_tensorrt.onnx`` beside it."""
    stem, _ = osp.splitext(output)
    return f'{stem}_tensorrt.onnx'


def convert_qat_network(model: QATClassifier) -> torch.nn.Module:
    """The trained network with BNs folded and fake quantizers turned into
    quantize/dequantize ops (torchao's ``convert_pt2e``), on the CPU, eval mode."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e
    network = copy.deepcopy(model.network).cpu()
    move_exported_model_to_eval(network)
    with conv2d_patterns_only():
        return convert_pt2e(network)


def _is_op(node, name: str) -> bool:
    return node.op == 'call_function' and name in str(node.target)


def _attr(gm: torch.nn.Module, node) -> Optional[torch.Tensor]:
    if node is None or node.op != 'get_attr':
        return None
    value = gm
    for part in str(node.target).split('.'):
        value = getattr(value, part)
    return value


@torch.no_grad()
def round_biases_to_int32_grid(gm: torch.nn.Module) -> int:
    """Put every conv and linear bias of a converted network on its INT32 grid, in
    place: ``round(b / s) * s`` with ``s = input scale x weight scale`` in float32, the
    values :func:`~.qdq.quantize_biases` stores in the file.

    Returns:
        int: the number of biases rounded.
    """
    rounded = 0
    for node in gm.graph.nodes:
        if not (_is_op(node, 'aten.conv2d') or _is_op(node, 'aten.linear')) or \
                len(node.args) < 3 or node.args[2] is None:
            continue
        act, weight, bias = node.args[0], node.args[1], _attr(gm, node.args[2])
        if bias is None or not _is_op(act, 'dequantize_per_tensor') or \
                not _is_op(weight, 'dequantize_per'):
            continue
        x_scale = torch.tensor(float(act.args[1]), dtype=torch.float32)
        w_scale = weight.args[1]
        w_scale = _attr(gm, w_scale) if hasattr(w_scale, 'op') else torch.tensor(
            float(w_scale))
        scale = (x_scale * w_scale.float()).expand_as(bias).float()
        bias.copy_((bias.double() / scale.double()).round().float() * scale)
        rounded += 1
    return rounded


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
    if not any(p.key == INPUT_KEY for p in proto.metadata_props):
        meta = proto.metadata_props.add()
        meta.key, meta.value = INPUT_KEY, 'normalized'
    onnx.save(proto, path)


@torch.no_grad()
def check_agreement(model: QATClassifier, converted: torch.nn.Module, onnx_path: str,
                    cfg: Config, images: int) -> Dict[str, float]:
    """Top-1 of the trained fake-quant model, of its converted network, and of
    ``onnx_path`` in ONNX Runtime with graph optimisations on and off, on up to
    ``images`` of the config's val images, and how often each agrees with the trained
    model (and ONNX Runtime's two runs with each other)."""
    was_training = model.training
    model.eval()
    device = next(model.network.parameters()).device
    optimised = runtime_session(onnx_path, 'onnxruntime')
    plain = runtime_session(onnx_path, 'onnxruntime-plain')
    counts = dict(correct_trained=0, correct_converted=0, correct_ort=0, correct_plain=0,
                  ort_trained=0, ort_plain=0, converted_trained=0, total=0)
    try:
        for batch, labels in image_batches(cfg, 'val', normalized=True, limit=images):
            trained = model.network(torch.from_numpy(batch).to(device)).argmax(1).cpu().numpy()
            conv = converted(torch.from_numpy(batch)).argmax(1).numpy()
            ort = optimised(batch).argmax(1)
            raw = plain(batch).argmax(1)
            counts['correct_trained'] += int((trained == labels).sum())
            counts['correct_converted'] += int((conv == labels).sum())
            counts['correct_ort'] += int((ort == labels).sum())
            counts['correct_plain'] += int((raw == labels).sum())
            counts['ort_trained'] += int((ort == trained).sum())
            counts['ort_plain'] += int((ort == raw).sum())
            counts['converted_trained'] += int((conv == trained).sum())
            counts['total'] += len(labels)
    finally:
        model.train(was_training)
    total = counts['total']
    if total == 0:
        raise ValueError(f'the val split of config {cfg.filename!r} has no images to check '
                         'the INT8 file on')
    return dict(check_images=total,
                trained_top1=100.0 * counts['correct_trained'] / total,
                converted_top1=100.0 * counts['correct_converted'] / total,
                ort_top1=100.0 * counts['correct_ort'] / total,
                ort_plain_top1=100.0 * counts['correct_plain'] / total,
                agreement=counts['ort_trained'] / total,
                ort_optimised_vs_plain=counts['ort_plain'] / total,
                converted_agreement=counts['converted_trained'] / total)


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
    converted = convert_qat_network(model)
    rounded = round_biases_to_int32_grid(converted)
    if not rounded:
        raise RuntimeError('no conv or linear bias of the converted network found to put on '
                           'the INT32 grid; the export does not know this graph')
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
    check = check_agreement(model, converted, path, cfg, check_images)
    report.update(check)
    if check['agreement'] < min_agreement:
        raise RuntimeError(
            f'the INT8 file agrees with the trained fake-quant model on '
            f'{100 * check["agreement"]:.2f} % of {check["check_images"]} val images, below '
            f'the {100 * min_agreement:.1f} % required (ONNX Runtime top-1 '
            f'{check["ort_top1"]:.2f} %, fake-quant model top-1 {check["trained_top1"]:.2f} '
            '%); nothing written')
    return report
