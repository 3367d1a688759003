"""Turn a trained checkpoint into a verified deploy checkpoint plus its config."""
import copy
import os
import os.path as osp
from typing import Optional

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import init_default_scope

from repvgg_mm.checkpoints.io import (
    CheckpointError,
    extract_state_dict,
    load_checkpoint_file,
    load_state_dict_strict,
    save_atomic,
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


def deploy_config(cfg: Config) -> Config:
    """A copy of ``cfg`` whose model builds the fused structure directly."""
    cfg = copy.deepcopy(cfg)
    backbone = cfg.model.get('backbone', cfg.model)
    if 'deploy' not in backbone and backbone.get('type') not in ('RepVGG', ):
        raise KeyError(f"cannot find a RepVGG backbone in config {cfg.filename!r}: "
                       f"model.backbone.type is {backbone.get('type')!r}")
    backbone['deploy'] = True
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


def reparameterize_checkpoint(cfg: Config, checkpoint: str, output: str,
                              out_config: Optional[str] = None, verify: bool = True,
                              tolerance: float = DEFAULT_TOLERANCE,
                              batch_size: int = 2) -> dict:
    """Fuse ``checkpoint`` (trained with ``cfg``) and write ``output`` and its config.

    The model is rebuilt from ``cfg``, the weights loaded strictly, the copy fused
    and, unless ``verify`` is False, both run in eval mode on a random batch at the
    config's test size. If the relative logit difference exceeds ``tolerance``
    nothing is written. Files are written atomically.

    Returns:
        dict: ``output``, ``config``, ``max_abs_diff``, ``max_rel_diff``,
        ``params_train`` and ``params_deploy``.
    """
    model = build_model(cfg)
    state_dict = extract_state_dict(load_checkpoint_file(checkpoint), checkpoint)
    if any(k.endswith('rbr_reparam.weight') for k in state_dict):
        raise CheckpointError(f'{checkpoint!r} is already re-parameterized (it has '
                              "'rbr_reparam' weights); nothing to do")
    load_state_dict_strict(model, state_dict, checkpoint)
    model.eval()
    fused = reparameterize_model(model)
    report = dict(output=output, params_train=sum(p.numel() for p in model.parameters()),
                  params_deploy=sum(p.numel() for p in fused.parameters()),
                  max_abs_diff=None, max_rel_diff=None)
    if verify:
        size = test_input_size(cfg)
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(batch_size, 3, size, size, generator=generator)
        abs_diff, rel_diff = max_logit_difference(model, fused, inputs)
        report.update(max_abs_diff=abs_diff, max_rel_diff=rel_diff)
        if not rel_diff <= tolerance:
            raise RuntimeError(f'fused model differs from {checkpoint!r} by {rel_diff:.3g} '
                               f'(relative, tolerance {tolerance:g}); nothing written')

    dcfg = deploy_config(cfg)
    out_config = out_config or osp.splitext(output)[0] + '.py'
    meta = dict(deploy=True, source_checkpoint=osp.abspath(checkpoint),
                source_config=cfg.filename, max_rel_diff=report['max_rel_diff'])
    save_atomic(dict(state_dict=fused.state_dict(), meta=meta), output)
    tmp = out_config + '.tmp.py'
    dcfg.dump(tmp)
    os.replace(tmp, out_config)
    report['config'] = out_config
    return report
