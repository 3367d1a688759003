"""The training recipes of docs/repvgg.md 3a/3b, checked before anyone trains with them."""
import math
import os.path as osp

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import ROOT
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from torch.nn.modules.batchnorm import _BatchNorm

from repvgg_mm.apis import build_model, iters_per_epoch, param_group_table, simulate_lr
from repvgg_mm.models import RepVGG
from repvgg_mm.registry import MODELS


def config(name):
    return Config.fromfile(osp.join(ROOT, 'configs', name))


def expected_decayed(model):
    """Independently of the rule's code: conv/linear weights and identity-BN weights."""
    names = set()
    for mod_name, module in model.named_modules():
        prefix = mod_name + '.' if mod_name else ''
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            names.add(prefix + 'weight')
        if isinstance(module, _BatchNorm) and mod_name.endswith('rbr_identity'):
            names.add(prefix + 'weight')
    return names


@pytest.mark.parametrize('name', ['repvgg-a0.py', 'repvgg-b1g4.py', 'repvgg-d2se.py',
                                  'repvgg-a0_120e.py'])
def test_weight_decay_param_by_param(name):
    cfg = config(name)
    rows = param_group_table(cfg)
    decayed = {r['name'] for r in rows if r['weight_decay'] > 0}
    assert decayed == expected_decayed(build_model(cfg))
    assert all(r['weight_decay'] in (0, 1e-4) for r in rows)
    by_name = {r['name']: r['weight_decay'] for r in rows}
    assert by_name['backbone.stage1.1.rbr_identity.weight'] == 1e-4
    assert by_name['backbone.stage1.1.rbr_identity.bias'] == 0
    assert by_name['backbone.stage1.0.rbr_dense.bn.weight'] == 0
    assert by_name['backbone.stage1.0.rbr_1x1.bn.weight'] == 0
    assert by_name['head.fc.weight'] == 1e-4 and by_name['head.fc.bias'] == 0
    if 'd2se' in name:
        assert by_name['backbone.stage2.3.se.down.weight'] == 1e-4
        assert by_name['backbone.stage2.3.se.down.bias'] == 0


@pytest.mark.parametrize('rule', ['original', 'paper'])
def test_decay_rule_on_a_users_model_embedding_our_backbone(rule):
    model = nn.ModuleDict(dict(backbone=RepVGG('A0', out_indices=(2, 3)),
                               neck=nn.Sequential(nn.Conv2d(1280, 8, 1, bias=True),
                                                  nn.BatchNorm2d(8)),
                               cls=nn.Linear(8, 3)))
    wrapper = build_optim_wrapper(model, dict(
        constructor='RepVGGOptimWrapperConstructor',
        optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4),
        paramwise_cfg=dict(decay_rule=rule)))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in wrapper.optimizer.param_groups if g['weight_decay'] > 0
               for p in g['params']}
    assert decayed == expected_decayed(model)
    assert sum(len(g['params']) for g in wrapper.optimizer.param_groups) == \
        len(list(model.parameters()))


def test_bias_lr_mult_and_bad_options():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    wrapper = build_optim_wrapper(model, dict(
        constructor='RepVGGOptimWrapperConstructor',
        optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-4),
        paramwise_cfg=dict(decay_rule='paper', bias_lr_mult=2.0)))
    lrs = {n: g['lr'] for g in wrapper.optimizer.param_groups
           for n in g['param_names']}
    assert lrs == {'0.weight': 0.1, '0.bias': 0.2, '1.weight': 0.1, '1.bias': 0.2}
    with pytest.raises(ValueError, match='decay_rule'):
        build_optim_wrapper(model, dict(constructor='RepVGGOptimWrapperConstructor',
                                        optimizer=dict(type='SGD', lr=0.1),
                                        paramwise_cfg=dict(decay_rule='timm')))
    with pytest.raises(KeyError, match='norm_decay_mult'):
        build_optim_wrapper(model, dict(constructor='RepVGGOptimWrapperConstructor',
                                        optimizer=dict(type='SGD', lr=0.1),
                                        paramwise_cfg=dict(norm_decay_mult=0.)))


def test_custom_keys_scale_lr_and_decay_by_name_part():
    """MMEngine's custom_keys on top of the decay rule (the fine-tuning config's lower
    backbone rate); the longest matching key wins; a key matching nothing is an error."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.Conv2d(4, 4, 1)))
    wrapper = build_optim_wrapper(model, dict(
        constructor='RepVGGOptimWrapperConstructor',
        optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-4),
        paramwise_cfg=dict(custom_keys={'0.': dict(lr_mult=0.1),
                                        '1.0.': dict(lr_mult=2.0, decay_mult=0.5)})))
    groups = {n: (g['lr'], g['weight_decay']) for g in wrapper.optimizer.param_groups
              for n in g['param_names']}
    assert groups['0.weight'] == pytest.approx((0.01, 1e-4))
    assert groups['0.bias'] == pytest.approx((0.01, 0.0))  # biases stay undecayed
    assert groups['1.0.weight'] == pytest.approx((0.2, 0.5e-4))
    for bad, message in (({'backbone': dict(lr_mult=0.1)}, 'match no parameter'),
                         ({'0.': dict(lr=0.1)}, "expected a dict with 'lr_mult'")):
        with pytest.raises(KeyError, match=message):
            build_optim_wrapper(model, dict(constructor='RepVGGOptimWrapperConstructor',
                                            optimizer=dict(type='SGD', lr=0.1),
                                            paramwise_cfg=dict(custom_keys=bad)))


def test_optimizer_settings():
    spec = config('repvgg-a0.py')
    model = build_model(spec)
    optimizer = build_optim_wrapper(model, spec.optim_wrapper).optimizer
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults['momentum'] == 0.9 and optimizer.defaults['nesterov'] is True
    paper = config('repvgg-b1_120e.py')
    optimizer = build_optim_wrapper(build_model(paper), paper.optim_wrapper).optimizer
    assert optimizer.defaults['nesterov'] is False and optimizer.defaults['momentum'] == 0.9
    assert spec.randomness.seed == 0


def spec_lr(t, total, warmup, peak):
    if t < warmup:
        return peak * t / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * t / total))


@pytest.mark.parametrize('gpus,peak', [(1, 0.0125), (4, 0.05), (8, 0.1)])
def test_linear_lr_scaling_by_real_batch(gpus, peak):
    cfg = config('repvgg-a0.py')
    cfg.train_cfg.max_epochs = 6
    cfg.param_scheduler.end = 6
    rows = simulate_lr(cfg, dataset_size=2560, gpus=gpus)
    per_epoch = iters_per_epoch(2560, gpus, 32)
    assert len(rows) == 6 * per_epoch
    # the last warm-up iteration is within one step of the peak
    t = 5 * per_epoch - 1
    assert rows[t][2] == pytest.approx(peak * t / (5 * per_epoch), rel=1e-9)


def test_every_iteration_of_a_short_schedule_matches_the_formula():
    cfg = config('repvgg-a0.py')
    cfg.train_cfg.max_epochs = 12
    cfg.param_scheduler.end = 12
    rows = simulate_lr(cfg, dataset_size=1000, gpus=2)  # 16 iterations per epoch
    per_epoch = iters_per_epoch(1000, 2, 32)
    total, warmup = 12 * per_epoch, 5 * per_epoch
    assert len(rows) == total
    for t, epoch, lr in rows:
        assert epoch == t // per_epoch
        expected = spec_lr(t, total, warmup, 0.1 * 64 / 256)
        assert lr == pytest.approx(expected, rel=5e-3, abs=1e-12), t
    assert rows[0][2] == 0


def test_full_300_epoch_schedule_spot_checks():
    cfg = config('repvgg-a0.py')
    rows = simulate_lr(cfg, dataset_size=1281167, gpus=8)
    per_epoch = iters_per_epoch(1281167, 8, 32)
    total, warmup = 300 * per_epoch, 5 * per_epoch
    assert per_epoch == 5005 and len(rows) == total
    for t in (0, 1, 2500, warmup - 1, warmup, warmup + 1, total // 3, total // 2,
              total - 2, total - 1):
        assert rows[t][2] == pytest.approx(spec_lr(t, total, warmup, 0.1), rel=5e-3,
                                           abs=1e-12)
    assert max(r[2] for r in rows) == pytest.approx(0.1, rel=1e-4)


def test_paper_schedule_has_no_warmup():
    cfg = config('repvgg-b2_120e.py')
    rows = simulate_lr(cfg, dataset_size=2560, gpus=8)
    assert rows[0][2] == pytest.approx(0.1)
    assert len(rows) == 120 * 10


def test_label_smoothing_matches_the_original_formula():
    cfg = config('repvgg-a0.py')
    loss = MODELS.build(cfg.model.head.loss)
    torch.manual_seed(0)
    logits = torch.randn(6, 1000) * 3
    labels = torch.tensor([0, 5, 999, 3, 3, 42])
    log_p = F.log_softmax(logits, dim=1)
    nll = -log_p[torch.arange(6), labels]
    expected = ((1 - 0.1) * nll + 0.1 * (-log_p).mean(dim=1)).mean()
    assert loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    paper = MODELS.build(config('repvgg-a0_120e.py').model.head.loss)
    assert paper(logits, labels).item() == pytest.approx(nll.mean().item(), rel=1e-6)


def _steps(pipeline):
    return [{k: v for k, v in step.items()} for step in pipeline]


def test_pipelines_are_exactly_the_recipes():
    cfg = config('repvgg-a0.py')
    # PIL's antialiased bilinear resize, on uint8 tensors (tests/test_tensor_pipeline.py)
    assert _steps(cfg.train_dataloader.dataset.pipeline) == [
        dict(type='LoadImageTensor'),
        dict(type='RandomResizedCropTensor', scale=224),
        dict(type='RandomFlipTensor', prob=0.5, direction='horizontal'),
        dict(type='PackInputs')]
    from repvgg_mm.datasets import RandomResizedCropTensor
    rrc = RandomResizedCropTensor(scale=224)
    assert rrc.crop_ratio_range == (0.08, 1.0)
    assert rrc.aspect_ratio_range == pytest.approx((3 / 4, 4 / 3))
    spec_test = [dict(type='LoadImageTensor'),
                 dict(type='ResizeEdgeTensor', scale=224, edge='short'),
                 dict(type='CenterCropTensor', crop_size=224), dict(type='PackInputs')]
    assert _steps(cfg.val_dataloader.dataset.pipeline) == spec_test
    assert _steps(cfg.test_dataloader.dataset.pipeline) == spec_test
    paper = config('repvgg-a0_120e.py')
    assert _steps(paper.train_dataloader.dataset.pipeline) == \
        _steps(cfg.train_dataloader.dataset.pipeline)
    paper_test = [dict(s) for s in spec_test]
    paper_test[1]['scale'] = 256
    assert _steps(paper.test_dataloader.dataset.pipeline) == paper_test
    assert _steps(paper.val_dataloader.dataset.pipeline) == paper_test


def flatten(d, prefix=''):
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f'{prefix}{k}.'))
    else:
        out[prefix[:-1]] = d
    return out


def differing_keys(a, b):
    fa, fb = flatten(a.to_dict()), flatten(b.to_dict())
    return {k for k in fa.keys() | fb.keys() if fa.get(k, None) != fb.get(k, None)} - \
        {'filename'}


PAPER_120E_KEYS = {
    'max_epochs', 'model.head.loss.type', 'model.head.loss.label_smooth_val',
    'model.head.loss.mode', 'optim_wrapper.optimizer.nesterov',
    'optim_wrapper.paramwise_cfg.decay_rule', 'param_scheduler.warmup',
    'param_scheduler.end', 'train_cfg.max_epochs', 'train_cfg.dynamic_intervals',
    'test_pipeline', 'val_dataloader.dataset.pipeline', 'test_dataloader.dataset.pipeline'}


@pytest.mark.parametrize('arch', ['a0', 'a1', 'a2', 'b0', 'b1', 'b1g2', 'b1g4', 'b2'])
def test_120e_variants_differ_in_exactly_the_documented_keys(arch):
    diff = differing_keys(config(f'repvgg-{arch}.py'), config(f'repvgg-{arch}_120e.py'))
    assert diff == PAPER_120E_KEYS


@pytest.mark.parametrize('arch', ['b2g4', 'b3', 'b3g4'])
def test_200e_variants_differ_in_exactly_the_documented_keys(arch):
    diff = differing_keys(config(f'repvgg-{arch}.py'), config(f'repvgg-{arch}_200e.py'))
    assert diff == (PAPER_120E_KEYS - {'model.head.loss.type', 'model.head.loss.mode',
                                       'model.head.loss.label_smooth_val'}) | {
        'model.train_cfg.augments.type', 'model.train_cfg.augments.alpha',
        'train_pipeline', 'train_dataloader.dataset.pipeline'}


def test_ema_option_adds_mmengines_ema_hook(tmp_path):
    path = tmp_path / 'a0_ema.py'
    path.write_text(f"_base_ = ['{ROOT}/configs/repvgg-a0.py', "
                    f"'{ROOT}/configs/_base_/options/ema.py']\n")
    cfg = Config.fromfile(str(path))
    from repvgg_mm.engine.runner import merge_option_keys
    assert merge_option_keys(cfg) == ['custom_hooks_ema']
    assert cfg.custom_hooks == [dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL')]
    from mmengine.registry import HOOKS
    assert HOOKS.get('EMAHook') is not None


@pytest.mark.slow
def test_vis_lr_tool_writes_csv_and_png(tmp_path):
    from conftest import quick_tool
    out = tmp_path / 'lr'
    result = quick_tool(osp.join('analysis', 'vis_lr.py'),
                         osp.join(ROOT, 'configs', 'repvgg-a0.py'),
                         '--dataset-size', '2560', '--gpus', '8', '--out', str(out))
    assert 'total iterations: 3000 (300 epochs x 10 iterations)' in result.stdout
    # warm-up ends at 0.1 * 49 / 50; the cosine, over the whole run, is just below 0.1 next
    assert 'peak lr: 0.0999315 at iteration 50 (epoch 5)' in result.stdout
    lines = (tmp_path / 'lr.csv').read_text().splitlines()
    assert lines[0] == 'iter,epoch,lr' and len(lines) == 3001
    assert lines[1] == '0,0,0'
    assert (tmp_path / 'lr.png').read_bytes()[:4] == b'\x89PNG'


@pytest.mark.slow
def test_print_param_groups_tool():
    from conftest import quick_tool
    result = quick_tool(osp.join('analysis', 'print_param_groups.py'),
                         osp.join(ROOT, 'configs', 'repvgg-a0.py'))
    lines = result.stdout.splitlines()
    row = next(line for line in lines
               if line.startswith('backbone.stage1.1.rbr_identity.weight'))
    assert row.split()[-1] == '0.0001'
    row = next(line for line in lines if line.startswith('head.fc.bias'))
    assert row.split()[-1] == '0'
    assert lines[-1] == '168 parameters: 62 with weight decay, 106 without'
