import copy
import hashlib
import os
import os.path as osp
import shutil

import numpy as np
import pytest
import torch
from conftest import DEMO_CONFIG, ROOT
from PIL import Image

from repvgg_mm.datasets import ImageNetLayoutDataset, generate_demo_dataset
from repvgg_mm.datasets.demo_data import DEMO_CLASSES
from repvgg_mm.registry import DATASETS


def test_lists_and_folders_give_the_same_samples(tiny_data, tmp_path):
    with_lists = ImageNetLayoutDataset(tiny_data, split='val')
    assert with_lists.ann_file.endswith('val_list.txt')
    folders_only = tmp_path / 'no_lists'
    shutil.copytree(osp.join(tiny_data, 'val'), folders_only / 'val')
    from_folders = ImageNetLayoutDataset(str(folders_only), split='val')
    assert from_folders.ann_file == ''
    assert from_folders.metainfo['classes'] == tuple(sorted(DEMO_CLASSES))

    def samples(ds, root):
        return sorted((osp.relpath(ds.get_data_info(i)['img_path'], root),
                       ds.get_data_info(i)['gt_label']) for i in range(len(ds)))
    assert len(with_lists) == 30
    assert samples(with_lists, tiny_data) == samples(from_folders, str(folders_only))


def test_dataset_builds_from_our_registry(tiny_data):
    ds = DATASETS.build(dict(type='ImageNetLayoutDataset', data_root=tiny_data,
                             split='train'))
    assert len(ds) == 60


def test_missing_data_root_names_path_and_layout(tmp_path):
    missing = str(tmp_path / 'nowhere')
    with pytest.raises(FileNotFoundError) as info:
        ImageNetLayoutDataset(missing, split='train')
    assert missing in str(info.value) and 'train_list.txt' in str(info.value)


def test_missing_split_and_list(tmp_path):
    os.makedirs(tmp_path / 'val')
    with pytest.raises(FileNotFoundError, match='train'):
        ImageNetLayoutDataset(str(tmp_path), split='train')
    with pytest.raises(FileNotFoundError, match='custom.txt'):
        ImageNetLayoutDataset(str(tmp_path), split='val', list_file='custom.txt')


def _digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            with open(osp.join(dirpath, name), 'rb') as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


def test_demo_generator_is_deterministic(tmp_path):
    a, b = tmp_path / 'a', tmp_path / 'b'
    counts = generate_demo_dataset(str(a), train_per_class=2, val_per_class=1, workers=1)
    # drawn by two processes: the same bytes
    generate_demo_dataset(str(b), train_per_class=2, val_per_class=1, workers=2)
    assert counts == {'train': 20, 'val': 10}
    assert _digest(a) == _digest(b)
    lines = (a / 'train_list.txt').read_text().splitlines()
    path, label = lines[0].rsplit(' ', 1)
    assert path.startswith('train/') and path.endswith('.JPEG') and label == '0'
    assert (a / path).is_file()


def test_mean_colour_does_not_give_the_class_away(tmp_path):
    """A nearest-centroid classifier on mean RGB stays near chance (10%)."""
    generate_demo_dataset(str(tmp_path), train_per_class=40, val_per_class=20)

    def features(split):
        xs, ys = [], []
        for line in (tmp_path / f'{split}_list.txt').read_text().splitlines():
            path, label = line.rsplit(' ', 1)
            xs.append(np.asarray(Image.open(tmp_path / path), dtype=np.float64)
                      .reshape(-1, 3).mean(0))
            ys.append(int(label))
        return np.stack(xs), np.array(ys)

    xtr, ytr = features('train')
    xva, yva = features('val')
    centroids = np.stack([xtr[ytr == c].mean(0) for c in range(10)])
    pred = np.argmin(((xva[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == yva).mean() < 0.3


def _epoch_samples(loader, epoch):
    """Each sample of one epoch, in order: (image path, label, augmented image)."""
    loader.sampler.set_epoch(epoch)
    return [(s.img_path, s.gt_label.item(), x) for b in loader
            for x, s in zip(b['inputs'], b['data_samples'])]


def test_augmentation_depends_only_on_seed_epoch_and_sample(tiny_data):
    """With the shipped sampler, each sample's random augmentation is the same whatever
    the workers (none, 2 persistent, fresh ones as after a resume): the condition for
    kill + resume to be exact with the shipped data-loader settings."""
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(DEMO_CONFIG)
    assert cfg.train_dataloader.sampler.type == 'SampleSeedSampler'
    # the ImageNet configs' loaders: persistent workers (the demo's loads in-process)
    imagenet = Config.fromfile(osp.join(ROOT, 'configs', 'repvgg-a0.py')).train_dataloader
    assert imagenet.sampler.type == 'SampleSeedSampler'
    assert imagenet.num_workers >= 1 and imagenet.persistent_workers

    def build(workers, persistent):
        loader_cfg = copy.deepcopy(cfg.train_dataloader)
        loader_cfg.update(num_workers=workers, persistent_workers=persistent, batch_size=16)
        loader_cfg.dataset.data_root = tiny_data
        return Runner.build_dataloader(loader_cfg, seed=0)

    persistent = build(2, True)
    epoch0, epoch1 = (_epoch_samples(persistent, e) for e in (0, 1))
    fresh = _epoch_samples(build(2, True), 1)  # a resumed run starts new workers at epoch 1
    in_process = _epoch_samples(build(0, False), 1)
    for other in (fresh, in_process):
        assert [s[:2] for s in other] == [s[:2] for s in epoch1]
        assert all(torch.equal(a[2], b[2]) for a, b in zip(epoch1, other))
    # the order and the augmentation of a sample still change from epoch to epoch
    assert [s[0] for s in epoch0] != [s[0] for s in epoch1]
    first = {path: x for path, _, x in epoch0}
    changed = sum(not torch.equal(first[path], x) for path, _, x in epoch1)
    assert changed > len(epoch1) // 2
