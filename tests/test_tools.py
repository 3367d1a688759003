"""End-to-end tests that drive the real command-line tools on demo data."""
import json
import os
import os.path as osp
import shutil

import pytest
import torch
from conftest import DEMO_CONFIG, python_tool, quick_tool, tiny_options

pytestmark = pytest.mark.slow


def load(path):
    return torch.load(path, map_location='cpu', weights_only=False)


@pytest.fixture(scope='module')
def trained(tiny_run):
    """The shared 2-epoch training run (conftest ``tiny_run``)."""
    return str(tiny_run)


def test_train_writes_checkpoints_and_logs(trained):
    for epoch in (1, 2):
        assert osp.isfile(osp.join(trained, f'epoch_{epoch}.pth'))
    ckpt = load(osp.join(trained, 'epoch_2.pth'))
    assert ckpt['meta']['epoch'] == 2
    assert any(k.startswith('backbone.stage1.0.rbr_dense') for k in ckpt['state_dict'])


def test_test_reparam_test_gives_identical_top1(trained, tiny_data, tmp_path):
    ckpt = osp.join(trained, 'epoch_2.pth')
    data = tiny_options(tiny_data)
    metrics = tmp_path / 'train_metrics.json'
    quick_tool('test.py', DEMO_CONFIG, ckpt, '--work-dir', str(tmp_path),
                '--out-metrics', str(metrics), '--cfg-options', *data)
    out = tmp_path / 'deploy' / 'a0_deploy.pth'
    result = quick_tool('reparam.py', DEMO_CONFIG, ckpt, str(out))
    assert 'verified' in result.stdout
    deploy_cfg = str(out).replace('.pth', '.py')
    assert osp.isfile(out) and osp.isfile(deploy_cfg)
    fused = load(out)
    assert fused['meta']['deploy'] is True
    assert 'optimizer' not in fused and 'message_hub' not in fused
    assert any(k.endswith('rbr_reparam.weight') for k in fused['state_dict'])
    assert not any('rbr_dense' in k for k in fused['state_dict'])

    deploy_metrics = tmp_path / 'deploy_metrics.json'
    quick_tool('test.py', deploy_cfg, str(out), '--work-dir', str(tmp_path),
                '--out-metrics', str(deploy_metrics), '--cfg-options', *data)
    top1 = json.loads(metrics.read_text())['accuracy/top1']
    top1_deploy = json.loads(deploy_metrics.read_text())['accuracy/top1']
    assert top1 == top1_deploy

    # an already fused checkpoint is reported as such and re-written unchanged
    again = tmp_path / 'again.pth'
    result = quick_tool('reparam.py', DEMO_CONFIG, str(out), str(again))
    assert 'already re-parameterized' in result.stdout
    rewritten = load(again)['state_dict']
    assert rewritten.keys() == fused['state_dict'].keys()
    assert all(torch.equal(rewritten[k], fused['state_dict'][k]) for k in rewritten)


def test_failed_verification_writes_nothing(trained, tmp_path):
    out = tmp_path / 'never.pth'
    result = quick_tool('reparam.py', DEMO_CONFIG, osp.join(trained, 'epoch_1.pth'),
                         str(out), '--tolerance', '-1', check=False)
    assert result.returncode == 1
    assert 'nothing written' in result.stderr
    assert os.listdir(tmp_path) == []


def test_test_tool_rejects_checkpoint_of_another_arch(trained, tiny_data):
    result = quick_tool('test.py', DEMO_CONFIG, osp.join(trained, 'epoch_1.pth'),
                         '--cfg-options', 'model.backbone.arch=A1', *tiny_options(tiny_data),
                         check=False)
    assert result.returncode != 0
    assert 'size mismatch' in result.stderr or 'mismatch' in result.stderr


@pytest.mark.parametrize('how', ['auto', 'path'])
def test_resume_continues_counters_and_lr(trained, tiny_data, tmp_path, how):
    work_dir = str(tmp_path)
    first = osp.join(trained, 'epoch_1.pth')
    if how == 'auto':
        shutil.copy(first, osp.join(work_dir, 'epoch_1.pth'))
        with open(osp.join(work_dir, 'last_checkpoint'), 'w') as f:
            f.write(osp.join(work_dir, 'epoch_1.pth'))
        resume = ['--resume']
    else:
        resume = ['--resume', first]
    result = quick_tool('train.py', DEMO_CONFIG, '--work-dir', work_dir, *resume,
                         '--cfg-options', *tiny_options(tiny_data, epochs=2))
    log = result.stdout + result.stderr
    assert 'resumed epoch: 1' in log
    assert not osp.exists(osp.join(work_dir, 'epoch_1.pth')) or how == 'auto'
    ref, got = load(osp.join(trained, 'epoch_2.pth')), load(osp.join(work_dir, 'epoch_2.pth'))
    assert got['meta']['epoch'] == ref['meta']['epoch'] == 2
    assert got['meta']['iter'] == ref['meta']['iter']
    ref_lr = [g['lr'] for g in ref['optimizer']['param_groups']]
    got_lr = [g['lr'] for g in got['optimizer']['param_groups']]
    assert got_lr == pytest.approx(ref_lr, rel=1e-12)


def test_unknown_arch_is_a_clear_error(tiny_data, tmp_path):
    result = quick_tool('train.py', DEMO_CONFIG, '--work-dir', str(tmp_path),
                         '--cfg-options', 'model.backbone.arch=A9',
                         *tiny_options(tiny_data), check=False)
    assert result.returncode == 1
    assert "unknown RepVGG arch 'A9'" in result.stderr and 'b1g4' in result.stderr
    assert 'Traceback' not in result.stderr


def test_missing_data_root_is_a_clear_error(tmp_path):
    missing = str(tmp_path / 'no_such_data')
    options = [o for o in tiny_options(missing)]
    result = quick_tool('train.py', DEMO_CONFIG, '--work-dir', str(tmp_path / 'w'),
                         '--cfg-options', *options, check=False)
    assert result.returncode == 1
    assert missing in result.stderr and 'expected the layout' in result.stderr


def test_missing_config_is_a_clear_error(tmp_path):
    result = quick_tool('train.py', str(tmp_path / 'nope.py'), check=False)
    assert result.returncode == 1
    assert 'nope.py' in result.stderr and 'does not exist' in result.stderr


def test_converted_official_checkpoint_fine_tunes_with_load_from(trained, tiny_data, tmp_path):
    """Published (official-format, DDP-prefixed) weights -> convert_checkpoint ->
    load_from in a config -> training starts from them."""
    from repvgg_mm.checkpoints import FORMATS
    ours = load(osp.join(trained, 'epoch_2.pth'))['state_dict']
    official = {'module.' + k: v for k, v in FORMATS['official'].from_ours(ours).items()}
    src, dst = tmp_path / 'RepVGG-A0-train.pth', tmp_path / 'converted.pth'
    torch.save(official, src)
    result = quick_tool('convert_checkpoint.py', str(src), str(dst))
    assert 'official format, training-time' in result.stdout
    work_dir = tmp_path / 'finetune'
    result = quick_tool('train.py', DEMO_CONFIG, '--work-dir', str(work_dir),
                         '--cfg-options', f'load_from={dst}', 'train_cfg.max_epochs=1',
                         *tiny_options(tiny_data)[:3], *tiny_options(tiny_data)[4:])
    log = result.stdout + result.stderr
    assert f'Load checkpoint from {dst}' in log
    assert 'missing keys' not in log and 'unexpected key' not in log


def test_amp_without_gpu_is_a_clear_error(tiny_data, tmp_path):
    if torch.cuda.is_available():
        pytest.skip('this machine has a GPU: --amp is valid here')
    result = quick_tool('train.py', DEMO_CONFIG, '--amp', '--work-dir', str(tmp_path),
                         '--cfg-options', *tiny_options(tiny_data), check=False)
    assert result.returncode == 1 and '--amp needs a CUDA GPU' in result.stderr


def test_demo_end_to_end_reports_every_model_and_its_time(tiny_data, tmp_path):
    """tools/demo.py (what `make demo` runs) on the tiny data, shortened to 1 epoch: one
    line per step and epoch, the same top-1 for the training-time, fused and ONNX models,
    the curves plot, and its own wall time."""
    work = tmp_path / 'demo'
    result = python_tool('demo.py', '--data-root', tiny_data, '--work-dir', str(work),
                         '--cfg-options', 'train_cfg.max_epochs=1')
    out = result.stdout
    assert 'epoch  1/1  train loss' in out and 'val top-1' in out
    assert 'Epoch(train)' not in out  # the full log went to the work dir
    assert (work / 'train.log').read_text().count('Epoch(train)') >= 1
    summary = json.loads((work / 'summary.json').read_text())
    assert summary['top1'] == summary['top1_deploy'] == pytest.approx(summary['top1_onnx'])
    assert summary['onnx_prediction_agreement'] == 1.0
    assert osp.getsize(summary['curves']) > 0 and osp.isfile(summary['onnx_model'])
    assert f"the demo took {summary['seconds']:.0f} s" in out
