"""The GPU-decoding train loader, exercised on the CPU (same code, CPU decoder)."""
import json
import os.path as osp
import shutil
from types import SimpleNamespace
from unittest import mock

import mmcv
import numpy as np
import pytest
import torch
from conftest import DEMO_CONFIG, ROOT, python_tool, quick_tool
from mmengine.config import Config
from PIL import Image
from torchvision.io import decode_jpeg
from torchvision.transforms import RandomResizedCrop

from repvgg_mm.apis import build_model
from repvgg_mm.datasets.gpu_augment import crop_resize_flip, draw_crop_and_flip
from repvgg_mm.datasets.gpu_loader import build_loader
from repvgg_mm.datasets.samplers import sample_seed
from repvgg_mm.datasets.synthetic_imagenet import draw_photo, make_synthetic_imagenet
from repvgg_mm.engine import ChannelsLastHook

GPU_DEMO_CONFIG = osp.join(ROOT, 'configs', 'demo', 'repvgg-a0_gpudecode_demo.py')


def shipped_loader_cfg(data_root, **overrides):
    """The demo variant's train loader as a user gets it (workers included), on
    ``data_root``."""
    cfg = Config.fromfile(GPU_DEMO_CONFIG).train_dataloader.to_dict()
    cfg['dataset']['data_root'] = data_root
    cfg.update(overrides)
    return cfg


def epoch_batches(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return list(loader)


def indices(batches):
    return [s.sample_idx for b in batches for s in b['data_samples']]


def test_labels_equal_the_datasets(tiny_data):
    loader = build_loader(shipped_loader_cfg(tiny_data, batch_size=7), seed=0)
    labels = loader.dataset.get_gt_labels()
    batches = epoch_batches(loader, 0)
    seen = indices(batches)
    assert sorted(seen) == list(range(len(loader.dataset)))
    got = [int(s.gt_label) for b in batches for s in b['data_samples']]
    assert got == [int(labels[i]) for i in seen]
    assert len(batches) == len(loader) == -(-len(loader.dataset) // 7)
    first = batches[0]['inputs']
    assert first.dtype == torch.uint8 and first.shape == (7, 3, 32, 32)


def test_two_ranks_see_every_image_once_and_epochs_reshuffle(tiny_data):
    def rank_loader(rank, **overrides):
        with mock.patch('mmengine.dataset.sampler.get_dist_info', return_value=(rank, 2)):
            return build_loader(shipped_loader_cfg(tiny_data, batch_size=4, **overrides),
                                seed=3)

    ranks = [rank_loader(0), rank_loader(1)]
    n = len(ranks[0].dataset)
    epoch0 = [epoch_batches(r, 0) for r in ranks]
    seen = [indices(b) for b in epoch0]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(n))
    epoch1 = [epoch_batches(r, 1) for r in ranks]  # persistent workers, next epoch
    assert sorted(indices(epoch1[0]) + indices(epoch1[1])) == list(range(n))
    assert indices(epoch1[0]) != seen[0]
    # the same (seed, epoch) from a fresh loader without workers: same order, same pixels
    fresh = rank_loader(0, num_workers=0, prefetch=0)
    again = epoch_batches(fresh, 1)
    assert indices(again) == indices(epoch1[0])
    for a, b in zip(again, epoch1[0]):
        assert torch.equal(a['inputs'], b['inputs'])


def test_crop_boxes_match_torchvision_and_rrc_ranges():
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    areas, aspects = [], []
    for seed in range(1000):
        height, width = (375, 500) if seed % 2 else (500, 333)
        state = torch.get_rng_state()
        ours, _ = draw_crop_and_flip(height, width, scale, ratio, 0.5, sample_seed(0, 1, seed))
        assert torch.equal(torch.get_rng_state(), state)  # the global state is untouched
        torch.manual_seed(sample_seed(0, 1, seed))
        theirs = RandomResizedCrop.get_params(torch.empty(3, height, width), scale, ratio)
        assert ours == tuple(theirs)
        top, left, h, w = ours
        assert 0 <= top <= height - h and 0 <= left <= width - w
        areas.append(h * w / (height * width))
        aspects.append(w / h)
    areas, aspects = np.array(areas), np.array(aspects)
    assert areas.min() >= 0.07 and areas.max() <= 1.0
    assert aspects.min() >= 0.74 and aspects.max() <= 1.35
    # area ~ U(0.08, 1) (mean 0.54), but large crops with an extreme aspect do not fit
    # the image and are drawn again, which pulls the mean down
    assert 0.3 < areas.mean() < 0.54
    assert areas.max() > 0.9 and areas.min() < 0.1  # the whole range is used
    assert abs(np.log(aspects).mean()) < 0.02  # log-uniform, symmetric around 1
    # a very wide image falls back to torchvision's centre crop
    assert draw_crop_and_flip(10, 400, scale, ratio, 0.5, 0)[0] == (0, 193, 10, 13)


def test_resize_agrees_with_the_cpu_pipeline(tmp_path):
    path = str(tmp_path / 'photo.JPEG')
    draw_photo(np.random.RandomState(1), 500, 375).save(path, quality=90)
    data = open(path, 'rb').read()
    box = (40, 60, 250, 300)
    ours = crop_resize_flip(decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8)),
                            box, 224, flip=True)
    # configs/repvgg-a0.py: OpenCV decode (BGR), crop, PIL bilinear resize, flip
    top, left, h, w = box
    bgr = mmcv.imfrombytes(data)
    crop = mmcv.imcrop(bgr, np.array([left, top, left + w - 1, top + h - 1]))
    ref = mmcv.imflip(mmcv.imresize(crop, (224, 224), interpolation='bilinear',
                                    backend='pillow'), 'horizontal')
    ref = torch.from_numpy(ref[..., ::-1].copy()).permute(2, 0, 1)  # RGB
    diff = (ours.float() - ref.float()).abs()
    # the same crop shifted by 8 px differs by ~30 grey levels on average
    assert diff.mean() < 1.0, diff.mean()
    assert diff.max() <= 3


@pytest.fixture
def odd_files_data(tiny_data, tmp_path):
    """The tiny data with a CMYK JPEG, a PNG named .JPEG and a truncated JPEG."""
    root = str(tmp_path / 'odd')
    shutil.copytree(tiny_data, root)
    lines = open(osp.join(root, 'train_list.txt')).read().split('\n')
    paths = [osp.join(root, line.rsplit(' ', 1)[0]) for line in lines[:3]]
    for path, kind in zip(paths, ('cmyk', 'png', 'broken')):
        img = Image.open(path).convert('RGB')
        if kind == 'cmyk':
            img.convert('CMYK').save(path, format='JPEG', quality=95)
        elif kind == 'png':
            img.save(path, format='PNG')
        else:
            data = open(path, 'rb').read()
            open(path, 'wb').write(data[:len(data) // 2])
    return root, paths


def test_cmyk_and_png_go_through_the_cpu_fallback(odd_files_data):
    root, (cmyk, png, broken) = odd_files_data
    loader = build_loader(shipped_loader_cfg(root, batch_size=8, skip_broken=True,
                                             scale=(1.0, 1.0), ratio=(1.0, 1.0),
                                             flip_prob=0.0), seed=0)
    batches = epoch_batches(loader, 0)
    assert loader.epoch_stats == dict(images=len(loader.dataset) - 1, cpu_decoded=2,
                                      skipped=1)
    by_path = {s.img_path: b['inputs'][k] for b in batches
               for k, s in enumerate(b['data_samples'])}
    assert broken not in by_path
    for path in (cmyk, png):  # full-image crop of a 32x32 image: the decoded pixels
        expected = np.asarray(Image.open(path).convert('RGB'))[..., ::-1]  # BGR
        got = by_path[path].permute(1, 2, 0).numpy()
        assert np.abs(got.astype(int) - expected).mean() < 1.0


def test_broken_jpeg_is_named_in_the_error(odd_files_data):
    root, (_, _, broken) = odd_files_data
    loader = build_loader(shipped_loader_cfg(root, batch_size=8, num_workers=0), seed=0)
    with pytest.raises(OSError, match='truncated') as info:
        epoch_batches(loader, 0)
    assert repr(broken) in str(info.value) and 'skip_broken' in str(info.value)


def test_prefetch_thread_gives_the_same_batches(tiny_data):
    make = lambda prefetch: build_loader(shipped_loader_cfg(
        tiny_data, num_workers=0, batch_size=16, prefetch=prefetch, channels_last=True),
        seed=5)
    eager, ahead = epoch_batches(make(0), 2), epoch_batches(make(2), 2)
    assert len(eager) == len(ahead)
    for a, b in zip(eager, ahead):
        assert torch.equal(a['inputs'], b['inputs'])
        assert b['inputs'].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_train_one_epoch_with_the_gpu_decode_config(tiny_data, tmp_path):
    """tools/train.py with the demo variant as shipped (its 2 persistent workers)."""
    work_dir = tmp_path / 'work'
    quick_tool('train.py', GPU_DEMO_CONFIG, '--work-dir', str(work_dir), '--cfg-options',
               *[f'{s}_dataloader.dataset.data_root={tiny_data}'
                 for s in ('train', 'val', 'test')],
               'train_cfg.max_epochs=1', 'train_dataloader.batch_size=16',
               'default_hooks.logger.interval=1')
    assert (work_dir / 'epoch_1.pth').is_file()
    logs = ''.join(p.read_text() for p in work_dir.rglob('*.log'))
    assert 'Epoch(train) [1][4/4]' in logs and 'loss:' in logs
    assert 'accuracy/top1' in logs


@pytest.mark.slow
def test_synthetic_imagenet_and_train_speed_tool(tmp_path):
    """The synthetic set has ImageNet's layout and file sizes; train_speed.py trains both
    loaders and the model alone through the Runner and prints one JSON line each."""
    root = tmp_path / 'synthetic'
    info = make_synthetic_imagenet(str(root), images=20, val_images=0, classes=10)
    assert info['train'] == 20 and 40 < info['mean_kb'] < 200
    lines = (root / 'train_list.txt').read_text().splitlines()
    assert len(lines) == 20 and len({line.split('/')[1] for line in lines}) == 10
    with Image.open(root / lines[0].rsplit(' ', 1)[0]) as img:
        assert img.format == 'JPEG' and min(img.size) >= 300
    out = python_tool('analysis/train_speed.py', DEMO_CONFIG, GPU_DEMO_CONFIG,
                      '--data-root', str(root), '--model-only', '--iters', '2',
                      '--warmup', '1', '--batch-size', '4')
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{')]
    assert [r['run'] for r in results] == [DEMO_CONFIG, GPU_DEMO_CONFIG, 'model-only']
    assert [r['loader'] for r in results] == ['DataLoader', 'GPUDecodeLoader',
                                              'fixed batch on device']
    for r in results:
        assert r['images'] == 8 and r['imgs_per_s'] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_gpu_and_cpu_paths_agree(tiny_data):
    batches = {}
    for device in ('cpu', 'cuda'):
        loader = build_loader(shipped_loader_cfg(tiny_data, device=device, batch_size=16),
                              seed=0)
        batches[device] = epoch_batches(loader, 0)
    for a, b in zip(batches['cpu'], batches['cuda']):
        assert b['inputs'].is_cuda
        assert [s.sample_idx for s in a['data_samples']] == \
            [s.sample_idx for s in b['data_samples']]
        assert (a['inputs'].float() - b['inputs'].cpu().float()).abs().mean() < 3


def test_speed_options_compose_with_the_gpu_decode_config(tmp_path):
    cfg_path = tmp_path / 'fast.py'
    configs = osp.join(ROOT, 'configs')
    cfg_path.write_text(f"_base_ = ['{configs}/repvgg-a0_gpudecode.py', "
                        f"'{configs}/_base_/options/channels_last.py', "
                        f"'{configs}/_base_/options/compile.py']\n")
    cfg = Config.fromfile(str(cfg_path))
    assert cfg.compile is True
    assert [h['type'] for h in cfg.custom_hooks] == ['ChannelsLastHook']
    loader = cfg.train_dataloader
    assert loader.type == 'GPUDecodeLoader' and 'pipeline' not in loader.dataset
    assert (loader.crop_size, tuple(loader.scale), loader.flip_prob) == (224, (0.08, 1.0), 0.5)
    model = build_model(cfg)
    ChannelsLastHook().before_run(SimpleNamespace(model=model, logger=mock.Mock()))
    weight = model.backbone.stage0.rbr_dense.conv.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert not weight.is_contiguous()
