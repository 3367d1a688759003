"""What only shows at cluster scale: ranks' shuffles in cache part mode, the zip member
table shared with forked workers, the packer under signals and odd files, workers of
every start method, subsets of a cached data set, and worker errors as one line."""
import json
import os
import os.path as osp
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import DEMO_CONFIG, ROOT, quick_tool, tiny_options, tool_in_process
from mmengine.config import Config

from repvgg_mm.cli import error_message
from repvgg_mm.datasets import ImageNetLayoutDataset, SampleSeedSampler
from repvgg_mm.datasets.loading import take_skipped_count
from repvgg_mm.datasets.synthetic_imagenet import make_member_archive
from repvgg_mm.datasets.zip_backend import (
    ZipIndex,
    archive_index,
    read_member,
)

A0_CONFIG = osp.join(ROOT, 'configs', 'repvgg-a0.py')


# -- 1. every rank its own shuffle in cache part mode ------------------------------------
def test_ranks_draw_different_classes_in_part_mode_as_without_the_cache():
    """8 simulated ranks, 100 classes x 130 samples sorted by class: the ranks' samples
    at one step span as many classes as MMEngine's sampler gives without the cache
    (before: all ranks drew one class at almost every step)."""
    status, out, err = tool_in_process(osp.join('analysis', 'sampler_overlap.py'),
                                       '--per-class', '130', '--epochs', '2')
    assert status == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    part, plain, before = (result[k] for k in ('cache_part', 'no_cache',
                                                 'cache_part_one_seed'))
    assert part['mean_distinct_classes_per_step'] > 0.97 * plain[
        'mean_distinct_classes_per_step'] > 7
    assert part['steps_all_ranks_one_class'] < 0.01
    assert part['first_global_batch_classes'] >= 0.9 * plain['first_global_batch_classes']
    assert before['steps_all_ranks_one_class'] > 0.9  # what the tool compares against


def test_part_order_is_reproducible_per_rank_and_epoch():
    class Part:
        cache_mode = 'part'

        def __len__(self):
            return 40

        def part_indices(self):
            return list(range(self.rank, 40, 4))

    orders = {}
    for rank in range(4):
        for run in range(2):  # a resumed run sees the same order
            dataset = Part()
            dataset.rank = rank
            with mock.patch('mmengine.dataset.sampler.get_dist_info', return_value=(rank, 4)):
                sampler = SampleSeedSampler(dataset, shuffle=True, seed=3)
            for epoch in (0, 1):
                sampler.set_epoch(epoch)
                order = [int(i) for i in sampler]
                assert sorted(order) == list(range(rank, 40, 4))
                assert orders.setdefault((rank, epoch), order) == order
    assert orders[0, 0] != orders[0, 1]
    # ranks differ in the positions they draw (before: all the same permutation)
    positions = {r: [i // 4 for i in orders[r, 0]] for r in range(4)}
    assert len({tuple(p) for p in positions.values()}) == 4


# -- 2. the zip member table ---------------------------------------------------------------
def _write_zip(path, members, compression=zipfile.ZIP_STORED, **kwargs):
    with zipfile.ZipFile(path, 'w', compression, **kwargs) as zf:
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), data,
                        compress_type=compression)


def test_index_reads_every_member_as_zipfile_does_zip64_and_deflate_included(tmp_path):
    rng = np.random.default_rng(0)
    members = [(f'c{i % 7}/img_{i}.JPEG', rng.bytes(int(rng.integers(0, 3000))))
               for i in range(300)]
    members.append(('c0/caf\u00e9.JPEG', b'utf-8 name'))
    # ZIP64 extra fields and a ZIP64 end record, as zipfile writes them past its limits
    with mock.patch.object(zipfile, 'ZIP64_LIMIT', 1500), \
            mock.patch.object(zipfile, 'ZIP_FILECOUNT_LIMIT', 100):
        _write_zip(tmp_path / 'z64.zip', members)
    _write_zip(tmp_path / 'deflated.zip', members, zipfile.ZIP_DEFLATED)
    for name in ('z64.zip', 'deflated.zip'):
        path = str(tmp_path / name)
        index = ZipIndex(path)
        with zipfile.ZipFile(path) as zf:
            assert index.names() == zf.namelist()
            for i, (member, data) in enumerate(members):
                assert index.read(index.find(member)) == data == zf.read(member)
        assert index.find('c0/missing.JPEG') == -1
        found = index.find_many([m for m, _ in members[::-1]] + ['nope'])
        assert found.tolist() == list(range(len(members)))[::-1] + [-1]
    with open(tmp_path / 'z64.zip', 'rb') as f:
        assert b'PK\x06\x06' in f.read()  # the ZIP64 end record was there to read


def test_index_is_built_once_and_shared_with_a_forked_worker(tmp_path):
    """The parent builds the table; a forked worker reads through it (no second table,
    the same descriptor) and its first read costs no table."""
    make_member_archive(str(tmp_path), members=20000, classes=100)
    archive = str(tmp_path / 'train.zip')
    index = archive_index(archive)
    member = index.name(12345)
    assert read_member(f'{archive}@/{member}') == member.encode()[-12:]
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            with mock.patch.object(ZipIndex, '_parse', side_effect=AssertionError):
                start = time.perf_counter()
                data = read_member(f'{archive}@/{index.name(777)}')
                again = archive_index(archive) is index
                os.write(writer, json.dumps([data.decode(), again,
                                             time.perf_counter() - start]).encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as f:
        data, same, seconds = json.loads(f.read())
    os.waitpid(pid, 0)
    assert data == index.name(777)[-12:] and same and seconds < 0.5


def test_list_file_of_a_large_archive_builds_compactly(tmp_path):
    """20,000 listed members: the samples, labels and checks as before, the labels
    kept as one array, a member missing from the archive named with its line."""
    make_member_archive(str(tmp_path), members=20000, classes=100)
    dataset = ImageNetLayoutDataset(data_root=str(tmp_path), split='train', pipeline=[])
    assert len(dataset) == 20000
    labels = dataset.get_gt_labels()
    assert labels.dtype == np.int64 and labels[:5].tolist() == [0, 1, 2, 3, 4]
    info = dataset.get_data_info(12345)
    assert info['img_path'] == osp.join(str(tmp_path), 'train.zip@/n00000045/'
                                        'n00000045_0000123.JPEG')
    assert info['list_line'] == f"{tmp_path / 'train_list.txt'}:12346"
    assert info['gt_label'] == 45 == labels[12345]
    lines = (tmp_path / 'train_list.txt').read_text().splitlines()
    lines[15000] = 'train.zip@/n00000000/not_there.JPEG 0'
    (tmp_path / 'train_list.txt').write_text('\n'.join(lines) + '\n')
    with pytest.raises(FileNotFoundError, match=r"train_list.txt:15001: image .*not_there"
                                                r".JPEG' does not exist"):
        ImageNetLayoutDataset(data_root=str(tmp_path), split='train', pipeline=[])


def test_map_file_is_read_with_the_list_files_rules(tmp_path):
    _write_zip(tmp_path / 'val.zip', [('a/x.JPEG', b'1'), ('b/y.JPEG', b'2')])
    (tmp_path / 'val_map.txt').write_bytes(b'\xef\xbb\xbfa/x.JPEG\t3\r\nb/y.JPEG\t4\n')
    dataset = ImageNetLayoutDataset(data_root=str(tmp_path), split='val', pipeline=[])
    assert [dataset.get_data_info(i)['img_path'].rsplit('@/', 1)[1] for i in range(2)] == \
        ['a/x.JPEG', 'b/y.JPEG']  # the BOM is not part of the first member
    assert dataset.get_gt_labels().tolist() == [3, 4]
    (tmp_path / 'val_map.txt').write_bytes(b'a/x.JPEG\t3\nb/\xff.JPEG\t4\n')
    with pytest.raises(ValueError, match=r"val_map.txt:2: not UTF-8 text \(byte b'\\xff' "
                                         r'at column 3\)'):
        ImageNetLayoutDataset(data_root=str(tmp_path), split='val', pipeline=[])


# -- 5. the packer -------------------------------------------------------------------------
def test_packer_takes_links_and_old_files_and_cleans_up_after_a_killed_run(tiny_data,
                                                                         tmp_path):
    src = tmp_path / 'src'
    shutil.copytree(tiny_data, src)
    outside = tmp_path / 'elsewhere.JPEG'
    first = sorted((src / 'train').glob('*/*.JPEG'))[0]
    shutil.move(first, outside)
    os.symlink(outside, first)  # an image kept elsewhere, linked into the class folder
    old = sorted((src / 'val').glob('*/*.JPEG'))[0]
    os.utime(old, (0, 0))  # 1970: before zip's first representable date
    dst = tmp_path / 'dst'
    dst.mkdir()
    stale = dst / '.train.zip.abc123.tmp'  # a killed run's leftover
    stale.write_bytes(b'x' * 1000)
    status, out, err = tool_in_process(osp.join('dataset', 'pack_zip.py'), str(src), str(dst))
    assert status == 0, err
    assert not stale.exists() and str(stale) in out + err
    assert sorted(os.listdir(dst)) == ['train.zip', 'train_list.txt', 'val.zip',
                                       'val_list.txt']
    with zipfile.ZipFile(dst / 'train.zip') as zf:
        member = osp.relpath(first, src / 'train')
        assert zf.read(member) == outside.read_bytes()  # the link's name, target's bytes
    with zipfile.ZipFile(dst / 'val.zip') as zf:
        info = zf.getinfo(osp.relpath(old, src / 'val'))
        assert info.date_time == (1980, 1, 1, 0, 0, 0) and zf.read(info) == old.read_bytes()


def test_packer_killed_by_sigterm_leaves_nothing(tiny_data, tmp_path):
    """SIGTERM in the middle of writing an archive: the tool exits 143 and no file,
    temporary or final, is left in the destination."""
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    shutil.copytree(tiny_data, src)
    big = sorted((src / 'train').glob('*/*.JPEG'))[-1]
    with open(big, 'wb') as f:  # 300 MB to copy and verify: time to be interrupted
        f.truncate(300 * 2**20)
    proc = subprocess.Popen([sys.executable, osp.join(ROOT, 'tools', 'dataset', 'pack_zip.py'),
                             str(src), str(dst), '--splits', 'train'],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not any(
            n.startswith('.train.zip.') for n in (os.listdir(dst) if dst.exists() else [])):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert 'interrupted by SIGTERM' in err
    assert os.listdir(dst) == []


# -- 6. workers of any start method --------------------------------------------------------
def _as_list(batch):
    return batch


def _loader(dataset, **kwargs):
    return torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=1,
                                       collate_fn=_as_list, **kwargs)


def test_spawned_workers_count_skipped_images_and_refuse_a_large_cache(tiny_data, tmp_path,
                                                                       monkeypatch):
    root = tmp_path / 'data'
    shutil.copytree(tiny_data, root)
    broken = sorted((root / 'train').glob('*/*.JPEG'))[0]
    broken.write_bytes(broken.read_bytes()[:100])
    pipeline = [dict(type='LoadImageFromFile', skip_broken=True)]
    dataset = ImageNetLayoutDataset(data_root=str(root), split='train', pipeline=pipeline)
    take_skipped_count()
    batches = list(_loader(dataset, multiprocessing_context='spawn'))
    assert sum(len(b) for b in batches) == len(dataset)
    assert take_skipped_count() >= 1  # counted in the spawned worker, seen here
    import repvgg_mm.datasets.memory_cache as layout
    monkeypatch.setattr(layout, 'SPAWN_CACHE_LIMIT', 1000)
    cached = ImageNetLayoutDataset(data_root=str(root), split='val', pipeline=[],
                                   cache_mode='full')
    with pytest.raises(RuntimeError) as info:
        list(_loader(cached, multiprocessing_context='spawn'))
    assert "cache_mode='full' holds" in str(info.value)
    assert "multiprocessing_context='fork'" in error_message(info.value)
    assert list(_loader(cached, multiprocessing_context='fork'))  # shared, not copied


# -- 7. subsets keep each sample's bytes ---------------------------------------------------
def test_subsets_of_a_cached_data_set_keep_each_samples_bytes(tiny_data):
    dataset = ImageNetLayoutDataset(data_root=tiny_data, split='val', pipeline=[],
                                    cache_mode='full')

    def check(subset, rows):
        assert len(subset) == len(rows)
        for k, row in enumerate(rows):
            info = subset.get_data_info(k)
            assert info['img_path'] == dataset.get_data_info(row)['img_path']
            with open(info['img_path'], 'rb') as f:
                assert info['img_bytes'] == f.read()
        assert np.shares_memory(subset._cache, dataset._cache)  # not copied

    check(dataset.get_subset([7, 2, 20]), [7, 2, 20])
    check(dataset.get_subset(-3), [27, 28, 29])
    check(dataset.get_subset(4), [0, 1, 2, 3])
    inplace = ImageNetLayoutDataset(data_root=tiny_data, split='val', pipeline=[],
                                    cache_mode='full')
    inplace.get_subset_([5, 1])
    assert inplace.get_data_info(0)['img_bytes'] == dataset.get_data_info(5)['img_bytes']
    assert inplace.get_gt_labels().tolist() == [dataset.get_gt_labels()[5],
                                                dataset.get_gt_labels()[1]]


# -- 8. max_attempts -----------------------------------------------------------------------
def test_random_resized_crop_tensor_honours_max_attempts():
    import random

    from repvgg_mm.datasets import RandomResizedCropTensor
    img = torch.arange(60 * 200, dtype=torch.int64).remainder(251).to(torch.uint8)
    img = img.view(1, 60, 200).expand(3, 60, 200).contiguous()
    outputs = {}
    for attempts in (0, 10):
        crop = RandomResizedCropTensor(scale=16, max_attempts=attempts)
        seen = set()
        for seed in range(12):
            random.seed(seed)
            out = crop.transform(dict(img=img))['img']
            assert out.shape == (3, 16, 16)
            seen.add(out.numpy().tobytes())
        outputs[attempts] = seen
    # no draw at all: torchvision's centre-crop fallback (here 80x60), every time
    assert len(outputs[0]) == 1
    assert len(outputs[10]) > 6  # with draws, boxes vary


# -- 9. worker errors as one line ----------------------------------------------------------
def test_an_error_in_a_worker_of_the_shipped_loader_is_the_one_line_without_workers(
        tiny_data, tmp_path):
    """configs/repvgg-a0.py's own train loader (8 persistent workers, fork): a zero-byte
    JPEG stops it with the line the same error gives in the main process."""
    root = tmp_path / 'data'
    shutil.copytree(tiny_data, root)
    for path in (root / 'train').glob('*/*.JPEG'):
        path.write_bytes(b'')
    cfg = Config.fromfile(A0_CONFIG)
    assert cfg.train_dataloader.num_workers == 8 and cfg.train_dataloader.persistent_workers
    cfg.train_dataloader.dataset.data_root = str(root)
    from repvgg_mm.engine.runner import RepVGGRunner
    lines = []
    for workers in (8, 0):
        loader_cfg = cfg.train_dataloader.copy()
        loader_cfg.num_workers = workers
        loader_cfg.persistent_workers = workers > 0
        loader = RepVGGRunner.build_dataloader(loader_cfg, seed=0)
        with pytest.raises(OSError) as info:
            next(iter(loader))
        lines.append(error_message(info.value))
    assert lines[0] == lines[1]
    assert lines[0].startswith('OSError: cannot read image ') and '\n' not in lines[0]
    assert 'skip_broken=True' in lines[0]


def test_train_tool_reports_a_worker_error_in_one_line(data_copy_with_workers):
    result = quick_tool('train.py', DEMO_CONFIG, '--work-dir',
                        str(data_copy_with_workers / 'w'), '--cfg-options',
                        *tiny_options(str(data_copy_with_workers), persistent_workers=2),
                        check=False)
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith('train.py:')]
    assert result.returncode == 1
    assert errors[0].startswith("train.py: error: OSError: cannot read image '"), errors
    assert 'DataLoader worker' not in result.stderr and 'Traceback' not in result.stderr
    assert len(errors) == 2  # the line and the REPVGG_MM_DEBUG hint


@pytest.fixture
def data_copy_with_workers(tiny_data, tmp_path):
    root = tmp_path / 'data'
    shutil.copytree(tiny_data, root)
    for path in (root / 'train').glob('*/*.JPEG'):
        path.write_bytes(b'')
    return root


def test_data_speed_zip_copy_is_removed_on_sigterm(tiny_data, tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, osp.join(ROOT, 'tools', 'analysis', 'data_speed.py'), DEMO_CONFIG,
         '--data-root', tiny_data, '--zip', '--images', '60', '--rounds', '5000',
         '--no-reference'], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not any(
            osp.isfile(osp.join(tmp_path, d, 'train.zip')) for d in os.listdir(tmp_path)):
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert not [d for d in os.listdir(tmp_path) if d.startswith('data_speed_zip_')]
