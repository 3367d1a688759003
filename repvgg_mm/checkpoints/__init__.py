from .safe_load import allow_training_checkpoints, trusted_checkpoint_globals

__all__ = ['allow_training_checkpoints', 'trusted_checkpoint_globals']
