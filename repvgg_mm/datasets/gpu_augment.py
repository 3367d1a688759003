"""The per-sample pieces of the GPU-decoding loader: reading a file's header and bytes
(in the data-loader workers), drawing the random-resized-crop box and the flip from a
generator seeded by (seed, epoch, sample), decoding with the CPU fallback, and the
antialiased crop-resize. :mod:`repvgg_mm.datasets.gpu_loader` puts them together."""
import io
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from repvgg_mm.datasets.loading import image_is_complete

# Modes nvJPEG decodes to RGB; anything else (CMYK, YCCK, ...) goes to the CPU decoder.
_GPU_JPEG_MODES = ('RGB', 'L')


def draw_crop_and_flip(height: int, width: int, scale: Sequence[float],
                       ratio: Sequence[float], flip_prob: float,
                       seed: int) -> Tuple[Tuple[int, int, int, int], bool]:
    """The random-resized-crop box ``(top, left, h, w)`` -- drawn by torchvision's
    ``RandomResizedCrop.get_params`` -- and whether to flip, from torch's generator
    seeded with ``seed`` for this sample alone (the caller's random state is kept)."""
    shape_only = torch.empty(1, 1, 1).expand(3, height, width)  # no memory: the size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        box = RandomResizedCrop.get_params(shape_only, list(scale), list(ratio))
        flip = bool(torch.rand(1).item() < flip_prob)
    return tuple(box), flip


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
    item['box'], item['flip'] = draw_crop_and_flip(height, width, scale, ratio, flip_prob,
                                                   seed)
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
