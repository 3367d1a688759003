"""Fake quantization of a fused RepVGG for INT8 QAT: torchao's PT2E quantizer with the
scheme the exported files need, the fake quantizers of a prepared graph, and the
quantization state made equal across ranks."""
import contextlib
import copy
import logging
from typing import Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

# The weights' INT8 codes: the narrow range [-127, 127] (TensorRT's convention).
WEIGHT_LIMIT = 127

QAT_INSTALL = 'pip install -r requirements/deploy.txt (or pip install "repvgg_mm[deploy]")'


def require_torchao() -> None:
    """Import torchao, or raise ImportError naming the install command when it is
    missing. Its first import makes torch log a deprecation notice about one of its
    types (torch 2.14); that line would stand before a tool's one-line error, so the
    logger is quietened for the import."""
    notices = logging.getLogger('torch.utils._pytree')
    level = notices.level
    notices.setLevel(logging.ERROR)
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise ImportError('torchao not installed (quantization-aware training needs it); '
                          f'install the deploy requirements: {QAT_INSTALL}') from None
    finally:
        notices.setLevel(level)


# aten ops that pass values through (pooling averages them, views reshape them): not
# quantized on their own, so the pooled features are quantized once, at the fc's input
_UNQUANTIZED_PASS_THROUGH = ('adaptive_avg_pool2d', 'avg_pool2d', 'mean', 'view', 'reshape',
                             'flatten', '_unsafe_view')


def int8_quantizer(per_channel: bool = True):
    """torchao's x86 quantizer (conv/linear patterns, conv+ReLU kept together) with
    signed symmetric INT8 and zero point 0, as TensorRT's explicit quantization takes:
    per-tensor activations in [-128, 127]; per-output-channel weights in the narrow
    range [-127, 127] (scale = max|w| / 127, TensorRT's convention: no weight code is
    -128). Pooling and reshapes are left unquantized, so the pooled features are
    requantized once, at the classifier's input, instead of after the pooling and again
    after the reshape.

    The fake quantizers are torchao's plain ``FakeQuantize`` with moving min/max
    observers, not the x86 default's fused ``FusedMovingAvgObsFakeQuantize``: the fused
    op's scale differs from its observer's ``calculate_qparams`` (about 0.5 %, measured),
    which is what ``convert_pt2e`` exports, so the exported INT8 weights were not the
    ones trained (0.6-1.0 points of top-1 lost on the demo data)."""
    require_torchao()
    from torchao.quantization.pt2e import (
        FakeQuantize,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
    )
    from torchao.quantization.pt2e.quantizer import QuantizationSpec
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        QuantizationConfig,
        X86InductorQuantizer,
    )

    class RepVGGInt8Quantizer(X86InductorQuantizer):
        def annotate(self, model):
            model = super().annotate(model)
            for node in model.graph.nodes:
                name = getattr(node.target, '__name__', str(node.target)).split('.')[0]
                if node.op == 'call_function' and name in _UNQUANTIZED_PASS_THROUGH:
                    node.meta.pop('quantization_annotation', None)
            return model

    activation = QuantizationSpec(
        dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_symmetric,
        is_dynamic=False,
        observer_or_fake_quant_ctr=FakeQuantize.with_args(
            eps=2**-12, observer=MovingAverageMinMaxObserver))
    weight = QuantizationSpec(
        dtype=torch.int8, quant_min=-WEIGHT_LIMIT, quant_max=WEIGHT_LIMIT,
        qscheme=torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric,
        ch_axis=0, is_dynamic=False,
        observer_or_fake_quant_ctr=FakeQuantize.with_args(
            eps=2**-12, observer=MovingAveragePerChannelMinMaxObserver if per_channel
            else MovingAverageMinMaxObserver))
    config = QuantizationConfig(activation, activation, weight, None, True)
    return RepVGGInt8Quantizer().set_global(config)


@contextlib.contextmanager
def conv2d_patterns_only() -> Iterator[None]:
    """Make torchao's conv+BN fusion (``prepare_qat_pt2e``) and folding
    (``convert_pt2e``) look for conv2d patterns only.

    Both try conv1d, conv2d and the two transposed convs, tracing every pattern
    variant with ``torch.export`` (102 traces in ``convert_pt2e``, 0.2-0.4 s each: 21 s
    of its 22 s for the demo model on a 2-core CPU). A fused RepVGG has conv2d only,
    so the other three searches cannot match anything; skipping them changes no result
    (the exported graphs are checked to have no BatchNormalization left). Where
    torchao's private helpers are not found, nothing is changed.
    """
    try:
        from torchao.quantization.pt2e import qat_utils
    except ImportError:
        yield
        return
    originals = {name: getattr(qat_utils, name, None)
                 for name in ('_fuse_conv_bn_qat_helper', '_fold_conv_bn_qat_helper')}

    def only_conv2d(helper):
        def wrapper(m, conv_fn, *args, **kwargs):
            return helper(m, conv_fn, *args, **kwargs) if conv_fn is F.conv2d else m
        return wrapper

    for name, helper in originals.items():
        if helper is not None:
            setattr(qat_utils, name, only_conv2d(helper))
    try:
        yield
    finally:
        for name, helper in originals.items():
            if helper is not None:
                setattr(qat_utils, name, helper)


def fake_quantizers(module: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, module)`` of every fake quantizer in ``module``; one shared by several
    tensors (e.g. a pooling's input and output) is listed once, under its first name."""
    require_torchao()
    from torchao.quantization.pt2e import FakeQuantizeBase
    return [(n, m) for n, m in module.named_modules() if isinstance(m, FakeQuantizeBase)]


def activation_quantizers(graph_module: nn.Module) -> List[str]:
    """Names of the fake quantizers of a prepared graph that see activations (their
    input depends on the graph's input), as opposed to weights."""
    names = set(n for n, _ in fake_quantizers(graph_module))
    from_input, found = set(), []
    for node in graph_module.graph.nodes:
        if node.op == 'placeholder' or any(a in from_input for a in node.all_input_nodes):
            from_input.add(node)
            if node.op == 'call_module' and node.target in names:
                found.append(node.target)
    return found


def fake_quantizer_names(module: nn.Module) -> List[str]:
    """Every name under which a fake quantizer of ``module`` is registered."""
    require_torchao()
    from torchao.quantization.pt2e import FakeQuantizeBase
    return [n for n, m in module.named_modules(remove_duplicate=False)
            if isinstance(m, FakeQuantizeBase)]


def _averaged_buffers(module: nn.Module) -> List[torch.Tensor]:
    """The floating-point buffers that training moves and the exported file depends
    on: the BatchNorms' running statistics and the fake quantizers' observed ranges."""
    return [b for n, b in module.named_buffers() if b.is_floating_point()
            and n.rsplit('.', 1)[-1] in ('running_mean', 'running_var', 'min_val', 'max_val')]


@torch.no_grad()
def set_qparams_from_observer(fq: nn.Module) -> None:
    """Give a fake quantizer the scale and zero point of its observer's range."""
    scale, zero_point = fq.activation_post_process.calculate_qparams()
    fq.scale.resize_(scale.shape).copy_(scale)
    fq.zero_point.resize_(zero_point.shape).copy_(zero_point)


@torch.no_grad()
def average_across_ranks(module: nn.Module) -> int:
    """Make the quantization state of ``module`` the same on every rank: the BN
    running statistics and observed ranges averaged over the ranks (each rank's moving
    averages saw its own batches; averaging moving averages is the moving average of
    the averages), then every fake quantizer's scale recomputed from its averaged
    range. One all-reduce of one flat tensor. No-op without a process group.

    Returns:
        int: the number of buffers made equal (0 when not distributed).
    """
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return 0
    buffers = _averaged_buffers(module)
    flat = torch.cat([b.reshape(-1).double() for b in buffers])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for b in buffers:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()
    for _, fq in fake_quantizers(module):
        obs = fq.activation_post_process
        if obs.min_val.numel() and not torch.isinf(obs.min_val).any():  # observed
            set_qparams_from_observer(fq)
    return len(buffers)


def convert_qat_network(model: nn.Module) -> torch.nn.Module:
    """The trained network (``model.network``, a prepared QAT graph) with BNs folded
    and fake quantizers turned into quantize/dequantize ops (torchao's
    ``convert_pt2e``), on the CPU, eval mode."""
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


def int8_network(model: nn.Module) -> torch.nn.Module:
    """What the INT8 files compute, as a PyTorch network: :func:`convert_qat_network`
    with the biases on their INT32 grid (:func:`round_biases_to_int32_grid`)."""
    network = convert_qat_network(model)
    if not round_biases_to_int32_grid(network):
        raise RuntimeError('no conv or linear bias of the converted network found to put on '
                           'the INT32 grid; the export does not know this graph')
    return network
