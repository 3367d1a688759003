"""Image loading that never trains on a silently broken image."""
import io
import multiprocessing
from typing import Any, Callable, Optional

import mmcv
import numpy as np
import torch
from mmcv.transforms import LoadImageFromFile as MMCVLoadImageFromFile
from mmengine import fileio
from PIL import Image
from torchvision.io import ImageReadMode, decode_image

from repvgg_mm.registry import TRANSFORMS

from .zip_backend import backend_args_for


class SkipCounter:
    """A count of skipped images shared by a process and its data-loader workers,
    however they start: a fork shares it; a worker started by spawn or forkserver gets
    the same shared memory with the loading transform that holds it (the transform
    travels to the worker pickled). Each worker adds to a slot of its own (no lock, no
    semaphore: none of the start methods' restrictions on sharing them apply). Deep
    copies stay the same counter; a plain pickle elsewhere starts a new one."""

    SLOTS = 256

    def __init__(self, slots=None) -> None:
        self.slots = slots if slots is not None else multiprocessing.RawArray('q', self.SLOTS)

    def add(self, n: int = 1) -> None:
        info = torch.utils.data.get_worker_info()
        slot = 0 if info is None else 1 + info.id % (self.SLOTS - 1)
        self.slots[slot] += n

    def take(self) -> int:
        """The count so far, reset to zero (call it while the workers are idle)."""
        total = 0
        for slot in range(self.SLOTS):
            value = self.slots[slot]
            if value:
                total += value
                self.slots[slot] -= value
        return total

    def __deepcopy__(self, memo) -> 'SkipCounter':
        return self

    def __reduce__(self):
        from multiprocessing.context import get_spawning_popen
        if get_spawning_popen() is not None:  # starting a worker: share the counter
            return SkipCounter, (self.slots,)
        return SkipCounter, ()


# Images skipped so far by this process's loading transforms and their workers.
SKIPPED = SkipCounter()


def image_is_complete(data: bytes) -> bool:
    """False for a JPEG or PNG whose end marker is missing -- a file cut short, which
    OpenCV would otherwise decode partially with only a warning."""
    if data[:3] == b'\xff\xd8\xff':
        # the usual case without copying the file; some writers pad with zeros
        return data.endswith(b'\xff\xd9') or data.rstrip(b'\x00').endswith(b'\xff\xd9')
    if data[:8] == b'\x89PNG\r\n\x1a\n':
        return b'IEND' in data[-12:]
    return True


def decode_rgb_tensor(data: bytes) -> torch.Tensor:
    """Decode an image file's bytes on the CPU to a ``(3, H, W)`` uint8 RGB tensor:
    torchvision's decoders (libjpeg-turbo for JPEGs), PIL for what they refuse or give
    in 16 bits (CMYK JPEGs, 16-bit PNGs, other formats). The tensor is a view of
    ``H x W x 3`` memory, as decoded."""
    try:
        img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                           mode=ImageReadMode.RGB)
        if img.dtype == torch.uint8:  # 16-bit PNGs decode to uint16: PIL's 8 bits
            return img
    except RuntimeError:
        pass
    with Image.open(io.BytesIO(data)) as pil:
        rgb = np.asarray(pil.convert('RGB'))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


def read_image_bytes(path: str, backend_args: Optional[dict] = None) -> bytes:
    """The bytes of an image file through MMEngine's file I/O (``ARCHIVE.zip@/MEMBER``
    paths through the zip backend), refusing an empty or truncated file.

    Raises:
        OSError: saying what is wrong with the file.
    """
    return checked_bytes(fileio.get(path, backend_args=backend_args_for(path, backend_args)))


def checked_bytes(data: bytes) -> bytes:
    """``data`` if it is a whole image file; otherwise an ``OSError`` saying what is
    wrong (empty, truncated)."""
    if not data:
        raise OSError('the file is empty (0 bytes)')
    if not image_is_complete(data):
        raise OSError('the file is truncated (its end marker is missing)')
    return data


def load_checked(path: str, decode: Callable[[bytes], Any], backend_args: Optional[dict],
                 skip_broken: bool, step: str, cached: Optional[bytes] = None,
                 counter: Optional[SkipCounter] = None) -> Any:
    """Read and decode one image for a loading transform (``step``, named in the
    error): the decoded image, or None when it is broken and ``skip_broken`` (counted
    in ``counter``, the transform's, for the epoch's report); otherwise an ``OSError``
    naming the file. ``cached``: the file's bytes, already read (a data set's in-memory
    cache), checked the same way."""
    try:
        return decode(read_image_bytes(path, backend_args) if cached is None
                      else checked_bytes(cached))
    except Exception as exc:
        if skip_broken:
            (counter or SKIPPED).add()
            return None
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OSError(f'cannot read image {path!r}: {reason} (set skip_broken=True on {step} '
                      'in the train pipeline to skip such files)') from exc


def take_skipped_count() -> int:
    """Images skipped since the last call (all workers of this process together)."""
    return SKIPPED.take()


@TRANSFORMS.register_module(name='LoadImageFromFile')
class LoadImageChecked(MMCVLoadImageFromFile):
    """MMCV's ``LoadImageFromFile`` (which it shadows in our scope) that refuses
    truncated and undecodable images, naming the file.

    Args:
        skip_broken (bool): Instead of failing, return None for such an image: in
            training MMEngine's dataset then draws another sample, and
            :class:`~repvgg_mm.engine.hooks.BrokenImageReportHook` reports how many were
            skipped at the end of each epoch. Test/val datasets never skip (a skipped
            test image would change the metric). Defaults to False.
        **kwargs: Those of MMCV's ``LoadImageFromFile``.
    """

    def __init__(self, *args, skip_broken: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.skip_broken = skip_broken
        self.skipped = SKIPPED  # reaches workers of any start method

    def _decode(self, data: bytes) -> np.ndarray:
        img = mmcv.imfrombytes(data, flag=self.color_type, backend=self.imdecode_backend)
        if img is None:
            raise OSError('it is not a decodable image')
        return img

    def transform(self, results: dict) -> Optional[dict]:
        img = load_checked(results['img_path'], self._decode, self.backend_args,
                           self.skip_broken, 'LoadImageFromFile', results.get('img_bytes'),
                           self.skipped)
        if img is None:
            return None
        if self.to_float32:
            img = img.astype(np.float32)
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results
