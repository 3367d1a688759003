"""The pieces of the GPU-decoding loader.

In the data-loader workers (:func:`read_batch`): read each file's bytes, check its end
marker, read its size from the JPEG header, draw the random-resized-crop box and the flip
from a generator seeded by (seed, epoch, sample), and pack the whole batch into a few
tensors -- one uint8 tensor holding every file's bytes -- so that a batch crosses to the
main process as a handful of shared-memory blocks, not one per image. In the main
process: decode a batch (nvJPEG through torchvision, or its CPU decoder), telling a file
the decoder cannot take (decoded on the CPU instead) from a decoder that does not work
(an error), and crop-resize-flip with a fixed number of batch-wide operations.
:mod:`repvgg_mm.datasets.gpu_loader` puts them together.
"""
import math
import random
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg

from repvgg_mm.datasets.loading import checked_bytes, decode_rgb_tensor, read_image_bytes
from repvgg_mm.datasets.samplers import sample_seed

# Columns of the per-sample metadata tensor of a packed batch.
META = ('index', 'label', 'top', 'left', 'height', 'width', 'flip', 'image_h', 'image_w')
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def draw_crop_and_flip(height: int, width: int, scale: Sequence[float],
                       ratio: Sequence[float], flip_prob: float,
                       seed: int) -> Tuple[Tuple[int, int, int, int], bool]:
    """The random-resized-crop box ``(top, left, h, w)`` and whether to flip, from a
    generator seeded with ``seed`` for this sample alone.

    The box is :func:`random_resized_crop_box`'s; the generator is Python's Mersenne
    Twister seeded per sample (40x cheaper than forking torch's), so the boxes have
    torchvision's distribution (tested) and depend on (seed, epoch, sample) alone.
    """
    rng = random.Random(seed)
    return random_resized_crop_box(height, width, scale, ratio, rng), \
        rng.random() < flip_prob


def random_resized_crop_box(height: int, width: int, scale: Sequence[float],
                            ratio: Sequence[float], rng=random,
                            attempts: int = 10) -> Tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random-resized crop, step for step as torchvision's
    ``RandomResizedCrop.get_params`` and MMPretrain's ``rand_crop_params``: up to
    ``attempts`` (10, as theirs) draws of an area fraction uniform in ``scale`` and an
    aspect ratio log-uniform in ``ratio``, the first box that fits placed uniformly,
    else the centre crop with the aspect ratio clamped. ``rng`` draws (``uniform``,
    ``randrange``): a seeded ``random.Random``, or the ``random`` module (seeded per
    sample in training)."""
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randrange(height - h + 1)
            left = rng.randrange(width - w + 1)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def jpeg_header(data: bytes) -> Optional[Tuple[int, int, int]]:
    """``(height, width, components)`` from a JPEG's start-of-frame segment, read
    without decoding (a few markers from the start of the file); None when ``data`` is
    not a JPEG or its header is damaged."""
    if data[:2] != b'\xff\xd8':
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], 'big')
        if marker in _SOF:
            if pos + 10 > end:
                return None
            height = int.from_bytes(data[pos + 5:pos + 7], 'big')
            width = int.from_bytes(data[pos + 7:pos + 9], 'big')
            return height, width, data[pos + 9]
        if marker == 0xDA or length < 2:  # scan data before any frame header
            return None
        pos += 2 + length
    return None


def broken_message(path: str, reason: str) -> str:
    """The error for an unreadable image, worded as LoadImageChecked's."""
    return (f'cannot read image {path!r}: {reason} (set skip_broken=True on the train '
            'loader to skip such files)')


def _read_one(path: str, backend_args: Optional[dict],
              cached: Optional[bytes] = None) -> Tuple[bytes, Optional[tuple]]:
    """The bytes of one file (``cached``: already read, by a data set's in-memory cache)
    and its JPEG header (None: the GPU decoder cannot take it)."""
    data = read_image_bytes(path, backend_args) if cached is None else checked_bytes(cached)
    header = jpeg_header(data)
    if header is not None and header[2] in (1, 3):  # grey or YCbCr/RGB: nvJPEG's
        return data, header
    return data, None  # CMYK/YCCK JPEG, PNG, ...: decoded here, on the CPU


def _shareable_bytes(size: int) -> torch.Tensor:
    """An uninitialised uint8 tensor; in a data-loader worker allocated in shared memory
    straight away, as PyTorch's own collate does, so that sending it to the main
    process copies nothing (moving 25 MB there took 12 ms per batch)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(size, dtype=torch.uint8)
    return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(size))


def read_batch(samples: List[Tuple[int, str, int]], epoch: int, seed: int,
               scale: Sequence[float], ratio: Sequence[float], flip_prob: float,
               backend_args: Optional[dict] = None,
               cached: Optional[Sequence[Optional[bytes]]] = None) -> dict:
    """Everything a worker does for one batch of ``(index, path, label)`` (``cached``:
    the samples' file bytes where the data set keeps them in memory, else None).

    Returns a packed batch: ``data`` (the bytes of every JPEG the GPU decoder takes, one
    uint8 tensor) with ``offsets`` (``data[offsets[k]:offsets[k + 1]]`` is row
    ``jpeg_rows[k]``'s file); ``cpu_pixels`` (the images decoded here -- CMYK JPEGs,
    other formats -- flattened, one uint8 tensor) with ``cpu_shapes`` and ``cpu_rows``;
    ``meta`` (one int64 row per sample, columns :data:`META`); ``paths``; and
    ``errors`` (``(row, message)`` of unreadable files, their rows otherwise unused),
    so that the main process decides to raise or skip.
    """
    meta = np.zeros((len(samples), len(META)), dtype=np.int64)
    jpegs, jpeg_rows, cpu_images, cpu_rows, errors, paths = [], [], [], [], [], []
    for row, (index, path, label) in enumerate(samples):
        paths.append(path)
        meta[row, :2] = index, label
        try:
            data, header = _read_one(path, backend_args, cached[row] if cached else None)
            if header is None:
                image = decode_rgb_tensor(data)
                height, width = image.shape[-2:]
            else:
                height, width = header[:2]
        except (OSError, UnidentifiedImageError, RuntimeError, ValueError) as exc:
            errors.append((row, broken_message(path, str(exc))))
            continue
        box, flip = draw_crop_and_flip(height, width, scale, ratio, flip_prob,
                                       sample_seed(seed, epoch, index))
        meta[row, 2:] = (*box, flip, height, width)
        if header is None:
            cpu_images.append(image.reshape(-1))
            cpu_rows.append(row)
        else:
            jpegs.append(data)
            jpeg_rows.append(row)
    offsets = np.zeros(len(jpegs) + 1, dtype=np.int64)
    np.cumsum([len(d) for d in jpegs], out=offsets[1:])
    packed = _shareable_bytes(int(offsets[-1]))
    buffer = memoryview(packed.numpy())
    for k, data in enumerate(jpegs):  # one copy of each file, into the shared tensor
        buffer[offsets[k]:offsets[k + 1]] = data
    return dict(
        data=packed, offsets=torch.from_numpy(offsets),
        jpeg_rows=torch.tensor(jpeg_rows, dtype=torch.int64),
        cpu_pixels=torch.cat(cpu_images) if cpu_images else torch.empty(0, dtype=torch.uint8),
        cpu_shapes=torch.tensor([[3, *meta[r, 7:9]] for r in cpu_rows], dtype=torch.int64),
        cpu_rows=torch.tensor(cpu_rows, dtype=torch.int64),
        meta=torch.from_numpy(meta), paths=paths, errors=errors)


class DecoderError(RuntimeError):
    """The JPEG decoder itself does not work (not a file it refuses)."""


# What torchvision's decoder says when the decoder, not the file, is at fault.
_ENVIRONMENT_FAILURES = ('out of memory', 'nvjpeg support', 'not compiled with',
                         'no such operator', 'could not load', 'image extension',
                         'failed to initialize', 'failed to create', 'failed to synchronize',
                         'cuda error', 'cudaerror', 'cuda driver', 'no kernel image',
                         'device-side assert', 'expected a cuda device')


def is_decoder_failure(exc: BaseException) -> bool:
    """Whether a decoding error comes from the decoder's environment (no nvJPEG, no
    image extension, CUDA out of memory or broken) rather than from one file."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return any(pattern in text for pattern in _ENVIRONMENT_FAILURES)


def _decoder_error(exc: BaseException, device: torch.device) -> DecoderError:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if 'out of memory' in reason.lower():
        hint = "reduce the batch size or the loader's prefetch"
    elif device.type == 'cuda':
        hint = ("torchvision's CUDA decoder needs a torchvision build with nvJPEG (the "
                'PyPI CUDA wheels have it) matching the installed torch')
    else:
        hint = "torchvision's image extension (libjpeg) must load: reinstall torchvision"
    fallback = "; or set device='cpu' on the GPUDecodeLoader to decode on the CPU" \
        if device.type == 'cuda' else ''
    return DecoderError(f'the {device.type} JPEG decoder failed ({reason}): {hint}'
                        f'{fallback}')


def decode_jpegs(datas: List[torch.Tensor], device: torch.device
                 ) -> List[Optional[torch.Tensor]]:
    """Decode JPEG byte tensors to RGB on ``device`` in one batched call; when the
    decoder refuses the batch, file by file, with None for each file it refuses (the
    caller decodes those on the CPU).

    Raises:
        DecoderError: when the decoder, not a file, fails (see
            :func:`is_decoder_failure`): falling back to the CPU for every image would
            slow training down many times without a word.
    """
    if not datas:
        return []
    try:
        return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
    except RuntimeError as exc:
        if is_decoder_failure(exc):
            raise _decoder_error(exc, device) from exc
    out = []
    for data in datas:
        try:
            out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError as exc:
            if is_decoder_failure(exc):
                raise _decoder_error(exc, device) from exc
            out.append(None)
    return out


def resize_crop(image: torch.Tensor, box: Sequence[int], size: int) -> torch.Tensor:
    """Crop ``box`` of a ``(3, H, W)`` uint8 image and resize it to ``(1, 3, size,
    size)`` with antialiased bilinear interpolation (as PIL's, which the CPU pipeline
    uses): one resize kernel on the CPU (its uint8 kernel); cast + resize on the GPU,
    which resizes floats only (the batch is rounded afterwards, in one operation)."""
    top, left, h, w = box
    crop = image[None, :, top:top + h, left:left + w]
    if crop.device.type != 'cpu':
        crop = crop.float()
    return F.interpolate(crop, size=(size, size), mode='bilinear', align_corners=False,
                         antialias=True)


def finish_batch(resized: List[torch.Tensor], flips: torch.Tensor,
                 channels_last: bool) -> torch.Tensor:
    """The batch-wide steps after the per-image resizes: stack, round to uint8 (float
    resizes), flip the rows of ``flips`` horizontally, channels-last if asked -- on a
    GPU a fixed number of operations whatever the batch size. (On the CPU, where no
    launch costs, only the flipped rows are copied: a batch-wide select took 5x as long.)
    """
    batch = torch.cat(resized)
    if batch.is_floating_point():
        batch = batch.round_().clamp_(0, 255).to(torch.uint8)
    if batch.device.type == 'cpu':
        for row in flips.nonzero().flatten().tolist():
            batch[row] = batch[row].flip(-1)
    else:
        flips = flips.to(batch.device, non_blocking=True).view(-1, 1, 1, 1)
        batch = torch.where(flips, batch.flip(-1), batch)
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch
