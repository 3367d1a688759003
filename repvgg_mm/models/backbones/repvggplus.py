"""RepVGGplus backbone (the original repository's RepVGGplus-L2pse)."""
from typing import List, Sequence

import torch.nn as nn
from torch import Tensor

from repvgg_mm.registry import MODELS

from ..blocks import RepVGGBlock
from .repvgg import RepVGG


class RepVGGplusStage(nn.Module):
    """A stage as the original RepVGGplus names it: its blocks under ``blocks``."""

    def __init__(self, blocks: List[RepVGGBlock]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


@MODELS.register_module()
class RepVGGplus(RepVGG):
    """RepVGGplus: RepVGG blocks with SE after the ReLU, and stage 3 split in two
    halves (``stage3_first``, stride 2, and ``stage3_second``, stride 1) so that an
    auxiliary classifier can sit after the first half.

    Output stages (for ``out_indices`` and ``frozen_stages``): 0 ``stage1``,
    1 ``stage2``, 2 ``stage3_first``, 3 ``stage3_second``, 4 ``stage4``. The
    training-time classifier takes ``(0, 1, 2, 4)``: the aux classifiers read the
    first three (see :class:`~repvgg_mm.models.necks.RepVGGplusAuxNeck`).
    Detection/segmentation users take e.g. ``(0, 1, 3, 4)``.

    State-dict names follow the original (``stage1.blocks.0.rbr_dense.conv.weight``,
    ``stage3_first.blocks.0...``, ``post_se.down``). All other arguments are those of
    :class:`RepVGG`.
    """

    arch_settings = {
        'l2pse': dict(num_blocks=[8, 14, 24, 1], width_factor=[2.5, 2.5, 2.5, 5], groups=1,
                      se_cfg=dict(placement='post', reduction=4)),
    }

    def __init__(self, arch: str = 'L2pse', out_indices: Sequence[int] = (4, ), **kwargs):
        super().__init__(arch, out_indices=out_indices, **kwargs)

    def _stage_layout(self, widths, strides, dilations) -> List[tuple]:
        n1, n2, n3, n4 = self.arch['num_blocks']
        return [('stage1', n1, widths[0], strides[0], dilations[0]),
                ('stage2', n2, widths[1], strides[1], dilations[1]),
                ('stage3_first', n3 // 2, widths[2], strides[2], dilations[2]),
                ('stage3_second', n3 - n3 // 2, widths[2], 1, dilations[2]),
                ('stage4', n4, widths[3], strides[3], dilations[3])]

    @staticmethod
    def _make_stage(blocks: List[RepVGGBlock]) -> nn.Module:
        return RepVGGplusStage(blocks)
