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
from mmengine.logging import MessageHub, print_log
from mmpretrain.structures import DataSample
from torch.utils.data import DataLoader, Dataset

from repvgg_mm.datasets.gpu_augment import (
    broken_message,
    decode_jpegs,
    finish_batch,
    read_batch,
    resize_crop,
)
from repvgg_mm.datasets.loading import decode_rgb_tensor
from repvgg_mm.registry import DATA_LOADERS, DATA_SAMPLERS, DATASETS

# Above this fraction of an epoch's images decoded on the CPU, the loader warns: the
# GPU decoder is then not doing the work it is there for.
CPU_FALLBACK_WARN_FRACTION = 0.01


class _BatchReader(Dataset):
    """What the workers run: one *batch* key ``(epoch, [index, ...])`` -> a packed
    batch (:func:`~repvgg_mm.datasets.gpu_augment.read_batch`).

    The samples are read from the dataset's own storage (MMEngine serialises its list
    into one buffer), one ``get_data_info`` per sample: forked workers share that
    buffer instead of each copying a Python list of 1.28 M entries.
    """

    def __init__(self, dataset, seed: int, backend_args: Optional[dict], **params) -> None:
        self.dataset = dataset
        self.seed = seed
        self.backend_args = backend_args
        self.params = params

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key) -> dict:
        epoch, indices = key
        samples, cached = [], []
        for index in indices:
            info = self.dataset.get_data_info(index)
            samples.append((index, info['img_path'], int(info['gt_label'])))
            cached.append(info.get('img_bytes'))  # cache_mode of the data set
        return read_batch(samples, epoch, self.seed, backend_args=self.backend_args,
                          cached=cached, **self.params)


class _BatchKeys:
    """The sampler's indices in batches, each with the sampler's epoch at the time the
    epoch starts (the workers derive every sample's seed from (seed, epoch, index), so
    persistent workers need not know the epoch)."""

    def __init__(self, sampler, batch_size: int) -> None:
        self.sampler, self.batch_size = sampler, batch_size

    def __iter__(self) -> Iterator[tuple]:
        epoch = getattr(self.sampler, 'epoch', 0)
        batch = []
        for index in self.sampler:
            batch.append(int(index))
            if len(batch) == self.batch_size:
                yield epoch, batch
                batch = []
        if batch:
            yield epoch, batch

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)


@DATA_LOADERS.register_module()
class GPUDecodeLoader:
    """Training loader: workers read bytes, the device decodes and augments.

    Augmentation as ``configs/repvgg-a0.py``'s train pipeline: random-resized crop
    (box drawn as torchvision's ``RandomResizedCrop.get_params`` does, from a generator
    seeded by (seed, epoch, sample index)), antialiased bilinear resize to
    ``crop_size``, horizontal flip. Normalisation stays in the model's data
    preprocessor. Batches are ``dict(inputs=..., data_samples=[DataSample],
    channel_order=...)``: uint8 images in RGB order, which
    :class:`~repvgg_mm.models.OrderAwareClsDataPreprocessor` (the configs' data
    preprocessor) takes without its BGR-to-RGB flip; ``channel_order='bgr'`` gives
    MMCV's order instead, for any other preprocessor with ``to_rgb=True``.

    Per batch, each worker sends one packed batch (all file bytes in one tensor); the
    main process decodes it in one call and runs one resize per image plus a fixed
    number of batch-wide operations. The decoder's failures are told apart: a file it
    refuses (CMYK, damaged) is decoded on the CPU and counted (``cpu_decoded`` in
    ``epoch_stats``, the log and the message hub's ``train/cpu_decoded``; a warning above
    1 % of an epoch), a decoder that does not work (no nvJPEG, CUDA out of memory) is an
    error.

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
        channels_last (bool): Return channels-last batches (the channels-last option's
            hook sets it). Defaults to False.
        channel_order (str): ``'rgb'`` (default) or ``'bgr'``, see above.
        prefetch (int): Batches prepared ahead in a background thread (on a side CUDA
            stream, created once per loader, on the GPU); 0 prepares each batch when
            asked. Defaults to 2.
        skip_broken (bool): Drop unreadable files from their batch (counted in the log
            per epoch) instead of failing. Defaults to False.
        backend_args (dict, optional): MMEngine file backend the workers read through
            (e.g. a zip archive backend). Defaults to None (local files).
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
                 device: str = 'auto', channels_last: bool = False,
                 channel_order: str = 'rgb', prefetch: int = 2, skip_broken: bool = False,
                 backend_args: Optional[dict] = None, seed: Optional[int] = None,
                 diff_rank_seed: bool = False, pin_memory: bool = True) -> None:
        if device not in ('auto', 'cuda', 'cpu') and not device.startswith('cuda:'):
            raise ValueError(f"GPUDecodeLoader: device={device!r}; expected 'auto', 'cuda' "
                             "or 'cpu'")
        if channel_order not in ('rgb', 'bgr'):
            raise ValueError(f"GPUDecodeLoader: channel_order={channel_order!r}; expected "
                             "'rgb' or 'bgr'")
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
        self.channel_order = channel_order
        self.prefetch = prefetch
        self.skip_broken = skip_broken
        reader = _BatchReader(self.dataset, self.seed, backend_args, scale=tuple(scale),
                              ratio=tuple(ratio), flip_prob=flip_prob)
        self.batch_sampler = _BatchKeys(self.sampler, batch_size)
        # one key per batch (batch_size=None): the reader packs the batch itself
        self._loader = DataLoader(
            reader, sampler=self.batch_sampler, batch_size=None, num_workers=num_workers,
            persistent_workers=persistent_workers and num_workers > 0,
            pin_memory=pin_memory and self.device.type == 'cuda')
        self._stream = torch.cuda.Stream(self.device) if self.device.type == 'cuda' else None
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
        self._report_epoch()

    def _report_epoch(self) -> None:
        stats = self.epoch_stats
        epoch = getattr(self.sampler, 'epoch', 0) + 1
        fraction = stats['cpu_decoded'] / max(stats['images'], 1)
        if fraction > CPU_FALLBACK_WARN_FRACTION:
            print_log(f'GPUDecodeLoader, epoch {epoch}: {stats["cpu_decoded"]} of '
                      f'{stats["images"]} images ({100 * fraction:.1f} %) were decoded on '
                      f'the CPU because the {self.device.type} JPEG decoder could not take '
                      'them (CMYK or non-JPEG files, damaged JPEGs); above '
                      f'{100 * CPU_FALLBACK_WARN_FRACTION:g} % that slows training down: '
                      'convert those files to RGB JPEG', logger='current', level=30)
        elif stats['cpu_decoded'] or stats['skipped']:
            print_log(f'GPUDecodeLoader, epoch {epoch}: {stats["images"]} images, '
                      f'{stats["cpu_decoded"]} decoded on the CPU (the {self.device.type} '
                      'JPEG decoder could not take them)', logger='current')
        if stats['skipped']:
            print_log(f'GPUDecodeLoader, epoch {epoch}: {stats["skipped"]} unreadable '
                      'images skipped (skip_broken=True)', logger='current', level=30)

    def _fail_or_skip(self, message: str) -> None:
        if not self.skip_broken:
            raise OSError(message)
        self.epoch_stats['skipped'] += 1

    def _decode(self, packed: dict, usable: List[bool]) -> List[Optional[torch.Tensor]]:
        """The decoded ``(3, H, W)`` uint8 image of every row (None: unusable)."""
        meta_paths = packed['paths']
        images: List[Optional[torch.Tensor]] = [None] * len(usable)
        data, offsets = packed['data'], packed['offsets'].tolist()
        rows = packed['jpeg_rows'].tolist()
        views = [data[offsets[k]:offsets[k + 1]] for k in range(len(rows))]
        if self._stream is not None:
            # torchvision's CUDA decoder allocates its outputs on the current stream but
            # writes them from its own: no work still queued here may use that memory
            torch.cuda.current_stream(self.device).synchronize()
        for row, view, image in zip(rows, views, decode_jpegs(views, self.device)):
            if not usable[row]:
                continue
            if image is None:  # refused by the decoder: decode this one on the CPU
                try:
                    image = decode_rgb_tensor(view.numpy().tobytes())
                except Exception as exc:
                    self._fail_or_skip(broken_message(meta_paths[row], str(exc)))
                    usable[row] = False
                    continue
                self.epoch_stats['cpu_decoded'] += 1
            images[row] = image
        start = 0
        for row, shape in zip(packed['cpu_rows'].tolist(), packed['cpu_shapes'].tolist()):
            size = shape[0] * shape[1] * shape[2]
            images[row] = packed['cpu_pixels'][start:start + size].view(shape)
            start += size
            self.epoch_stats['cpu_decoded'] += 1
        return images

    def _process(self, packed: dict) -> dict:
        """Decode, crop, resize and flip one packed batch on the device."""
        meta = packed['meta'].tolist()
        usable = [True] * len(meta)
        for row, message in packed['errors']:
            self._fail_or_skip(message)
            usable[row] = False
        images = self._decode(packed, usable)
        rows = [r for r in range(len(meta)) if usable[r] and images[r] is not None]
        if not rows:
            raise OSError('every image of a batch was unreadable: '
                          + ', '.join(repr(p) for p in packed['paths']))
        resized = []
        for row in rows:
            image, (_, _, top, left, h, w, _, height, width) = images[row], meta[row]
            if tuple(image.shape[-2:]) != (height, width):
                raise OSError(f"image {packed['paths'][row]!r} decodes to "
                              f'{tuple(image.shape[-2:])} but its header says '
                              f'{(height, width)}')
            image = image.to(self.device, non_blocking=True)
            resized.append(resize_crop(image, (top, left, h, w), self.crop_size))
        flips = packed['meta'][rows, 6].bool()
        inputs = finish_batch(resized, flips, self.channels_last)
        if self.channel_order == 'bgr':
            inputs = inputs.flip(1)
        labels = packed['meta'][rows, 1]
        samples = []
        for k, row in enumerate(rows):
            sample = DataSample(metainfo=dict(img_path=packed['paths'][row],
                                              sample_idx=meta[row][0]))
            sample.gt_label = labels[k:k + 1]
            samples.append(sample)
        self.epoch_stats['images'] += len(rows)
        MessageHub.get_current_instance().update_scalar(
            'train/cpu_decoded', self.epoch_stats['cpu_decoded'])
        return dict(inputs=inputs, data_samples=samples, channel_order=self.channel_order)

    def _prefetched(self, batches: Iterator[dict]) -> Iterator[dict]:
        """Prepare up to ``prefetch`` batches ahead in a thread; on CUDA on the loader's
        side stream, so decoding the next batch overlaps training on the current one."""
        cuda = self._stream is not None
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
                        torch.cuda.stream(self._stream) if cuda else nullcontext():
                    for batch in batches:
                        event = None
                        if cuda:
                            event = torch.cuda.Event()
                            event.record(self._stream)
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
