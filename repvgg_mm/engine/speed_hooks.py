"""Hooks that only make training faster."""
import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from repvgg_mm.registry import HOOKS


@HOOKS.register_module()
class ChannelsLastHook(Hook):
    """Put the model's weights in channels-last (NHWC) memory format before the run,
    and the training batches too where the loader makes them (``GPUDecodeLoader``'s
    ``channels_last``).

    Convolutions then run in NHWC (PyTorch picks it when the weight is channels-last),
    which is faster on GPUs with tensor cores. (The CPU pipeline's batches are made
    by MMEngine's collate; the convolution converts them.)

    On a CPU the hook does nothing but say so: oneDNN's AVX2 kernel for the weight
    gradient of a 1x1 stride-2 convolution with fewer input channels than its block
    (RepVGG's stem: 3 channels) writes past its buffer in NHWC (oneDNN issue #6035,
    still open), which corrupted memory and aborted training in torch 2.14.1 here.
    """

    priority = 'VERY_HIGH'

    @staticmethod
    def _on_cpu(model) -> bool:
        param = next(model.parameters(), None)
        return param is None or param.device.type == 'cpu'

    def before_run(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self.enabled = not self._on_cpu(model)
        if not self.enabled:
            runner.logger.warning('ChannelsLastHook: left off on the CPU (oneDNN #6035: the '
                                  "AVX2 backward of the stem's 1x1 stride-2 convolution "
                                  'corrupts memory in channels-last)')
            return
        model.to(memory_format=torch.channels_last)
        runner.logger.info('ChannelsLastHook: model weights are channels-last')

    def before_train(self, runner) -> None:
        if not getattr(self, 'enabled', True):
            return
        loader = runner.train_loop.dataloader
        if hasattr(loader, 'channels_last') and not loader.channels_last:
            loader.channels_last = True
            runner.logger.info(f'ChannelsLastHook: {type(loader).__name__} batches are '
                               'channels-last')
