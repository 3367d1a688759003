"""PSPNet on a RepVGG backbone: the original repository's segmentation example
(``example_pspnet.py``) as registered modules, built from a config.

The backbone keeps stride 8 (its last two stages get stride 1 and dilations 2 and 4, as
PSPNet does), a pyramid pooling module pools the last features at a few grid sizes, and
a 3x3 conv classifies every pixel; during training an auxiliary classifier on the third
stage adds its loss. :func:`~repvgg_mm.models.reparameterize_model` fuses the whole
segmentor: every RepVGG block becomes one conv and the auxiliary classifier, which only
trains, is removed -- the segmentation output does not change.
"""
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModel, BaseModule
from torch import Tensor

from repvgg_mm.registry import MODELS


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                  bias=False),
        nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


@MODELS.register_module()
class PSPHead(BaseModule):
    """Pyramid pooling (Zhao et al., CVPR 2017) then a per-pixel classifier.

    Each bin size ``b`` pools the features to ``b x b``, reduces them with a 1x1
    conv+BN+ReLU to ``in_channels / len(bins)`` channels and upsamples them back; the
    input and the pooled maps are concatenated and classified by a 3x3 conv+BN+ReLU,
    dropout and a 1x1 conv -- as in the original example.

    Args:
        in_channels (int): Channels of the backbone's last output.
        num_classes (int): Segmentation classes.
        channels (int): Width of the 3x3 conv before the classifier. Defaults to 512.
        bins (Sequence[int]): Pooling grid sizes. Defaults to ``(1, 2, 3, 6)``.
        dropout (float): Dropout before the classifier. Defaults to 0.1.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 512,
                 bins: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        if in_channels % len(bins):
            raise ValueError(f'in_channels={in_channels} must divide into len(bins)='
                             f'{len(bins)} pooled branches')
        reduced = in_channels // len(bins)
        self.bins = tuple(bins)
        self.pools = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), *_conv_bn_relu(in_channels, reduced, 1))
            for b in self.bins)
        self.classifier = nn.Sequential(
            *_conv_bn_relu(in_channels + reduced * len(bins), channels, 3),
            nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[2:]
        pooled = [F.interpolate(pool(x), size, mode='bilinear', align_corners=True)
                  for pool in self.pools]
        return self.classifier(torch.cat([x, *pooled], dim=1))


@MODELS.register_module()
class FCNAuxHead(BaseModule):
    """The auxiliary classifier of PSPNet: 3x3 conv+BN+ReLU, dropout, 1x1 conv.

    Args:
        in_channels (int): Channels of the backbone output it reads.
        num_classes (int): Segmentation classes.
        channels (int): Width of its 3x3 conv. Defaults to 256.
        dropout (float): Defaults to 0.1.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256,
                 dropout: float = 0.1, init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        self.layers = nn.Sequential(*_conv_bn_relu(in_channels, channels, 3),
                                    nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


@MODELS.register_module()
class PSPNetSegmentor(BaseModel):
    """Backbone -> :class:`PSPHead` on its last output (+ :class:`FCNAuxHead` on the
    one before, while training), logits upsampled to the input size.

    ``forward(inputs, data_samples, mode)`` follows MMEngine's ``BaseModel``:
    ``'loss'`` takes ``data_samples`` as an ``(N, H, W)`` tensor of class indices
    (``ignore_index`` where unlabelled) and returns ``loss_decode`` and ``loss_aux``
    (weighted; MMEngine sums them into ``loss``); ``'predict'`` returns the
    ``(N, H, W)`` predicted classes; ``'tensor'`` the ``(N, num_classes, H, W)`` logits.
    ``train_step``/``test_step`` run the data preprocessor (normalisation) first, as
    for any MMEngine model.

    Args:
        backbone (dict): The backbone config; it must return (at least) two outputs,
            the auxiliary head's input then the decode head's (e.g. RepVGG with
            ``out_indices=(2, 3)``).
        decode_head (dict): The :class:`PSPHead` config.
        auxiliary_head (dict, optional): The :class:`FCNAuxHead` config; training only.
        aux_loss_weight (float): Weight of the auxiliary loss. Defaults to 0.4 (PSPNet).
        ignore_index (int): Label of unlabelled pixels. Defaults to 255.
        data_preprocessor (dict, optional): MMEngine data preprocessor config (mean,
            std, channel order).
        deploy (bool): Build the inference structure: no auxiliary head. Defaults to
            False.
    """

    def __init__(self, backbone: dict, decode_head: dict, auxiliary_head: Optional[dict] = None,
                 aux_loss_weight: float = 0.4, ignore_index: int = 255,
                 data_preprocessor: Optional[dict] = None, deploy: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        self.decode_head = MODELS.build(decode_head)
        self.auxiliary_head = None if deploy or auxiliary_head is None else \
            MODELS.build(auxiliary_head)
        self.aux_loss_weight = aux_loss_weight
        self.ignore_index = ignore_index
        self.deploy = deploy

    def _logits(self, inputs: Tensor, with_aux: bool):
        feats = self.backbone(inputs)
        size = inputs.shape[2:]
        main = F.interpolate(self.decode_head(feats[-1]), size, mode='bilinear',
                             align_corners=False)
        if not with_aux:
            return main, None
        aux = F.interpolate(self.auxiliary_head(feats[-2]), size, mode='bilinear',
                            align_corners=False)
        return main, aux

    def forward(self, inputs: Tensor, data_samples: Optional[Tensor] = None,
                mode: str = 'tensor') -> Union[Dict[str, Tensor], Tensor]:
        if mode == 'loss':
            if data_samples is None:
                raise ValueError("mode='loss' needs data_samples: the (N, H, W) label maps")
            main, aux = self._logits(inputs, self.auxiliary_head is not None)
            target = data_samples.long()
            losses = dict(loss_decode=F.cross_entropy(main, target,
                                                      ignore_index=self.ignore_index))
            if aux is not None:
                losses['loss_aux'] = self.aux_loss_weight * F.cross_entropy(
                    aux, target, ignore_index=self.ignore_index)
            return losses
        main, _ = self._logits(inputs, with_aux=False)
        if mode == 'predict':
            return main.argmax(dim=1)
        if mode == 'tensor':
            return main
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    def switch_to_deploy(self) -> None:
        """Remove the auxiliary head (training only); the backbone's blocks fuse
        themselves in the same :func:`reparameterize_model` call."""
        self.auxiliary_head = None
        self.deploy = True
