"""Interrupted runs lose nothing: atomic checkpoints, truncated ones skipped, kill+resume."""
import os.path as osp
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import DEMO_CONFIG, ROOT, quick_tool, tiny_options

from repvgg_mm.engine.runner import find_resumable_checkpoint, is_complete_checkpoint

pytestmark = pytest.mark.slow


def load(path):
    return torch.load(path, map_location='cpu', weights_only=False)


def train_args(data, work_dir, epochs=2):
    # persistent workers, as the ImageNet configs load (the demo config loads in-process)
    return [sys.executable, osp.join(ROOT, 'tools', 'train.py'), DEMO_CONFIG,
            '--work-dir', str(work_dir), '--cfg-options',
            *tiny_options(data, epochs, persistent_workers=1),
            'randomness.deterministic=True']  # a trailing '--resume' ends --cfg-options


def test_truncated_checkpoint_is_reported_and_the_previous_one_used(tiny_run, tiny_data,
                                                                     tmp_path):
    work = tmp_path / 'work'
    work.mkdir()
    shutil.copy(tiny_run / 'epoch_1.pth', work / 'epoch_1.pth')
    data = (tiny_run / 'epoch_2.pth').read_bytes()
    (work / 'epoch_2.pth').write_bytes(data[:len(data) // 2])  # killed while writing
    (work / 'last_checkpoint').write_text(str(work / 'epoch_2.pth'))
    assert not is_complete_checkpoint(str(work / 'epoch_2.pth'))
    assert find_resumable_checkpoint(str(work)) == str(work / 'epoch_1.pth')

    result = quick_tool('train.py', DEMO_CONFIG, '--work-dir', str(work), '--resume',
                        '--cfg-options', *tiny_options(tiny_data, epochs=2))
    log = result.stdout + result.stderr
    assert f'checkpoint {work / "epoch_2.pth"} is truncated' in log
    assert 'resumed epoch: 1' in log
    assert is_complete_checkpoint(str(work / 'epoch_2.pth'))
    assert load(work / 'epoch_2.pth')['meta']['epoch'] == 2
    assert not list(work.glob('.*.tmp'))


def test_no_temporary_files_left_and_pointer_is_complete(tiny_run):
    assert not list(tiny_run.glob('.*.tmp'))
    target = (tiny_run / 'last_checkpoint').read_text().strip()
    assert target == str(tiny_run / 'epoch_2.pth') and is_complete_checkpoint(target)


def test_sigkill_then_resume_ends_with_identical_weights(tiny_run, tiny_data, tmp_path):
    """One persistent worker per loader (the ImageNet configs' kind of loader), killed
    after its first checkpoint and resumed: the final weights equal, bit for bit, those
    of the shared uninterrupted run (conftest ``tiny_run``), which loaded in the main process -- the
    augmentation of a sample depends only on (seed, epoch, sample)."""
    work = tmp_path / 'killed'
    proc = subprocess.Popen(train_args(tiny_data, work), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (work / 'epoch_1.pth').exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (work / 'epoch_1.pth').exists(), 'training never wrote its first checkpoint'
    assert not (work / 'epoch_2.pth').exists(), 'the run finished before it was killed'

    result = subprocess.run(train_args(tiny_data, work) + ['--resume'], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'resumed epoch:' in result.stdout + result.stderr
    ref, got = load(tiny_run / 'epoch_2.pth'), load(work / 'epoch_2.pth')
    assert ref['meta']['iter'] == got['meta']['iter']
    assert ref['state_dict'].keys() == got['state_dict'].keys()
    for key, value in ref['state_dict'].items():
        assert torch.equal(value, got['state_dict'][key]), key


def test_two_process_run_resumes_to_the_same_weights(tiny_data, tmp_path):
    """Two ranks with two persistent workers each: a run resumed from the first-epoch
    checkpoint (what a run killed after writing it leaves; the kill itself is tested
    above) ends with the weights of the uninterrupted run, bit for bit."""
    import os

    from conftest import free_port

    def dist_args(work_dir, *extra):
        return ['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), DEMO_CONFIG, '2',
                '--work-dir', str(work_dir), *extra, '--cfg-options',
                *tiny_options(tiny_data, 2, persistent_workers=2),  # per rank
                'randomness.deterministic=True']

    def env():
        return dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()))

    reference = tmp_path / 'reference'
    result = subprocess.run(dist_args(reference), cwd=ROOT, env=env(), capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    log = result.stdout + result.stderr
    assert 'Distributed training: True' in log
    # linear lr scaling by the real total batch: 2 processes x 8 images of 256
    assert 'the current batch size is 16. Scaling the original LR by 0.0625' in log
    # 60 images, batch 8 per process, 2 processes: 4 iterations per epoch
    assert load(reference / 'epoch_1.pth')['meta']['iter'] == 4

    work = tmp_path / 'stopped'
    work.mkdir()
    shutil.copy(reference / 'epoch_1.pth', work / 'epoch_1.pth')
    (work / 'last_checkpoint').write_text(str(work / 'epoch_1.pth'))

    result = subprocess.run(dist_args(work, '--resume'), cwd=ROOT, env=env(),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'resumed epoch:' in result.stdout + result.stderr
    ref, got = load(reference / 'epoch_2.pth'), load(work / 'epoch_2.pth')
    assert ref['meta']['iter'] == got['meta']['iter']
    for key, value in ref['state_dict'].items():
        assert torch.equal(value, got['state_dict'][key]), key


def _fake_checkpoint(path):
    torch.save({'meta': {'epoch': 1, 'iter': 1}}, path)
    return str(path)


@pytest.fixture
def logged(monkeypatch):
    """The messages the runner module logs."""
    import repvgg_mm.engine.runner as runner_module
    messages = []
    monkeypatch.setattr(runner_module, 'print_log',
                        lambda msg, *args, **kwargs: messages.append(msg))
    return messages


def test_pointer_is_only_followed_inside_the_work_dir(tmp_path, logged):
    elsewhere = tmp_path / 'original_run'
    elsewhere.mkdir()
    foreign = _fake_checkpoint(elsewhere / 'epoch_9.pth')
    work = tmp_path / 'copied_run'
    work.mkdir()
    own = _fake_checkpoint(work / 'epoch_2.pth')
    (work / 'last_checkpoint').write_text(foreign)
    assert find_resumable_checkpoint(str(work)) == own
    assert 'points outside the work dir' in ' '.join(logged)


def test_missing_pointer_target_is_called_missing(tmp_path, logged):
    own = _fake_checkpoint(tmp_path / 'epoch_1.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_2.pth'))
    assert find_resumable_checkpoint(str(tmp_path)) == own
    out = ' '.join(logged)
    assert f'checkpoint {tmp_path / "epoch_2.pth"} named by' in out and 'is missing' in out
    assert 'truncated' not in out
