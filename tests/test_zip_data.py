"""Zip archives in place of split folders (the original's zip mode): the pack tool, the
file backend, the data set's three ways to list an archive, bit-identical training
with both loaders, and every damaged archive."""
import os
import os.path as osp
import shutil
import zipfile

import pytest
import torch
from conftest import DEMO_CONFIG, ROOT, python_tool, tiny_options, tool_in_process
from mmengine import fileio

from repvgg_mm.datasets import ImageNetLayoutDataset
from repvgg_mm.datasets.loading import take_skipped_count
from repvgg_mm.datasets.zip_backend import ZipArchiveError

GPU_DEMO_CONFIG = osp.join(ROOT, 'configs', 'demo', 'repvgg-a0_gpudecode_demo.py')


@pytest.fixture(scope='module')
def zipped(tiny_data, tmp_path_factory):
    """tiny_data packed by tools/dataset/pack_zip.py, run as a user runs it."""
    root = tmp_path_factory.mktemp('zipped') / 'data'
    result = python_tool(osp.join('dataset', 'pack_zip.py'), tiny_data, str(root))
    assert 'train: 60 images' in result.stdout and 'val: 30 images' in result.stdout
    return str(root)


def _samples(dataset):
    return [(dataset.get_data_info(i)['img_path'], dataset.get_data_info(i)['gt_label'])
            for i in range(len(dataset))]


def test_packed_archives_hold_the_files_unchanged(tiny_data, zipped):
    assert sorted(os.listdir(zipped)) == ['train.zip', 'train_list.txt', 'val.zip',
                                          'val_list.txt']
    folder = ImageNetLayoutDataset(data_root=tiny_data, split='train', pipeline=[])
    archive = ImageNetLayoutDataset(data_root=zipped, split='train', pipeline=[])
    pairs = list(zip(_samples(folder), _samples(archive)))
    assert len(pairs) == 60
    with zipfile.ZipFile(osp.join(zipped, 'train.zip')) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    for (path, label), (zip_path, zip_label) in pairs:
        assert zip_path == osp.join(zipped, 'train.zip@/') + osp.relpath(
            path, osp.join(tiny_data, 'train'))
        assert label == zip_label
        with open(path, 'rb') as f:  # read through MMEngine's file I/O, zip backend
            assert fileio.get(zip_path, backend_args=dict(backend='zip')) == f.read()


def test_class_folders_and_the_originals_map_file_inside_an_archive(tiny_data, zipped,
                                                                    tmp_path):
    folder = ImageNetLayoutDataset(data_root=tiny_data, split='val', pipeline=[])
    only_zip = tmp_path / 'only_zip'
    only_zip.mkdir()
    shutil.copy(osp.join(zipped, 'val.zip'), only_zip)
    by_folders = ImageNetLayoutDataset(data_root=str(only_zip), split='val', pipeline=[])
    assert list(by_folders.metainfo['classes']) == sorted(os.listdir(osp.join(tiny_data,
                                                                              'val')))
    listed = {osp.basename(p): label for p, label in _samples(folder)}
    assert {osp.basename(p): label for p, label in _samples(by_folders)} == listed
    # the original's val_map.txt: "<member>\t<label>", labels as given
    (only_zip / 'val_map.txt').write_text('disk/disk_00000.JPEG\t7\nring/ring_00001.JPEG\t3\n')
    mapped = ImageNetLayoutDataset(data_root=str(only_zip), split='val', pipeline=[])
    assert [(osp.basename(p), label) for p, label in _samples(mapped)] == [
        ('disk_00000.JPEG', 7), ('ring_00001.JPEG', 3)]
    (only_zip / 'val_map.txt').write_text('disk/disk_00000.JPEG\t7\nnope/x.JPEG\t3\n')
    with pytest.raises(FileNotFoundError, match=r"val_map.txt:2: .*val.zip has no member "
                                                r"'nope/x.JPEG'"):
        ImageNetLayoutDataset(data_root=str(only_zip), split='val', pipeline=[])


def _train(config, data_root, work_dir, *extra):
    status, _, err = tool_in_process('train.py', config, '--work-dir', str(work_dir),
                                     '--cfg-options', *tiny_options(data_root, epochs=1),
                                     'randomness.deterministic=True', *extra)
    assert status == 0, err[-3000:]
    return torch.load(work_dir / 'epoch_1.pth', map_location='cpu',
                      weights_only=False)['state_dict']


@pytest.mark.parametrize('config, extra, zip_extra', [
    (DEMO_CONFIG, ['train_dataloader.num_workers=1', 'train_dataloader.persistent_workers=True'],
     []),
    (GPU_DEMO_CONFIG, ['train_dataloader.device=cpu', 'train_dataloader.num_workers=2',
                       'train_dataloader.persistent_workers=True'],  # the config's own
     ['train_dataloader.dataset.cache_mode=part'])], ids=['cpu-pipeline', 'gpu-loader-cached'])
def test_training_from_the_archive_equals_training_from_the_folder(
        config, extra, zip_extra, tiny_data, zipped, tmp_path):
    """Same seed, same data: the same weights, bit for bit -- with forked workers
    reading the archive (each reopens it), or the GPU-decoding loader's workers taking
    the bytes from the data set's in-memory cache, and per-sample seeding as from
    files."""
    from_folder = _train(config, tiny_data, tmp_path / 'folder', *extra)
    from_zip = _train(config, zipped, tmp_path / 'zip', *extra, *zip_extra)
    assert from_folder.keys() == from_zip.keys()
    for key, value in from_folder.items():
        assert torch.equal(value, from_zip[key]), key


def _damaged(zipped, tmp_path, name, damage):
    root = tmp_path / name
    root.mkdir()
    shutil.copy(osp.join(zipped, 'val.zip'), root)
    shutil.copy(osp.join(zipped, 'val_list.txt'), root)
    damage(root / 'val.zip')
    return str(root)


def test_damaged_archives_are_named(zipped, tmp_path):
    truncated = _damaged(zipped, tmp_path, 'cut', lambda p: p.write_bytes(
        p.read_bytes()[:len(p.read_bytes()) // 2]))
    with pytest.raises(ZipArchiveError, match=r"val.zip' is not a readable zip archive"):
        ImageNetLayoutDataset(data_root=truncated, split='val', pipeline=[])
    not_zip = _damaged(zipped, tmp_path, 'text', lambda p: p.write_text('hello'))
    with pytest.raises(ZipArchiveError, match=r"val.zip' is not a readable zip archive"):
        ImageNetLayoutDataset(data_root=not_zip, split='val', pipeline=[])

    def flip_a_byte_of_the_first_member(path):
        data = bytearray(path.read_bytes())
        with zipfile.ZipFile(path) as zf:
            info = zf.infolist()[0]
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        data[start + info.file_size // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    crc = _damaged(zipped, tmp_path, 'crc', flip_a_byte_of_the_first_member)
    pipeline = [dict(type='LoadImageFromFile')]
    dataset = ImageNetLayoutDataset(data_root=crc, split='val', pipeline=pipeline)
    first = dataset.get_data_info(0)['img_path']
    with pytest.raises(OSError, match=r"cannot read image .*val.zip@/.*: .*val.zip: member "
                                      r".* cannot be read \(Bad CRC-32"):
        dataset[0]
    assert first.endswith(zipfile.ZipFile(osp.join(crc, 'val.zip')).infolist()[0].filename)
    skipping = ImageNetLayoutDataset(data_root=crc, split='val', pipeline=[
        dict(type='LoadImageFromFile', skip_broken=True)])
    take_skipped_count()
    assert skipping.pipeline(dict(skipping.get_data_info(0))) is None  # skipped, counted
    assert take_skipped_count() == 1


def test_member_names_leading_outside_are_refused(tmp_path):
    from PIL import Image
    root = tmp_path / 'slip'
    root.mkdir()
    Image.new('RGB', (8, 8)).save(tmp_path / 'x.jpg')
    for name in ('../evil/x.jpg', '/abs/x.jpg'):
        with zipfile.ZipFile(root / 'train.zip', 'w') as zf:
            zf.write(tmp_path / 'x.jpg', arcname='cls/x.jpg')
            zf.writestr(zipfile.ZipInfo(name), b'x')
        with pytest.raises(ZipArchiveError, match='absolute path or a ".." component'):
            ImageNetLayoutDataset(data_root=str(root), split='train', pipeline=[])
        os.remove(root / 'train.zip')


def test_pack_tool_refuses_and_leaves_nothing(tiny_data, tmp_path, monkeypatch):
    inside = tool_in_process(osp.join('dataset', 'pack_zip.py'), tiny_data,
                             osp.join(tiny_data, 'packed'))
    assert inside[0] == 1 and 'is inside the source' in inside[2].splitlines()[0]
    assert not osp.exists(osp.join(tiny_data, 'packed'))
    real_write = zipfile.ZipFile.write
    for failure, needle in ((PermissionError(13, 'Permission denied'),
                             'cannot read source image'),
                            (OSError(28, 'No space left on device'),
                             'No space left on device')):
        calls = []

        def write(self, filename, *args, **kwargs):
            calls.append(filename)
            if len(calls) == 5:
                raise failure
            return real_write(self, filename, *args, **kwargs)
        monkeypatch.setattr(zipfile.ZipFile, 'write', write)
        out = tmp_path / 'out'
        status, _, err = tool_in_process(osp.join('dataset', 'pack_zip.py'), tiny_data,
                                         str(out))
        assert status == 1 and needle in err.splitlines()[0], err
        assert not out.exists() or os.listdir(out) == []  # no partial archive or list


def test_data_speed_tool_measures_every_pipeline_from_zip_archives(tiny_data):
    """tools/analysis/data_speed.py: MMPretrain's stock pipeline first, then each
    config per core and with workers, reading zip archives it packs itself."""
    import json

    from conftest import quick_tool
    configs = [osp.join(ROOT, 'configs', name) for name in
               ('repvgg-a0.py', 'repvgg-a0_gpudecode.py')]
    result = quick_tool(osp.join('analysis', 'data_speed.py'), *configs, '--data-root',
                        tiny_data, '--zip', '--images', '16', '--rounds', '1',
                        '--workers', '1')
    rows = [json.loads(ln) for ln in result.stdout.splitlines() if ln.startswith('{')]
    assert [(r['run'].split('/')[-1], r['mode']) for r in rows] == [
        ('imagenet_bs32.py', 'per core'), ('imagenet_bs32.py', '1 workers'),
        ('repvgg-a0.py', 'per core'), ('repvgg-a0.py', '1 workers'),
        ('repvgg-a0_gpudecode.py', 'per core'), ('repvgg-a0_gpudecode.py', '1 workers')]
    assert rows[0]['run'].startswith('mmpretrain::') and all(r['zip'] for r in rows)
    assert all(r['imgs_per_s'] > 0 for r in rows)
    assert rows[-1]['loader'] == 'GPUDecodeLoader'


def _cached(root, split, mode, pipeline=()):
    return ImageNetLayoutDataset(data_root=root, split=split, pipeline=list(pipeline),
                                 cache_mode=mode)


def test_cache_part_keeps_each_ranks_part_and_its_sampler_stays_on_it(zipped, monkeypatch):
    """cache_mode='part' on rank r of 3 holds the bytes of samples r, r+3, ... (as in
    the archive); SampleSeedSampler gives each rank only its part, every epoch, in a
    new order, equally long on every rank; 'full' holds all; one rank samples as
    without the cache."""
    import repvgg_mm.datasets.memory_cache as layout
    from repvgg_mm.datasets import SampleSeedSampler
    with pytest.raises(ValueError, match="cache_mode must be None, 'part' or 'full'"):
        _cached(zipped, 'train', 'some')
    parts, orders = [], {}
    for rank in range(3):
        monkeypatch.setattr(layout, 'get_dist_info', lambda rank=rank: (rank, 3))
        dataset = _cached(zipped, 'train', 'part')
        held = [i for i in range(len(dataset)) if 'img_bytes' in dataset.get_data_info(i)]
        assert held == list(range(rank, 60, 3))
        for i in held[:3]:
            assert dataset.get_data_info(i)['img_bytes'] == fileio.get(
                dataset.get_data_info(i)['img_path'], backend_args=dict(backend='zip'))
        parts.append(set(held))
        sampler = SampleSeedSampler(dataset, shuffle=True, seed=5)
        sampler.rank, sampler.world_size = rank, 3
        sampler.num_samples, sampler.total_size = 20, 60
        for epoch in range(2):
            sampler.set_epoch(epoch)
            orders[rank, epoch] = [int(i) for i in sampler]
            assert sorted(orders[rank, epoch]) == held
        assert orders[rank, 0] != orders[rank, 1]
    assert set.union(*parts) == set(range(60))
    monkeypatch.setattr(layout, 'get_dist_info', lambda: (6, 7))  # 8 of 60: padded to 9
    sampler = SampleSeedSampler(_cached(zipped, 'train', 'part'), shuffle=True, seed=5)
    sampler.rank, sampler.world_size, sampler.num_samples, sampler.total_size = 6, 7, 9, 63
    order = [int(i) for i in sampler]
    assert len(order) == 9 and set(order) == set(range(6, 60, 7))
    from types import SimpleNamespace

    import repvgg_mm.engine.hooks as hooks
    messages = []
    monkeypatch.setattr(hooks, 'print_log', lambda msg, **kw: messages.append(msg))
    seeded = SampleSeedSampler.__new__(SampleSeedSampler)  # only its type matters here
    for sampler in (SimpleNamespace(), seeded):  # a plain shuffling sampler, ours
        sampler.world_size, sampler.shuffle = 2, True
        hooks.DataModelCheckHook._check_cache_sampler(SimpleNamespace(
            dataset=SimpleNamespace(cache_mode='part'), sampler=sampler))
    assert len(messages) == 1 and 'shuffles across ranks' in messages[0]
    monkeypatch.setattr(layout, 'get_dist_info', lambda: (1, 3))
    assert sum('img_bytes' in d for d in map(_cached(zipped, 'train', 'full').get_data_info,
                                             range(60))) == 60
    monkeypatch.setattr(layout, 'get_dist_info', lambda: (0, 1))
    single = SampleSeedSampler(_cached(zipped, 'train', 'part'), shuffle=True, seed=5)
    plain = SampleSeedSampler(_cached(zipped, 'train', None), shuffle=True, seed=5)
    assert [(int(i), i.seed) for i in single] == [(int(i), i.seed) for i in plain]


def test_shipped_loader_reads_the_cache_in_its_workers(zipped, tmp_path):
    """configs/repvgg-a0.py's train loader as it stands (8 persistent forked workers,
    224 px), cache_mode='part', one rank: the batches equal those read from the
    archive -- and still do once the archive is gone (the workers read the cache)."""
    from mmengine.config import Config

    from repvgg_mm.engine.runner import RepVGGRunner
    root = tmp_path / 'data'
    shutil.copytree(zipped, root)
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'repvgg-a0.py'))
    batches = {}
    for mode in (None, 'part'):
        loader_cfg = cfg.train_dataloader.copy()
        loader_cfg['dataset'] = dict(loader_cfg['dataset'], data_root=str(root),
                                     cache_mode=mode)
        loader = RepVGGRunner.build_dataloader(loader_cfg, seed=3)
        assert loader.num_workers == 8 and loader.persistent_workers
        if mode == 'part':
            os.remove(root / 'train.zip')
        batches[mode] = [(b['inputs'], [s.gt_label for s in b['data_samples']])
                         for b in loader]
        del loader
    assert len(batches[None]) == len(batches['part']) == 2
    for (x, y), (cx, cy) in zip(batches[None], batches['part']):
        assert all(torch.equal(a, b) for a, b in zip(x, cx))
        assert all(torch.equal(a, b) for a, b in zip(y, cy))
