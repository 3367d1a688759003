"""ONNX export: every architecture matches PyTorch in ONNX Runtime; the tool verifies,
writes atomically and refuses bad inputs with one line."""
import json
import os
import sys

import numpy as np
import pytest
import torch
from conftest import DEMO_CONFIG, ROOT, quick_tool, randomize_bn, tool_in_process
from mmengine.config import Config

from repvgg_mm.apis import (
    build_model,
    compare_onnx_with_pytorch,
    deploy_config,
    image_batches,
    onnx_top1,
)
from repvgg_mm.apis.export import LogitsModel, export_model, ort_session, relative_difference
from repvgg_mm.models.reparam import reparameterize_model

ARCH_CONFIGS = ['repvgg-a0', 'repvgg-a1', 'repvgg-a2', 'repvgg-b0', 'repvgg-b1',
                'repvgg-b1g2', 'repvgg-b1g4', 'repvgg-b2', 'repvgg-b2g2', 'repvgg-b2g4',
                'repvgg-b3', 'repvgg-b3g2', 'repvgg-b3g4', 'repvgg-d2se', 'repvggplus-l2pse']


def _export_and_compare(model: torch.nn.Module, fused: torch.nn.Module, path: str,
                        size: int = 32) -> None:
    """Export ``fused``; batches of 1 and 3 in ONNX Runtime match ``model`` (PyTorch)."""
    export_model(LogitsModel(fused), path, size)
    session = ort_session(path)
    generator = torch.Generator().manual_seed(0)
    for batch in (1, 3):
        x = torch.randn(batch, 3, size, size, generator=generator)
        with torch.no_grad():
            expected = model(x, mode='tensor').numpy()
        got = session.run(None, {'input': x.numpy()})[0]
        assert got.shape == expected.shape == (batch, 1000)
        assert relative_difference(expected, got)[1] <= 1e-4


@pytest.mark.parametrize('config', ARCH_CONFIGS)
def test_every_arch_structure_exports_and_matches(config, tmp_path):
    """Every arch's structure (blocks per stage, grouping, SE, RepVGGplus's split
    stage) at a quarter of its width (base_channels 16 instead of 64: 1/16 of the
    parameters) so that all 15 export quickly; A0 is exported at its full width
    below."""
    cfg = Config.fromfile(f'{ROOT}/configs/{config}.py')
    cfg.model.backbone.base_channels = 16
    cfg.model.head.in_channels //= 4
    fused = build_model(deploy_config(cfg)).eval()
    _export_and_compare(fused, fused, str(tmp_path / 'model.onnx'))


def test_shipped_a0_fuses_and_exports(tmp_path):
    """A0 as shipped (training-time model with random BN statistics), fused and
    exported at 32x32: ONNX Runtime matches the training-time PyTorch model."""
    config = 'repvgg-a0'
    model = randomize_bn(build_model(Config.fromfile(f'{ROOT}/configs/{config}.py'))).eval()
    # expected outputs first: the fusion below is in place to save memory
    generator = torch.Generator().manual_seed(0)
    inputs = {b: torch.randn(b, 3, 32, 32, generator=generator) for b in (1, 3)}
    with torch.no_grad():
        expected = {b: model(x, mode='tensor').numpy() for b, x in inputs.items()}
    fused = reparameterize_model(model, inplace=True)
    path = str(tmp_path / 'model.onnx')
    export_model(LogitsModel(fused), path, 32)
    session = ort_session(path)
    for b, x in inputs.items():
        got = session.run(None, {'input': x.numpy()})[0]
        assert relative_difference(expected[b], got)[1] <= 1e-4


@pytest.fixture(scope='module')
def demo_checkpoint(tmp_path_factory):
    """A training-time checkpoint of the demo config with random BN statistics."""
    path = tmp_path_factory.mktemp('ckpt') / 'a0_demo.pth'
    model = randomize_bn(build_model(Config.fromfile(DEMO_CONFIG)))
    torch.save({'state_dict': model.state_dict()}, path)
    return str(path)


def _data_options(root):
    return ['--cfg-options'] + [f'{s}_dataloader.dataset.data_root={root}'
                                for s in ('train', 'val', 'test')]


def test_export_tool_and_onnx_top1_match_pytorch(demo_checkpoint, tiny_data, tmp_path):
    """The tool on the demo config (its own loaders, workers included): verified, a
    dynamic batch, and the ONNX top-1 equal to PyTorch's, normalised or raw input."""
    out = tmp_path / 'model.onnx'
    result = quick_tool('export_onnx.py', DEMO_CONFIG, demo_checkpoint, str(out))
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report['max_rel_diff'] <= 1e-4 and report['input_size'] == 32
    assert not report['already_fused'] and report['input'] == 'normalized'
    raw = tmp_path / 'new' / 'folders' / 'raw.onnx'  # missing folders are created
    status, stdout, _ = tool_in_process('export_onnx.py', DEMO_CONFIG, demo_checkpoint,
                                        str(raw), '--fold-normalization')
    assert status == 0 and '(input: raw' in stdout
    assert sorted(os.listdir(tmp_path)) == ['model.onnx', 'new']  # no leftovers
    assert os.listdir(raw.parent) == ['raw.onnx']

    cfg = Config.fromfile(DEMO_CONFIG)
    for split in ('train', 'val', 'test'):
        cfg[f'{split}_dataloader'].dataset.data_root = tiny_data
    comparison = compare_onnx_with_pytorch(str(out), cfg, demo_checkpoint)
    assert comparison['images'] == 30 and comparison['agreement'] == 1.0
    assert comparison['onnx_top1'] == comparison['pytorch_top1']
    assert onnx_top1(str(raw), cfg) == comparison['onnx_top1']
    # the raw-input model gives the same logits on un-normalised images
    images, _ = next(image_batches(cfg, 'test', normalized=True))
    raw_images, _ = next(image_batches(cfg, 'test', normalized=False))
    a = ort_session(str(out)).run(None, {'input': images})[0]
    b = ort_session(str(raw)).run(None, {'input': raw_images})[0]
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()


def _assert_refused(result, folder, before, needle):
    status, _, stderr = result
    assert status == 1
    lines = stderr.strip().splitlines()
    assert lines[0].startswith('export_onnx.py: error:') and needle in lines[0], lines
    assert len(lines) == 2 and 'REPVGG_MM_DEBUG' in lines[1]  # the debug hint only
    assert sorted(os.listdir(folder)) == before


def test_export_tool_refuses_bad_inputs(demo_checkpoint, tmp_path):
    folder = tmp_path / 'out'
    folder.mkdir()
    (folder / 'existing_dir.onnx').mkdir()
    (folder / 'a_file').write_text('')
    before = sorted(os.listdir(folder))
    out = str(folder / 'model.onnx')
    missing = tool_in_process('export_onnx.py', DEMO_CONFIG, str(tmp_path / 'nope.pth'), out)
    _assert_refused(missing, folder, before, 'nope.pth')
    other_arch = tool_in_process('export_onnx.py', f'{ROOT}/configs/demo/qarepvgg-a0_demo.py',
                                 demo_checkpoint, out)
    _assert_refused(other_arch, folder, before, 'CheckpointError')
    below_file = tool_in_process('export_onnx.py', DEMO_CONFIG, demo_checkpoint,
                                 str(folder / 'a_file' / 'model.onnx'))
    _assert_refused(below_file, folder, before, 'is a file, not a folder')
    is_dir = tool_in_process('export_onnx.py', DEMO_CONFIG, demo_checkpoint,
                             str(folder / 'existing_dir.onnx'))
    _assert_refused(is_dir, folder, before, 'is a folder')
    # /proc accepts no new files, even for root (for whom permission bits do not count)
    unwritable = tool_in_process('export_onnx.py', DEMO_CONFIG, demo_checkpoint,
                                 '/proc/model.onnx')
    _assert_refused(unwritable, folder, before, 'cannot write')


@pytest.mark.parametrize('tool', ['export_onnx.py', 'quantize.py'])
def test_tools_without_onnxruntime_name_the_install(tool, demo_checkpoint, tmp_path,
                                                    monkeypatch):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # import fails as if absent
    status, _, stderr = tool_in_process(tool, DEMO_CONFIG, demo_checkpoint,
                                        str(tmp_path / 'model.onnx'))
    assert status == 1
    line = stderr.splitlines()[0]
    assert 'onnxruntime not installed' in line and 'requirements/deploy.txt' in line
    assert not (tmp_path / 'model.onnx').exists()
