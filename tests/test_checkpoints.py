import os

import numpy as np
import pytest
import torch
from conftest import plant_crafted_checkpoint
from mmengine.logging import MessageHub

from repvgg_mm.checkpoints.io import (
    CheckpointError,
    extract_state_dict,
    load_checkpoint_file,
    load_state_dict_strict,
    save_atomic,
)
from repvgg_mm.fileio import OutputPathError, atomic_write_text, check_output_paths
from repvgg_mm.models import RepVGGBlock


def test_crafted_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    plant_crafted_checkpoint(path, marker)
    with pytest.raises(CheckpointError, match='could run code'):
        load_checkpoint_file(str(path))
    assert not marker.exists()


def test_message_hub_state_loads_with_weights_only(tmp_path):
    hub = MessageHub('ckpt-test')
    hub.update_scalar('train/loss', np.float64(0.5))
    hub.update_scalar('train/lr', 0.1)
    hub.update_info('epoch', np.int64(3))
    path = tmp_path / 'train.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}, 'message_hub': hub.state_dict(),
                'meta': {'epoch': 3}}, path)
    ckpt = load_checkpoint_file(str(path))
    assert ckpt['message_hub']['log_scalars']['train/loss'].current() == 0.5
    assert torch.equal(extract_state_dict(ckpt)['w'], torch.ones(2))


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(CheckpointError, match='does not exist'):
        load_checkpoint_file(str(tmp_path / 'none.pth'))
    path = tmp_path / 'cut.pth'
    torch.save({'w': torch.randn(100)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match='could not be read'):
        load_checkpoint_file(str(path))


def test_extract_strips_ddp_prefix_and_rejects_non_tensors():
    sd = extract_state_dict({'module.a.weight': torch.zeros(1)})
    assert list(sd) == ['a.weight']
    with pytest.raises(CheckpointError, match='expected a tensor'):
        extract_state_dict({'a': 3})


def test_strict_load_names_the_keys():
    block = RepVGGBlock(4, 4)
    sd = block.state_dict()
    sd.pop('rbr_1x1.conv.weight')
    sd['extra.weight'] = torch.zeros(1)
    sd['rbr_dense.conv.weight'] = torch.zeros(1, 1, 3, 3)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_strict(RepVGGBlock(4, 4), sd, 'x.pth')
    message = str(info.value)
    assert 'rbr_1x1.conv.weight' in message and 'extra.weight' in message
    assert 'rbr_dense.conv.weight: checkpoint (1, 1, 3, 3) vs model (4, 4, 3, 3)' in message


def test_save_atomic_leaves_nothing_on_failure(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError('boom')
    target = tmp_path / 'out.pth'
    with pytest.raises(OSError, match=f"cannot write '{target}': boom"):
        save_atomic({'x': Unpicklable()}, str(target))
    assert os.listdir(tmp_path) == []
    save_atomic({'w': torch.ones(1)}, str(target))
    assert os.listdir(tmp_path) == ['out.pth']
    # missing folders are created for the file, and removed again when it fails
    nested = tmp_path / 'a' / 'b' / 'out.pth'
    with pytest.raises(OSError, match='boom'):
        save_atomic({'x': Unpicklable()}, str(nested))
    assert os.listdir(tmp_path) == ['out.pth']
    save_atomic({'w': torch.ones(1)}, str(nested))
    assert os.listdir(nested.parent) == ['out.pth']


def test_write_failure_is_one_line_naming_the_file(tmp_path, monkeypatch):
    """torch.save's zip writer fails with a multi-line RuntimeError from C++."""
    def failing_save(obj, f):
        f.write(b'partial')
        raise RuntimeError('[enforce fail at inline_container.cc:603] . unexpected pos 64\n'
                           'frame #0: c10::ThrowEnforceNotMet')
    monkeypatch.setattr(torch, 'save', failing_save)
    target = tmp_path / 'fused.pth'
    with pytest.raises(OSError) as info:
        save_atomic({'w': torch.ones(1)}, str(target))
    assert str(info.value) == (f"cannot write '{target}': [enforce fail at "
                               'inline_container.cc:603] . unexpected pos 64')
    assert os.listdir(tmp_path) == []


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        save_atomic({'w': torch.ones(1)}, str(tmp_path / 'a.pth'))
        atomic_write_text(str(tmp_path / 'b.json'), '{}')
    finally:
        os.umask(old)
    for name in ('a.pth', 'b.json'):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644


def test_output_paths_are_checked_before_writing(tmp_path):
    src = tmp_path / 'in.pth'
    src.write_bytes(b'x')
    (tmp_path / 'link.pth').symlink_to(src)
    cases = [
        ({'OUTPUT': str(tmp_path / 'link.pth')}, 'is the CHECKPOINT'),
        ({'OUTPUT': str(tmp_path / 'a.pth'), 'other': str(tmp_path / 'a.pth')},
         'are the same file'),
        ({'OUTPUT': str(src / 'a.pth')}, 'is a file, not a folder'),
        ({'OUTPUT': str(tmp_path)}, 'is a folder'),
    ]
    for outputs, message in cases:
        with pytest.raises(OutputPathError, match=message):
            check_output_paths(outputs, {'CHECKPOINT': str(src)})
    check_output_paths({'OUTPUT': str(tmp_path / 'new.pth')}, {'CHECKPOINT': str(src)})


def test_restricted_getattr_refuses_reaching_builtins(tmp_path):
    """MMEngine checkpoints pickle getattr(HistoryBuffer, 'mean'); nothing else passes."""
    class ReachBuiltins:
        def __reduce__(self):
            return getattr, (getattr, '__self__')
    path = tmp_path / 'evil.pth'
    torch.save({'x': ReachBuiltins()}, path)
    with pytest.raises(CheckpointError, match='not a HistoryBuffer statistics method'):
        load_checkpoint_file(str(path))
