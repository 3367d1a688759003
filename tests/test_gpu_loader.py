"""The GPU-decoding train loader, exercised on the CPU (same code, CPU decoder)."""
import glob
import json
import os.path as osp
import random
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
from repvgg_mm.datasets.gpu_augment import draw_crop_and_flip, finish_batch, resize_crop
from repvgg_mm.datasets.gpu_loader import build_loader
from repvgg_mm.datasets.samplers import sample_seed
from repvgg_mm.datasets.synthetic_imagenet import draw_photo, make_synthetic_imagenet
from repvgg_mm.engine import ChannelsLastHook

GPU_DEMO_CONFIG = osp.join(ROOT, 'configs', 'demo', 'repvgg-a0_gpudecode_demo.py')


def shipped_loader_cfg(data_root, **overrides):
    """The demo variant's train loader as a user gets it (workers included), on
    ``data_root``, on the CPU (the GPU tests ask for CUDA themselves)."""
    cfg = Config.fromfile(GPU_DEMO_CONFIG).train_dataloader.to_dict()
    cfg['dataset']['data_root'] = data_root
    cfg['device'] = 'cpu'
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


def _ks_statistic(a, b):
    """Two-sample Kolmogorov-Smirnov distance between two samples."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return np.abs(np.searchsorted(a, grid, side='right') / len(a)
                  - np.searchsorted(b, grid, side='right') / len(b)).max()


def test_crop_boxes_have_torchvisions_distribution_and_depend_on_the_seed_alone():
    """The cheap per-sample generator draws boxes distributed as torchvision's
    RandomResizedCrop.get_params (two-sample KS tests on area, aspect ratio and
    position, 4,000 boxes each; the 1 % critical distance is 0.036), the same box for
    the same seed every time, and leaves every global generator alone."""
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    ours, theirs = [], []
    torch.manual_seed(0)
    for seed in range(4000):
        height, width = (375, 500) if seed % 2 else (500, 333)
        state, py_state = torch.get_rng_state(), random.getstate()
        box, _ = draw_crop_and_flip(height, width, scale, ratio, 0.5, sample_seed(0, 1, seed))
        assert torch.equal(torch.get_rng_state(), state) and random.getstate() == py_state
        assert (box, True) != draw_crop_and_flip(height, width, scale, ratio, 1.0, seed + 1)
        assert draw_crop_and_flip(height, width, scale, ratio, 0.5,
                                  sample_seed(0, 1, seed))[0] == box
        top, left, h, w = box
        assert 0 <= top <= height - h and 0 <= left <= width - w
        ours.append((h * w / (height * width), w / h, top / max(height - h, 1),
                     left / max(width - w, 1)))
        top, left, h, w = RandomResizedCrop.get_params(torch.empty(3, height, width),
                                                       list(scale), list(ratio))
        theirs.append((h * w / (height * width), w / h, top / max(height - h, 1),
                       left / max(width - w, 1)))
    ours, theirs = np.array(ours), np.array(theirs)
    for column in range(4):
        assert _ks_statistic(ours[:, column], theirs[:, column]) < 0.036, column
    flips = [draw_crop_and_flip(375, 500, scale, ratio, 0.5, s)[1] for s in range(4000)]
    assert abs(np.mean(flips) - 0.5) < 0.03
    areas, aspects = ours[:, 0], ours[:, 1]
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
    image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    ours = finish_batch([resize_crop(image, box, 224)], torch.tensor([True]), False)[0]
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
        expected = np.asarray(Image.open(path).convert('RGB'))  # RGB batches
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
    """tools/train.py with the demo variant as shipped (its 2 persistent workers), the
    decoder on the CPU on any machine."""
    work_dir = tmp_path / 'work'
    quick_tool('train.py', GPU_DEMO_CONFIG, '--work-dir', str(work_dir), '--cfg-options',
               *[f'{s}_dataloader.dataset.data_root={tiny_data}'
                 for s in ('train', 'val', 'test')], 'train_dataloader.device=cpu',
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
    reference = 'mmpretrain::repvgg/repvgg-A0_8xb32_in1k.py'  # its stock config, its Runner
    out = python_tool('analysis/train_speed.py', DEMO_CONFIG, GPU_DEMO_CONFIG,
                      '--reference', reference, '--data-root', str(root), '--model-only',
                      '--iters', '2', '--warmup', '1', '--batch-size', '4', '--workers', '1')
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{')]
    assert [r['run'] for r in results] == [reference, DEMO_CONFIG, GPU_DEMO_CONFIG,
                                           'model-only']
    assert [r['loader'] for r in results] == ['DataLoader', 'DataLoader', 'GPUDecodeLoader',
                                              'fixed batch on device']
    (row, ) = [ln for ln in out.stdout.splitlines() if ln.startswith(reference + ' ')]
    assert row.endswith(' 1.00')  # the ratios' base
    for r in results:
        assert r['images'] == 8 and r['imgs_per_s'] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_gpu_and_cpu_paths_agree_on_the_same_decoded_pixels(tiny_data):
    """Decoded on the GPU -- every clean JPEG (none fell back to the CPU) -- the batches
    equal the CPU path's within one grey level when both start from the same decoded
    pixels (the CPU loader is given nvJPEG's output): crop boxes, flips, order and
    labels are the same, and the float GPU resize rounds within 1 of the CPU's uint8
    kernel (measured on an H200: mean 0.18, max 1)."""
    from repvgg_mm.datasets import gpu_loader
    real = gpu_loader.decode_jpegs

    def nvjpeg_then_cpu(datas, device):
        return [None if image is None else image.cpu()
                for image in real(datas, torch.device('cuda'))]

    batches = {}
    for device in ('cpu', 'cuda'):
        loader = build_loader(shipped_loader_cfg(tiny_data, device=device, batch_size=16),
                              seed=0)
        with mock.patch.object(gpu_loader, 'decode_jpegs',
                               nvjpeg_then_cpu if device == 'cpu' else real):
            batches[device] = epoch_batches(loader, 0)
        assert loader.epoch_stats['cpu_decoded'] == 0, loader.epoch_stats
        assert loader.epoch_stats['images'] == len(loader.dataset)
    for a, b in zip(batches['cpu'], batches['cuda']):
        assert b['inputs'].is_cuda and not a['inputs'].is_cuda
        assert [s.sample_idx for s in a['data_samples']] == \
            [s.sample_idx for s in b['data_samples']]
        assert [int(s.gt_label) for s in a['data_samples']] == \
            [int(s.gt_label) for s in b['data_samples']]
        assert (a['inputs'].int() - b['inputs'].cpu().int()).abs().max() <= 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_nvjpeg_and_the_cpu_decoder_differ_by_chroma_upsampling_only(tiny_data, tmp_path):
    """nvJPEG and libjpeg-turbo upsample 4:2:0 chroma differently, so decoded pixels
    differ most at colour edges. Measured on an H200 (torch 2.11, torchvision 0.26):
    the demo's 32x32 images, saturated colours, mean 3.9 (p99 35); photo-like
    500x333 images mean 1.9 (p99 9). Bounds with headroom over those; a decoder that
    swapped channels or misplaced blocks differs by tens on average."""
    photo = tmp_path / 'photo.jpg'
    draw_photo(np.random.RandomState(0), 500, 333).save(photo, quality=90)
    demo = sorted(glob.glob(osp.join(tiny_data, 'train', '*', '*.JPEG')))
    for files, bound in ((demo, 6.0), ([str(photo)], 3.0)):
        diffs = []
        for path in files:
            data = torch.frombuffer(bytearray(open(path, 'rb').read()), dtype=torch.uint8)
            cpu = decode_jpeg(data)
            gpu = decode_jpeg(data, device='cuda').cpu()
            assert cpu.shape == gpu.shape
            diffs.append((cpu.float() - gpu.float()).abs().flatten())
        assert torch.cat(diffs).mean() < bound, (files[0], torch.cat(diffs).mean())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_delayed_side_stream_changes_no_pixel(tiny_data):
    """The decoder writes from its own CUDA stream into memory allocated on the
    loader's side stream. With that stream held back by a long kernel after every
    batch, memory still in use there must not be handed to the next decode: prefetched
    batches equal the ones made without prefetching, bit for bit."""
    from repvgg_mm.datasets import gpu_loader
    real = gpu_loader.finish_batch

    def finish_then_stall(*args, **kwargs):
        batch = real(*args, **kwargs)
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time queued on this stream
        return batch

    results = {}
    for prefetch in (0, 2):
        loader = build_loader(shipped_loader_cfg(tiny_data, device='cuda', batch_size=8,
                                                 prefetch=prefetch), seed=0)
        with mock.patch.object(gpu_loader, 'finish_batch', finish_then_stall):
            results[prefetch] = [b['inputs'].cpu() for b in epoch_batches(loader, 0)]
    assert len(results[0]) == len(results[2])
    for a, b in zip(results[0], results[2]):
        assert torch.equal(a, b)


@pytest.fixture
def many_samples(tiny_data, tmp_path):
    """A list file of 520 samples over the tiny data's 60 train images."""
    lines = open(osp.join(tiny_data, 'train_list.txt')).read().split()
    pairs = list(zip(lines[::2], lines[1::2]))
    (tmp_path / 'many.txt').write_text(
        ''.join(f'{pairs[i % len(pairs)][0]} {pairs[i % len(pairs)][1]}\n'
                for i in range(520)))
    return str(tmp_path / 'many.txt')


def test_batch_256_with_4_workers_under_512_open_files(tiny_data, many_samples):
    """A batch crosses from a worker as a few packed tensors, not one shared-memory
    file per image: batch 256 with 4 workers runs under `ulimit -n 512` (it failed
    under 256 with 2 workers when every file was a tensor of its own)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    loader = build_loader(shipped_loader_cfg(
        tiny_data, batch_size=256, num_workers=4,
        dataset=dict(type='ImageNetLayoutDataset', data_root=tiny_data,
                     list_file=many_samples)), seed=0)
    # the samples stay in MMEngine's serialised buffer, not in a list per worker
    reader = loader._loader.dataset
    assert reader.dataset.serialize_data and not reader.dataset.data_list
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    try:
        batches = epoch_batches(loader, 0)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert [len(b['data_samples']) for b in batches] == [256, 256, 8]
    assert batches[0]['inputs'].shape == (256, 3, 32, 32)


def test_decoder_failures_are_errors_refused_files_fall_back(tiny_data):
    """A decoder that does not work (no nvJPEG, out of memory) stops with one line
    saying what to do; a file the decoder refuses is decoded on the CPU and counted,
    in the stats, the message hub and -- above 1 % of the epoch -- a warning."""
    from mmengine.logging import MessageHub

    from repvgg_mm.datasets import gpu_augment, gpu_loader
    from repvgg_mm.datasets.gpu_augment import DecoderError
    make = lambda: build_loader(shipped_loader_cfg(tiny_data, num_workers=0, batch_size=16,
                                                   prefetch=0), seed=0)
    for failure, needle in (
            (RuntimeError('decode_jpegs_cuda: torchvision not compiled with nvJPEG '
                          'support'), 'build with nvJPEG'),
            (torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.0 GiB'),
             'reduce the batch size')):
        with mock.patch.object(gpu_augment, 'decode_jpeg', side_effect=failure):
            with pytest.raises(DecoderError, match=needle) as info:  # as on a GPU machine
                gpu_augment.decode_jpegs([torch.ones(9, dtype=torch.uint8)],
                                         torch.device('cuda', 0))
        assert "device='cpu'" in str(info.value) and len(str(info.value).splitlines()) == 1
    # through the loader: the epoch stops, nothing is decoded elsewhere in silence
    with mock.patch.object(gpu_augment, 'decode_jpeg',
                           side_effect=RuntimeError('No such operator image::decode_jpegs')):
        with pytest.raises(DecoderError, match='the cpu JPEG decoder failed.*image extension'):
            epoch_batches(make(), 0)
    real = gpu_augment.decode_jpeg
    refused = []

    def refuse_first_file(data, **kwargs):
        if isinstance(data, list):  # the batched call fails as a whole ...
            raise RuntimeError('Error while decoding JPEG images: Failed to get image info')
        if not refused:  # ... and, file by file, only the first file is refused
            refused.append(data)
            raise RuntimeError('Error while decoding JPEG images: Failed to get image info')
        return real(data, **kwargs)
    loader = make()
    with mock.patch.object(gpu_augment, 'decode_jpeg', side_effect=refuse_first_file), \
            mock.patch.object(gpu_loader, 'print_log') as log:
        batches = epoch_batches(loader, 0)
    assert loader.epoch_stats == dict(images=60, cpu_decoded=1, skipped=0)
    assert MessageHub.get_current_instance().get_scalar('train/cpu_decoded').current() == 1
    (call, ) = log.call_args_list
    assert call.kwargs['level'] == 30 and '1 of 60 images (1.7 %)' in call.args[0]
    assert sum(len(b['data_samples']) for b in batches) == 60


def test_rgb_batches_need_no_flip_and_a_plain_preprocessor_is_refused(tiny_data):
    """The loader's RGB batch, declared as such, gives the model exactly the input the
    same batch in BGR gives through MMPretrain's usual flip; a preprocessor that would
    flip it anyway is an error before training."""
    from mmpretrain.models.utils import ClsDataPreprocessor

    from repvgg_mm.engine.hooks import DataModelCheckHook
    from repvgg_mm.models import OrderAwareClsDataPreprocessor
    settings = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                    to_rgb=True)
    loader = build_loader(shipped_loader_cfg(tiny_data, num_workers=0, batch_size=8), seed=0)
    batch = epoch_batches(loader, 0)[0]
    assert batch['channel_order'] == 'rgb'
    ours = OrderAwareClsDataPreprocessor(**settings)(batch, True)['inputs']
    bgr = dict(inputs=batch['inputs'].flip(1), data_samples=batch['data_samples'])
    torch.testing.assert_close(ours, ClsDataPreprocessor(**settings)(bgr, True)['inputs'],
                               rtol=0, atol=0)
    as_bgr = build_loader(shipped_loader_cfg(tiny_data, num_workers=0, batch_size=8,
                                             channel_order='bgr'), seed=0)
    torch.testing.assert_close(epoch_batches(as_bgr, 0)[0]['inputs'], bgr['inputs'])
    runner = SimpleNamespace(model=SimpleNamespace(
        data_preprocessor=ClsDataPreprocessor(**settings)))
    with pytest.raises(ValueError, match="OrderAwareClsDataPreprocessor"):
        DataModelCheckHook._check_channel_order(runner, loader)
    runner.model.data_preprocessor = OrderAwareClsDataPreprocessor(**settings)
    DataModelCheckHook._check_channel_order(runner, loader)


def test_speed_options_compose_with_the_gpu_decode_config(tmp_path, tiny_data):
    """channels-last + EMA + compile + TensorBoard in one config: every option's hook
    is there, and channels-last reaches the loader's batches."""
    from repvgg_mm.engine.runner import merge_option_keys
    cfg_path = tmp_path / 'fast.py'
    options = osp.join(ROOT, 'configs', '_base_', 'options')
    cfg_path.write_text(f"_base_ = ['{ROOT}/configs/repvgg-a0_gpudecode.py', "
                        + ', '.join(f"'{options}/{name}.py'" for name in
                                    ('channels_last', 'ema', 'compile', 'tensorboard'))
                        + ']\n')
    cfg = Config.fromfile(str(cfg_path))
    assert cfg.compile is True
    assert merge_option_keys(cfg) == ['custom_hooks_channels_last', 'custom_hooks_ema',
                                      'vis_backends_tensorboard']
    assert [h['type'] for h in cfg.custom_hooks] == ['ChannelsLastHook', 'EMAHook']
    assert [b['type'] for b in cfg.visualizer.vis_backends] == ['LocalVisBackend',
                                                                'TensorboardVisBackend']
    loader_cfg = cfg.train_dataloader
    assert loader_cfg.type == 'GPUDecodeLoader' and 'pipeline' not in loader_cfg.dataset
    assert (loader_cfg.crop_size, tuple(loader_cfg.scale), loader_cfg.flip_prob) == \
        (224, (0.08, 1.0), 0.5)
    model = build_model(cfg)
    loader = build_loader(shipped_loader_cfg(tiny_data, num_workers=0, batch_size=4), seed=0)
    runner = SimpleNamespace(model=model, logger=mock.Mock(),
                             train_loop=SimpleNamespace(dataloader=loader))
    hook = ChannelsLastHook()
    hook.before_run(runner)  # on the CPU: off, saying why (oneDNN's NHWC 1x1 backward)
    assert 'oneDNN #6035' in runner.logger.warning.call_args.args[0]
    weight = model.backbone.stage0.rbr_dense.conv.weight
    assert weight.is_contiguous() and not loader.channels_last
    with mock.patch.object(ChannelsLastHook, '_on_cpu', return_value=False):  # as on a GPU
        hook.before_run(runner)
        hook.before_train(runner)
    weight = model.backbone.stage0.rbr_dense.conv.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert not weight.is_contiguous()
    loader.sampler.set_epoch(0)
    batch = next(iter(loader))['inputs']
    assert batch.is_contiguous(memory_format=torch.channels_last) and not batch.is_contiguous()


def test_compile_option_compiles_the_network_not_the_training_step():
    """MMEngine would hand the whole train_step (autocast set-up, optimizer step) to
    torch.compile, which Dynamo failed to trace on a GPU; RepVGGRunner compiles the
    backbone, neck and head, and leaves train_step as it is."""
    from repvgg_mm.engine.runner import RepVGGRunner
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'repvgg-a0.py'))
    model = build_model(cfg)
    runner = SimpleNamespace(model=model, logger=mock.Mock(),
                             cfg=Config(dict(compile=dict(backend='eager'))))
    train_step = model.train_step
    RepVGGRunner._maybe_compile(runner, 'val_step')  # MMEngine compiles train_step only
    assert model.backbone._compiled_call_impl is None
    RepVGGRunner._maybe_compile(runner, 'train_step')
    for part in (model.backbone, model.neck, model.head):
        assert part._compiled_call_impl is not None
    assert model._compiled_call_impl is None and model.train_step == train_step
    assert 'backbone, neck, head compiled' in runner.logger.info.call_args.args[0]
    assert not any(k.startswith('_orig_mod') for k in model.state_dict())
    runner.cfg.compile = False
    model.backbone._compiled_call_impl = None
    RepVGGRunner._maybe_compile(runner, 'train_step')
    assert model.backbone._compiled_call_impl is None


def test_gpu_check_script_stops_at_once_without_cuda(tmp_path):
    """tools/analysis/gpu_speed_check.sh checks CUDA before installing or writing
    anything: one line and status 1 here."""
    import sys

    from conftest import run_tool
    result = run_tool('bash', 'tools/analysis/gpu_speed_check.sh', str(tmp_path / 'data'),
                      env={'PYTHON': sys.executable, 'WHEELS': str(tmp_path / 'none')},
                      check=False)
    assert result.returncode == 1, result.stderr
    (line, ) = result.stderr.strip().splitlines()
    assert line.startswith('gpu_speed_check.sh:') and 'sees no CUDA device' in line
    assert not (tmp_path / 'data').exists()
