from .convert import convert_checkpoint
from .fetch_gate import fetch_on_each_node, needs_fetch
from .formats import (
    FORMATS,
    KeyFormat,
    block_variant_of,
    detect_format,
    guess_arch,
    is_fused,
    load_pretrained_into,
    load_weights_into,
    to_ours,
)
from .io import (
    CheckpointError,
    check_finite,
    extract_state_dict,
    load_checkpoint_file,
    load_state_dict_strict,
    read_checkpoint,
    read_state_dict,
    save_atomic,
)
from .safe_load import allow_training_checkpoints, trusted_checkpoint_globals
from .zoo import DownloadError, cache_dir, fetch_url, published_url, resolve_checkpoint

__all__ = ['CheckpointError', 'DownloadError', 'FORMATS', 'KeyFormat',
           'allow_training_checkpoints', 'block_variant_of', 'cache_dir', 'check_finite',
           'convert_checkpoint', 'detect_format', 'extract_state_dict', 'fetch_on_each_node',
           'fetch_url',
           'guess_arch', 'is_fused', 'load_checkpoint_file', 'load_pretrained_into',
           'load_state_dict_strict', 'load_weights_into', 'published_url', 'read_checkpoint',
           'needs_fetch', 'read_state_dict', 'resolve_checkpoint', 'save_atomic', 'to_ours',
           'trusted_checkpoint_globals']
