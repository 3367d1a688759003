"""Hooks that only make training faster."""
import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from repvgg_mm.registry import HOOKS


@HOOKS.register_module()
class ChannelsLastHook(Hook):
    """Put the model's weights in channels-last (NHWC) memory format before the run.

    Convolutions then run in NHWC (PyTorch picks it when the weight is channels-last),
    which is faster on GPUs with tensor cores. Batches of the ``GPUDecodeLoader`` can
    be channels-last too (its ``channels_last`` option).
    """

    priority = 'VERY_HIGH'

    def before_run(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        model.to(memory_format=torch.channels_last)
        runner.logger.info('ChannelsLastHook: model weights are channels-last')
