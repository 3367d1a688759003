"""Reading and writing checkpoints: safe loading, strict matching, atomic writes."""
import os
import os.path as osp
import pickle
import zipfile
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from repvgg_mm.fileio import atomic_write

from .safe_load import allow_training_checkpoints
from .zoo import expected_prefix, forget_download, resolve_checkpoint


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or does not fit the model."""


_TORCH_BOILERPLATE = ('Weights only load failed', 'Check the documentation', '(1)', '(2)',
                      'Please file an issue', 'WeightsUnpickler error:')


def _unpickling_reason(message: str) -> str:
    """The one informative line of torch's multi-line weights-only refusal."""
    message = message.replace('WeightsUnpickler error:', '\nWeightsUnpickler error:\n')
    for line in message.splitlines():
        line = line.strip()
        if line and not line.startswith(_TORCH_BOILERPLATE):
            return line.split(' Please use `torch.serialization')[0]
    return message.strip().splitlines()[0] if message.strip() else 'refused'


def load_checkpoint_file(path: str) -> Any:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    MMEngine training checkpoints (message hub, numpy scalars) are readable through
    an allow-list of exactly their types; a pickle that would construct anything
    else -- and so could run code -- is refused with :class:`CheckpointError`.

    ``path`` may also be an ``http(s)://`` URL or the name of a zoo model with
    published weights: the file is fetched into the download cache and checked first
    (:func:`repvgg_mm.checkpoints.zoo.resolve_checkpoint`), then read the same way. A
    download whose content no hash vouches for (any URL but the zoo's) that cannot be
    read is taken out of the cache (:func:`~repvgg_mm.checkpoints.zoo.forget_download`:
    removed if this process downloaded it, else moved aside), so it is fetched again.
    """
    local, url = resolve_checkpoint(path)
    if url is None:
        return _load_local(local)
    try:
        seen = os.stat(local)
    except OSError:
        seen = None
    try:
        return _load_local(local)
    except CheckpointError as exc:
        if seen is not None and expected_prefix(url) is None:
            forget_download(local, url, seen)
        raise CheckpointError(f'{url!r} (downloaded to {local!r}): {exc}') from exc


def _load_local(path: str) -> Any:
    if not osp.isfile(path):
        raise CheckpointError(f'checkpoint {path!r} does not exist' + (
            ' (it is a folder)' if osp.isdir(path) else
            ' (it is not a file, an http(s):// URL nor a zoo name with published weights)'))
    try:
        with allow_training_checkpoints():
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickling_reason(str(exc))
        if reason.startswith('Unsupported operand') and not zipfile.is_zipfile(path):
            # not a pickle at all (text, an image, random bytes): nothing to refuse
            raise CheckpointError(f'checkpoint {path!r} could not be read: it is not a '
                                  f'PyTorch checkpoint ({reason})') from exc
        raise CheckpointError(
            f'refusing to load {path!r}: it contains objects that are not plain weights '
            f'and loading them could run code ({reason})') from exc
    except Exception as exc:  # torch raises many types for a file that is not its own
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        kind = ('not a PyTorch checkpoint' if not zipfile.is_zipfile(path)
                else 'a damaged or truncated PyTorch checkpoint')
        raise CheckpointError(f'checkpoint {path!r} could not be read: it is {kind} '
                              f'({type(exc).__name__}: {reason})') from exc


def extract_state_dict(checkpoint: Any, path: str = '<checkpoint>') -> Dict[str, Any]:
    """The weights of a checkpoint: its ``state_dict`` (or ``model``) entry, or the
    checkpoint itself when it is a plain state dict; a DDP ``module.`` prefix is removed."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f'{path!r} holds a {type(checkpoint).__name__}, '
                              'expected a dict of tensors')
    for key in ('state_dict', 'model'):
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            checkpoint = checkpoint[key]
            break
    state_dict = OrderedDict()
    for name, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f'{path!r}: entry {name!r} is a {type(value).__name__}, '
                                  'expected a tensor')
        state_dict[name[len('module.'):] if name.startswith('module.') else name] = value
    return state_dict


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                           source: str = '<checkpoint>') -> None:
    """Load ``state_dict`` into ``model`` requiring the exact same keys and shapes.

    Raises:
        CheckpointError: naming the first missing, unexpected and mismatching keys.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f'{k}: checkpoint {tuple(state_dict[k].shape)} vs model '
                  f'{tuple(own[k].shape)}' for k in own
                  if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f'{len(missing)} missing keys (first: {missing[:3]})')
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected keys (first: {unexpected[:3]})')
        if mismatched:
            parts.append(f'{len(mismatched)} shape mismatches (first: {mismatched[:2]})')
        raise CheckpointError(f'{source!r} does not fit the model: ' + '; '.join(parts))
    check_finite(state_dict, source)
    model.load_state_dict(state_dict, strict=True)


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (see :mod:`repvgg_mm.fileio`):
    readers never see a partial file and a failed write leaves nothing behind."""
    atomic_write(path, lambda f: torch.save(obj, f))


def check_finite(state_dict: Mapping[str, torch.Tensor], source: str = '<checkpoint>') -> None:
    """Refuse weights holding NaN or infinity, naming the first such tensor.

    Raises:
        CheckpointError: ``source`` and the first non-finite tensor's key.
    """
    bad = [k for k, v in state_dict.items()
           if isinstance(v, torch.Tensor) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        more = f' (and {len(bad) - 1} more tensors)' if len(bad) > 1 else ''
        raise CheckpointError(f'{source!r}: tensor {bad[0]!r} holds NaN or infinite values'
                              f'{more}; refusing to use these weights')


def read_checkpoint(path: str, src_format: Optional[str] = None
                    ) -> Tuple[Dict[str, Any], str, Dict[str, Any]]:
    """Read a checkpoint of any known format safely (once) and rename its keys to ours.

    Returns:
        tuple[dict, str, dict]: the state dict with our key names, the detected (or
        given) source format, and the checkpoint's ``meta`` (MMEngine keeps
        ``dataset_meta`` there; empty for a plain state dict).
    """
    from .formats import to_ours  # formats imports this module
    content = load_checkpoint_file(path)
    meta = content.get('meta') if isinstance(content, dict) else None
    state_dict, fmt = to_ours(extract_state_dict(content, path), src_format, path)
    return state_dict, fmt, dict(meta) if isinstance(meta, dict) else {}


def read_state_dict(path: str, src_format: Optional[str] = None) -> Tuple[Dict[str, Any], str]:
    """:func:`read_checkpoint` without the meta: the state dict (our key names) and
    its source format."""
    state_dict, fmt, _ = read_checkpoint(path, src_format)
    return state_dict, fmt
