"""Data-only speed: images/s of configs' data pipelines, without a model, side by side.

Per core: the train (or val) data set's pipeline run in this process on one thread,
every sample seeded as training seeds it, the whole way to the packed sample; for a
``GPUDecodeLoader`` config, what its workers do per sample (bytes, header, crop box).
With workers: the config's own loader with N workers, as training iterates it (the
GPU-decoding loader's decoding then runs on this machine's CPU, or its GPU).
"""
import copy
import os.path as osp
import statistics
import time
from typing import Callable, List, Optional, Sequence, Tuple

import cv2
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from repvgg_mm.datasets.samplers import SeededIndex, sample_seed

MMPRETRAIN_REFERENCE = 'mmpretrain::_base_/datasets/imagenet_bs32.py'


def on_data(loader_cfg: dict, data_root: str, split: str, scope: str) -> dict:
    """A copy of a loader config reading ``split`` of ``data_root``: our data set
    re-rooted, or -- for another package's config (``scope`` not ours) -- MMPretrain's
    generic ``CustomDataset`` over the same list file or class folders, with the
    config's own pipeline."""
    loader_cfg = copy.deepcopy(dict(loader_cfg))
    dataset = dict(loader_cfg['dataset'])
    if scope == 'repvgg_mm':
        dataset.update(data_root=data_root, split=split)
    else:
        listed = osp.isfile(osp.join(data_root, f'{split}_list.txt'))
        pipeline = copy.deepcopy(list(dataset.get('pipeline', [])))
        if osp.isfile(osp.join(data_root, f'{split}.zip')):  # through the zip backend
            for step in pipeline:
                if step.get('type') == 'LoadImageFromFile':
                    step['backend_args'] = dict(backend='zip')
        dataset = dict(type='CustomDataset', data_root=data_root,
                       ann_file=f'{split}_list.txt' if listed else '',
                       data_prefix='' if listed else split, pipeline=pipeline)
    loader_cfg['dataset'] = dataset
    return loader_cfg


def _per_core(cfg: Config, loader_cfg: dict, images: int) -> Callable[[], float]:
    """A function timing ``images`` samples on one thread; returns images/s."""
    from repvgg_mm.registry import DATASETS
    if loader_cfg.get('type') == 'GPUDecodeLoader':
        from repvgg_mm.datasets.gpu_augment import read_batch
        dataset = DATASETS.build(dict(loader_cfg['dataset'], pipeline=[]))
        count = min(images, len(dataset))
        samples = [(i, dataset.get_data_info(i)['img_path'],
                    int(dataset.get_data_info(i)['gt_label'])) for i in range(count)]
        params = dict(scale=tuple(loader_cfg.get('scale', (0.08, 1.0))),
                      ratio=tuple(loader_cfg.get('ratio', (3 / 4, 4 / 3))),
                      flip_prob=loader_cfg.get('flip_prob', 0.5),
                      backend_args=loader_cfg.get('backend_args'))

        def run() -> float:
            start = time.perf_counter()
            for k in range(0, count, 256):
                read_batch(samples[k:k + 256], 0, 0, **params)
            return count / (time.perf_counter() - start)
        return run
    dataset = DATASETS.build(loader_cfg['dataset'])
    count = min(images, len(dataset))

    def run() -> float:
        start = time.perf_counter()
        for i in range(count):
            dataset[SeededIndex(i, sample_seed(0, 0, i))]
        return count / (time.perf_counter() - start)
    return run


def _with_workers(cfg: Config, loader_cfg: dict, workers: int, images: int,
                  seed: int = 0) -> Callable[[], float]:
    from repvgg_mm.engine.runner import RepVGGRunner
    loader_cfg = dict(loader_cfg, num_workers=workers, persistent_workers=workers > 0)
    if loader_cfg.get('type') == 'GPUDecodeLoader':
        loader_cfg.setdefault('prefetch', 2)
    loader = RepVGGRunner.build_dataloader(loader_cfg, seed=seed)

    def run() -> float:
        seen, start = 0, None
        for batch in loader:
            if start is None:  # the first batch pays for starting the workers
                start = time.perf_counter()
                continue
            seen += len(batch['data_samples'])
            if seen >= images:
                break
        if start is None or seen == 0:
            raise RuntimeError('too few images for a timed batch: use more --images')
        return seen / (time.perf_counter() - start)
    return run


def compare_data_speed(configs: Sequence[Tuple[str, Config]], data_root: str,
                       splits: Sequence[str] = ('train', ), workers: Sequence[int] = (),
                       images: int = 256, rounds: int = 3) -> List[dict]:
    """Images/s of each config's data pipeline, per core and with each number of
    workers, measured in turns (rounds) in this process; the median round counts.

    Returns:
        list[dict]: ``run``, ``split``, ``mode`` (``'per core'`` or ``'N workers'``),
        ``imgs_per_s``, ``rounds_imgs_per_s``, ``loader``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    plan = []
    try:
        for name, cfg in configs:
            scope = cfg.get('default_scope', 'repvgg_mm')
            init_default_scope(scope)
            for split in splits:
                loader_cfg = on_data(cfg[f'{split}_dataloader'], data_root, split, scope)
                loader = loader_cfg.get('type', 'DataLoader')
                plan.append((name, split, 'per core', loader,
                             _per_core(cfg, loader_cfg, images)))
                for n in workers:
                    plan.append((name, split, f'{n} workers', loader,
                                 _with_workers(cfg, loader_cfg, n, images)))
        speeds = [[] for _ in plan]
        for _ in range(rounds):
            for k, entry in enumerate(plan):
                speeds[k].append(entry[-1]())
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv2_threads)
    return [dict(run=name, split=split, mode=mode, loader=loader,
                 imgs_per_s=statistics.median(s), rounds_imgs_per_s=s, images=images)
            for (name, split, mode, loader, _), s in zip(plan, speeds)]


def reference_config(path: Optional[str] = MMPRETRAIN_REFERENCE) -> Config:
    """MMPretrain's stock ImageNet data config (OpenCV decode and resize), in
    MMPretrain's scope (the file is a base config that names none)."""
    from repvgg_mm.cli import load_config
    cfg = load_config(path)
    cfg.setdefault('default_scope', 'mmpretrain')
    return cfg
