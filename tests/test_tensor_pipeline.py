"""The shipped configs' CPU pipeline on uint8 tensors: pixels against PIL (the
specification's library) for the same crop box and flip, the declared channel order
through the data preprocessor, and the inferencer on such configs."""
import os.path as osp
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import ROOT
from mmengine.config import Config
from mmengine.dataset import Compose
from PIL import Image

from repvgg_mm.datasets.gpu_augment import random_resized_crop_box
from repvgg_mm.datasets.synthetic_imagenet import draw_photo
from repvgg_mm.registry import TRANSFORMS

A0 = osp.join(ROOT, 'configs', 'repvgg-a0.py')


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    """Six ImageNet-sized JPEGs (quality 90), landscape and portrait."""
    folder = tmp_path_factory.mktemp('photos')
    paths = []
    for k in range(6):
        size = (500, 375) if k % 2 else (333, 500)
        path = folder / f'photo{k}.JPEG'
        draw_photo(np.random.RandomState(k), *size).save(path, quality=90)
        paths.append(str(path))
    return paths


def _pipeline(split):
    cfg = Config.fromfile(A0)
    steps = cfg[f'{split}_dataloader'].dataset.pipeline
    return Compose([TRANSFORMS.build(s) for s in steps if s['type'] != 'PackInputs'])


def _pil(path):
    with Image.open(path) as img:
        return img.convert('RGB')


def _diff(ours: torch.Tensor, reference: Image.Image):
    ref = torch.from_numpy(np.array(reference)).permute(2, 0, 1).float()
    diff = (ours.float() - ref).abs()
    return diff.mean().item(), diff.max().item()


def test_train_pipeline_is_pils_augmentation_within_two_grey_levels(photos):
    """The shipped train pipeline against PIL's (decode, crop, bilinear resize, flip)
    for the same box and flip, 24 draws: mean |difference| per image below 0.3 grey
    levels, never more than 2 (measured on a 2-core AMD EPYC, AVX2: at most 0.24 and
    1, 0.035 on average -- the resize kernels' rounding; the decoders agree)."""
    pipeline = _pipeline('train')
    means, peaks, flips = [], [], 0
    for k in range(24):
        path = photos[k % len(photos)]
        random.seed(k)
        out = pipeline(dict(img_path=path))
        random.seed(k)  # the same draws: box, then flip
        reference = _pil(path)
        top, left, h, w = random_resized_crop_box(reference.height, reference.width,
                                                  (0.08, 1.0), (3 / 4, 4 / 3))
        flip = random.random() < 0.5
        reference = reference.crop((left, top, left + w, top + h)).resize(
            (224, 224), Image.BILINEAR)
        if flip:
            reference = reference.transpose(Image.FLIP_LEFT_RIGHT)
        flips += flip
        assert out['flip'] == flip and out['channel_order'] == 'rgb'
        assert out['img'].dtype == torch.uint8 and tuple(out['img'].shape) == (3, 224, 224)
        mean, peak = _diff(out['img'], reference)
        means.append(mean)
        peaks.append(peak)
    assert 0 < flips < 24
    assert max(means) < 0.3, means
    assert max(peaks) <= 2, peaks


def test_test_pipeline_is_pils_within_two_grey_levels(photos):
    """Short side to 224 (the other truncated, as MMPretrain's ResizeEdge), centre crop
    224, against PIL (measured: mean |difference| at most 0.003, peak 1)."""
    pipeline = _pipeline('test')
    for path in photos:
        out = pipeline(dict(img_path=path))
        reference = _pil(path)
        w, h = reference.size
        size = (224, int(224 * h / w)) if w < h else (int(224 * w / h), 224)
        reference = reference.resize(size, Image.BILINEAR)
        top, left = int(round((size[1] - 224) / 2)), int(round((size[0] - 224) / 2))
        reference = reference.crop((left, top, left + 224, top + 224))
        mean, peak = _diff(out['img'], reference)
        assert mean < 0.3 and peak <= 2, (path, mean, peak)


def test_resize_is_torchvisions_and_keeps_the_decoded_layout(photos):
    """The transforms' resize gives torchvision's antialiased resize pixel for pixel
    (crops up and down, whole images, either memory layout) and writes a decoded
    image's crop out in the decoder's H x W x 3 layout (no repacking, the cost it
    saves); the batch the data preprocessor stacks is the usual contiguous one."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    from repvgg_mm.datasets.tensor_transforms import _resize
    with open(photos[1], 'rb') as f:
        img = decode_jpeg(torch.frombuffer(bytearray(f.read()), dtype=torch.uint8),
                          mode=ImageReadMode.RGB)
    assert img.stride()[0] == 1  # the decoder's layout: (3, H, W) over H x W x 3
    rng = random.Random(0)
    for _ in range(40):
        h, w = rng.randint(16, img.shape[1]), rng.randint(16, img.shape[2])
        top, left = rng.randint(0, img.shape[1] - h), rng.randint(0, img.shape[2] - w)
        size = rng.choice([(224, 224), (224, 298), (37, 500)])
        for src in (img[:, top:top + h, left:left + w],
                    img[:, top:top + h, left:left + w].contiguous(), img):
            out = _resize(src, *size)
            expected = TF.resize(src, list(size), interpolation=InterpolationMode.BILINEAR,
                                 antialias=True)
            assert torch.equal(out, expected)
            assert out.stride()[0] == (1 if src.stride()[0] == 1 else size[0] * size[1])
    sample = _pipeline('train')(dict(img_path=photos[0]))['img']
    assert sample.stride()[0] == 1
    from repvgg_mm.registry import MODELS
    batch = MODELS.build(Config.fromfile(A0).data_preprocessor)(
        dict(inputs=[sample, sample], data_samples=None))['inputs']
    assert batch.is_contiguous() and batch.shape == (2, 3, 224, 224)


def test_declared_rgb_reaches_the_model_as_the_bgr_pipeline_does(photos, tmp_path):
    """Through the configs' data preprocessor, the tensor pipeline's RGB batch and the
    MMCV pipeline's BGR batch (LoadImageFromFile + PIL resize) give the model the same
    input, within the decoders' and resizers' rounding; a plain ClsDataPreprocessor
    would swap red and blue, so it is refused."""
    from mmpretrain.models.utils import ClsDataPreprocessor

    from repvgg_mm.engine.hooks import DataModelCheckHook
    from repvgg_mm.registry import DATASETS, MODELS
    cfg = Config.fromfile(A0)
    (tmp_path / 'val' / 'c').mkdir(parents=True)
    for k, path in enumerate(photos):
        Image.open(path).save(tmp_path / 'val' / 'c' / f'{k}.JPEG', quality=95)
    old = [dict(type='LoadImageFromFile'),
           dict(type='ResizeEdge', scale=224, edge='short', backend='pillow',
                interpolation='bilinear'),
           dict(type='CenterCrop', crop_size=224), dict(type='PackInputs')]
    from mmengine.dataset import default_collate
    batches = []
    for pipeline in (cfg.test_pipeline, old):
        dataset = DATASETS.build(dict(type='ImageNetLayoutDataset', data_root=str(tmp_path),
                                      split='val', pipeline=pipeline))
        batches.append(default_collate([dataset[i] for i in range(len(dataset))]))
    preprocessor = MODELS.build(cfg.data_preprocessor)
    assert type(preprocessor).__name__ == 'OrderAwareClsDataPreprocessor'
    ours, theirs = (preprocessor(b)['inputs'] for b in batches)
    std = torch.tensor(cfg.data_preprocessor.std).view(1, 3, 1, 1)
    assert ((ours - theirs) * std).abs().mean() < 1.5  # grey levels
    plain = SimpleNamespace(model=SimpleNamespace(data_preprocessor=ClsDataPreprocessor(
        mean=cfg.data_preprocessor.mean, std=cfg.data_preprocessor.std, to_rgb=True)))
    loader = SimpleNamespace(dataset=DATASETS.build(dict(
        type='ImageNetLayoutDataset', data_root=str(tmp_path), split='val',
        pipeline=cfg.test_pipeline)))
    with pytest.raises(ValueError, match='gives RGB images.*OrderAwareClsDataPreprocessor'):
        DataModelCheckHook._check_channel_order(plain, loader)


def test_inferencer_takes_tensor_configs_from_paths_and_arrays(photos):
    """MMPretrain's inferencer loads images itself (BGR arrays): with a tensor test
    pipeline the loading step becomes the array's conversion, and a file and its
    decoded array classify alike."""
    import mmcv

    from repvgg_mm.apis import RepVGGInferencer, get_model
    cfg = Config.fromfile(A0)
    cfg.model.head.num_classes = cfg.data_preprocessor.num_classes = 10
    cfg.test_dataloader.dataset.metainfo = dict(classes=[str(i) for i in range(10)])
    torch.manual_seed(0)
    inferencer = RepVGGInferencer(get_model(cfg))
    by_path = inferencer(photos[:2])
    by_array = inferencer([mmcv.imread(p) for p in photos[:2]])  # BGR, as MMCV reads
    for a, b in zip(by_path, by_array):
        assert a['pred_label'] == b['pred_label']
        assert np.abs(a['pred_scores'] - b['pred_scores']).max() < 0.02


def test_one_cpu_decoder_for_every_format(photos):
    """The CPU decoder both the tensor pipeline and the GPU-decoding loader's fallback
    use: uint8 RGB ``(3, H, W)`` equal to PIL's conversion for a JPEG, a CMYK JPEG
    (torchvision refuses it), an RGB PNG and a 16-bit greyscale PNG (torchvision gives
    16 bits)."""
    import io

    from repvgg_mm.datasets.loading import decode_rgb_tensor
    photo = _pil(photos[0])
    grey16 = Image.fromarray((np.arange(48 * 64, dtype=np.uint16) * 13).reshape(48, 64))
    cases = [(photo, 'JPEG'), (photo.convert('CMYK'), 'JPEG'), (photo, 'PNG'),
             (grey16, 'PNG')]
    for image, fmt in cases:
        data = io.BytesIO()
        image.save(data, format=fmt, quality=95)
        out = decode_rgb_tensor(data.getvalue())
        with Image.open(io.BytesIO(data.getvalue())) as reference:
            expected = np.asarray(reference.convert('RGB'))
        assert out.dtype == torch.uint8 and tuple(out.shape) == (3, *expected.shape[:2])
        assert torch.equal(out.permute(1, 2, 0), torch.from_numpy(expected)), (fmt, image.mode)
