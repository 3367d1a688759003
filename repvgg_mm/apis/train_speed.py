"""End-to-end training speed: real training iterations through the Runner, data
loading included, for several configs side by side in one run, plus the model alone
on a batch already on the device (the ceiling any loader can reach)."""
import copy
import gc
import shutil
import statistics
import tempfile
import time
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmpretrain.structures import DataSample

from .data_speed import on_data


class _Finished(Exception):
    """Raised by the probe to end training once the timed iterations are done."""


class _SpeedProbe(Hook):
    """Time iterations ``warmup + 1 .. warmup + iters`` of training, then stop it."""

    priority = 'LOWEST'

    def __init__(self, warmup: int, iters: int, device: torch.device) -> None:
        self.warmup, self.iters, self.device = warmup, iters, device
        self.count, self.images, self.start, self.seconds = 0, 0, None, None

    def _now(self) -> float:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.count += 1
        if self.count == self.warmup:
            self.start = self._now()
        elif self.count > self.warmup:
            self.images += len(data_batch['data_samples'])
            if self.count == self.warmup + self.iters:
                self.seconds = self._now() - self.start
                raise _Finished


class _FixedBatches:
    """A loader that yields one batch, already on the device, over and over."""

    def __init__(self, batch: dict, length: int) -> None:
        self.batch, self.length, self.dataset = batch, length, None

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        for _ in range(self.length):
            yield self.batch


def _shutdown_workers(loader) -> None:
    """End persistent worker processes now rather than at interpreter exit."""
    inner = getattr(loader, '_loader', loader)
    iterator = getattr(inner, '_iterator', None)
    if iterator is not None and hasattr(iterator, '_shutdown_workers'):
        iterator._shutdown_workers()


def _speed_config(cfg: Config, data_root: str, batch_size: Optional[int],
                  num_workers: Optional[int], amp: bool, channels_last: bool,
                  compile_model: bool, work_dir: str) -> Config:
    cfg = copy.deepcopy(cfg)
    loader = cfg.train_dataloader
    loader.dataset = on_data(loader, data_root, 'train',
                             cfg.get('default_scope', 'repvgg_mm'))['dataset']
    if batch_size:
        loader.batch_size = batch_size
    if num_workers is not None:
        loader.num_workers = num_workers
        loader.persistent_workers = num_workers > 0
    if channels_last:  # scoped: a reference config of another scope finds it too
        cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [
            dict(type='repvgg_mm.ChannelsLastHook')]
        if loader.get('type') == 'GPUDecodeLoader':
            loader.channels_last = True
    if amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.dtype = 'bfloat16'
    cfg.compile = bool(compile_model or cfg.get('compile', False))
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.test_dataloader = cfg.test_cfg = cfg.test_evaluator = None
    cfg.train_cfg = dict(by_epoch=True, max_epochs=1, val_interval=10**9)
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=10**6)
    cfg.load_from, cfg.resume = None, False
    cfg.work_dir = work_dir
    cfg.log_level = 'WARNING'
    return cfg


def _train_input_size(cfg: Config) -> int:
    """The training crop size: the loader's ``crop_size``, or the last crop of the
    train pipeline."""
    loader = cfg.train_dataloader
    if loader.get('crop_size'):
        return int(loader.crop_size)
    for step in reversed(loader.dataset.get('pipeline') or []):
        for key in ('crop_size', 'scale'):
            if isinstance(step.get(key), int):
                return step[key]
    return 224


def _run(cfg: Config, warmup: int, iters: int, fixed_batch: bool) -> Tuple[float, int]:
    """Build the runner, train until the probe stops it; (seconds, images) timed."""
    from repvgg_mm.cli import build_runner
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    fixed = None
    if fixed_batch:
        size = _train_input_size(cfg)
        gen = torch.Generator().manual_seed(0)
        batch_size = cfg.train_dataloader.batch_size
        inputs = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8,
                               generator=gen).to(device)
        hooks = [*(cfg.get('custom_hooks') or []), *(cfg.get('custom_hooks_channels_last')
                                                      or [])]
        if device.type == 'cuda' and any(  # as the loaders give it (CPU: see the hook)
                str(h.get('type')).endswith('ChannelsLastHook') for h in hooks):
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        samples = []
        for i in range(batch_size):
            sample = DataSample()
            sample.set_gt_label(i % cfg.model.head.num_classes)
            samples.append(sample)
        fixed = _FixedBatches(dict(inputs=inputs, data_samples=samples), warmup + iters)
        cfg.auto_scale_lr = dict(enable=False, base_batch_size=256)  # it reads the config
    probe = _SpeedProbe(warmup, iters, device)
    runner = build_runner(cfg)
    if fixed is not None:  # a config cannot hold the object: the runner takes it here
        runner._train_dataloader = fixed
    runner.register_hook(probe)
    try:
        runner.train()
    except _Finished:
        pass
    finally:
        loop = getattr(runner, '_train_loop', None)
        if loop is not None and not isinstance(loop, dict):
            _shutdown_workers(loop.dataloader)
        del runner
        gc.collect()
    if probe.seconds is None:
        raise RuntimeError(f'training ended after {probe.count} iterations, before the '
                           f'{warmup} + {iters} needed; use a larger data set or fewer '
                           '--iters/--warmup')
    return probe.seconds, probe.images


def compare_train_speed(runs: Sequence[Tuple[str, Config, bool]], data_root: str,
                        iters: int = 20, warmup: int = 5, batch_size: Optional[int] = None,
                        num_workers: Optional[int] = None, amp: bool = False,
                        channels_last: bool = False, model_only: Sequence[bool] = (),
                        rounds: int = 1, model_only_run: int = 0,
                        report: Optional[Callable[[str, float], None]] = None
                        ) -> List[dict]:
    """Training images/s of each run, measured in turn in this process.

    Args:
        runs: ``(name, config, compile)`` per end-to-end measurement.
        data_root: ImageNet-layout folder that replaces the configs' train data.
        iters: Timed iterations per run, after ``warmup`` untimed ones.
        batch_size / num_workers: Override the configs' train loader settings.
        amp: bf16 autocast (``AmpOptimWrapper``). channels_last: model and batches.
        model_only: For each value (compile or not), one more measurement of the
            model of ``runs[model_only_run]`` training on one batch already on the
            device.
        rounds: Measure every run this many times, taking turns (so that a drift of a
            shared machine hits all runs alike); the median round counts.
        report: Called with ``(run, images/s)`` after each measurement, so that a
            later run that fails (a compiler error, say) loses no earlier figure.

    Returns:
        list[dict]: ``run``, ``imgs_per_s`` (median), ``rounds_imgs_per_s``,
        ``images`` per round and the settings.
    """
    plan = [(name, cfg, comp, False) for name, cfg, comp in runs]
    plan += [('model-only' + (' + compile' if comp else ''), runs[model_only_run][1], comp,
              True) for comp in model_only]
    speeds: List[List[float]] = [[] for _ in plan]
    images_per_round: List[int] = [0] * len(plan)
    for _ in range(rounds):
        for k, (name, cfg, comp, fixed) in enumerate(plan):
            work_dir = tempfile.mkdtemp(prefix='train_speed_')
            try:
                run_cfg = _speed_config(cfg, data_root, batch_size, num_workers, amp,
                                        channels_last, comp, work_dir)
                seconds, images_per_round[k] = _run(run_cfg, warmup, iters, fixed)
            finally:
                shutil.rmtree(work_dir, ignore_errors=True)
            speeds[k].append(images_per_round[k] / seconds)
            if report is not None:
                report(name, speeds[k][-1])
    results = []
    for k, (name, cfg, comp, fixed) in enumerate(plan):
        loader = cfg.train_dataloader
        results.append(dict(
            run=name, imgs_per_s=statistics.median(speeds[k]), rounds_imgs_per_s=speeds[k],
            images=images_per_round[k], iters=iters, warmup=warmup,
            batch_size=loader.batch_size if batch_size is None else batch_size,
            loader='fixed batch on device' if fixed else loader.get('type', 'DataLoader'),
            num_workers=None if fixed else (loader.num_workers if num_workers is None
                                            else num_workers),
            amp='bf16' if amp else 'none', channels_last=channels_last, compile=comp,
            device=torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu',
            torch=torch.__version__, threads=torch.get_num_threads()))
    return results
