"""RepVGGplus-L2pse: parameter counts, aux losses, fusion, deployment, official format."""
import os.path as osp

import pytest
import torch
from conftest import ROOT, randomize_bn
from mmengine.config import Config
from mmpretrain.structures import DataSample

from repvgg_mm import reparameterize_model
from repvgg_mm.apis import build_model, deploy_config, param_group_table, reparameterize_checkpoint
from repvgg_mm.checkpoints import FORMATS, detect_format
from repvgg_mm.models import RepVGGplus

L2PSE = osp.join(ROOT, 'configs', 'repvggplus-l2pse.py')
AUX = ('stage1_aux', 'stage2_aux', 'stage3_first_aux')


def count(model, prefix=''):
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))


def rel_err(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


def small_cfg(num_classes=10):
    """A reduced-width RepVGGplus classifier config (the full L2pse is too big here)."""
    cfg = Config.fromfile(L2PSE)
    cfg.model.backbone.arch = dict(num_blocks=[2, 2, 4, 1], width_factor=[0.25] * 3 + [0.5],
                                   se_cfg=dict(placement='post', reduction=4))
    cfg.model.neck.in_channels = (16, 32, 64)
    cfg.model.head.update(num_classes=num_classes, in_channels=256, aux_in_channels=(16, 32, 64),
                          topk=(1, ))
    cfg.model.pop('train_cfg')
    return cfg


@pytest.fixture(scope='module')
def l2pse():
    torch.manual_seed(0)
    return build_model(Config.fromfile(L2PSE))


def test_parameter_counts(l2pse):
    assert count(l2pse) == 146_062_864
    aux = sum(count(l2pse, f'neck.{a}') + count(l2pse, f'head.{a}_fc') for a in AUX)
    assert aux == 5_963_640
    fused = reparameterize_model(l2pse)
    assert count(fused) == 127_151_960
    assert not any('_aux' in n for n, _ in fused.named_parameters())
    deployed = build_model(deploy_config(Config.fromfile(L2PSE)))
    assert count(deployed) == 127_151_960


def test_official_names_and_se_everywhere(l2pse):
    keys = l2pse.state_dict().keys()
    for key in ('backbone.stage0.post_se.down.weight', 'backbone.stage1.blocks.7.post_se.up.bias',
                'backbone.stage3_first.blocks.11.rbr_identity.weight',
                'backbone.stage3_second.blocks.0.rbr_dense.conv.weight',
                'neck.stage1_aux.0.conv.weight', 'neck.stage3_first_aux.0.bn.running_var',
                'head.stage2_aux_fc.weight', 'head.fc.bias'):
        assert key in keys, key
    assert l2pse.backbone.stage3_first.blocks[0].stride == 2
    assert l2pse.backbone.stage3_second.blocks[0].stride == 1
    assert len(l2pse.backbone.stage3_first.blocks) == len(l2pse.backbone.stage3_second.blocks)
    assert l2pse.backbone.stage0.post_se.down.out_channels == 16  # 64 / 4


def test_losses_dict_has_weighted_aux_losses():
    torch.manual_seed(0)
    model = build_model(small_cfg())
    x = torch.randn(4, 3, 64, 64)
    samples = [DataSample().set_gt_label(i) for i in (0, 3, 5, 9)]
    losses = model(x, samples, mode='loss')
    assert set(losses) == {'loss', 'loss_stage1_aux', 'loss_stage2_aux',
                           'loss_stage3_first_aux'}
    feats = model.neck(model.backbone(x))
    head = model.head
    for name, score in zip(AUX, head.aux_scores(feats)):
        raw = head.loss_module(score, torch.tensor([0, 3, 5, 9]), avg_factor=4)
        assert losses[f'loss_{name}'].item() == pytest.approx(0.1 * raw.item(), rel=1e-5)
    model.head.aux_loss_weight = 0.5
    assert model(x, samples, mode='loss')['loss_stage2_aux'].item() == pytest.approx(
        5 * losses['loss_stage2_aux'].item(), rel=1e-5)


def test_predict_uses_the_main_classifier_and_fusion_is_exact():
    torch.manual_seed(0)
    model = randomize_bn(build_model(small_cfg())).eval()
    x = torch.randn(2, 3, 64, 64)
    main = model.head.fc(model.neck(model.backbone(x))[-1])
    assert torch.allclose(model(x, mode='tensor'), main)
    preds = model(x, mode='predict')
    assert torch.allclose(torch.stack([p.pred_score for p in preds]), main.softmax(1))
    fused = reparameterize_model(model)
    assert not hasattr(fused.neck, 'stage1_aux') and not hasattr(fused.head, 'stage1_aux_fc')
    assert rel_err(main, fused(x, mode='tensor')) <= 1e-5
    # a model built with deploy=True loads the fused weights and predicts the same
    deployed = build_model(deploy_config(small_cfg())).eval()
    deployed.load_state_dict(fused.state_dict())
    assert rel_err(main, deployed(x, mode='tensor')) <= 1e-5
    assert len(deployed(x, mode='predict')) == 2


def test_out_indices_for_detection_users():
    model = RepVGGplus(dict(num_blocks=[2, 2, 4, 1], width_factor=[0.25] * 3 + [0.5],
                            se_cfg=dict(placement='post', reduction=4)), out_indices=(0, 1, 3, 4))
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [16, 32, 64, 256]
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2]


def test_official_format_round_trip_with_aux_weights(tmp_path):
    cfg = small_cfg()
    model = randomize_bn(build_model(cfg)).eval()
    official = FORMATS['official'].from_ours(model.state_dict())
    assert 'stage1.blocks.0.rbr_dense.conv.weight' in official
    assert 'stage3_first.blocks.1.post_se.down.weight' in official
    assert 'stage1_aux.0.conv.weight' in official and 'stage1_aux.3.weight' in official
    assert 'stage3_first_aux.3.bias' in official and 'linear.weight' in official
    assert detect_format(official) == 'official'
    assert FORMATS['official'].to_ours(official).keys() == model.state_dict().keys()
    src = tmp_path / 'RepVGGplus-L2pse-train.pth'
    torch.save(official, src)
    out = tmp_path / 'deploy.pth'
    report = reparameterize_checkpoint(cfg, str(src), str(out))
    assert report['src_format'] == 'official' and report['max_rel_diff'] <= 1e-5
    deployed = build_model(Config.fromfile(report['config'])).eval()
    deployed.load_state_dict(torch.load(out, weights_only=True)['state_dict'])
    x = torch.randn(2, 3, 64, 64)
    assert rel_err(model(x, mode='tensor'), deployed(x, mode='tensor')) <= 1e-5


def test_weight_decay_rule_covers_aux_and_se():
    rows = {r['name']: r['weight_decay'] for r in param_group_table(small_cfg())}
    assert rows['neck.stage1_aux.0.conv.weight'] == 4e-5
    assert rows['neck.stage1_aux.0.bn.weight'] == 0
    assert rows['head.stage2_aux_fc.weight'] == 4e-5 and rows['head.stage2_aux_fc.bias'] == 0
    assert rows['backbone.stage0.post_se.down.weight'] == 4e-5
    assert rows['backbone.stage0.post_se.down.bias'] == 0
    assert rows['backbone.stage1.blocks.1.rbr_identity.weight'] == 4e-5
    assert rows['backbone.stage1.blocks.1.rbr_identity.bias'] == 0


def test_l2pse_recipe_config():
    cfg = Config.fromfile(L2PSE)
    assert cfg.optim_wrapper.optimizer.weight_decay == 4e-5
    assert cfg.param_scheduler.warmup == 5 and cfg.train_cfg.max_epochs == 300
    assert cfg.model.train_cfg.augments == dict(type='Mixup', alpha=0.2)
    assert cfg.model.head.loss.label_smooth_val == 0.1
    train = [s['type'] for s in cfg.train_dataloader.dataset.pipeline]
    assert train == ['LoadImageFromFile', 'RandomResizedCrop', 'RandomFlip', 'RandAugment',
                     'PackInputs']
    assert cfg.train_dataloader.dataset.pipeline[1]['scale'] == 256
    assert cfg.train_dataloader.dataset.pipeline[3]['num_policies'] == 2
    assert cfg.test_dataloader.dataset.pipeline[2]['crop_size'] == 320


@pytest.mark.slow
def test_train_reparam_test_a_small_repvggplus_on_demo_data(tiny_data, tmp_path):
    import json

    from conftest import DEMO_CONFIG, quick_tool, tiny_options
    config = tmp_path / 'plus_demo.py'
    config.write_text(f"""_base_ = ['{DEMO_CONFIG}']
model = dict(
    _delete_=True, type='ImageClassifier',
    backbone=dict(type='RepVGGplus', out_indices=(0, 1, 2, 4),
                  arch=dict(num_blocks=[2, 2, 4, 1], width_factor=[0.25, 0.25, 0.25, 0.5],
                            se_cfg=dict(placement='post', reduction=4))),
    neck=dict(type='RepVGGplusAuxNeck', in_channels=(16, 32, 64)),
    head=dict(type='RepVGGplusClsHead', num_classes=10, in_channels=256,
              aux_in_channels=(16, 32, 64), topk=(1, ),
              loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original')))
""")
    work = tmp_path / 'work'
    result = quick_tool('train.py', str(config), '--work-dir', str(work),
                        '--cfg-options', *tiny_options(tiny_data, epochs=1))
    log = result.stdout + result.stderr
    assert 'loss_stage1_aux:' in log and 'loss_stage3_first_aux:' in log
    ckpt = str(work / 'epoch_1.pth')
    data = tiny_options(tiny_data)
    quick_tool('test.py', str(config), ckpt, '--work-dir', str(tmp_path),
                '--out-metrics', str(tmp_path / 'm1.json'), '--cfg-options', *data)
    out = tmp_path / 'plus_deploy.pth'
    quick_tool('reparam.py', str(config), ckpt, str(out))
    quick_tool('test.py', str(out).replace('.pth', '.py'), str(out), '--work-dir',
                str(tmp_path), '--out-metrics', str(tmp_path / 'm2.json'), '--cfg-options', *data)
    top1 = json.loads((tmp_path / 'm1.json').read_text())['accuracy/top1']
    assert top1 == json.loads((tmp_path / 'm2.json').read_text())['accuracy/top1']
    deployed = torch.load(out, weights_only=True)['state_dict']
    assert not any('_aux' in k for k in deployed)
