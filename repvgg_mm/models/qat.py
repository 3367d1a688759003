"""INT8 quantization-aware training of a fused RepVGG classifier.

This is the original repository's route to an INT8 RepVGG that keeps its accuracy
(its ``quantization/`` folder and ``tools/insert_bn.py``): fuse the model, put a
BatchNorm after every fused 3x3 conv -- its statistics recorded on training images and
its affine parameters chosen so that the outputs do not change -- then train with
fake quantization. The fake quantization is torchao's PT2E flow (``prepare_qat_pt2e``,
the successor of ``torch.ao.quantization``, which is deprecated): it fuses each conv
with the BN after it the way ``torch.ao``'s QAT ConvBn modules did (the weight is
quantized *after* the BN is folded into it, with the running statistics), so the
INT8 kernels of the exported model are exactly the ones trained.

Quantization scheme (:mod:`.quantizer`): signed INT8 everywhere with zero point 0 (what
TensorRT takes): per-tensor activations, per-output-channel weights in the narrow range
[-127, 127]; ranges tracked by moving min/max during training. As the original's
``quant_qat_train.py`` (``--fixbn``, ``--fixobserver``), the BNs' statistics and then
the observed ranges stop moving after given epochs.

:class:`QATClassifier` is the model the Runner trains; the data-dependent start
(BN statistics, calibration) is :func:`repvgg_mm.apis.quantize.qat.start_qat`.
"""
import copy
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.model import BaseModel
from torch import Tensor

from repvgg_mm.registry import MODELS

from .quantizer import (  # noqa: F401  (re-exported: the QAT API's names)
    QAT_INSTALL,
    activation_quantizers,
    average_across_ranks,
    conv2d_patterns_only,
    fake_quantizer_names,
    fake_quantizers,
    int8_network,
    int8_quantizer,
    require_torchao,
)
from .reparam import reparameterize_model


class LogitsNetwork(nn.Module):
    """A classifier as a plain ``normalised images -> logits`` module (what is traced,
    fake-quantized and exported)."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        out = self.classifier(x, mode='tensor')
        return out[-1] if isinstance(out, (tuple, list)) else out


# ---------------------------------------------------------------------------------------
# BN insertion (route C of the original)

def fused_convs(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, block)`` of every fused RepVGG block (one with ``rbr_reparam``: a conv,
    or the conv + BN of :func:`insert_bn`)."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(getattr(m, 'rbr_reparam', None), (nn.Conv2d, nn.Sequential))]


def insert_bn(model: nn.Module) -> List[str]:
    """Replace the fused conv ``rbr_reparam`` of every block by a conv without bias
    followed by a BatchNorm (``rbr_reparam.conv``, ``rbr_reparam.bn``), in place.

    The BN starts as the identity plus the conv's former bias (running mean 0, running
    variance ``1 - eps``, weight 1, bias = the conv's bias), so the model's eval-mode
    outputs do not change; :func:`set_bn_statistics` gives it statistics.

    Returns:
        list[str]: the names of the blocks changed.
    """
    names = []
    for name, block in fused_convs(model):
        conv = block.rbr_reparam
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f'block {name!r} already has a BatchNorm after its conv')
        plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                          stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                          groups=conv.groups, bias=False).to(conv.weight)
        bn = nn.BatchNorm2d(conv.out_channels).to(conv.weight)
        with torch.no_grad():
            plain.weight.copy_(conv.weight)
            bn.running_var.fill_(1 - bn.eps)
            bn.weight.fill_(1)
            bn.bias.copy_(conv.bias if conv.bias is not None else torch.zeros_like(bn.bias))
        block.rbr_reparam = nn.Sequential(OrderedDict(conv=plain, bn=bn)).train(block.training)
        names.append(name)
    if not names:
        raise ValueError(f'{type(model).__name__} has no fused RepVGG block (rbr_reparam) '
                         'to insert a BatchNorm after')
    return names


@torch.no_grad()
def record_conv_statistics(model: nn.Module, batches: Iterable[Tensor]) -> Dict[str, tuple]:
    """Per-channel mean and variance of every inserted BN's input (the conv output
    without bias) over ``batches``, the model in eval mode.

    Returns:
        dict: block name -> ``(mean, var)``.
    """
    sums: Dict[str, list] = {}
    hooks = []

    def record(name):
        def hook(module, inputs, output):
            y = output.detach().double().transpose(0, 1).flatten(1)
            acc = sums.setdefault(name, [0.0, 0.0, 0])
            acc[0] = acc[0] + y.sum(1)
            acc[1] = acc[1] + (y * y).sum(1)
            acc[2] += y.shape[1]
        return hook

    was_training = model.training
    model.eval()
    for name, block in fused_convs(model):
        if not isinstance(block.rbr_reparam, nn.Sequential):
            raise ValueError(f'block {name!r} has no inserted BatchNorm; call insert_bn first')
        hooks.append(block.rbr_reparam.conv.register_forward_hook(record(name)))
    try:
        for batch in batches:
            model(batch)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if not sums:
        raise ValueError('no images to record BatchNorm statistics on')
    stats = {}
    for name, (total, squares, count) in sums.items():
        mean = total / count
        stats[name] = (mean.float(), (squares / count - mean * mean).clamp_min(0).float())
    return stats


@torch.no_grad()
def set_bn_statistics(model: nn.Module, stats: Dict[str, tuple]) -> None:
    """Give every inserted BN the recorded running statistics and the affine parameters
    that keep its eval-mode output unchanged: ``weight = sqrt(var + eps)``, ``bias =
    mean + conv bias`` (what the BN added before), as the original's ``insert_bn``."""
    for name, block in fused_convs(model):
        bn = block.rbr_reparam.bn
        mean, var = stats[name]
        old_bias = bn.bias - bn.running_mean * bn.weight / (bn.running_var + bn.eps).sqrt()
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_((var + bn.eps).sqrt())
        bn.bias.copy_(mean + old_bias)


def example_input(size: int) -> Tuple[Tensor]:
    return (torch.zeros(2, 3, size, size), )


def export_network(network: nn.Module, size: int):
    """``torch.export`` of ``network`` with a dynamic batch dimension."""
    return torch.export.export(network, example_input(size),
                               dynamic_shapes=({0: torch.export.Dim('batch')}, ))


def prepare_qat_network(network: nn.Module, size: int, per_channel: bool = True) -> nn.Module:
    """The fake-quantized training graph of ``network`` (a torch.fx GraphModule)."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    network = copy.deepcopy(network).train()
    with conv2d_patterns_only():
        return prepare_qat_pt2e(export_network(network, size).module(),
                                int8_quantizer(per_channel))


@MODELS.register_module()
class QATClassifier(BaseModel):
    """A fused RepVGG classifier with a BN after every fused conv, fake-quantized for
    INT8 quantization-aware training; the Runner trains it like any model.

    The structure is built from the float model's config (fused, BN inserted, traced
    with ``torch.export`` and prepared by torchao's PT2E QAT); the weights, BN
    statistics and quantization ranges come from the float checkpoint through
    :func:`repvgg_mm.apis.quantize.qat.start_qat` or from a QAT checkpoint (resume,
    ``load_from``). Loss and predictions are the float model's head's, computed from
    the logits.

    Args:
        float_model (dict): The config of the model that was trained in float (the
            arch's ``model``), training-time or deploy.
        input_size (int): Height and width of the example input used for tracing
            (the batch dimension is dynamic).
        per_channel (bool): One weight scale per output channel (True) or per conv.
        activation_ranges (str): ``'moving'``: the activation ranges start from the
            calibration and follow the training batches (moving min/max);
            ``'calibrated'``: they stay the calibration's (the weights' ranges follow
            the weights either way).
        freeze_bn_epoch (int, optional): From this epoch on (0-based, as the Runner
            counts), the BNs use and keep their running statistics (the original's
            ``--fixbn``, at 2/8 of its schedule); None: never.
        freeze_observer_epoch (int, optional): From this epoch on, no range moves
            (the original's ``--fixobserver``, at 3/8); None: never.
        data_preprocessor (dict, optional): As the float model's.

    Both freezes follow the Runner's epoch (MMEngine's message hub), so a resumed run
    freezes as an uninterrupted one.

    In eval mode (validation, testing, the export's check) the model computes what the
    INT8 files compute: the training graph converted -- BNs folded, fake quantizers as
    quantize/dequantize ops -- with every conv and fc bias on its INT32 grid
    (:func:`~repvgg_mm.models.quantizer.int8_network`), built from the current state on
    the first eval forward after training or loading. The training graph adds float
    biases (the rounding's gradient is negligible); rounding them moved 3 of 500 demo
    predictions, all within 0.02 of a tie.
    """

    def __init__(self, float_model: dict, input_size: int = 224, per_channel: bool = True,
                 activation_ranges: str = 'moving', freeze_bn_epoch: Optional[int] = None,
                 freeze_observer_epoch: Optional[int] = None,
                 data_preprocessor: Optional[dict] = None, init_cfg=None) -> None:
        require_torchao()
        float_model = copy.deepcopy(dict(float_model))
        float_model.pop('data_preprocessor', None)
        super().__init__(data_preprocessor=data_preprocessor or float_model.get(
            'data_preprocessor'), init_cfg=init_cfg)
        classifier = MODELS.build(float_model)
        reparameterize_model(classifier, inplace=True)
        head = classifier.head
        network = LogitsNetwork(classifier)
        self.bn_blocks = insert_bn(network)
        self.input_size = input_size
        if activation_ranges not in ('moving', 'calibrated'):
            raise ValueError("activation_ranges must be 'moving' or 'calibrated', got "
                             f'{activation_ranges!r}')
        self.activation_ranges = activation_ranges
        for key, value in (('freeze_bn_epoch', freeze_bn_epoch),
                           ('freeze_observer_epoch', freeze_observer_epoch)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f'{key} must be None or an epoch >= 0, got {value!r}')
        self.freeze_bn_epoch, self.freeze_observer_epoch = freeze_bn_epoch, \
            freeze_observer_epoch
        self.network = prepare_qat_network(network, input_size, per_channel)
        self._activation_quantizers = set(activation_quantizers(self.network))
        self._head = (head, )  # loss and predictions only; not a submodule
        self._size_quantizer_buffers()
        # 1 once the weights, BN statistics and ranges come from a float model (set by
        # start_qat, saved in every QAT checkpoint): training a model that never got
        # them would fine-tune random weights at a fine-tuning learning rate
        self.register_buffer('started', torch.zeros((), dtype=torch.uint8))
        self._started_seen = False
        self._int8: tuple = ()  # the eval-mode network, built when first needed
        self.register_load_state_dict_post_hook(lambda module, keys: module.forget_int8())

    def forget_int8(self) -> None:
        """Drop the eval-mode network: the next eval forward converts the current
        state again (called on training, loading and calibration)."""
        self._int8 = ()

    def int8_network(self) -> nn.Module:
        """The network as the INT8 files compute it (see the class doc), on the
        model's device; rebuilt after training or loading."""
        if not self._int8:
            device = next(self.network.parameters()).device
            self._int8 = (int8_network(self).to(device), )  # a tuple: not a submodule
        return self._int8[0]

    @torch.no_grad()
    def _size_quantizer_buffers(self) -> None:
        """Run one batch of zeros so that the per-channel quantizers' buffers get their
        shapes (one value per channel instead of the placeholder's one): a checkpoint
        then loads strictly, shapes checked. The values are replaced by
        :func:`~repvgg_mm.apis.quantize.qat.start_qat` or the loaded checkpoint."""
        from torchao.quantization.pt2e import move_exported_model_to_eval
        move_exported_model_to_eval(self.network)
        self.network(example_input(self.input_size)[0])
        self.train(self.training)

    def compile(self, *args, **kwargs) -> None:
        """Refused: the fake-quantized network is a traced graph already, and the
        compiled training step fails in it (in-place error after graph breaks)."""
        raise ValueError('compile (configs/_base_/options/compile.py) does not fit '
                         'quantization-aware training: the fake-quantized graph is '
                         'already traced and the compiled step fails; train QAT without '
                         'it')

    @property
    def head(self) -> nn.Module:
        return self._head[0]

    def frozen(self) -> Tuple[bool, bool]:
        """Whether the BN statistics and the observed ranges are frozen now, from the
        Runner's current epoch (nothing is frozen outside a training run)."""
        from mmengine.logging import MessageHub
        hub = MessageHub.get_current_instance() if MessageHub._instance_dict else None
        epoch = hub.get_info('epoch') if hub is not None else None
        if epoch is None:
            return False, False
        return tuple(limit is not None and epoch >= limit
                     for limit in (self.freeze_bn_epoch, self.freeze_observer_epoch))

    def train(self, mode: bool = True) -> 'QATClassifier':
        from torchao.quantization.pt2e import (
            move_exported_model_to_eval,
            move_exported_model_to_train,
        )
        self.training = mode
        if mode:
            self.forget_int8()  # training changes the state
        self.data_preprocessor.train(mode)
        bn_frozen, ranges_frozen = self.frozen() if mode else (True, True)
        # a frozen BN normalises with its running statistics and no longer updates them
        (move_exported_model_to_eval if bn_frozen else move_exported_model_to_train)(
            self.network)
        # ranges follow the training data only: evaluation never moves them
        frozen = self._activation_quantizers if self.activation_ranges == 'calibrated' \
            else set()
        for name, fq in fake_quantizers(self.network):
            fq.enable_observer(mode and not ranges_frozen and name not in frozen)
        return self

    def forward(self, inputs: Tensor, data_samples=None, mode: str = 'tensor'):
        if torch.is_autocast_enabled() or (
                hasattr(torch, 'is_autocast_cpu_enabled') and torch.is_autocast_cpu_enabled()):
            raise RuntimeError(
                'mixed precision (--amp, AmpOptimWrapper) does not fit QAT: fake '
                'quantization in bf16/fp16 rounds to another grid than the INT8 file '
                'computes; train QAT in fp32')
        logits = self.network(inputs) if self.training else self.int8_network()(inputs)
        if mode == 'tensor':
            return logits
        if mode == 'loss':
            if not self._started_seen:
                if not int(self.started):
                    raise RuntimeError(
                        'this QAT model was not started from a float checkpoint: run '
                        'tools/qat.py QAT_CONFIG CHECKPOINT OUTPUT.onnx (tools/train.py '
                        'takes a QAT config only to --resume or load_from a QAT run)')
                self._started_seen = True
            return self.head._get_loss(logits, data_samples)
        if mode == 'predict':
            return self.head._get_predictions(logits, data_samples)
        raise RuntimeError(f'invalid mode {mode!r}; expected tensor, loss or predict')
