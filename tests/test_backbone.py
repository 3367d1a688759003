import glob
import os.path as osp

import pytest
import torch
from conftest import ROOT, randomize_bn
from mmengine.config import Config
from mmpretrain.models.backbones import RepVGG as MMPretrainRepVGG
from torch.nn.modules.batchnorm import _BatchNorm

from repvgg_mm.models import RepVGG, reparameterize_model
from repvgg_mm.registry import MODELS

# docs/repvgg.md: whole classifier, 1000 classes, from the original code.
PARAMS = {
    'a0': (9_108_968, 8_309_384), 'a1': (14_092_264, 12_789_864),
    'a2': (28_210_600, 25_499_944), 'b0': (15_817_960, 14_339_048),
    'b1': (57_415_016, 51_829_480), 'b1g2': (45_782_376, 41_360_104),
    'b1g4': (39_966_056, 36_125_416), 'b2': (89_022_376, 80_315_112),
    'b2g2': (70_846_376, 63_956_712), 'b2g4': (61_758_376, 55_777_512),
    'b3': (123_085_288, 110_960_872), 'b3g2': (96_911_848, 87_404_776),
    'b3g4': (83_825_128, 75_626_728), 'd2se': (133_334_836, 120_387_572),
}


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('arch', sorted(PARAMS))
def test_config_param_counts_train_and_deploy(arch):
    cfg = Config.fromfile(osp.join(ROOT, 'configs', f'repvgg-{arch}.py'))
    # On the meta device every module and shape is built (and fused) without
    # allocating or initialising weights; fusion numerics are tested in test_reparam.
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
        assert type(model.backbone) is RepVGG
        assert count(model) == PARAMS[arch][0]
        reparameterize_model(model, inplace=True)
        assert count(model) == PARAMS[arch][1]
        # deploy=True builds the fused structure directly, with the same count
        cfg.model.backbone.deploy = True
        assert count(MODELS.build(cfg.model)) == PARAMS[arch][1]


def test_every_config_loads_and_builds():
    configs = sorted(glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True))
    configs = [c for c in configs if '_base_' not in c]
    assert len(configs) >= 15
    for path in configs:
        cfg = Config.fromfile(path)
        if cfg.model.get('head', {}).get('num_classes') == 'auto':  # set from the data
            cfg.model.head.num_classes = 7
        # a QAT model is traced from its float model at construction (not on the meta
        # device; tests/test_qat.py builds one): here its float model's structure
        model_cfg = cfg.model.float_model if cfg.model.type == 'QATClassifier' else cfg.model
        with torch.device('meta'):  # the structure only: no memory, no initialisation
            model = MODELS.build(model_cfg)
        assert isinstance(model.backbone, RepVGG), path
        assert cfg.default_scope == 'repvgg_mm', path


def test_scope_builds_our_class_not_mmpretrains():
    ours = MODELS.build(dict(type='RepVGG', arch='A0'))
    assert type(ours) is RepVGG and not isinstance(ours, MMPretrainRepVGG)
    assert MODELS.get('RepVGG') is RepVGG
    # MMPretrain's classes still resolve through the parent registry
    assert MODELS.get('ImageClassifier').__module__.startswith('mmpretrain')


def test_unknown_arch_lists_valid_ones():
    with pytest.raises(KeyError) as info:
        RepVGG('A7')
    message = str(info.value)
    assert "'A7'" in message
    for arch in ('a0', 'b3g4', 'd2se'):
        assert arch in message


def test_official_state_dict_names():
    keys = RepVGG('B1g2').state_dict().keys()
    for key in ('stage0.rbr_dense.conv.weight', 'stage0.rbr_dense.bn.running_var',
                'stage0.rbr_1x1.conv.weight', 'stage1.0.rbr_dense.conv.weight',
                'stage1.1.rbr_identity.weight', 'stage4.0.rbr_1x1.bn.bias'):
        assert key in keys
    assert 'stage0.rbr_identity.weight' not in keys  # 3 -> 64 channels
    deploy_keys = RepVGG('D2se', deploy=True).state_dict().keys()
    assert 'stage1.0.rbr_reparam.weight' in deploy_keys
    assert 'stage1.0.se.down.weight' in deploy_keys and 'stage0.se.up.bias' in deploy_keys


def test_grouped_blocks_follow_the_original_numbering():
    model = RepVGG('B1g4')
    blocks = [model.stage0] + [b for s in model.stage_names for b in getattr(model, s)]
    groups = [b.groups for b in blocks]
    assert groups[0] == 1
    assert [i for i, g in enumerate(groups) if g == 4] == list(range(2, 27, 2))


@pytest.mark.parametrize('arch', ['A0', 'B1g4', 'D2se'])
def test_backbone_fusion_with_random_bn(arch):
    torch.manual_seed(0)
    model = randomize_bn(RepVGG(arch, out_indices=(0, 1, 2, 3))).eval()
    x = torch.randn(1, 3, 64, 64)
    expected = model(x)
    fused = reparameterize_model(model)
    for a, b in zip(expected, fused(x)):
        assert ((a - b).abs().max() / a.abs().max()).item() <= 1e-5


def test_out_indices_shapes_and_channels():
    model = RepVGG('A0', out_indices=(0, 1, 2, -1)).eval()
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [48, 96, 192, 1280]
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2]
    with pytest.raises(ValueError, match='out_indices'):
        RepVGG('A0', out_indices=(4, ))


def test_dilated_backbone_keeps_resolution_and_fuses():
    model = randomize_bn(RepVGG('A0', strides=(2, 2, 2, 1, 1),
                                dilations=(1, 1, 1, 2, 4), out_indices=(3, ))).eval()
    x = torch.randn(1, 3, 64, 64)
    out = model(x)[0]
    assert out.shape[-1] == 8
    fused = reparameterize_model(model)
    assert ((out - fused(x)[0]).abs().max() / out.abs().max()).item() <= 1e-5


def test_frozen_stages_and_norm_eval():
    model = RepVGG('A0', frozen_stages=2, norm_eval=True)
    model.train()
    assert not any(p.requires_grad for p in model.stage0.parameters())
    assert not any(p.requires_grad for p in model.stage2.parameters())
    assert all(p.requires_grad for p in model.stage3.parameters())
    assert all(not m.training for m in model.modules() if isinstance(m, _BatchNorm))
    assert model.stage3.training

    model = RepVGG('A0', frozen_stages=0)
    model.train()
    assert not model.stage0.training and model.stage1.training
    mean = model.stage0.rbr_dense.bn.running_mean.clone()
    model(torch.randn(2, 3, 32, 32) + 3)
    assert torch.equal(mean, model.stage0.rbr_dense.bn.running_mean)


def test_custom_arch_dict():
    model = RepVGG(dict(num_blocks=[1, 1, 1, 1], width_factor=[0.25, 0.25, 0.25, 0.5],
                        groups={2: 2}))
    assert model.stage2[0].groups == 2 and model.stage1[0].groups == 1
    with pytest.raises(KeyError, match='width_factor'):
        RepVGG(dict(num_blocks=[1, 1, 1, 1]))


def _identity_blocks(backbone):
    from repvgg_mm.models.blocks import RepVGGBlock
    return [m for m in backbone.modules()
            if isinstance(m, RepVGGBlock) and isinstance(m.rbr_identity, _BatchNorm)]


def test_identity_init_starts_every_identity_block_as_identity():
    """identity_init (the demo config's): blocks with an identity branch pass their
    (non-negative) input through, scaled, at the start; the others are untouched; the
    runner's init_weights keeps it; the fused model is exact after training steps."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'demo', 'repvgg-a0_demo.py'))
    assert cfg.model.backbone.identity_init is True
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()  # what the runner calls before training
    backbone = model.backbone
    blocks = _identity_blocks(backbone)
    assert len(blocks) == 1 + 3 + 13  # A0: all blocks but the first of each stage
    for block in blocks:
        assert not block.rbr_dense.bn.weight.any() and not block.rbr_1x1.bn.weight.any()
        assert torch.all(block.rbr_identity.bias == RepVGG.IDENTITY_INIT_BIAS)
        x = torch.relu(torch.randn(8, block.in_channels, 6, 6))  # a ReLU's output
        block.train()
        y = block(x)
        bn = block.rbr_identity
        mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False,
                                                               keepdim=True)
        expected = (x - mean) / torch.sqrt(var + bn.eps) + RepVGG.IDENTITY_INIT_BIAS
        assert torch.all(expected > 0)  # the final ReLU clips nothing
        torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)
    first = backbone.stage1[0]  # no identity branch: default initialisation
    assert first.rbr_identity is None and first.rbr_dense.bn.weight.all()

    # a few SGD steps, then fusion: exact as ever
    backbone.train()
    optimizer = torch.optim.SGD(backbone.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        backbone(torch.randn(4, 3, 32, 32))[-1].square().mean().backward()
        optimizer.step()
    backbone.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = backbone(x)[-1]
        backbone.switch_to_deploy()
        torch.testing.assert_close(backbone(x)[-1], before, rtol=1e-4, atol=1e-4)


def test_identity_init_off_by_default_and_its_limits(tmp_path):
    default = RepVGG('A0')
    assert all(b.rbr_dense.bn.weight.all() for b in _identity_blocks(default))
    # the fused structure has nothing to initialise: accepted (reparam's deploy configs)
    assert RepVGG('A0', deploy=True, identity_init=True).identity_init is False
    with pytest.raises(ValueError, match="identity_init=True needs block_variant='repvgg'"):
        RepVGG('A0', block_variant='qarepvgg', identity_init=True)
    # weights loaded by a Pretrained init_cfg are not overwritten
    source = RepVGG('A0')
    torch.save(source.state_dict(), tmp_path / 'w.pth')
    loaded = RepVGG('A0', identity_init=True,
                    init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'w.pth')))
    loaded.init_weights()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
