"""What registers into MMEngine: the runner, hooks, the optimizer-wrapper constructor
(weight-decay rules), the learning-rate scheduler and the TensorBoard backend."""
from .hooks import DataModelCheckHook, EpochSeedHook, NonFiniteLossHook
from .optim import RepVGGOptimWrapperConstructor, decayed
from .runner import RepVGGRunner, find_resumable_checkpoint
from .schedulers import WarmupCosineLR
from .visualization import TensorboardVisBackend

__all__ = ['DataModelCheckHook', 'EpochSeedHook', 'NonFiniteLossHook',
           'RepVGGOptimWrapperConstructor', 'RepVGGRunner', 'TensorboardVisBackend',
           'WarmupCosineLR', 'decayed',
           'find_resumable_checkpoint']
