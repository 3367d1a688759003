from .cli import add_cfg_options, add_launcher_options, error_message, run_cli
from .hooks import DataModelCheckHook, EpochSeedHook, NonFiniteLossHook
from .launch import (
                     LAUNCHERS,
                     ConfigError,
                     build_runner,
                     default_work_dir,
                     explain_out_of_memory,
                     finish_distributed,
                     load_config,
                     prepare_launcher,
                     set_local_rank,
)
from .optim import RepVGGOptimWrapperConstructor, decayed
from .runner import RepVGGRunner, find_resumable_checkpoint
from .schedulers import WarmupCosineLR

__all__ = ['ConfigError', 'DataModelCheckHook', 'EpochSeedHook', 'LAUNCHERS',
           'NonFiniteLossHook', 'RepVGGOptimWrapperConstructor', 'RepVGGRunner',
           'WarmupCosineLR', 'add_cfg_options', 'add_launcher_options', 'build_runner',
           'decayed', 'default_work_dir', 'error_message', 'explain_out_of_memory',
           'find_resumable_checkpoint', 'finish_distributed', 'load_config',
           'prepare_launcher', 'run_cli', 'set_local_rank']
