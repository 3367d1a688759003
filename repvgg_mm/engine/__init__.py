"""What registers into MMEngine: the runner, hooks, the optimizer-wrapper constructor
(weight-decay rules) and the learning-rate scheduler."""
from .hooks import DataModelCheckHook, EpochSeedHook, NonFiniteLossHook
from .optim import RepVGGOptimWrapperConstructor, decayed
from .runner import RepVGGRunner, find_resumable_checkpoint
from .schedulers import WarmupCosineLR
from .speed_hooks import ChannelsLastHook

__all__ = ['ChannelsLastHook', 'DataModelCheckHook', 'EpochSeedHook', 'NonFiniteLossHook',
           'RepVGGOptimWrapperConstructor', 'RepVGGRunner', 'WarmupCosineLR', 'decayed',
           'find_resumable_checkpoint']
