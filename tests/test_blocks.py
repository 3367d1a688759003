import pytest
import torch
from conftest import randomize_bn

from repvgg_mm.models import RepVGGBlock, SEBlock, identity_kernel, reparameterize_model


def rel_err(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


@pytest.mark.parametrize('cfg', [
    dict(in_channels=8, out_channels=8, stride=1),              # all three branches
    dict(in_channels=8, out_channels=16, stride=2),             # no identity
    dict(in_channels=8, out_channels=8, stride=1, groups=4),    # grouped, with identity
    dict(in_channels=8, out_channels=16, stride=1, groups=2),   # grouped, no identity
    dict(in_channels=8, out_channels=8, stride=1, dilation=2),  # dilated
    dict(in_channels=16, out_channels=16, se_cfg=dict(placement='pre', reduction=4)),
    dict(in_channels=16, out_channels=16, se_cfg=dict(placement='post', reduction=4)),
])
def test_block_fusion_equals_eval_mode_block(cfg):
    torch.manual_seed(0)
    block = randomize_bn(RepVGGBlock(**cfg)).eval()
    x = torch.randn(2, cfg['in_channels'], 13, 13)
    expected = block(x)
    block.switch_to_deploy()
    assert block.deploy and hasattr(block, 'rbr_reparam')
    assert not hasattr(block, 'rbr_dense') and not hasattr(block, 'rbr_1x1')
    assert rel_err(expected, block(x)) <= 1e-5


def test_fusion_catches_a_wrong_kernel():
    """The equivalence check is sharp: perturbing one fused weight breaks it."""
    block = randomize_bn(RepVGGBlock(8, 8)).eval()
    x = torch.randn(2, 8, 9, 9)
    expected = block(x)
    block.switch_to_deploy()
    with torch.no_grad():
        block.rbr_reparam.weight[0, 0, 1, 1] += 0.05
    assert rel_err(expected, block(x)) > 1e-5


def test_identity_kernel_is_identity_for_groups():
    for groups in (1, 2, 4):
        x = torch.randn(1, 8, 5, 5)
        k = identity_kernel(8, groups)
        y = torch.nn.functional.conv2d(x, k, padding=1, groups=groups)
        assert torch.equal(x, y)


def test_equivalent_kernel_is_differentiable():
    block = RepVGGBlock(4, 4)
    kernel, bias = block.get_equivalent_kernel_bias()
    (kernel.square().sum() + bias.sum()).backward()
    assert block.rbr_dense.conv.weight.grad is not None
    assert block.rbr_identity.weight.grad is not None


def test_se_placement_names_and_deploy_keeps_se():
    pre = RepVGGBlock(16, 16, se_cfg=dict(placement='pre', reduction=16))
    post = RepVGGBlock(16, 16, se_cfg=dict(placement='post', reduction=4))
    assert isinstance(pre.se, SEBlock) and pre.se.down.out_channels == 1
    assert isinstance(post.post_se, SEBlock) and post.post_se.down.out_channels == 4
    fused = reparameterize_model(pre)
    assert 'se.down.weight' in fused.state_dict()
    assert 'rbr_reparam.weight' in fused.state_dict()


def test_switch_to_deploy_is_idempotent_and_copy_by_default():
    block = randomize_bn(RepVGGBlock(8, 8)).eval()
    fused = reparameterize_model(block)
    assert not block.deploy and fused.deploy
    weight = fused.rbr_reparam.weight.clone()
    fused.switch_to_deploy()
    assert torch.equal(weight, fused.rbr_reparam.weight)
    same = reparameterize_model(block, inplace=True)
    assert same is block and block.deploy


def test_bad_block_arguments():
    with pytest.raises(ValueError, match='groups=3'):
        RepVGGBlock(8, 8, groups=3)
    with pytest.raises(ValueError, match='placement'):
        RepVGGBlock(8, 8, se_cfg=dict(placement='middle'))


def test_with_cp_gives_same_gradients():
    torch.manual_seed(0)
    a = RepVGGBlock(8, 8)
    b = RepVGGBlock(8, 8, with_cp=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 8, 7, 7, requires_grad=True)
    a(x).sum().backward()
    ga = a.rbr_dense.conv.weight.grad.clone()
    b(x).sum().backward()
    assert torch.allclose(ga, b.rbr_dense.conv.weight.grad, atol=1e-6)
