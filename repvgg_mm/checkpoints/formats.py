"""Checkpoint key formats of RepVGG implementations, and the one mapping between them.

Our classifier's keys (``ours``) are the reference: ``backbone.stage0.<part>``,
``backbone.stage<i>.<j>.<part>`` and ``head.fc.*``, with the official part names
(``rbr_dense.conv``, ``rbr_dense.bn``, ``rbr_1x1``, ``rbr_identity``, ``rbr_reparam``,
``se.down``, ``se.up``). Every other format is described by a small table -- where its
blocks live and what its parts are called -- and converted through that table in both
directions, so adding a format is adding a table.
"""
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from repvgg_mm.models.backbones.repvgg import stage_widths
from repvgg_mm.models.necks.aux_neck import AUX_NAMES
from repvgg_mm.registry import WEIGHT_INITIALIZERS

from .io import CheckpointError, load_state_dict_strict


@dataclass(frozen=True)
class KeyFormat:
    """How one implementation names a RepVGG classifier's weights.

    Attributes:
        name: Format name used on the command line.
        stem: Key prefix of the stem block (ours: ``backbone.stage0.``).
        stage: Key prefix of block ``j`` of stage ``i`` (1-based in ours), written
            with ``{i}`` and ``{j}``.
        stage_offset: What to add to our stage number to get this format's.
        parts: ``(theirs, ours)`` prefixes of the names inside a block.
        head: ``(theirs, ours)`` prefix of the classifier.
        extra: Further ``(theirs, ours)`` key prefixes, tried first (RepVGGplus's
            ``stage3_first``, ``stage1.blocks`` and aux classifiers).
    """
    name: str
    stem: str
    stage: str
    stage_offset: int = 0
    parts: Tuple[Tuple[str, str], ...] = ()
    head: Tuple[str, str] = ('head.fc.', 'head.fc.')
    extra: Tuple[Tuple[str, str], ...] = ()
    description: str = ''
    _regex: Dict[str, re.Pattern] = field(default_factory=dict, compare=False, repr=False)

    def _stage_regex(self, template: str) -> re.Pattern:
        if template not in self._regex:
            pattern = re.escape(template).replace(r'\{i\}', r'(?P<i>\d+)') \
                .replace(r'\{j\}', r'(?P<j>\d+)')
            self._regex[template] = re.compile('^' + pattern)
        return self._regex[template]

    def _convert(self, key: str, to_ours: bool) -> str:
        src_stem, dst_stem = (self.stem, OURS.stem) if to_ours else (OURS.stem, self.stem)
        src_stage, dst_stage = (self.stage, OURS.stage) if to_ours else (OURS.stage,
                                                                         self.stage)
        offset = -self.stage_offset if to_ours else self.stage_offset
        head_src, head_dst = self.head if to_ours else self.head[::-1]
        for theirs, ours in self.extra:
            src, dst = (theirs, ours) if to_ours else (ours, theirs)
            if key.startswith(src):
                return dst + key[len(src):]
        if key.startswith(head_src):
            return head_dst + key[len(head_src):]
        if key.startswith(src_stem):
            prefix, rest = dst_stem, key[len(src_stem):]
        else:
            match = self._stage_regex(src_stage).match(key)
            if match is None:
                return key  # unknown: left as is, strict loading will name it
            prefix = dst_stage.format(i=int(match['i']) + offset, j=match['j'])
            rest = key[match.end():]
        for theirs, ours in self.parts:
            src, dst = (theirs, ours) if to_ours else (ours, theirs)
            if rest.startswith(src):
                rest = dst + rest[len(src):]
                break
        return prefix + rest

    def to_ours(self, state_dict: Mapping[str, torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
        """Rename a state dict of this format to ours."""
        return OrderedDict((self._convert(k, True), v) for k, v in state_dict.items())

    def from_ours(self, state_dict: Mapping[str, torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
        """Rename a state dict of ours to this format."""
        return OrderedDict((self._convert(k, False), v) for k, v in state_dict.items())


# RepVGGplus in the original code: stages hold their blocks under `blocks`, stage 3 is
# split, and each aux classifier is a Sequential whose index 0 is conv+BN (our neck)
# and index 3 the linear layer (our head).
_REPVGGPLUS_OFFICIAL = tuple(
    [(f'{aux}.0.', f'neck.{aux}.0.') for aux in AUX_NAMES]
    + [(f'{aux}.3.', f'head.{aux}_fc.') for aux in AUX_NAMES]
    + [(f'{stage}.', f'backbone.{stage}.') for stage in ('stage3_first', 'stage3_second')]
    + [(f'stage{i}.blocks.', f'backbone.stage{i}.blocks.') for i in (1, 2, 4)])

OURS = KeyFormat('ours', stem='backbone.stage0.', stage='backbone.stage{i}.{j}.',
                 description='repvgg_mm / MMEngine checkpoints (backbone.stage1.0.rbr_dense...)')

FORMATS: Dict[str, KeyFormat] = {f.name: f for f in (
    OURS,
    KeyFormat('official', stem='stage0.', stage='stage{i}.{j}.', head=('linear.', 'head.fc.'),
              extra=_REPVGGPLUS_OFFICIAL,
              description='the original RepVGG code (stage1.0.rbr_dense..., linear.*; '
              'RepVGGplus: stage1.blocks.0..., stage3_first..., stage1_aux.0/3...)'),
    KeyFormat('mmpretrain', stem='backbone.stem.', stage='backbone.stage_{i}.{j}.',
              parts=(('branch_3x3.conv.', 'rbr_dense.conv.'),
                     ('branch_3x3.norm.', 'rbr_dense.bn.'),
                     ('branch_1x1.conv.', 'rbr_1x1.conv.'),
                     ('branch_1x1.norm.', 'rbr_1x1.bn.'),
                     ('branch_norm.', 'rbr_identity.'),
                     ('branch_reparam.', 'rbr_reparam.'),
                     ('se_layer.conv1.conv.', 'se.down.'),
                     ('se_layer.conv2.conv.', 'se.up.')),
              description='MMPretrain RepVGG (backbone.stage_1.0.branch_3x3...)'),
    KeyFormat('timm', stem='stem.', stage='stages.{i}.{j}.', stage_offset=-1,
              parts=(('conv_kxk.', 'rbr_dense.'),
                     ('conv_1x1.', 'rbr_1x1.'),
                     ('identity.', 'rbr_identity.'),
                     ('reparam_conv.', 'rbr_reparam.'),
                     ('attn.fc1.', 'se.down.'),
                     ('attn.fc2.', 'se.up.')),
              description='timm repvgg (stages.0.0.conv_kxk..., head.fc.*)'),
)}


def detect_format(state_dict: Mapping[str, torch.Tensor], source: str = '<checkpoint>') -> str:
    """Name the key format of a RepVGG state dict from its keys."""
    keys = list(state_dict)

    def any_key(pattern: str) -> bool:
        regex = re.compile(pattern)
        return any(regex.search(k) for k in keys)

    if any_key(r'^backbone\.stage\d+\.') and any_key(r'\.rbr_(dense|reparam)\.'):
        return 'ours'
    if any_key(r'^network\.classifier\.backbone\.stage\d+\.rbr_reparam\.'):
        return 'ours'  # a QAT checkpoint (QATClassifier: the fused model with BNs)
    if any_key(r'^stage\d+\.') and any_key(r'\.rbr_(dense|reparam)\.'):
        return 'official'
    if any_key(r'\.branch_(3x3|reparam)\.'):
        return 'mmpretrain'
    if any_key(r'^(stem|stages\.\d+\.\d+)\.(conv_kxk|reparam_conv)\.'):
        return 'timm'
    raise CheckpointError(
        f'cannot tell the format of {source!r} from its keys (first: {keys[:3]}); '
        f'known formats: {", ".join(FORMATS)} -- pass --src-format to force one')


def is_fused(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for a state dict (ours) that is already re-parameterized."""
    return any('.rbr_reparam.' in k for k in state_dict) and \
        not any('.rbr_dense.' in k for k in state_dict)


def block_variant_of(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """``'qarepvgg'`` or ``'repvgg'`` for a training-time state dict (any format whose
    block parts keep the official names), None when fused or unknown: QARepVGG's 1x1
    branch is a plain conv (``rbr_1x1.weight``), RepVGG's a conv+BN (``rbr_1x1.conv``)."""
    if any(k.endswith('.rbr_1x1.weight') for k in state_dict):
        return 'qarepvgg'
    if any('.rbr_1x1.conv.' in k for k in state_dict):
        return 'repvgg'
    return None


def guess_arch(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The arch (of :class:`~repvgg_mm.models.RepVGG` or ``RepVGGplus``) whose layout a
    state dict (ours) has -- blocks per stage, widths, grouping and SE -- or None."""
    from repvgg_mm.models import RepVGG, RepVGGplus
    pattern = re.compile(r'^backbone\.stage(\d)(_first|_second)?\.(?:blocks\.)?(\d+)\.'
                         r'(?:rbr_dense\.conv|rbr_reparam)\.weight$')
    blocks: Dict[int, set] = {}
    widths: Dict[int, int] = {}
    grouped: List[int] = []
    for key, value in state_dict.items():
        m = pattern.match(key)
        if m:
            stage, index = int(m[1]), int(m[3])
            blocks.setdefault(stage, set()).add((m[2], index))
            if index == 0 and m[2] != '_second':
                widths[stage] = value.shape[0]
            if index > 0:  # in == out there, so out / (in / groups) is the groups
                grouped.append(value.shape[0] // value.shape[1])
    se = 'post' if any('.post_se.down.' in k for k in state_dict) else \
        'pre' if any('.se.down.' in k for k in state_dict) else None
    num_blocks = [len(blocks.get(i, ())) for i in range(1, 5)]
    groups = max(grouped) if grouped else 1
    for cls in (RepVGG, RepVGGplus):
        for name, arch in cls.arch_settings.items():
            # the named archs are defined at the default base_channels (64)
            expected = stage_widths(arch['width_factor'])
            arch_se = arch['se_cfg']['placement'] if arch['se_cfg'] else None
            if arch['num_blocks'] == num_blocks and arch['groups'] == groups and \
                    expected == [widths.get(i) for i in range(1, 5)] and arch_se == se:
                return name
    return None


def to_ours(state_dict: Mapping[str, torch.Tensor], src_format: Optional[str] = None,
            source: str = '<checkpoint>') -> Tuple['OrderedDict[str, torch.Tensor]', str]:
    """Convert a state dict of any known format to ours.

    Returns:
        tuple: the converted state dict and the name of the source format.
    """
    fmt = src_format or detect_format(state_dict, source)
    if fmt not in FORMATS:
        raise CheckpointError(f'unknown checkpoint format {fmt!r}; known: {", ".join(FORMATS)}')
    return FORMATS[fmt].to_ours(state_dict), fmt


def load_weights_into(model: nn.Module, state_dict: dict, source: str) -> None:
    """Load ``state_dict`` strictly into ``model`` (non-finite tensors refused); on a
    mismatch, the one-line error names ``source``, the keys and the arch the checkpoint
    looks like."""
    try:
        load_state_dict_strict(model, state_dict, source)
    except CheckpointError as exc:
        raise CheckpointError(f'{exc}; {arch_hint(state_dict)}') from exc


def arch_hint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """What a state dict (ours, whole classifier) looks like, for a mismatch error."""
    arch = guess_arch(state_dict)
    hint = (f'the checkpoint looks like RepVGG arch {arch!r}' if arch else
            'its layout matches none of the known RepVGG archs')
    if block_variant_of(state_dict) == 'qarepvgg':
        hint += " with QARepVGG blocks (backbone.block_variant='qarepvgg')"
    return hint


def load_pretrained_into(module: nn.Module, checkpoint: str, prefix: str = 'backbone.') -> int:
    """Load the ``prefix`` part of ``checkpoint`` strictly into ``module`` -- what
    MMEngine's ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')``
    does, but read safely, from any key format, and strictly.

    Args:
        module: The part to load, e.g. a backbone inside a detector or segmentor.
        checkpoint: A file, an ``http(s)://`` URL or a zoo name with published weights.
        prefix: Where ``module``'s weights sit among the checkpoint's keys *after*
            conversion to our names (a whole classifier: ``'backbone.'``; a bare
            backbone state dict in the original naming converts to ``backbone.*`` too).

    Returns:
        int: the number of tensors loaded.

    Raises:
        CheckpointError: naming the checkpoint when no key starts with ``prefix`` or the
            part does not fit ``module`` (first mismatching keys, the arch it looks like).
    """
    from .io import read_checkpoint
    state_dict, _, _ = read_checkpoint(checkpoint)
    part = OrderedDict((k[len(prefix):], v) for k, v in state_dict.items()
                       if k.startswith(prefix))
    if not part:
        raise CheckpointError(f'{checkpoint!r} has no weights under {prefix!r} (first keys: '
                              f'{list(state_dict)[:3]})')
    try:
        load_state_dict_strict(module, part, f'{checkpoint} [{prefix}*]')
    except CheckpointError as exc:  # the hint reads the whole, converted state dict
        raise CheckpointError(f'{exc}; {arch_hint(state_dict)}') from exc
    return len(part)



@WEIGHT_INITIALIZERS.register_module(name='Pretrained')
class SafePretrainedInit:
    """``init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')`` in the
    ``repvgg_mm`` scope: :func:`load_pretrained_into` in place of MMEngine's
    ``PretrainedInit`` -- read safely, from any key format, strictly; ``checkpoint``
    may be a file, a URL or a zoo name. Modules name it ``repvgg_mm.Pretrained`` to get
    it under any default scope (a detector's or a segmentor's). In a distributed job
    the download goes through :func:`~repvgg_mm.checkpoints.fetch_gate.fetch_on_each_node`
    (one download per node, one outcome for every rank), so every rank of the process
    group must initialise the module together, as MMEngine's runner does.

    Args:
        checkpoint: A file, an ``http(s)://`` URL or a zoo name with published weights.
        prefix: Where the module's weights sit in the converted checkpoint. Defaults
            to ``'backbone.'`` (a backbone from a classifier's checkpoint).
        map_location: Accepted for MMEngine's signature; weights are read on the CPU.
    """

    def __init__(self, checkpoint: str, prefix: str = 'backbone.',
                 map_location: str = 'cpu') -> None:
        self.checkpoint = checkpoint
        self.prefix = prefix or 'backbone.'

    def __call__(self, module: nn.Module) -> None:
        from .fetch_gate import fetch_on_each_node  # the only fetch in this module
        fetch_on_each_node(self.checkpoint)
        load_pretrained_into(module, self.checkpoint, self.prefix)

    def _get_init_info(self) -> str:
        return f'{type(self).__name__}: load from {self.checkpoint} [{self.prefix}*]'
