"""The per-sample pieces of the GPU-decoding loader: reading a file's header and bytes
(in the data-loader workers), drawing the random-resized-crop box and the flip from a
generator seeded by (seed, epoch, sample), decoding with the CPU fallback, and the
antialiased crop-resize. :mod:`repvgg_mm.datasets.gpu_loader` puts them together."""
import io
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from repvgg_mm.datasets.loading import image_is_complete

# Modes nvJPEG decodes to RGB; anything else (CMYK, YCCK, ...) goes to the CPU decoder.
_GPU_JPEG_MODES = ('RGB', 'L')


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit generator seed that depends on (seed, epoch, sample index) only, so a
    sample's augmentation is the same whichever worker draws it and after a resume."""
    state = np.random.SeedSequence([seed % 2**32, epoch, index]).generate_state(2)
    return int(state[0]) << 32 | int(state[1])


def random_resized_crop_box(height: int, width: int, scale: Sequence[float],
                            ratio: Sequence[float],
                            generator: torch.Generator) -> Tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random-resized crop, drawn as torchvision's
    ``RandomResizedCrop.get_params`` draws it (same calls in the same order), from
    ``generator`` instead of the global generator."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1],
                                                     generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1],
                                                   generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = torch.randint(0, height - h + 1, size=(1, ), generator=generator).item()
            left = torch.randint(0, width - w + 1, size=(1, ), generator=generator).item()
            return top, left, h, w
    # fallback to a centre crop, as torchvision
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def broken_message(path: str, reason: str) -> str:
    """The error for an unreadable image, worded as LoadImageChecked's."""
    return (f'cannot read image {path!r}: {reason} (set skip_broken=True on the train '
            'loader to skip such files)')


def decode_on_cpu(data: bytes) -> torch.Tensor:
    """Decode any image file to a ``(3, H, W)`` uint8 RGB tensor on the CPU:
    torchvision's decoders, then PIL (CMYK JPEGs, other formats)."""
    try:
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                            mode=ImageReadMode.RGB)
    except RuntimeError:
        with Image.open(io.BytesIO(data)) as img:
            rgb = np.asarray(img.convert('RGB'))
        return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def read_sample(path: str, label: int, index: int, seed: int, scale: Sequence[float],
                ratio: Sequence[float], flip_prob: float) -> dict:
    """Everything a worker does for one sample: read the bytes, read the header (size,
    format), draw crop box and flip; decode here on the CPU only a file the GPU decoder
    cannot take (not a JPEG, or a JPEG in CMYK/YCCK). A broken file gives an entry with
    ``error`` set instead of raising, so the main process decides (raise or skip)."""
    item = dict(index=index, label=label, path=path, error=None)
    try:
        with open(path, 'rb') as f:
            data = f.read()
        if not data:
            raise OSError('the file is empty')
        if not image_is_complete(data):
            raise OSError('the file is truncated (its end marker is missing)')
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            width, height = img.size
            gpu_ok = img.format == 'JPEG' and img.mode in _GPU_JPEG_MODES
        image = None if gpu_ok else decode_on_cpu(data)
    except (OSError, UnidentifiedImageError, RuntimeError, ValueError) as exc:
        item['error'] = broken_message(path, str(exc))
        return item
    gen = torch.Generator().manual_seed(seed)
    item['box'] = random_resized_crop_box(height, width, scale, ratio, gen)
    item['flip'] = bool(torch.rand(1, generator=gen).item() < flip_prob)
    item['size'] = (height, width)
    if image is None:
        item['bytes'] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    else:
        item['image'] = image
    return item


def decode_jpegs(datas: List[torch.Tensor], device: torch.device
                 ) -> List[Optional[torch.Tensor]]:
    """Decode JPEG byte tensors to RGB on ``device`` in one batched call; when the
    decoder refuses the batch, file by file, with None for each file it refuses."""
    if not datas:
        return []
    try:
        return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        out = []
        for data in datas:
            try:
                out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
        return out


def crop_resize_flip(image: torch.Tensor, box: Tuple[int, int, int, int], size: int,
                     flip: bool) -> torch.Tensor:
    """Crop ``box`` of a ``(3, H, W)`` uint8 image, resize it to ``size`` x ``size``
    with antialiased bilinear interpolation (as PIL's, which the CPU pipeline uses) and
    flip it horizontally if asked."""
    top, left, h, w = box
    out = TF.resized_crop(image, top, left, h, w, [size, size],
                          interpolation=InterpolationMode.BILINEAR, antialias=True)
    return out.flip(-1) if flip else out
