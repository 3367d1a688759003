"""QARepVGG: the quantization-friendly variant of the one RepVGGBlock class."""
import pytest
import torch
import torch.nn as nn
from conftest import ROOT, randomize_bn, tool_in_process
from mmengine.config import Config

from repvgg_mm.apis import build_model, load_checkpoint_into
from repvgg_mm.checkpoints import CheckpointError, block_variant_of
from repvgg_mm.models.blocks import RepVGGBlock
from repvgg_mm.models.reparam import reparameterize_model

# Documented in README (Deploy): parameters of the training-time and fused classifiers.
PARAMS = {'qarepvgg-a0': (9_103_304, 8_309_384), 'qarepvgg-b0': (15_808_616, 14_339_048)}


def _block_outputs(block: RepVGGBlock, x: torch.Tensor):
    randomize_bn(block, seed=1).eval()
    with torch.no_grad():
        expected = block(x)
        block.switch_to_deploy()
        return expected, block(x)


@pytest.mark.parametrize('in_ch,out_ch,stride,groups,dilation,se', [
    (8, 8, 1, 1, 1, None),                              # identity branch
    (8, 16, 2, 1, 1, None),                             # no identity (stride, width)
    (8, 16, 1, 1, 1, None),                             # no identity (width only)
    (8, 8, 1, 2, 1, None),                              # groups, identity
    (8, 16, 2, 4, 1, None),                             # groups, no identity
    (16, 16, 1, 1, 2, None),                            # dilation
    (16, 16, 1, 1, 1, dict(placement='pre', reduction=4)),   # D2se-style SE
    (16, 32, 2, 1, 1, dict(placement='post', reduction=4)),  # RepVGGplus-style SE
])
def test_qarepvgg_block_fuses_exactly(in_ch, out_ch, stride, groups, dilation, se):
    torch.manual_seed(0)
    block = RepVGGBlock(in_ch, out_ch, stride=stride, groups=groups, dilation=dilation,
                        se_cfg=se, variant='qarepvgg')
    x = torch.randn(2, in_ch, 12, 12)
    expected, fused = _block_outputs(block, x)
    rel = (expected - fused).abs().max() / expected.abs().max()
    assert rel <= 1e-5
    # one conv with bias (and the SE, which is not fusable) is all that is left
    assert {k.split('.')[0] for k in block.state_dict()} <= {'rbr_reparam', 'se', 'post_se'}
    assert not hasattr(block, 'bn')


def test_qarepvgg_block_structure():
    block = RepVGGBlock(8, 8, variant='qarepvgg')
    names = set(block.state_dict())
    # 3x3 conv keeps its BN; the 1x1 is a plain conv without BN or bias; the identity
    # has no parameters; one BN after the sum ('bn', the authors' name)
    assert {'rbr_dense.conv.weight', 'rbr_dense.bn.weight', 'rbr_1x1.weight',
            'bn.weight', 'bn.running_var'} <= names
    assert isinstance(block.rbr_1x1, nn.Conv2d) and block.rbr_1x1.bias is None
    assert not any(k.startswith('rbr_identity') or k.startswith('rbr_1x1.bn') for k in names)
    assert isinstance(block.rbr_identity, nn.Identity)
    assert RepVGGBlock(8, 16, variant='qarepvgg').rbr_identity is None
    with pytest.raises(ValueError, match="'repvgg', 'qarepvgg'"):
        RepVGGBlock(8, 8, variant='qa')


def test_qarepvgg_bn_is_applied_after_the_sum():
    """In train mode the block output (before the ReLU) is normalised per channel."""
    block = RepVGGBlock(8, 8, variant='qarepvgg').train()
    captured = {}
    block.bn.register_forward_hook(lambda m, i, o: captured.update(out=o))
    block(torch.randn(4, 8, 10, 10) * 3 + 2)
    out = captured['out']
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-5  # BN with gamma 1, beta 0


@pytest.mark.parametrize('config', sorted(PARAMS))
def test_qarepvgg_configs_parameters_and_fusion(config):
    """Parameter counts as documented; the whole classifier fuses exactly."""
    cfg = Config.fromfile(f'{ROOT}/configs/{config}.py')
    model = build_model(cfg)
    train_params = sum(p.numel() for p in model.parameters())
    fused = reparameterize_model(randomize_bn(model).eval())
    fused_params = sum(p.numel() for p in fused.parameters())
    assert (train_params, fused_params) == PARAMS[config]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected, got = model(x, mode='tensor'), fused(x, mode='tensor')
    assert (expected - got).abs().max() / expected.abs().max() <= 1e-5
    assert block_variant_of(model.state_dict()) == 'qarepvgg'


def test_qarepvgg_parameter_count_against_repvgg():
    model = build_model(Config.fromfile(f'{ROOT}/configs/qarepvgg-a0.py'))
    plain = build_model(Config.fromfile(f'{ROOT}/configs/repvgg-a0.py'))
    train_params = sum(p.numel() for p in model.parameters())
    # against RepVGG, each block loses the 1x1 BN (2 x out) and, where present, the
    # identity BN (2 x in), and gains the post-sum BN (2 x out); the fused models are
    # the same
    blocks = [m for m in plain.modules() if isinstance(m, RepVGGBlock)]
    delta = sum(2 * b.in_channels for b in blocks if b.rbr_identity is not None)
    assert sum(p.numel() for p in plain.parameters()) - train_params == delta
    assert sum(p.numel() for p in reparameterize_model(model).parameters()) == \
        sum(p.numel() for p in reparameterize_model(plain).parameters())
    assert block_variant_of(plain.state_dict()) == 'repvgg'


def test_reparam_tool_on_qarepvgg_and_arch_hint(tmp_path):
    cfg = Config.fromfile(f'{ROOT}/configs/demo/qarepvgg-a0_demo.py')
    model = randomize_bn(build_model(cfg))
    ckpt = tmp_path / 'qa.pth'
    torch.save({'state_dict': model.state_dict()}, ckpt)
    out = tmp_path / 'qa_deploy.pth'
    status, stdout, stderr = tool_in_process(
        'reparam.py', f'{ROOT}/configs/demo/qarepvgg-a0_demo.py', str(ckpt), str(out))
    assert status == 0 and 'verified' in stdout and out.exists(), stderr
    fused = torch.load(out, weights_only=True)['state_dict']
    assert not any('.bn.' in k or 'rbr_1x1' in k for k in fused)
    # a QARepVGG checkpoint loaded into the RepVGG model: the error names the variant
    plain = build_model(Config.fromfile(f'{ROOT}/configs/demo/repvgg-a0_demo.py'))
    with pytest.raises(CheckpointError, match="QARepVGG blocks.*block_variant='qarepvgg'"):
        load_checkpoint_into(plain, str(ckpt))
