"""Convert a RepVGG checkpoint of any known format into ours."""
import os.path as osp
from typing import Optional

from repvgg_mm.fileio import check_output_paths

from .formats import guess_arch, is_fused
from .io import read_state_dict, save_atomic


def convert_checkpoint(src: str, dst: str, src_format: Optional[str] = None) -> dict:
    """Read ``src`` (official, MMPretrain, timm or ours; DDP prefixes removed), rename
    its keys to ours and write ``{'state_dict', 'meta'}`` to ``dst`` atomically, ready
    for ``load_from`` in a config.

    Returns:
        dict: ``src_format``, ``arch`` (None if no known arch matches), ``deploy``
        (the weights are already fused) and ``num_tensors``.
    """
    check_output_paths({'DST': dst}, {'SRC': src})
    state_dict, fmt = read_state_dict(src, src_format)
    meta = dict(source_checkpoint=osp.abspath(src), source_format=fmt,
                arch=guess_arch(state_dict), deploy=is_fused(state_dict))
    save_atomic(dict(state_dict=state_dict, meta=meta), dst)
    return dict(src_format=fmt, arch=meta['arch'], deploy=meta['deploy'],
                num_tensors=len(state_dict))
