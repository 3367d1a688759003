"""The Python API (get_model, list_models, inference, FLOPs, curves) and tools/infer.py,
on a demo model trained here with tools/train.py."""
import json
import os
import os.path as osp
import sys

import pytest
import torch
import yaml
from conftest import DEMO_CONFIG, ROOT, quick_tool, randomize_bn

from repvgg_mm.apis import (
    RepVGGInferencer,
    build_model,
    config_complexity,
    get_model,
    inference_model,
    list_models,
    load_checkpoint_into,
    model_index,
    plot_training_curves,
    reparameterize_checkpoint,
)
from repvgg_mm.checkpoints import FORMATS, read_state_dict
from repvgg_mm.cli import load_config
from repvgg_mm.datasets import generate_demo_dataset
from repvgg_mm.datasets.demo_data import DEMO_CLASSES
from repvgg_mm.fileio import OutputPathError, check_output_paths
from repvgg_mm.models import reparameterize_model

pytestmark = pytest.mark.usefixtures('one_thread')
EPOCHS = 40
# One image per class, without augmentation: 40 iterations of the demo config fit them
# all (the demo recipe itself needs its 3,000 images), so "the right class" is a
# property of a trained model, not luck.
MEMORIZE_CONFIG = f"""_base_ = [{DEMO_CONFIG!r}]
train_dataloader = dict(dataset=dict(pipeline={{{{_base_.test_pipeline}}}}))
param_scheduler = dict(warmup=0, end={EPOCHS})
train_cfg = dict(max_epochs={EPOCHS}, val_interval={EPOCHS})
"""


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """(config, checkpoint, work dir, [(image, label)]) of a demo model trained by
    tools/train.py on one image per class."""
    root = tmp_path_factory.mktemp('api')
    data = str(root / 'data')
    generate_demo_dataset(data, train_per_class=1, val_per_class=1)
    config = root / 'memorize.py'
    config.write_text(MEMORIZE_CONFIG)
    work_dir = str(root / 'work')
    options = [f'{s}_dataloader.dataset.data_root={data}' for s in ('train', 'val', 'test')]
    options += [f'{s}_dataloader.{k}' for s in ('train', 'val', 'test')
                for k in ('batch_size=10', 'num_workers=0', 'persistent_workers=False')]
    quick_tool('train.py', str(config), '--work-dir', work_dir, '--cfg-options', *options,
               # lr 0.1 * 10 / 40 = 0.025: the demo's rate per step
               'auto_scale_lr.base_batch_size=40', f'default_hooks.checkpoint.interval={EPOCHS}',
               'default_hooks.logger.interval=1')
    with open(osp.join(data, 'train_list.txt')) as f:
        images = [(osp.join(data, p), int(label)) for p, label in (ln.split() for ln in f)]
    return str(config), osp.join(work_dir, f'epoch_{EPOCHS}.pth'), work_dir, images


def test_every_zoo_name_builds_with_its_metafile_parameter_count():
    names = list_models()
    index = model_index()
    assert len(names) == 30 and 'repvgg-a0' in names and 'repvggplus-l2pse_deploy' in names
    assert list_models('repvgg-b3g*_deploy') == ['repvgg-b3g2_deploy', 'repvgg-b3g4_deploy']
    for name in names:
        # On the meta device the whole model is constructed (every module, every
        # shape) without allocating or initialising weights: fast and light.
        with torch.device('meta'):
            model = get_model(name, device='meta')
        assert model.head.fc.out_features == 1000, name
        params = sum(p.numel() for p in model.parameters())
        assert params == index[name]['Metadata']['Parameters'], name
        fused = not any('rbr_dense' in k for k, _ in model.named_parameters())
        assert fused == name.endswith('_deploy'), name
        del model


def test_metafile_follows_the_mmpretrain_convention():
    with open(osp.join(ROOT, 'configs', 'metafile.yml')) as f:
        content = yaml.safe_load(f)
    assert {c['Name'] for c in content['Collections']} == {'RepVGG', 'RepVGGplus'}
    for entry in content['Models']:
        assert osp.isfile(osp.join(ROOT, entry['Config'])), entry['Name']
        assert entry['In Collection'] in ('RepVGG', 'RepVGGplus')
        assert {'FLOPs', 'Parameters'} <= set(entry['Metadata'])
        if not entry['Metadata']['Deploy']:
            assert entry['Original Weights'].endswith('.pth')
            assert entry.get('Weights', 'https://').startswith('https://')
    a0 = model_index()['repvgg-a0']
    assert a0['Results'][0]['Metrics']['Top 1 Accuracy'] == 72.41
    assert a0['Original Weights'] == 'RepVGG-A0-train.pth'


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"'repvgg-a3'.*close matches: .*repvgg-a2"):
        get_model('repvgg-a3')


def test_get_model_predicts_as_the_tools_load_for_every_format(trained, tmp_path):
    config, checkpoint, _, _ = trained
    cfg = load_config(config)
    reference = randomize_bn(build_model(cfg))  # random BN: the load must replace it
    load_checkpoint_into(reference, checkpoint)  # what tools/test.py does
    reference.eval()
    inputs = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(inputs)
        fused_state = reparameterize_model(reference).state_dict()
    state, _ = read_state_dict(checkpoint)
    files = {'ours': checkpoint}
    for fmt in ('official', 'mmpretrain', 'timm'):
        files[fmt] = str(tmp_path / f'{fmt}.pth')
        torch.save(FORMATS[fmt].from_ours(state), files[fmt])
    files['fused'] = str(tmp_path / 'fused.pth')
    torch.save({'state_dict': fused_state}, files['fused'])
    files['fused-official'] = str(tmp_path / 'fused-official.pth')
    torch.save(FORMATS['official'].from_ours(fused_state), files['fused-official'])
    for fmt, path in files.items():
        for deploy in ((False, True) if fmt in ('ours', 'fused') else (False, )):
            model = get_model(cfg, path, deploy=deploy)
            is_fused = fmt.startswith('fused') or deploy
            assert hasattr(model.backbone.stage0, 'rbr_reparam') == is_fused, (fmt, deploy)
            with torch.no_grad():
                torch.testing.assert_close(model(inputs), expected, rtol=1e-4, atol=1e-4,
                                           msg=f'{fmt}, deploy={deploy}')


def test_inference_model_returns_the_right_class(trained):
    config, checkpoint, _, images = trained
    for deploy in (False, True):
        model = get_model(config, checkpoint, deploy=deploy)
        for path, label in images:
            result = inference_model(model, path)
            assert result['pred_label'] == label, (path, deploy, result['pred_score'])
            assert result['pred_class'] == DEMO_CLASSES[label]
            assert 0.1 < result['pred_score'] <= 1.0
            assert result['pred_scores'].shape == (10, )


def test_inferencer_takes_batches_of_files(trained):
    config, checkpoint, _, images = trained
    results = RepVGGInferencer(config, checkpoint)([p for p, _ in images], batch_size=4)
    assert [r['pred_label'] for r in results] == [label for _, label in images]


def test_infer_tool_with_a_fused_checkpoint_writes_json_and_pictures(trained, tmp_path):
    config, checkpoint, _, images = trained
    fused = str(tmp_path / 'fused.pth')
    reparameterize_checkpoint(load_config(config), checkpoint, fused)
    paths = [p for p, _ in images[:4]]
    out, show_dir = tmp_path / 'pred.json', tmp_path / 'shown'
    result = quick_tool('infer.py', osp.splitext(fused)[0] + '.py', fused, *paths,
                        '--topk', '3', '--out', str(out), '--show-dir', str(show_dir))
    records = json.loads(out.read_text())
    assert [r['image'] for r in records] == paths
    for record, (_, label) in zip(records, images):
        assert record['pred_label'] == label and record['pred_class'] == DEMO_CLASSES[label]
        assert len(record['topk']) == 3 and record['topk'][0]['class'] == record['pred_class']
        assert record['topk'][0]['score'] >= record['topk'][1]['score']
        assert f"{record['image']}: {record['pred_class']} " in result.stdout
    from PIL import Image
    for path in paths:
        picture = show_dir / (osp.splitext(osp.basename(path))[0] + '.png')
        with Image.open(picture) as image:
            assert image.format == 'PNG' and min(image.size) >= 32
    assert not [f for f in os.listdir(tmp_path) if f.startswith('.pred.json')]


def test_outputs_are_checked_before_any_work(trained, tmp_path):
    config, checkpoint, _, _ = trained
    with pytest.raises(OutputPathError, match='refusing to overwrite an input'):
        check_output_paths({'--out': checkpoint}, {'CONFIG': config, 'CHECKPOINT': checkpoint})
    (tmp_path / 'a_file').write_text('')
    with pytest.raises(OutputPathError, match='is a file, not a folder'):
        check_output_paths({'--out': str(tmp_path / 'a_file' / 'sub' / 'pred.json')}, {})
    check_output_paths({'--out': str(tmp_path / 'missing' / 'pred.json')}, {})  # created later


def test_flops_of_a0_as_mmengine_counts_them():
    cfg = load_config(osp.join(ROOT, 'configs', 'repvgg-a0.py'))
    train = config_complexity(cfg, shape=(224, 224))
    fused = config_complexity(cfg, deploy=True, shape=(224, 224))
    # The fused network's multiply-adds, worked out from the architecture alone:
    # every block is one 3x3 conv, plus the 1280 x 1000 classifier and the pooling.
    widths, blocks, size = [48, 48, 96, 192, 1280], [1, 2, 4, 14, 1], 224
    macs, channels = 0, 3
    for width, count in zip(widths, blocks):
        size //= 2
        for _ in range(count):
            macs += size * size * width * channels * 9
            channels = width
    expected_fused = macs + 1280 * 1000 + 1280 * 7 * 7
    assert fused['flops'] == expected_fused == 1_361_513_728
    # The published 1.52 GFLOPs is the training-time structure's count (3x3 + 1x1
    # convs + BN), not the fused one's.
    assert abs(train['flops'] / 1.52e9 - 1) < 0.01
    index = model_index()
    assert index['repvgg-a0']['Metadata']['FLOPs'] == train['flops']
    assert index['repvgg-a0_deploy']['Metadata']['FLOPs'] == fused['flops']


def test_plot_curves_from_a_real_training_log(trained, tmp_path):
    _, _, work_dir, _ = trained
    out = str(tmp_path / 'curves.png')
    report = plot_training_curves(work_dir, ['loss', 'accuracy/top1'], out)
    assert report['points'] == {'loss': EPOCHS, 'accuracy/top1': 1}  # 1 iteration/epoch
    from PIL import Image
    with Image.open(out) as image:
        assert image.format == 'PNG' and image.size[0] > image.size[1] > 100
    with pytest.raises(KeyError, match="logs no 'nope'; it has .*accuracy/top1"):
        plot_training_curves(work_dir, ['nope'], str(tmp_path / 'x.png'))
    assert not osp.exists(tmp_path / 'x.png')


def test_tensorboard_option_without_tensorboard_names_the_install(monkeypatch, tmp_path):
    from repvgg_mm.engine.runner import merge_option_keys
    config = tmp_path / 'a0_tb.py'
    config.write_text(f"_base_ = ['{ROOT}/configs/repvgg-a0.py', "
                      f"'{ROOT}/configs/_base_/options/tensorboard.py']\n")
    cfg = load_config(str(config))
    assert merge_option_keys(cfg) == ['vis_backends_tensorboard']
    backends = cfg.visualizer.vis_backends
    assert [b['type'] for b in backends] == ['LocalVisBackend', 'TensorboardVisBackend']
    from mmengine.registry import VISBACKENDS
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)  # as if missing
    with pytest.raises(ImportError, match='pip install tensorboard'):
        VISBACKENDS.build(dict(backends[1], save_dir=str(tmp_path)))


def test_get_flops_tool_prints_mmengines_count():
    result = quick_tool(osp.join('analysis', 'get_flops.py'),
                        osp.join(ROOT, 'configs', 'repvgg-a0.py'), '--deploy',
                        '--shape', '64', '96')
    report = json.loads(result.stdout.strip().splitlines()[-1])
    cfg = load_config(osp.join(ROOT, 'configs', 'repvgg-a0.py'))
    assert report == dict(config_complexity(cfg, deploy=True, shape=(64, 96)),
                          shape=[64, 96])
    assert report['params'] == 8_309_384 and 'fused model' in result.stdout
