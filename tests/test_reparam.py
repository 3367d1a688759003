"""Re-parameterization of whole models and checkpoints of every known format."""
import os.path as osp

import pytest
import torch
import torch.nn as nn
from conftest import ROOT, plant_crafted_checkpoint, quick_tool, randomize_bn
from mmengine.config import Config
from mmpretrain.models.backbones import RepVGG as MMPretrainRepVGG
from test_backbone import PARAMS

from repvgg_mm import reparameterize_model
from repvgg_mm.apis import build_model, reparameterize_checkpoint
from repvgg_mm.checkpoints import (
    FORMATS,
    CheckpointError,
    convert_checkpoint,
    detect_format,
    guess_arch,
)
from repvgg_mm.models import RepVGG

A0_CONFIG = osp.join(ROOT, 'configs', 'repvgg-a0.py')
D2SE_CONFIG = osp.join(ROOT, 'configs', 'repvgg-d2se.py')


def rel_err(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


def classifier(config=A0_CONFIG, seed=0):
    torch.manual_seed(seed)
    return randomize_bn(build_model(Config.fromfile(config)), seed).eval()


@pytest.mark.parametrize('arch', sorted(PARAMS))
def test_every_arch_fuses_exactly(arch):
    model = classifier(osp.join(ROOT, 'configs', f'repvgg-{arch}.py'))
    x = torch.randn(1, 3, 32, 32)
    expected = model(x, mode='tensor')
    fused = reparameterize_model(model)
    assert not any('rbr_dense' in k for k in fused.state_dict())
    assert rel_err(expected, fused(x, mode='tensor')) <= 1e-5
    assert any('rbr_dense' in k for k in model.state_dict())  # the input is untouched


def test_model_tree_with_our_backbone_inside():
    """A user's model: our backbone in a detector-like tree beside other modules."""
    torch.manual_seed(0)
    tree = nn.ModuleDict(dict(
        detector=nn.ModuleDict(dict(backbone=RepVGG('A0', out_indices=(1, 2, 3)),
                                    neck=nn.Conv2d(1280, 16, 1))),
        other=nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))))
    randomize_bn(tree).eval()

    def run(t, x):
        feats = t['detector']['backbone'](x)
        return t['detector']['neck'](feats[-1]), feats[0], t['other'](x)

    x = torch.randn(2, 3, 64, 64)
    expected = run(tree, x)
    fused = reparameterize_model(tree)
    for a, b in zip(expected, run(fused, x)):
        assert rel_err(a, b) <= 1e-5
    # non-RepVGG parts are untouched: same structure, same values
    assert isinstance(fused['other'][1], nn.BatchNorm2d)
    assert torch.equal(fused['other'][0].weight, tree['other'][0].weight)
    assert torch.equal(fused['detector']['neck'].weight, tree['detector']['neck'].weight)


def test_syncbn_trained_model_fuses():
    torch.manual_seed(0)
    bn_model = randomize_bn(RepVGG('A0')).eval()
    sync_model = RepVGG('A0', norm_cfg=dict(type='SyncBN')).eval()
    assert any(isinstance(m, nn.SyncBatchNorm) for m in sync_model.modules())
    sync_model.load_state_dict(bn_model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    expected = bn_model(x)[0]
    fused = reparameterize_model(sync_model)
    assert rel_err(expected, fused(x)[0]) <= 1e-5


def test_key_formats_round_trip_and_are_detected():
    sd = classifier(D2SE_CONFIG).state_dict()
    for name, fmt in FORMATS.items():
        foreign = fmt.from_ours(sd)
        assert detect_format(foreign) == name
        back = fmt.to_ours(foreign)
        assert list(back) == list(sd)
    official = FORMATS['official'].from_ours(sd)
    assert 'stage1.0.rbr_dense.conv.weight' in official and 'linear.weight' in official
    assert 'stage0.se.down.weight' in official
    timm_keys = FORMATS['timm'].from_ours(sd)
    assert 'stages.0.0.conv_kxk.conv.weight' in timm_keys and 'stem.attn.fc1.bias' in timm_keys
    mmp = FORMATS['mmpretrain'].from_ours(sd)
    assert 'backbone.stage_1.1.branch_norm.weight' in mmp
    assert 'backbone.stem.se_layer.conv1.conv.weight' in mmp
    assert guess_arch(sd) == 'd2se'


def test_unknown_format_is_a_clear_error():
    with pytest.raises(CheckpointError, match='known formats'):
        detect_format({'encoder.layer.0.weight': torch.zeros(1)})


@pytest.mark.parametrize('fmt', ['ours', 'official', 'mmpretrain', 'timm'])
@pytest.mark.parametrize('wrap', ['plain', 'state_dict', 'ddp'])
def test_reparam_reads_every_format(fmt, wrap, tmp_path):
    model = classifier()
    sd = FORMATS[fmt].from_ours(model.state_dict())
    if wrap == 'ddp':
        sd = {'module.' + k: v for k, v in sd.items()}
    path = str(tmp_path / 'in.pth')
    torch.save({'state_dict': sd, 'meta': {}} if wrap == 'state_dict' else sd, path)
    out = str(tmp_path / 'out.pth')
    report = reparameterize_checkpoint(Config.fromfile(A0_CONFIG), path, out)
    assert report['src_format'] == fmt and report['max_rel_diff'] <= 1e-5
    x = torch.randn(2, 3, 64, 64)
    deployed = build_model(Config.fromfile(report['config']))
    deployed.load_state_dict(torch.load(out, weights_only=True)['state_dict'])
    assert rel_err(model(x, mode='tensor'), deployed.eval()(x, mode='tensor')) <= 1e-5


def test_real_mmpretrain_weights_give_mmpretrains_outputs(tmp_path):
    """Cross-implementation check: MMPretrain's own RepVGG-A0 weights, converted,
    make our model compute what MMPretrain's model computes."""
    torch.manual_seed(0)
    theirs = randomize_bn(MMPretrainRepVGG('A0'))
    theirs.eval()  # MMPretrain's train() returns None, so no chaining here
    sd = {'backbone.' + k: v for k, v in theirs.state_dict().items()}
    src = tmp_path / 'mmpretrain_a0.pth'
    torch.save({'state_dict': sd}, src)
    dst = tmp_path / 'ours.pth'
    info = convert_checkpoint(str(src), str(dst))
    assert info['src_format'] == 'mmpretrain' and info['arch'] == 'a0'
    ours = RepVGG('A0').eval()
    state = torch.load(dst, weights_only=True)['state_dict']
    ours.load_state_dict({k[len('backbone.'):]: v for k, v in state.items()})
    x = torch.randn(2, 3, 64, 64)
    assert rel_err(theirs(x)[-1], ours(x)[-1]) <= 1e-5


def test_real_timm_weights_give_timms_outputs(tmp_path):
    import timm  # in requirements/tests.txt
    torch.manual_seed(0)
    theirs = randomize_bn(timm.create_model('repvgg_b1g4', num_classes=1000)).eval()
    src = tmp_path / 'timm_b1g4.pth'
    torch.save(theirs.state_dict(), src)
    dst = tmp_path / 'ours.pth'
    info = convert_checkpoint(str(src), str(dst))
    assert info['src_format'] == 'timm' and info['arch'] == 'b1g4'
    ours = build_model(Config.fromfile(osp.join(ROOT, 'configs', 'repvgg-b1g4.py'))).eval()
    ours.load_state_dict(torch.load(dst, weights_only=True)['state_dict'])
    x = torch.randn(2, 3, 64, 64)
    assert rel_err(theirs(x), ours(x, mode='tensor')) <= 1e-5


def test_strict_mismatch_names_keys_and_the_arch_it_looks_like(tmp_path):
    a1 = build_model(Config.fromfile(osp.join(ROOT, 'configs', 'repvgg-a1.py')))
    path = str(tmp_path / 'a1.pth')
    torch.save(FORMATS['official'].from_ours(a1.state_dict()), path)
    with pytest.raises(CheckpointError) as info:
        reparameterize_checkpoint(Config.fromfile(A0_CONFIG), path, str(tmp_path / 'o.pth'))
    message = str(info.value)
    assert 'shape mismatches' in message and "looks like RepVGG arch 'a1'" in message
    assert not (tmp_path / 'o.pth').exists()


def test_official_deploy_output_and_input(tmp_path):
    model = classifier()
    src = str(tmp_path / 'train.pth')
    torch.save(model.state_dict(), src)
    official = str(tmp_path / 'official_deploy.pth')
    reparameterize_checkpoint(Config.fromfile(A0_CONFIG), src, official, to_format='official')
    sd = torch.load(official, weights_only=True)
    assert 'stage1.0.rbr_reparam.weight' in sd and 'linear.bias' in sd
    assert not any('rbr_dense' in k or k.startswith('backbone.') for k in sd)
    assert not osp.exists(str(tmp_path / 'official_deploy.py'))
    # an official deploy checkpoint is read back as already fused, unchanged
    out = str(tmp_path / 'ours_deploy.pth')
    report = reparameterize_checkpoint(Config.fromfile(A0_CONFIG), official, out)
    assert report['already_fused'] and report['src_format'] == 'official'
    x = torch.randn(1, 3, 64, 64)
    deployed = build_model(Config.fromfile(report['config'])).eval()
    deployed.load_state_dict(torch.load(out, weights_only=True)['state_dict'])
    assert rel_err(model(x, mode='tensor'), deployed(x, mode='tensor')) <= 1e-5


@pytest.mark.slow
def test_reparam_tool_refuses_a_crafted_pickle(tmp_path):
    marker = tmp_path / 'code_ran'

    evil = plant_crafted_checkpoint(tmp_path / 'evil.pth', marker)
    out = tmp_path / 'out.pth'
    result = quick_tool('reparam.py', A0_CONFIG, str(evil), str(out), check=False)
    assert result.returncode == 1 and 'could run code' in result.stderr
    assert not marker.exists() and not out.exists()
    result = quick_tool('convert_checkpoint.py', str(evil), str(out), check=False)
    assert result.returncode == 1 and 'could run code' in result.stderr
    assert not marker.exists() and not out.exists()


@pytest.mark.slow
def test_benchmark_tool_prints_both_models():
    result = quick_tool('benchmark.py', A0_CONFIG, '--batch-size', '2', '--input-size', '64',
                        '--repeats', '2', '--iters', '1', '--warmup', '1')
    lines = [line for line in result.stdout.splitlines() if line.startswith('{')]
    import json
    rows = [json.loads(line) for line in lines]
    assert [r['model'] for r in rows] == ['training-time', 'fused']
    assert all(r['imgs_per_s'] > 0 and len(r['rounds_ms']) == 2 for r in rows)
