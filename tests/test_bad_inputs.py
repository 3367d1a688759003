"""Bad inputs get clear errors naming the file, line or value -- never a silent result."""
import shutil

import pytest
import torch
from conftest import DEMO_CONFIG, plant_crafted_checkpoint, quick_tool, tiny_options

from repvgg_mm.datasets import ImageNetLayoutDataset


@pytest.fixture
def data_copy(tiny_data, tmp_path):
    root = tmp_path / 'data'
    shutil.copytree(tiny_data, root)
    return root


def rewrite_line(root, split, number, text):
    path = root / f'{split}_list.txt'
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text('\n'.join(lines) + '\n')
    return path


@pytest.mark.parametrize('text,message', [
    ('train/disk/disk_00000.JPEG', 'expected "<image path> <label>"'),
    ('train/disk/disk_00000.JPEG two', "label 'two' is not an integer"),
    ('train/disk/disk_00000.JPEG -1', 'label -1 is negative'),
    ('train/disk/missing.JPEG 2', "image '"),
])
def test_bad_list_lines_name_file_and_line(data_copy, text, message):
    path = rewrite_line(data_copy, 'train', 7, text)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        ImageNetLayoutDataset(str(data_copy), split='train')
    assert f'{path}:7' in str(info.value) and message in str(info.value)


def test_empty_class_folder_is_an_error(data_copy):
    (data_copy / 'val_list.txt').unlink()
    for image in (data_copy / 'val' / 'star').iterdir():
        image.unlink()
    with pytest.raises(ValueError, match="class folder .*star.* holds no image"):
        ImageNetLayoutDataset(str(data_copy), split='val')


def test_label_beyond_num_classes_through_train_tool(data_copy, tmp_path):
    rewrite_line(data_copy, 'train', 5, 'train/bars/bars_00004.JPEG 12')
    result = quick_tool('train.py', DEMO_CONFIG, '--work-dir', str(tmp_path / 'w'),
                         '--cfg-options', *tiny_options(str(data_copy)), check=False)
    assert result.returncode == 1
    assert 'train_list.txt:5: label 12 is >= num_classes=10' in result.stderr


def test_num_classes_mismatch_through_train_tool(data_copy, tmp_path):
    for split in ('train', 'val'):
        (data_copy / f'{split}_list.txt').unlink()  # folder layout: 10 class folders
    result = quick_tool('train.py', DEMO_CONFIG, '--work-dir', str(tmp_path / 'w'),
                         '--cfg-options', *tiny_options(str(data_copy)),
                         'model.head.num_classes=7', 'data_preprocessor.num_classes=7',
                         check=False)
    assert result.returncode == 1
    assert 'num_classes=7' in result.stderr and 'has 10 classes' in result.stderr


def test_nan_loss_stops_with_iteration_and_hint(tiny_data, tmp_path):
    result = quick_tool('train.py', DEMO_CONFIG, '--work-dir', str(tmp_path),
                         '--cfg-options', *tiny_options(tiny_data),
                         'data_preprocessor.std=[0,0,0]', check=False)
    assert result.returncode == 1
    assert 'the training loss is nan at iteration 1 (epoch 1)' in result.stderr
    assert 'lower the learning rate' in result.stderr
    assert not list(tmp_path.glob('epoch_*.pth'))


def test_load_from_refuses_a_crafted_pickle(tiny_data, tmp_path):
    marker = tmp_path / 'code_ran'

    evil = plant_crafted_checkpoint(tmp_path / 'evil.pth', marker)
    result = quick_tool('train.py', DEMO_CONFIG, '--work-dir', str(tmp_path / 'w'),
                         '--cfg-options', *tiny_options(tiny_data), f'load_from={evil}',
                         check=False)
    assert result.returncode == 1 and f'refusing to load {str(evil)!r}' in result.stderr
    assert not marker.exists()


def test_image_is_complete_detects_cut_files(tiny_data):
    from pathlib import Path

    from repvgg_mm.datasets import image_is_complete
    data = next(Path(tiny_data, 'train', 'disk').iterdir()).read_bytes()
    assert image_is_complete(data)
    assert not image_is_complete(data[:len(data) // 2])


def _break_first_image(root, how):
    line = (root / 'train_list.txt').read_text().splitlines()[0]
    path = root / line.rsplit(' ', 1)[0]
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if how == 'truncate' else b'not an image at all')
    return path


@pytest.mark.parametrize('how', ['truncate', 'garbage'])
def test_broken_image_fails_naming_the_file(data_copy, tmp_path, how):
    path = _break_first_image(data_copy, how)
    result = quick_tool('train.py', DEMO_CONFIG, '--work-dir', str(tmp_path / 'w'),
                         '--cfg-options', *tiny_options(str(data_copy)), check=False)
    assert result.returncode == 1
    assert f'cannot read image {str(path)!r}' in result.stderr
    assert 'skip_broken=True' in result.stderr


def test_skip_broken_counts_skipped_images(data_copy, tmp_path):
    _break_first_image(data_copy, 'truncate')
    result = quick_tool('train.py', DEMO_CONFIG, '--work-dir', str(tmp_path / 'w'),
                         '--cfg-options', *tiny_options(str(data_copy)),
                         'train_dataloader.dataset.pipeline.0.skip_broken=True')
    log = result.stdout + result.stderr
    assert 'epoch 1: skipped 1 unreadable image(s)' in log


def test_out_of_memory_message_names_the_batch_to_reduce():
    from mmengine.config import Config

    from repvgg_mm.cli import explain_out_of_memory
    cfg = Config.fromfile(DEMO_CONFIG)
    error = explain_out_of_memory(torch.OutOfMemoryError('CUDA out of memory'), cfg)
    assert 'train_dataloader.batch_size=64 per GPU' in str(error)
    assert '--cfg-options train_dataloader.batch_size=32' in str(error)


def test_unparsable_config_names_the_file(tmp_path):
    bad = tmp_path / 'broken.py'
    bad.write_text("_base_ = ['../nowhere.py']\nmodel = dict(\n")
    result = quick_tool('train.py', str(bad), check=False)
    assert result.returncode == 1
    assert f"config file '{bad}' could not be loaded" in result.stderr


def test_test_tool_refuses_a_crafted_pickle(tmp_path):
    marker = tmp_path / 'code_ran'

    evil = plant_crafted_checkpoint(tmp_path / 'evil.pth', marker)
    result = quick_tool('test.py', DEMO_CONFIG, str(evil), check=False)
    assert result.returncode == 1 and 'could run code' in result.stderr
    assert not marker.exists()


def test_checkpoint_with_another_number_of_classes(tiny_data, tmp_path):
    from mmengine.config import Config

    from repvgg_mm.apis import build_model
    from repvgg_mm.checkpoints import CheckpointError, load_state_dict_strict
    cfg = Config.fromfile(DEMO_CONFIG)
    ten = build_model(cfg).state_dict()
    cfg.model.head.num_classes = 12
    with pytest.raises(CheckpointError, match=r'head.fc.weight: checkpoint \(10, 1280\) vs '
                                              r'model \(12, 1280\)'):
        load_state_dict_strict(build_model(cfg), ten)


def test_zero_byte_image_is_one_line(data_copy):
    from repvgg_mm.datasets import LoadImageChecked
    line = (data_copy / 'train_list.txt').read_text().splitlines()[0]
    path = data_copy / line.rsplit(' ', 1)[0]
    path.write_bytes(b'')
    with pytest.raises(OSError) as info:
        LoadImageChecked().transform(dict(img_path=str(path)))
    assert len(str(info.value).splitlines()) == 1
    assert f"cannot read image {str(path)!r}: the file is empty" in str(info.value)


def test_list_file_encoding_bom_and_paths_outside_the_root(data_copy):
    path = data_copy / 'train_list.txt'
    text = path.read_text()
    path.write_bytes(b'\xef\xbb\xbf' + text.encode())  # a BOM, as some editors write
    assert len(ImageNetLayoutDataset(str(data_copy), split='train')) == len(text.splitlines())
    lines = text.splitlines()
    path.write_bytes('\n'.join(lines[:3]).encode() + b'\ntrain/disk/caf\xe9.JPEG 1\n')
    with pytest.raises(ValueError, match=f'{path}:4: not UTF-8 text'):
        ImageNetLayoutDataset(str(data_copy), split='train')
    outside = data_copy.parent / 'outside.JPEG'
    outside.write_bytes((data_copy / lines[0].rsplit(' ', 1)[0]).read_bytes())
    for bad in ('../outside.JPEG 1', f'{outside} 1'):
        path.write_text('\n'.join(lines[:2] + [bad]) + '\n')
        with pytest.raises(ValueError, match=f'{path}:3: image .* lies outside the data root'):
            ImageNetLayoutDataset(str(data_copy), split='train')
    dataset = ImageNetLayoutDataset(str(data_copy), split='train', allow_outside_root=True)
    assert dataset.get_data_info(2)['img_path'].endswith('outside.JPEG')
