"""Turn a trained checkpoint into a verified deploy checkpoint plus its config."""
import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config

from repvgg_mm.checkpoints import (
    FORMATS,
    check_finite,
    guess_arch,
    is_fused,
    read_checkpoint,
    save_atomic,
)
from repvgg_mm.fileio import OutputPathError, atomic_open, check_output_paths
from repvgg_mm.models.reparam import max_logit_difference, reparameterize_model

from .model import (
    build_model,
    deploy_config,
    load_weights_into,
    test_input_size,
)

DEFAULT_TOLERANCE = 1e-4


def load_fused_model(cfg: Config, checkpoint: str, src_format: Optional[str] = None,
                     fuse: bool = True) -> dict:
    """Read ``checkpoint`` (any known format, training-time or fused) and return the
    fused model built from ``cfg``, in eval mode.

    A training-time checkpoint is loaded strictly into ``cfg``'s model and fused with
    :func:`reparameterize_model` (only loaded with ``fuse=False``); a fused one is
    loaded into the deploy model as it is.

    Returns:
        dict: ``fused`` (the fused model; None for a training-time checkpoint with
        ``fuse=False``), ``training`` (the loaded training-time model, None when the
        checkpoint was already fused), ``state_dict`` (as read, our key format),
        ``src_format`` and ``meta`` (the checkpoint's, e.g. ``dataset_meta``).
    """
    state_dict, fmt, meta = read_checkpoint(checkpoint, src_format)
    training = fused = None
    if is_fused(state_dict):
        fused = build_model(deploy_config(cfg))
        load_weights_into(fused, state_dict, checkpoint)
        fused.eval()
    else:
        training = build_model(cfg)
        load_weights_into(training, state_dict, checkpoint)
        training.eval()
        if fuse:
            fused = reparameterize_model(training).eval()
            check_finite(fused.state_dict(), f'{checkpoint} after fusion')
    return dict(fused=fused, training=training, state_dict=state_dict, src_format=fmt,
                meta=meta)


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
    out_config = deploy_config_path(output, out_config) if to_format == 'ours' else None
    outputs = {'OUTPUT': output, **({'deploy config': out_config} if out_config else {})}
    check_output_paths(outputs, {'CONFIG': cfg.filename, 'CHECKPOINT': checkpoint})
    loaded = load_fused_model(cfg, checkpoint, src_format)
    state_dict, fmt, fused, model = (loaded['state_dict'], loaded['src_format'],
                                     loaded['fused'], loaded['training'])
    dcfg = deploy_config(cfg)
    report = dict(output=output, config=None, src_format=fmt,
                  already_fused=model is None, max_abs_diff=None, max_rel_diff=None,
                  params_train=None)
    if model is not None:
        report['params_train'] = sum(p.numel() for p in model.parameters())
        if verify:
            size = test_input_size(cfg)
            generator = torch.Generator().manual_seed(0)
            inputs = torch.randn(batch_size, 3, size, size, generator=generator)
            abs_diff, rel_diff = max_logit_difference(model, fused, inputs)
            report.update(max_abs_diff=abs_diff, max_rel_diff=rel_diff)
            if rel_diff != rel_diff:  # NaN: the weights were finite, the outputs are not
                raise RuntimeError(f'fused model of {checkpoint!r} gives NaN logits on the '
                                   'verification batch; nothing written')
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
    # keep the class names MMEngine stored, so inference on the fused model names classes
    dataset_meta = loaded['meta'].get('dataset_meta')
    if dataset_meta:
        meta['dataset_meta'] = dataset_meta
    # both files are complete in temporary files before either is renamed into place
    with atomic_open(out_config, 'w', encoding='utf-8') as config_file:
        config_file.write(dcfg.dump())
        save_atomic(dict(state_dict=fused.state_dict(), meta=meta), output)
    report['config'] = out_config
    return report


def deploy_config_path(output: str, out_config: Optional[str] = None) -> str:
    """Where the deploy config of ``output`` goes: ``out_config``, or ``output`` with
    ``.py`` -- which must then differ from ``output`` itself."""
    if out_config:
        return out_config
    if output.endswith('.py'):
        raise OutputPathError(f'OUTPUT {output!r} ends in .py, where its deploy config would '
                              'be written; name the checkpoint e.g. *.pth, or pass --out-config')
    return osp.splitext(output)[0] + '.py'
