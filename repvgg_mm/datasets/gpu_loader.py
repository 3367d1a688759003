"""A training loader whose workers only read files: decoding (nvJPEG through
torchvision), random-resized crop, antialiased resize and flip run on the GPU in
batches, overlapped with training. Without a GPU the same code runs on the CPU."""
import copy
import math
import queue
import threading
from contextlib import nullcontext
from typing import Iterator, List, Optional, Sequence

import torch
from mmengine.logging import print_log
from mmpretrain.structures import DataSample
from torch.utils.data import DataLoader, Dataset

from repvgg_mm.datasets.gpu_augment import (
    broken_message,
    crop_resize_flip,
    decode_jpegs,
    decode_on_cpu,
    read_sample,
)
from repvgg_mm.datasets.samplers import sample_seed
from repvgg_mm.registry import DATA_LOADERS, DATA_SAMPLERS, DATASETS


class _FileReader(Dataset):
    """What the workers run: ``(index, seed)`` -> :func:`read_sample`'s dict."""

    def __init__(self, data_list: List[dict], **params) -> None:
        self.samples = [(d['img_path'], int(d['gt_label'])) for d in data_list]
        self.params = params

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key) -> dict:
        index, seed = key
        path, label = self.samples[index]
        return read_sample(path, label, index, seed, **self.params)


class _SeededBatches:
    """Batches of ``(index, per-sample seed)`` from the sampler, the seed made from
    (seed, the sampler's current epoch, index) when the epoch starts (in the main
    process, so persistent workers need not know the epoch)."""

    def __init__(self, sampler, batch_size: int, seed: int) -> None:
        self.sampler, self.batch_size, self.seed = sampler, batch_size, seed

    def __iter__(self) -> Iterator[list]:
        epoch = getattr(self.sampler, 'epoch', 0)
        batch = []
        for index in self.sampler:
            batch.append((index, sample_seed(self.seed, epoch, index)))
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)


def _as_list(batch: list) -> list:
    return batch


@DATA_LOADERS.register_module()
class GPUDecodeLoader:
    """Training loader: workers read bytes, the device decodes and augments.

    Augmentation as ``configs/repvgg-a0.py``'s train pipeline: random-resized crop
    (box drawn as torchvision's ``RandomResizedCrop.get_params`` from a generator seeded
    by (seed, epoch, sample index)), antialiased bilinear resize to ``crop_size``,
    horizontal flip. Normalisation stays in the model's data preprocessor; batches are
    uint8 in BGR channel order like MMCV's ``LoadImageFromFile`` (the preprocessor's
    ``to_rgb`` turns them back), as ``dict(inputs=..., data_samples=[DataSample])``.

    Args:
        dataset (dict): Config of the dataset that lists the samples (e.g.
            ``ImageNetLayoutDataset``); its ``pipeline`` is not used.
        batch_size (int): Images per batch (per process).
        sampler (dict): MMEngine sampler config. Defaults to a shuffling
            ``DefaultSampler``.
        num_workers (int): Worker processes reading files. Defaults to 8.
        persistent_workers (bool): Keep workers between epochs. Defaults to True.
        crop_size (int): Output size. Defaults to 224.
        scale (tuple): Crop area range, fraction of the image. Defaults to (0.08, 1).
        ratio (tuple): Crop aspect-ratio range. Defaults to (3/4, 4/3).
        flip_prob (float): Probability of a horizontal flip. Defaults to 0.5.
        device (str): ``'auto'`` (CUDA when available, else CPU), ``'cuda'`` or
            ``'cpu'``. Defaults to ``'auto'``.
        channels_last (bool): Return channels-last batches. Defaults to False.
        prefetch (int): Batches prepared ahead in a background thread (on a side CUDA
            stream on the GPU); 0 prepares each batch when asked. Defaults to 2.
        skip_broken (bool): Drop unreadable files from their batch (counted in the log
            per epoch) instead of failing. Defaults to False.
        seed (int, optional): Seed of the sampler (given by the Runner). The
            augmentation is seeded by the sampler's seed, which is the same on every
            rank: sample indices are unique across ranks, so one seed serves all.
        diff_rank_seed (bool): Given by the Runner; as in MMEngine, the sampler then
            syncs one seed across ranks instead of taking ``seed``.
        pin_memory (bool): Pin the bytes for faster copies to the GPU. Defaults to True.
    """

    def __init__(self, dataset: dict, batch_size: int, sampler: Optional[dict] = None,
                 num_workers: int = 8, persistent_workers: bool = True,
                 crop_size: int = 224, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), flip_prob: float = 0.5,
                 device: str = 'auto', channels_last: bool = False, prefetch: int = 2,
                 skip_broken: bool = False, seed: Optional[int] = None,
                 diff_rank_seed: bool = False, pin_memory: bool = True) -> None:
        if device not in ('auto', 'cuda', 'cpu') and not device.startswith('cuda:'):
            raise ValueError(f"GPUDecodeLoader: device={device!r}; expected 'auto', 'cuda' "
                             "or 'cpu'")
        if device == 'auto':
            device = 'cuda' if torch.cuda.is_available() else 'cpu'
        if device.startswith('cuda') and not torch.cuda.is_available():
            raise RuntimeError(f'GPUDecodeLoader: device={device!r} but CUDA is not available')
        self.device = torch.device(device)
        if self.device.type == 'cuda' and self.device.index is None:
            self.device = torch.device('cuda', torch.cuda.current_device())
        dataset_cfg = copy.deepcopy(dict(dataset))
        dataset_cfg['pipeline'] = []  # the loader does the pipeline's work
        self.dataset = DATASETS.build(dataset_cfg)
        sampler_cfg = copy.deepcopy(dict(sampler or dict(type='DefaultSampler', shuffle=True)))
        # as MMEngine: with per-rank seeds the sampler syncs one seed across ranks
        sampler_cfg.setdefault('seed', None if diff_rank_seed else seed)
        self.sampler = DATA_SAMPLERS.build(sampler_cfg, default_args=dict(dataset=self.dataset))
        # the augmentation seed is the sampler's: the same on every rank
        sampler_seed = getattr(self.sampler, 'seed', None)
        self.seed = sampler_seed if sampler_seed is not None else (seed or 0)
        self.batch_size = batch_size
        self.crop_size = crop_size
        self.channels_last = channels_last
        self.prefetch = prefetch
        self.skip_broken = skip_broken
        # the dataset's list (serialised by MMEngine) is the one source of the samples
        reader = _FileReader([self.dataset.get_data_info(i) for i in range(len(self.dataset))],
                             scale=tuple(scale), ratio=tuple(ratio), flip_prob=flip_prob)
        self.batch_sampler = _SeededBatches(self.sampler, batch_size, self.seed)
        self._loader = DataLoader(
            reader, batch_sampler=self.batch_sampler, num_workers=num_workers,
            collate_fn=_as_list, persistent_workers=persistent_workers and num_workers > 0,
            pin_memory=pin_memory and self.device.type == 'cuda')
        self.epoch_stats = self._new_stats()

    @staticmethod
    def _new_stats() -> dict:
        return dict(images=0, cpu_decoded=0, skipped=0)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[dict]:
        self.epoch_stats = self._new_stats()
        batches = map(self._process, iter(self._loader))
        if self.prefetch > 0:
            batches = self._prefetched(batches)
        yield from batches
        stats = self.epoch_stats
        if stats['cpu_decoded'] or stats['skipped']:
            print_log(f"GPUDecodeLoader, epoch {getattr(self.sampler, 'epoch', 0) + 1}: "
                      f"{stats['images']} images, {stats['cpu_decoded']} decoded on the CPU "
                      f"(the {self.device.type} JPEG decoder could not take them), "
                      f"{stats['skipped']} unreadable skipped (skip_broken=True)",
                      logger='current', level=30 if stats['skipped'] else 20)

    def _fail_or_skip(self, message: str) -> None:
        if not self.skip_broken:
            raise OSError(message)
        self.epoch_stats['skipped'] += 1

    def _process(self, items: List[dict]) -> dict:
        """Decode, crop, resize and flip one batch on the device."""
        good = []
        for item in items:
            if item['error']:
                self._fail_or_skip(item['error'])
            else:
                good.append(item)
        jpegs = [item for item in good if 'bytes' in item]
        decoded = decode_jpegs([item['bytes'] for item in jpegs], self.device)
        for item, image in zip(jpegs, decoded):
            if image is None:  # refused by the batched decoder: decode this one on the CPU
                try:
                    image = decode_on_cpu(item['bytes'].numpy().tobytes())
                except Exception as exc:
                    self._fail_or_skip(broken_message(item['path'], str(exc)))
                    continue
                item['decoded_on_cpu'] = True
            item['image'] = image
        outputs, samples = [], []
        for item in good:
            image = item.get('image')
            if image is None:
                continue
            if tuple(image.shape[-2:]) != item['size']:
                raise OSError(f"image {item['path']!r} decodes to {tuple(image.shape[-2:])} "
                              f"but its header says {item['size']}")
            if 'bytes' not in item or item.get('decoded_on_cpu'):
                self.epoch_stats['cpu_decoded'] += 1
            image = image.to(self.device, non_blocking=True)
            outputs.append(crop_resize_flip(image, item['box'], self.crop_size, item['flip']))
            sample = DataSample(metainfo=dict(img_path=item['path'],
                                              sample_idx=item['index']))
            sample.set_gt_label(item['label'])
            samples.append(sample)
        if not outputs:
            raise OSError('every image of a batch was unreadable: '
                          + ', '.join(repr(i['path']) for i in items))
        inputs = torch.stack(outputs).flip(1)  # RGB -> BGR, as LoadImageFromFile gives
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        self.epoch_stats['images'] += len(outputs)
        return dict(inputs=inputs, data_samples=samples)

    def _prefetched(self, batches: Iterator[dict]) -> Iterator[dict]:
        """Prepare up to ``prefetch`` batches ahead in a thread; on CUDA on a side
        stream, so decoding the next batch overlaps training on the current one."""
        cuda = self.device.type == 'cuda'
        stream = torch.cuda.Stream(self.device) if cuda else None
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(entry) -> None:
            while not stop.is_set():
                try:
                    ready.put(entry, timeout=0.1)
                    return
                except queue.Full:
                    continue

        def work() -> None:
            try:
                with torch.cuda.device(self.device) if cuda else nullcontext(), \
                        torch.cuda.stream(stream) if cuda else nullcontext():
                    for batch in batches:
                        event = None
                        if cuda:
                            event = torch.cuda.Event()
                            event.record(stream)
                        put(('batch', batch, event))
                        if stop.is_set():
                            return
            except BaseException as exc:  # handed to the consumer, raised there
                put(('error', exc, None))
                return
            put(('end', None, None))

        thread = threading.Thread(target=work, name='GPUDecodeLoader', daemon=True)
        thread.start()
        try:
            while True:
                kind, value, event = ready.get()
                if kind == 'end':
                    return
                if kind == 'error':
                    raise value
                if cuda:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    value['inputs'].record_stream(current)
                yield value
        finally:
            stop.set()
            thread.join()


def build_loader(cfg: dict, seed: Optional[int] = None, diff_rank_seed: bool = False):
    """Build a loader registered in ``DATA_LOADERS`` from its config (``type`` key)."""
    return DATA_LOADERS.build(copy.deepcopy(dict(cfg)),
                              default_args=dict(seed=seed, diff_rank_seed=diff_rank_seed))


__all__ = ['GPUDecodeLoader', 'build_loader']
