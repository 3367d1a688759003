"""Turn a trained checkpoint into a verified deploy checkpoint plus its config."""
import copy
import inspect
import os
import os.path as osp
from typing import Optional, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import init_default_scope

from repvgg_mm.checkpoints import (
    FORMATS,
    CheckpointError,
    extract_state_dict,
    guess_arch,
    is_fused,
    load_checkpoint_file,
    load_state_dict_strict,
    save_atomic,
    to_ours,
)
from repvgg_mm.models.reparam import max_logit_difference, reparameterize_model
from repvgg_mm.registry import MODELS

DEFAULT_TOLERANCE = 1e-4


def build_model(cfg: Config) -> nn.Module:
    """Build ``cfg.model`` in the config's scope (``repvgg_mm`` by default), with the
    top-level ``data_preprocessor`` merged in as MMEngine's Runner does."""
    init_default_scope(cfg.get('default_scope', 'repvgg_mm'))
    if 'model' not in cfg:
        raise KeyError(f"config {cfg.filename!r} has no 'model' key")
    model_cfg = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor') is not None:
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    return MODELS.build(model_cfg)


def _accepts_deploy(module_cfg: dict) -> bool:
    module_type = module_cfg.get('type')
    cls = MODELS.get(module_type) if isinstance(module_type, str) else module_type
    if cls is None:
        return False
    # a subclass may pass `deploy` on through **kwargs: look along the MRO
    return any('deploy' in inspect.signature(c.__init__).parameters
               for c in cls.__mro__ if '__init__' in vars(c))


def deploy_config(cfg: Config) -> Config:
    """A copy of ``cfg`` whose model builds the fused structure directly: every part
    (backbone, neck, head) whose class takes ``deploy`` gets ``deploy=True`` -- the
    fused backbone, and no aux classifiers for RepVGGplus."""
    cfg = copy.deepcopy(cfg)
    init_default_scope(cfg.get('default_scope', 'repvgg_mm'))
    parts = [cfg.model.get(k) for k in ('backbone', 'neck', 'head')]
    parts = [p for p in parts if isinstance(p, dict) and _accepts_deploy(p)]
    if not parts:
        raise KeyError(f'no part of the model in config {cfg.filename!r} can be deployed: '
                       f"model.backbone.type is {cfg.model.get('backbone', {}).get('type')!r}, "
                       'expected a RepVGG backbone')
    for part in parts:
        part['deploy'] = True
    cfg.load_from = None
    return cfg


def test_input_size(cfg: Config, default: int = 224) -> int:
    """The image size the config tests at (its CenterCrop), for verification."""
    pipeline = cfg.get('test_dataloader', {}).get('dataset', {}).get('pipeline', [])
    for step in pipeline:
        if step.get('type') == 'CenterCrop':
            size = step.get('crop_size')
            return size if isinstance(size, int) else max(size)
    return default


def load_into(model: nn.Module, state_dict: dict, source: str) -> None:
    """Strict load; on a mismatch, say which arch the checkpoint looks like."""
    try:
        load_state_dict_strict(model, state_dict, source)
    except CheckpointError as exc:
        arch = guess_arch(state_dict)
        hint = (f'the checkpoint looks like RepVGG arch {arch!r}' if arch else
                'its layout matches none of the known RepVGG archs')
        raise CheckpointError(f'{exc}; {hint}') from exc


def read_weights(checkpoint: str, src_format: Optional[str] = None) -> Tuple[dict, str]:
    """Read any known checkpoint format safely and rename its keys to ours."""
    state_dict = extract_state_dict(load_checkpoint_file(checkpoint), checkpoint)
    return to_ours(state_dict, src_format, checkpoint)


def reparameterize_checkpoint(cfg: Config, checkpoint: str, output: str,
                              out_config: Optional[str] = None, verify: bool = True,
                              tolerance: float = DEFAULT_TOLERANCE, batch_size: int = 2,
                              src_format: Optional[str] = None,
                              to_format: str = 'ours') -> dict:
    """Fuse ``checkpoint`` (trained with ``cfg``) and write ``output`` and its config.

    The checkpoint may be in any format of :data:`~repvgg_mm.checkpoints.FORMATS`
    (detected from its keys unless ``src_format`` is given). The model is rebuilt from
    ``cfg``, the weights loaded strictly, the copy fused and, unless ``verify`` is
    False, both run in eval mode on a random batch at the config's test size; if the
    relative logit difference exceeds ``tolerance`` nothing is written. A checkpoint
    that is already fused is loaded into the deploy model as it is (and only
    re-written in the requested format). Files are written atomically.

    Args:
        to_format (str): ``'ours'`` writes ``{'state_dict', 'meta'}`` plus a deploy
            config; ``'official'`` writes a plain state dict with the original code's
            deploy keys (``stage1.0.rbr_reparam.weight``, ``linear.weight``).

    Returns:
        dict: ``output``, ``config`` (None for 'official'), ``src_format``,
        ``already_fused``, ``max_abs_diff``, ``max_rel_diff``, ``params_train`` and
        ``params_deploy``.
    """
    if to_format not in ('ours', 'official'):
        raise ValueError(f"to_format must be 'ours' or 'official', got {to_format!r}")
    state_dict, fmt = read_weights(checkpoint, src_format)
    dcfg = deploy_config(cfg)
    report = dict(output=output, config=None, src_format=fmt,
                  already_fused=is_fused(state_dict), max_abs_diff=None, max_rel_diff=None,
                  params_train=None)
    if report['already_fused']:
        fused = build_model(dcfg)
        load_into(fused, state_dict, checkpoint)
    else:
        model = build_model(cfg)
        load_into(model, state_dict, checkpoint)
        model.eval()
        fused = reparameterize_model(model)
        report['params_train'] = sum(p.numel() for p in model.parameters())
        if verify:
            size = test_input_size(cfg)
            generator = torch.Generator().manual_seed(0)
            inputs = torch.randn(batch_size, 3, size, size, generator=generator)
            abs_diff, rel_diff = max_logit_difference(model, fused, inputs)
            report.update(max_abs_diff=abs_diff, max_rel_diff=rel_diff)
            if not rel_diff <= tolerance:
                raise RuntimeError(f'fused model differs from {checkpoint!r} by '
                                   f'{rel_diff:.3g} (relative, tolerance {tolerance:g}); '
                                   'nothing written')
    report['params_deploy'] = sum(p.numel() for p in fused.parameters())

    if to_format == 'official':
        save_atomic(FORMATS['official'].from_ours(fused.state_dict()), output)
        return report
    meta = dict(deploy=True, source_checkpoint=osp.abspath(checkpoint), source_format=fmt,
                source_config=cfg.filename, arch=guess_arch(state_dict),
                max_rel_diff=report['max_rel_diff'])
    save_atomic(dict(state_dict=fused.state_dict(), meta=meta), output)
    out_config = out_config or osp.splitext(output)[0] + '.py'
    tmp = out_config + '.tmp.py'
    dcfg.dump(tmp)
    os.replace(tmp, out_config)
    report['config'] = out_config
    return report
