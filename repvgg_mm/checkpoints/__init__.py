from .convert import convert_checkpoint
from .formats import (
    FORMATS,
    KeyFormat,
    block_variant_of,
    detect_format,
    guess_arch,
    is_fused,
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

__all__ = ['CheckpointError', 'FORMATS', 'KeyFormat', 'allow_training_checkpoints', 'check_finite',
           'convert_checkpoint',
           'block_variant_of', 'detect_format', 'extract_state_dict', 'guess_arch', 'is_fused',
           'load_checkpoint_file', 'load_weights_into', 'load_state_dict_strict', 'read_checkpoint',
           'read_state_dict',
           'save_atomic', 'to_ours',
           'trusted_checkpoint_globals']
