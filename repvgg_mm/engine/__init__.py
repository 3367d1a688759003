"""What registers into MMEngine: the runner, hooks, the optimizer-wrapper constructor
(weight-decay rules), the learning-rate scheduler and the TensorBoard backend."""
from .hooks import DataModelCheckHook, EpochSeedHook, NonFiniteLossHook, QATSyncHook
from .optim import RepVGGOptimWrapperConstructor, decayed
from .runner import RepVGGRunner, find_resumable_checkpoint
from .schedulers import WarmupCosineLR
from .speed_hooks import ChannelsLastHook
from .visualization import TensorboardVisBackend

__all__ = ['ChannelsLastHook', 'DataModelCheckHook', 'EpochSeedHook', 'NonFiniteLossHook',
           'QATSyncHook', 'RepVGGOptimWrapperConstructor', 'RepVGGRunner', 'TensorboardVisBackend',
           'WarmupCosineLR', 'decayed',
           'find_resumable_checkpoint']
