"""The neck that gives a training-time RepVGGplus its auxiliary-classifier features."""
from typing import Sequence, Tuple

import torch.nn as nn
from torch import Tensor

from repvgg_mm.registry import MODELS

from ..blocks import conv_bn

AUX_NAMES = ('stage1_aux', 'stage2_aux', 'stage3_first_aux')


def _aux_branch(channels: int, norm_cfg: dict) -> nn.Sequential:
    """conv3x3 (stride 2, no bias) + BN -> ReLU -> global average pool -> flatten.

    Indices 0 (``conv``/``bn``) and, in the head, 3 (the linear layer) are the original
    code's ``stage1_aux.0`` / ``stage1_aux.3``.
    """
    return nn.Sequential(conv_bn(channels, channels, 3, 2, 1, 1, 1, norm_cfg), nn.ReLU(),
                         nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)))


@MODELS.register_module()
class RepVGGplusAuxNeck(nn.Module):
    """Pooled features for the main classifier and, during training, the aux ones.

    Takes the backbone outputs ``(aux inputs..., main input)`` -- for RepVGGplus with
    ``out_indices=(0, 1, 2, 4)``: stage1, stage2, stage3_first and stage4 -- and returns
    ``(aux features..., main features)``: each aux input goes through conv3x3 stride 2
    + BN + ReLU + global average pool, the main input through global average pool.
    After :meth:`switch_to_deploy` (or with ``deploy=True``) the aux branches are gone
    and the output is ``(main features, )``.

    Args:
        in_channels (Sequence[int]): Channels of the aux inputs. Defaults to
            ``(160, 320, 640)`` (L2pse).
        aux_names (Sequence[str]): Attribute names of the aux branches (the original's).
        norm_cfg (dict): Norm layer of the aux convs. Defaults to ``dict(type='BN')``.
        deploy (bool): Build without aux branches. Defaults to False.
    """

    def __init__(self, in_channels: Sequence[int] = (160, 320, 640),
                 aux_names: Sequence[str] = AUX_NAMES, norm_cfg: dict = dict(type='BN'),
                 deploy: bool = False) -> None:
        super().__init__()
        if len(in_channels) != len(aux_names):
            raise ValueError(f'in_channels {list(in_channels)} and aux_names '
                             f'{list(aux_names)} need the same length')
        self.aux_names = tuple(aux_names)
        self.deploy = deploy
        if not deploy:
            for name, channels in zip(self.aux_names, in_channels):
                self.add_module(name, _aux_branch(channels, norm_cfg))
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))

    def forward(self, inputs: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
        main = self.gap(inputs[-1])
        if self.deploy:
            return (main, )
        if len(inputs) != len(self.aux_names) + 1:
            raise ValueError(f'RepVGGplusAuxNeck expects {len(self.aux_names) + 1} backbone '
                             f'outputs (aux inputs + main), got {len(inputs)}: set the '
                             'backbone out_indices accordingly, e.g. (0, 1, 2, 4)')
        aux = [getattr(self, name)(x) for name, x in zip(self.aux_names, inputs)]
        return (*aux, main)

    def switch_to_deploy(self) -> None:
        """Remove the aux branches: they exist only for training."""
        if self.deploy:
            return
        for name in self.aux_names:
            delattr(self, name)
        self.deploy = True
