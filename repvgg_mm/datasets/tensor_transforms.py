"""The CPU pipeline on uint8 tensors: faithful to the original (antialiased bilinear, as
PIL's) at MMPretrain's speed.

The specification trains with PIL: decode, random-resized crop resized with PIL's
antialiased bilinear filter, flip. MMPretrain's stock pipeline decodes and resizes with
OpenCV, which does not antialias; the project's first pipeline kept PIL's resize but
converted every image between NumPy and PIL. These transforms decode with torchvision's
libjpeg-turbo decoder straight into a ``(3, H, W)`` uint8 tensor and resize it with
torch's vectorised antialiased uint8 kernel (within a grey level or two of PIL, tested),
staying in uint8 ``(3, H, W)`` tensors up to ``PackInputs`` -- no NumPy or PIL round
trip, no float. The tensors keep the decoder's ``H x W x 3`` memory layout (see
:func:`_resize`); stacking them into a batch lays them out as the model takes them.

The crop box and the flip follow MMPretrain's ``RandomResizedCrop`` and MMCV's
``RandomFlip`` (the same steps, the same distribution), drawn from Python's generator,
seeded per sample by :class:`~repvgg_mm.datasets.SampleSeedSampler`. The images come out RGB
and say so (``channel_order`` in the sample's meta information), which
:class:`~repvgg_mm.models.OrderAwareClsDataPreprocessor` reads instead of flipping.
EXIF orientation is not applied, as in the original PIL pipeline.
"""
import random
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from mmcv.transforms import BaseTransform
from mmpretrain.datasets.transforms import PackInputs as MMPretrainPackInputs
from mmpretrain.datasets.transforms import RandomResizedCrop as MMPretrainRandomResizedCrop

from repvgg_mm.registry import TRANSFORMS

from .gpu_augment import random_resized_crop_box
from .loading import SKIPPED, decode_rgb_tensor, load_checked


def _resize(img: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Antialiased bilinear resize of a ``(3, H, W)`` uint8 tensor with torch's kernel
    (the one torchvision's ``resize`` calls: the same pixels).

    The decoder's tensors are ``(3, H, W)`` views of ``H x W x 3`` memory, and crops of
    them keep those strides. Given a batch view that keeps them too, the kernel writes
    its output in the same layout; with ``img[None]`` it would repack the output to
    ``(3, H, W)`` memory, a third of the resize's time. The samples stay ``H x W x 3``
    in memory up to the batch: the data preprocessor's stacking (on the training
    device) lays them out as the model takes them.
    """
    # the batch stride: past the last row of the crop, as the layout check asks
    span = max(size * stride for size, stride in zip(img.shape, img.stride()))
    batch = img.as_strided((1, *img.shape), (span, *img.stride()), img.storage_offset())
    return F.interpolate(batch, size=(height, width), mode='bilinear', align_corners=False,
                         antialias=True)[0]


@TRANSFORMS.register_module()
class LoadImageTensor(BaseTransform):
    """Read an image (any MMEngine file backend; ``ARCHIVE.zip@/MEMBER`` paths from a
    zip archive) into a ``(3, H, W)`` uint8 RGB tensor, refusing a truncated or
    undecodable file as :class:`~repvgg_mm.datasets.LoadImageChecked` does.

    Args:
        skip_broken (bool): Return None for a broken image (training draws another
            sample; counted per epoch) instead of failing. Defaults to False.
        backend_args (dict, optional): MMEngine file backend arguments.
    """

    def __init__(self, skip_broken: bool = False, backend_args: Optional[dict] = None) -> None:
        self.skip_broken = skip_broken
        self.backend_args = backend_args
        self.skipped = SKIPPED  # reaches workers of any start method

    def transform(self, results: dict) -> Optional[dict]:
        img = load_checked(results['img_path'], decode_rgb_tensor, self.backend_args,
                           self.skip_broken, 'LoadImageTensor', results.get('img_bytes'),
                           self.skipped)
        if img is None:
            return None
        results['img'] = img
        results['img_shape'] = results['ori_shape'] = tuple(img.shape[-2:])
        results['channel_order'] = 'rgb'
        return results


@TRANSFORMS.register_module()
class ArrayToImageTensor(BaseTransform):
    """An image already loaded as MMCV loads it -- an ``H x W x 3`` BGR uint8 array, as
    MMPretrain's inferencer gives -- as the ``(3, H, W)`` RGB tensor the ``*Tensor``
    transforms take (the inferencer's stand-in for :class:`LoadImageTensor`)."""

    def transform(self, results: dict) -> dict:
        img = results['img']
        if isinstance(img, np.ndarray):
            if img.ndim == 2:
                img = np.repeat(img[..., None], 3, axis=2)
            img = torch.from_numpy(np.ascontiguousarray(img[..., ::-1])).permute(2, 0, 1)
        results['img'] = img
        results['img_shape'] = tuple(img.shape[-2:])
        results['channel_order'] = 'rgb'
        return results


@TRANSFORMS.register_module()
class RandomResizedCropTensor(MMPretrainRandomResizedCrop):
    """MMPretrain's ``RandomResizedCrop`` on a ``(3, H, W)`` uint8 tensor, resized
    with antialiased bilinear interpolation. The box is drawn by the same steps
    (:func:`~repvgg_mm.datasets.gpu_augment.random_resized_crop_box`, torchvision's
    ``get_params``) from Python's generator, which training seeds per sample (MMPretrain
    draws from NumPy's, 3x slower per call). Arguments are MMPretrain's (``max_attempts``
    included: the draws before the centre-crop fallback), except
    ``interpolation``/``backend``: always antialiased bilinear."""

    def transform(self, results: dict) -> dict:
        img = results['img']
        height, width = img.shape[-2:]
        top, left, h, w = random_resized_crop_box(height, width, self.crop_ratio_range,
                                                  self.aspect_ratio_range,
                                                  attempts=self.max_attempts)
        img = _resize(img[:, top:top + h, left:left + w], *self.scale)  # (h, w)
        results['img'] = img
        results['img_shape'] = tuple(img.shape[-2:])
        return results


@TRANSFORMS.register_module()
class RandomFlipTensor(BaseTransform):
    """Flip a ``(3, H, W)`` tensor with probability ``prob`` (drawn from Python's
    generator, which training seeds per sample), setting ``flip`` and
    ``flip_direction`` as MMCV's ``RandomFlip`` does.

    Args:
        prob (float): Probability of a flip. Defaults to 0.5.
        direction (str): ``'horizontal'`` or ``'vertical'``.
    """

    def __init__(self, prob: float = 0.5, direction: str = 'horizontal') -> None:
        if direction not in ('horizontal', 'vertical'):
            raise ValueError(f"RandomFlipTensor flips 'horizontal' or 'vertical', got "
                             f'{direction!r}')
        if not 0 <= prob <= 1:
            raise ValueError(f'prob must be in [0, 1], got {prob}')
        self.prob, self.direction = prob, direction

    def transform(self, results: dict) -> dict:
        flip = random.random() < self.prob
        if flip:
            results['img'] = results['img'].flip(-1 if self.direction == 'horizontal'
                                                 else -2)
        results['flip'] = flip
        results['flip_direction'] = self.direction if flip else None
        return results


@TRANSFORMS.register_module()
class ResizeEdgeTensor(BaseTransform):
    """MMPretrain's ``ResizeEdge`` (one edge to ``scale``, the other in proportion,
    truncated as MMPretrain does) on a ``(3, H, W)`` uint8 tensor, antialiased
    bilinear.

    Args:
        scale (int): Length of the resized edge.
        edge (str): ``'short'``, ``'long'``, ``'width'`` or ``'height'``.
    """

    def __init__(self, scale: int, edge: str = 'short') -> None:
        if edge not in ('short', 'long', 'width', 'height'):
            raise ValueError(f"edge must be 'short', 'long', 'width' or 'height', got {edge!r}")
        self.scale, self.edge = scale, edge

    def transform(self, results: dict) -> dict:
        img = results['img']
        h, w = img.shape[-2:]
        if any([self.edge == 'short' and w < h, self.edge == 'long' and w > h,
                self.edge == 'width']):
            width, height = self.scale, int(self.scale * h / w)
        else:
            width, height = int(self.scale * w / h), self.scale
        if (height, width) != (h, w):
            img = _resize(img, height, width)
        results['img'] = img
        results['img_shape'] = (height, width)
        results['scale'] = (width, height)
        results['scale_factor'] = (width / w, height / h)
        return results


@TRANSFORMS.register_module()
class CenterCropTensor(BaseTransform):
    """MMCV's ``CenterCrop`` (the same box) on a ``(3, H, W)`` tensor.

    Args:
        crop_size (int | tuple): ``size`` or ``(width, height)``, as MMCV's.
    """

    def __init__(self, crop_size: Union[int, Sequence[int]]) -> None:
        self.crop_size = (crop_size, crop_size) if isinstance(crop_size, int) else \
            tuple(crop_size)

    def transform(self, results: dict) -> dict:
        img = results['img']
        height, width = img.shape[-2:]
        crop_w, crop_h = self.crop_size
        top = max(0, int(round((height - crop_h) / 2.)))
        left = max(0, int(round((width - crop_w) / 2.)))
        img = img[:, top:min(height, top + crop_h), left:min(width, left + crop_w)]
        results['img'] = img
        results['img_shape'] = tuple(img.shape[-2:])
        return results


@TRANSFORMS.register_module(name='PackInputs')
class PackInputs(MMPretrainPackInputs):
    """MMPretrain's ``PackInputs``, also keeping ``channel_order`` (set by
    :class:`LoadImageTensor`) in the sample's meta information when present."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if 'channel_order' not in self.meta_keys:
            self.meta_keys = (*self.meta_keys, 'channel_order')
