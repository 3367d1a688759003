"""The RepVGG block and its SE layer: the one place that knows the branches and their fusion.

Training time (``variant='repvgg'``)::

    out = act(post(BN(conv3x3(x)) + BN(conv1x1(x)) + BN_id(x)))

Training time (``variant='qarepvgg'``, QARepVGG, Chu et al., AAAI 2024)::

    out = act(post(BN_post(BN(conv3x3(x)) + conv1x1(x) + x)))

Inference time (after :meth:`RepVGGBlock.switch_to_deploy`)::

    out = act(post(conv3x3_with_bias(x)))

``post`` is an optional SE layer, placed either before the activation (RepVGG-D2se,
attribute ``se``) or after it (RepVGGplus, attribute ``post_se``). SE is not fusable and
stays in the deployed block.
"""
from collections import OrderedDict
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import build_activation_layer, build_norm_layer
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

SE_PLACEMENTS = {'pre': 'se', 'post': 'post_se'}
BLOCK_VARIANTS = ('repvgg', 'qarepvgg')


def fuse_conv_bn(kernel: Tensor, bn: _BatchNorm,
                 bias: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Fold an eval-mode BatchNorm into the conv kernel that feeds it.

    With ``t = gamma / sqrt(running_var + eps)``, BN(conv(x, W) + b) equals
    ``conv(x, W * t) + (beta + (b - running_mean) * t)``. Works for any ``_BatchNorm``
    (``BatchNorm2d``, ``SyncBatchNorm``) and stays differentiable.

    Args:
        kernel (Tensor): Conv weight of shape (out, in/groups, k, k).
        bn (_BatchNorm): The normalisation layer after the conv.
        bias (Tensor, optional): The conv's bias, if it has one. Defaults to None.

    Returns:
        tuple[Tensor, Tensor]: The fused kernel and bias.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f'cannot fuse {type(bn).__name__} without running statistics '
                         '(track_running_stats=False)')
    std = (bn.running_var + bn.eps).sqrt()
    gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
    t = gamma / std
    shift = bn.running_mean if bias is None else bn.running_mean - bias
    return kernel * t.reshape(-1, 1, 1, 1), beta - shift * t


def identity_kernel(channels: int, groups: int, kernel_size: int = 3,
                    device=None, dtype=None) -> Tensor:
    """The grouped ``kernel_size`` conv kernel that maps x to x.

    Output channel ``i`` has a 1 at the centre of input channel ``i mod (channels/groups)``
    of its group, zeros elsewhere.
    """
    in_per_group = channels // groups
    kernel = torch.zeros(channels, in_per_group, kernel_size, kernel_size,
                         device=device, dtype=dtype)
    idx = torch.arange(channels, device=device)
    centre = kernel_size // 2
    kernel[idx, idx % in_per_group, centre, centre] = 1
    return kernel


def int8_grid(kernel: Tensor, straight_through: bool = True) -> Tensor:
    """``kernel`` rounded to the symmetric INT8 grid of each of its output channels:
    scale ``max|kernel[c]| / 127``, integer multiples in [-127, 127] -- the grid that
    symmetric per-channel weight quantization (ONNX Runtime's, TensorRT's) puts it on,
    so a kernel already on it is quantized without rounding.

    Args:
        straight_through (bool): Pass the gradient through as if nothing were rounded
            (the straight-through estimator). Defaults to True.
    """
    amax = kernel.detach().abs().flatten(1).amax(1).clamp_min(1e-12)
    scale = (amax / 127).view(-1, *([1] * (kernel.dim() - 1)))
    rounded = torch.round(kernel.detach() / scale).clamp(-127, 127) * scale
    return kernel + (rounded - kernel).detach() if straight_through else rounded


class SEBlock(nn.Module):
    """Squeeze-and-excitation as in the original RepVGG code.

    Global average pool -> 1x1 conv (bias) -> ReLU -> 1x1 conv (bias) -> sigmoid ->
    multiply the input. State-dict names ``down``/``up`` follow the official checkpoints.

    Args:
        channels (int): Input and output channels.
        hidden_channels (int): Channels of the bottleneck.
    """

    def __init__(self, channels: int, hidden_channels: int) -> None:
        super().__init__()
        if hidden_channels < 1:
            raise ValueError(f'SE hidden channels must be >= 1, got {hidden_channels} '
                             f'for {channels} channels')
        self.down = nn.Conv2d(channels, hidden_channels, 1, bias=True)
        self.up = nn.Conv2d(hidden_channels, channels, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        w = F.adaptive_avg_pool2d(x, 1)
        w = torch.sigmoid(self.up(F.relu(self.down(w))))
        return x * w


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int,
            padding: int, dilation: int, groups: int, norm_cfg: dict) -> nn.Sequential:
    """Conv (no bias) followed by a norm layer, named ``conv`` and ``bn``."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                     padding=padding, dilation=dilation, groups=groups, bias=False)
    _, bn = build_norm_layer(norm_cfg, out_channels)
    return nn.Sequential(OrderedDict(conv=conv, bn=bn))


class RepVGGBlock(nn.Module):
    """A re-parameterizable block: 3x3 conv+BN, 1x1 conv+BN and identity BN, summed.

    The identity branch exists only when ``in_channels == out_channels`` and
    ``stride == 1``. Both convs use ``groups``. State-dict names follow the official
    code: ``rbr_dense.{conv,bn}``, ``rbr_1x1.{conv,bn}``, ``rbr_identity`` and, once
    deployed, ``rbr_reparam``.

    With ``variant='qarepvgg'`` the block is the quantization-friendly one of QARepVGG
    (the authors' ``QARepVGGBlockV2``): the 3x3 conv keeps its BN, the 1x1 branch is a
    plain conv without BN or bias (``rbr_1x1.weight``), the identity branch has no BN
    (no parameters), and one BN after the sum (``bn``, before SE where present, then
    the activation) normalises the output. The names are the authors', so their
    checkpoints map onto ours by prefix. Both variants fuse into the same single
    ``rbr_reparam`` conv with bias.

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        stride (int): Stride of both convs. Defaults to 1.
        dilation (int): Dilation of the 3x3 conv (padding follows it). Defaults to 1.
        groups (int): Groups of both convs. Defaults to 1.
        se_cfg (dict, optional): SE layer: ``dict(placement='pre'|'post',
            reduction=R)`` gives an SE with ``out_channels // R`` hidden channels
            before ('pre', attribute ``se``) or after ('post', ``post_se``) the
            activation. Defaults to None (no SE).
        norm_cfg (dict): Norm layer of the branches. Defaults to ``dict(type='BN')``.
        act_cfg (dict): Activation. Defaults to ``dict(type='ReLU')``.
        deploy (bool): Build the fused single-conv form directly. Defaults to False.
        with_cp (bool): Use gradient checkpointing in training. Defaults to False.
        variant (str): ``'repvgg'`` (the original block) or ``'qarepvgg'``.
            Defaults to ``'repvgg'``.
        int8_kernel (bool): Quantization-aware re-parameterization (route B of the
            original repository): the training-time forward is the equivalent 3x3 conv
            (:meth:`get_equivalent_kernel_bias`, BNs with their running statistics)
            with its kernel on the INT8 grid of :func:`int8_grid` (straight-through
            gradients to the branches), and the fused kernel is put on that grid too,
            so INT8 per-channel quantization of the fused model rounds no weight. For
            fine-tuning a trained model: the BN statistics stay as they are. Defaults
            to False.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 stride: int = 1,
                 dilation: int = 1,
                 groups: int = 1,
                 se_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='ReLU'),
                 deploy: bool = False,
                 with_cp: bool = False,
                 variant: str = 'repvgg',
                 int8_kernel: bool = False) -> None:
        super().__init__()
        if variant not in BLOCK_VARIANTS:
            raise ValueError(f'block variant must be one of {list(BLOCK_VARIANTS)}, '
                             f'got {variant!r}')
        if in_channels % groups or out_channels % groups:
            raise ValueError(f'groups={groups} must divide in_channels={in_channels} '
                             f'and out_channels={out_channels}')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.dilation = dilation
        self.groups = groups
        self.deploy = deploy
        self.with_cp = with_cp
        self.variant = variant
        self.int8_kernel = int8_kernel

        if deploy:
            self.rbr_reparam = self._fused_conv()
        else:
            self.rbr_dense = conv_bn(in_channels, out_channels, 3, stride, dilation,
                                     dilation, groups, norm_cfg)
            has_identity = in_channels == out_channels and stride == 1
            if variant == 'qarepvgg':
                self.rbr_1x1 = nn.Conv2d(in_channels, out_channels, 1, stride=stride,
                                         groups=groups, bias=False)
                self.rbr_identity = nn.Identity() if has_identity else None
                _, self.bn = build_norm_layer(norm_cfg, out_channels)
            else:
                self.rbr_1x1 = conv_bn(in_channels, out_channels, 1, stride, 0, 1, groups,
                                       norm_cfg)
                self.rbr_identity = build_norm_layer(norm_cfg, in_channels)[1] \
                    if has_identity else None

        self.se_placement = None
        if se_cfg is not None:
            se_cfg = dict(se_cfg)
            placement = se_cfg.pop('placement', 'pre')
            reduction = se_cfg.pop('reduction', 16)
            if placement not in SE_PLACEMENTS:
                raise ValueError(f"se_cfg placement must be one of {list(SE_PLACEMENTS)}, "
                                 f'got {placement!r}')
            if se_cfg:
                raise ValueError(f'unknown se_cfg keys {sorted(se_cfg)}; '
                                 "expected 'placement' and 'reduction'")
            self.se_placement = placement
            self.add_module(SE_PLACEMENTS[placement],
                            SEBlock(out_channels, out_channels // reduction))
        self.nonlinearity = build_activation_layer(act_cfg)

    def _fused_conv(self) -> nn.Conv2d:
        return nn.Conv2d(self.in_channels, self.out_channels, 3, stride=self.stride,
                         padding=self.dilation, dilation=self.dilation,
                         groups=self.groups, bias=True)

    def _forward(self, x: Tensor) -> Tensor:
        if self.deploy:
            out = self.rbr_reparam(x)
        elif self.int8_kernel:
            kernel, bias = self.get_equivalent_kernel_bias()
            out = F.conv2d(x, int8_grid(kernel), bias, self.stride, self.dilation,
                           self.dilation, self.groups)
        else:
            out = self.rbr_dense(x) + self.rbr_1x1(x)
            if self.rbr_identity is not None:
                out = out + self.rbr_identity(x)
            if self.variant == 'qarepvgg':
                out = self.bn(out)
        if self.se_placement == 'pre':
            out = self.se(out)
        out = self.nonlinearity(out)
        if self.se_placement == 'post':
            out = self.post_se(out)
        return out

    def forward(self, x: Tensor) -> Tensor:
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def get_equivalent_kernel_bias(self) -> Tuple[Tensor, Tensor]:
        """The 3x3 kernel and bias equal to the three branches in eval mode.

        Differentiable (nothing is detached), so it can also serve regularisers
        that act on the equivalent kernel.
        """
        if self.deploy:
            return self.rbr_reparam.weight, self.rbr_reparam.bias
        weight = self.rbr_dense.conv.weight
        kernel, bias = fuse_conv_bn(weight, self.rbr_dense.bn)
        k_id = None
        if self.rbr_identity is not None:
            k_id = identity_kernel(self.in_channels, self.groups, 3,
                                   device=weight.device, dtype=weight.dtype)
        if self.variant == 'qarepvgg':
            # the post-sum BN folds into the summed kernel and the 3x3 branch's bias
            kernel = kernel + F.pad(self.rbr_1x1.weight, [1, 1, 1, 1])
            if k_id is not None:
                kernel = kernel + k_id
            return fuse_conv_bn(kernel, self.bn, bias)
        k1x1, b1x1 = fuse_conv_bn(self.rbr_1x1.conv.weight, self.rbr_1x1.bn)
        kernel = kernel + F.pad(k1x1, [1, 1, 1, 1])
        bias = bias + b1x1
        if k_id is not None:
            k_id, b_id = fuse_conv_bn(k_id, self.rbr_identity)
            kernel = kernel + k_id
            bias = bias + b_id
        return kernel, bias

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Replace the branches by one 3x3 conv with bias (idempotent)."""
        if self.deploy:
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        if self.int8_kernel:
            kernel = int8_grid(kernel, straight_through=False)
        weight = self.rbr_dense.conv.weight
        self.rbr_reparam = self._fused_conv().to(device=weight.device, dtype=weight.dtype)
        self.rbr_reparam.weight.copy_(kernel)
        self.rbr_reparam.bias.copy_(bias)
        del self.rbr_dense, self.rbr_1x1, self.rbr_identity
        if self.variant == 'qarepvgg':
            del self.bn
        self.deploy = True

    def extra_repr(self) -> str:
        return (f'in={self.in_channels}, out={self.out_channels}, stride={self.stride}, '
                f'groups={self.groups}, variant={self.variant}, deploy={self.deploy}'
                + (', int8_kernel=True' if self.int8_kernel else ''))
