"""RepVGG backbone (Ding et al., CVPR 2021): archs A0-A2, B0-B3 and their grouped
variants, and D2se."""
from typing import List, Optional, Sequence, Tuple, Union

import torch.nn as nn
from mmengine.model.weight_init import initialize
from mmpretrain.models.backbones.base_backbone import BaseBackbone
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from repvgg_mm.registry import MODELS

from ..blocks import RepVGGBlock

# Blocks numbered globally over stages 1-4 (the stem is 0): in the g2/g4 variants the
# even-numbered blocks 2, 4, ..., 26 are grouped, as in the original code.
GROUPED_BLOCKS = tuple(range(2, 27, 2))


def stage_widths(width_factor: Sequence[float], base_channels: int = 64) -> List[int]:
    """Output channels of stages 1-4: ``base * 2**i * width_factor[i]``, truncated to
    int as the original code does (``64a, 128a, 256a, 512b`` at the default base). The
    stem has ``min(base, widths[0])``."""
    return [int(base_channels * 2**i * w) for i, w in enumerate(width_factor)]


def _arch(num_blocks, width_factor, groups=1, se_cfg=None) -> dict:
    return dict(num_blocks=list(num_blocks), width_factor=list(width_factor),
                groups=groups, se_cfg=se_cfg)


_A = (2, 4, 14, 1)
_B = (4, 6, 16, 1)


@MODELS.register_module()
class RepVGG(BaseBackbone):
    """RepVGG backbone: a stem block then four stages of :class:`RepVGGBlock`.

    The first block of each stage has stride 2 (configurable through ``strides``),
    the others stride 1. Widths are ``min(64, 64a)`` for the stem and ``64a, 128a,
    256a, 512b`` for the stages. State-dict names follow the official checkpoints
    (``stage0``, ``stage1.0.rbr_dense.conv.weight``, ...).

    Args:
        arch (str | dict): One of :attr:`arch_settings` (case-insensitive), or a dict
            with ``num_blocks``, ``width_factor`` and optionally ``groups``
            (applied to blocks 2, 4, ..., 26, or a dict ``{block_number: groups}``)
            and ``se_cfg``.
        in_channels (int): Input image channels. Defaults to 3.
        base_channels (int): Width of stage 1 before ``width_factor``. Defaults to 64.
        out_indices (Sequence[int]): Stages (0-3) whose outputs are returned.
            Defaults to ``(3,)``.
        strides (Sequence[int]): Strides of the stem and the four stages.
            Defaults to ``(2, 2, 2, 2, 2)``.
        dilations (Sequence[int]): Dilations of the stem and the four stages.
            Defaults to ``(1, 1, 1, 1, 1)``.
        frozen_stages (int): Freeze the stem (0) and stages 1..n (n > 0), parameters
            and norm statistics; -1 freezes nothing. Defaults to -1.
        norm_cfg (dict): Norm layer. Defaults to ``dict(type='BN')``.
        act_cfg (dict): Activation. Defaults to ``dict(type='ReLU')``.
        norm_eval (bool): Keep all norm layers in eval mode during training (frozen
            statistics, as detection fine-tuning expects). Defaults to False.
        with_cp (bool): Gradient checkpointing in every block. Defaults to False.
        deploy (bool): Build the fused (inference-time) structure directly.
            Defaults to False.
        block_variant (str): ``'repvgg'`` or ``'qarepvgg'`` (the quantization-friendly
            block of QARepVGG, see :class:`RepVGGBlock`) for every block, the stem
            included. The fused structure is the same for both. Defaults to
            ``'repvgg'``.
        identity_init (bool): Start every block that has an identity branch as a
            (scaled) identity map: the 3x3 and 1x1 branches' BN weights at 0 and the
            identity BN's bias at :attr:`IDENTITY_INIT_BIAS`, so that the block's input
            (non-negative, after the previous ReLU) passes the final ReLU unclipped. The
            RepVGG counterpart of ``zero_init_residual`` of ResNets; with the default
            initialisation each block mixes its input with two freshly normalised
            random branches and the stack starts like a plain 22-layer network. Applied
            after MMEngine's ``init_weights`` (not over ``Pretrained`` weights); needs
            ``block_variant='repvgg'`` (QARepVGG's identity has no BN); ignored with
            ``deploy=True``. It changes only the starting point; the fused model is
            exact either way. Defaults to False (the original).
        int8_kernel (bool): Every block's quantization-aware re-parameterization
            (:class:`RepVGGBlock`'s ``int8_kernel``): training-time forward through the
            equivalent kernel on the INT8 grid, fused kernels on that grid. For
            fine-tuning a trained model. Defaults to False.
        init_cfg (dict | list[dict], optional): MMEngine initialisation config.
            Defaults to None (PyTorch's default initialisation, as the original).
    """

    arch_settings = {
        'a0': _arch(_A, (0.75, 0.75, 0.75, 2.5)),
        'a1': _arch(_A, (1, 1, 1, 2.5)),
        'a2': _arch(_A, (1.5, 1.5, 1.5, 2.75)),
        'b0': _arch(_B, (1, 1, 1, 2.5)),
        'b1': _arch(_B, (2, 2, 2, 4)),
        'b1g2': _arch(_B, (2, 2, 2, 4), groups=2),
        'b1g4': _arch(_B, (2, 2, 2, 4), groups=4),
        'b2': _arch(_B, (2.5, 2.5, 2.5, 5)),
        'b2g2': _arch(_B, (2.5, 2.5, 2.5, 5), groups=2),
        'b2g4': _arch(_B, (2.5, 2.5, 2.5, 5), groups=4),
        'b3': _arch(_B, (3, 3, 3, 5)),
        'b3g2': _arch(_B, (3, 3, 3, 5), groups=2),
        'b3g4': _arch(_B, (3, 3, 3, 5), groups=4),
        'd2se': _arch((8, 14, 24, 1), (2.5, 2.5, 2.5, 5),
                      se_cfg=dict(placement='pre', reduction=16)),
    }

    num_stages = 4
    # Above the mean/std ratio of a ReLU'd Gaussian (0.68): BN(x) + bias stays >= 0 for
    # x >= 0 at the start, so the block's ReLU passes it.
    IDENTITY_INIT_BIAS = 1.3

    def __init__(self,
                 arch: Union[str, dict],
                 in_channels: int = 3,
                 base_channels: int = 64,
                 out_indices: Sequence[int] = (3, ),
                 strides: Sequence[int] = (2, 2, 2, 2, 2),
                 dilations: Sequence[int] = (1, 1, 1, 1, 1),
                 frozen_stages: int = -1,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='ReLU'),
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 deploy: bool = False,
                 block_variant: str = 'repvgg',
                 identity_init: bool = False,
                 int8_kernel: bool = False,
                 init_cfg: Optional[Union[dict, list]] = None) -> None:
        super().__init__(init_cfg)
        if identity_init and not deploy and block_variant != 'repvgg':
            raise ValueError("identity_init=True needs block_variant='repvgg' (it "
                             'initialises the identity BN, which QARepVGG has not); got '
                             f'block_variant={block_variant!r}')
        # a fused model has no branches to initialise (its weights are loaded)
        self.identity_init = identity_init and not deploy
        self.arch = self._resolve_arch(arch)
        if len(strides) != self.num_stages + 1 or len(dilations) != self.num_stages + 1:
            raise ValueError(f'strides and dilations need {self.num_stages + 1} entries '
                             f'(stem + {self.num_stages} stages), got {list(strides)} '
                             f'and {list(dilations)}')
        widths = stage_widths(self.arch['width_factor'], base_channels)
        layout = self._stage_layout(widths, strides[1:], dilations[1:])
        if not -1 <= frozen_stages <= len(layout):
            raise ValueError(f'frozen_stages must be in [-1, {len(layout)}], '
                             f'got {frozen_stages}')
        self.out_indices = self._resolve_out_indices(out_indices, len(layout))
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.deploy = deploy

        self.block_kwargs = dict(se_cfg=self.arch['se_cfg'], norm_cfg=norm_cfg,
                                 act_cfg=act_cfg, deploy=deploy, with_cp=with_cp,
                                 variant=block_variant, int8_kernel=int8_kernel)
        stem_channels = min(base_channels, widths[0])
        self.stage0 = RepVGGBlock(in_channels, stem_channels, stride=strides[0],
                                  dilation=dilations[0], **self.block_kwargs)

        self.stage_names, self.out_channels = [], []
        channels, block_number = stem_channels, 1
        for name, num_blocks, width, stride, dilation in layout:
            blocks = []
            for j in range(num_blocks):
                blocks.append(RepVGGBlock(
                    channels, width, stride=stride if j == 0 else 1, dilation=dilation,
                    groups=self._groups_of(block_number), **self.block_kwargs))
                channels, block_number = width, block_number + 1
            self.add_module(name, self._make_stage(blocks))
            self.stage_names.append(name)
            self.out_channels.append(width)
        self._apply_identity_init()

    def _apply_identity_init(self) -> None:
        if not self.identity_init:
            return
        for m in self.modules():
            if isinstance(m, RepVGGBlock) and isinstance(getattr(m, 'rbr_identity', None),
                                                         _BatchNorm):
                nn.init.zeros_(m.rbr_dense.bn.weight)
                nn.init.zeros_(m.rbr_1x1.bn.weight)
                nn.init.constant_(m.rbr_identity.bias, self.IDENTITY_INIT_BIAS)

    def init_weights(self) -> None:
        """MMEngine's initialisation, except that ``init_cfg=dict(type='Pretrained',
        checkpoint=..., prefix='backbone.')`` is loaded by the ``repvgg_mm.Pretrained``
        initializer (``repvgg_mm.checkpoints``): safely (no pickled code runs), from any
        known key format (ours, the original's, MMPretrain's, timm's), strictly (a
        checkpoint of another arch is an error, not a silent partial load), and
        ``checkpoint`` may be a file, a URL or a zoo name with published weights
        (``'repvgg-a0'``). ``prefix`` defaults to ``'backbone.'``. Loaded weights are
        never overwritten by ``identity_init``."""
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg]
        pretrained = [c for c in cfgs if isinstance(c, dict) and c.get('type') in
                      ('Pretrained', 'repvgg_mm.Pretrained')]
        if not pretrained:
            super().init_weights()
            self._apply_identity_init()
            return
        others = [c for c in cfgs if c is not None and c not in pretrained]
        saved, self.init_cfg = self.init_cfg, others or None
        try:
            super().init_weights()
        finally:
            self.init_cfg = saved
        for cfg in pretrained:  # after the others, as MMEngine orders Pretrained
            if 'checkpoint' not in cfg:
                raise KeyError(f"init_cfg {cfg} has no 'checkpoint' (a file, URL or zoo name)")
            # scoped: ours under any default scope (a detector's, a segmentor's)
            initialize(self, dict(cfg, type='repvgg_mm.Pretrained'))

    def _stage_layout(self, widths: List[int], strides: Sequence[int],
                      dilations: Sequence[int]) -> List[tuple]:
        """``(name, num_blocks, width, stride, dilation)`` of each output stage."""
        return [(f'stage{i + 1}', n, w, s, d) for i, (n, w, s, d) in
                enumerate(zip(self.arch['num_blocks'], widths, strides, dilations))]

    @staticmethod
    def _make_stage(blocks: List[RepVGGBlock]) -> nn.Module:
        return nn.Sequential(*blocks)

    @classmethod
    def _resolve_arch(cls, arch: Union[str, dict]) -> dict:
        if isinstance(arch, str):
            key = arch.lower()
            if key not in cls.arch_settings:
                raise KeyError(f'unknown RepVGG arch {arch!r}; valid archs: '
                               f'{", ".join(sorted(cls.arch_settings))}')
            return cls.arch_settings[key]
        if not isinstance(arch, dict):
            raise TypeError(f'arch must be a str or a dict, got {type(arch).__name__}')
        missing = {'num_blocks', 'width_factor'} - set(arch)
        if missing:
            raise KeyError(f'custom arch dict lacks {sorted(missing)}; it needs '
                           "'num_blocks' and 'width_factor' (4 entries each)")
        if len(arch['num_blocks']) != cls.num_stages or \
                len(arch['width_factor']) != cls.num_stages:
            raise ValueError(f'num_blocks and width_factor need {cls.num_stages} '
                             f'entries, got {arch["num_blocks"]} and {arch["width_factor"]}')
        return _arch(arch['num_blocks'], arch['width_factor'], arch.get('groups', 1),
                     arch.get('se_cfg'))

    @staticmethod
    def _resolve_out_indices(out_indices: Sequence[int], num_outputs: int) -> Tuple[int, ...]:
        if isinstance(out_indices, int):
            out_indices = (out_indices, )
        resolved = []
        for index in out_indices:
            if not -num_outputs <= index < num_outputs:
                raise ValueError(f'out_indices entry {index} is out of range for '
                                 f'{num_outputs} stages')
            resolved.append(index % num_outputs)
        return tuple(resolved)

    def _groups_of(self, block_number: int) -> int:
        groups = self.arch['groups']
        if isinstance(groups, dict):
            return groups.get(block_number, 1)
        return groups if block_number in GROUPED_BLOCKS else 1

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        x = self.stage0(x)
        outs = []
        for i, name in enumerate(self.stage_names):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def _freeze_stages(self) -> None:
        frozen = [self.stage0] + [getattr(self, n)
                                  for n in self.stage_names[:max(self.frozen_stages, 0)]]
        if self.frozen_stages < 0:
            return
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'RepVGG':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def switch_to_deploy(self) -> None:
        """Fuse every block into its single 3x3 conv (idempotent)."""
        for m in self.modules():
            if isinstance(m, RepVGGBlock):
                m.switch_to_deploy()
        self.deploy = True

