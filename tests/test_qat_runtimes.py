"""INT8 that the runtimes reproduce: the export refuses a file that disagrees with the
trained model; BN statistics and ranges freeze as in the original, also after a resume;
several ranks keep one quantization state; options that do not fit QAT are refused."""
import os
import shutil
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import ROOT, free_port, randomize_bn, tool_in_process
from mmengine.config import Config

from repvgg_mm.apis import build_model

QAT_CONFIG = f'{ROOT}/configs/demo/repvgg-a0_qat_demo.py'
FLOAT_CONFIG = f'{ROOT}/configs/demo/repvgg-a0_demo.py'


def _data(root):
    return [f'{s}_dataloader.dataset.data_root={root}' for s in ('train', 'val', 'test')]


@pytest.fixture(scope='module')
def float_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp('qat_rt') / 'a0.pth'
    torch.manual_seed(0)
    torch.save({'state_dict': randomize_bn(build_model(Config.fromfile(FLOAT_CONFIG)))
                .state_dict()}, path)
    return str(path)


def test_an_export_that_disagrees_with_the_trained_model_writes_nothing(
        float_checkpoint, tiny_data, tmp_path, monkeypatch):
    """A file whose predictions are not the trained model's (its logits rolled by one
    class): the check on the val images refuses it in one line with both top-1s, and
    neither file is left."""
    from repvgg_mm.apis.quantize import qat_export
    real = qat_export._to_onnx

    def rolled(gm, size):  # the file's logits rolled by one class: every top-1 moves
        output = next(n for n in gm.graph.nodes if n.op == 'output')
        with gm.graph.inserting_before(output):
            shifted = gm.graph.call_function(torch.ops.aten.roll.default,
                                             (output.args[0][0], [1], [1]))
        output.args = ((shifted, ), )
        gm.recompile()
        return real(gm, size)
    monkeypatch.setattr(qat_export, '_to_onnx', rolled)
    out = tmp_path / 'out' / 'int8.onnx'
    status, out_text, err = tool_in_process('qat.py', QAT_CONFIG, float_checkpoint, str(out),
                                     '--work-dir', str(tmp_path / 'work'), '--no-eval',
                                     '--cfg-options', *_data(tiny_data),
                                     'train_cfg.max_epochs=1', 'param_scheduler.end=1')
    assert status == 1, (out_text[-2000:], err[-2000:])
    line = err.splitlines()[0]
    assert status == 1 and 'the INT8 file agrees with the trained fake-quant model on' in line
    assert 'ONNX Runtime top-1' in line and 'fake-quant model top-1' in line
    assert 'nothing written' in line
    assert not out.exists() and not (tmp_path / 'out' / 'int8_tensorrt.onnx').exists()


def _buffers(path, kinds):
    state = torch.load(path, map_location='cpu', weights_only=False)['state_dict']
    return {k: v for k, v in state.items() if k.rsplit('.', 1)[-1] in kinds}


def test_bn_statistics_and_ranges_freeze_from_their_epochs_also_after_resume(
        float_checkpoint, tiny_data, tmp_path):
    """3 epochs, BN frozen from epoch 1 (0-based), ranges from epoch 2: BN statistics
    do not move after the first epoch, the ranges move in the second and not in the
    third; a run resumed after the second epoch freezes alike."""
    work = tmp_path / 'work'
    options = [*_data(tiny_data), 'train_cfg.max_epochs=3', 'param_scheduler.end=3',
               'model.freeze_bn_epoch=1', 'model.freeze_observer_epoch=2',
               'default_hooks.checkpoint.interval=1', 'train_cfg.val_interval=10',
               # random weights: logits within a hair of each other, which the INT8
               # kernels' rounding reorders; the export check is another test's
               'qat.min_agreement=0']
    status, _, err = tool_in_process('qat.py', QAT_CONFIG, float_checkpoint,
                                     str(tmp_path / 'int8.onnx'), '--work-dir', str(work),
                                     '--no-eval', '--cfg-options', *options)
    assert status == 0, err
    bn, ranges = ('running_mean', 'running_var'), ('min_val', 'max_val', 'scale')
    e1, e2, e3 = (work / f'epoch_{i}.pth' for i in (1, 2, 3))
    for before, after in ((e1, e2), (e2, e3)):
        a, b = _buffers(before, bn), _buffers(after, bn)
        assert len(a) == 2 * 22 and all(torch.equal(a[k], b[k]) for k in a)
    a, b, c = (_buffers(p, ranges) for p in (e1, e2, e3))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # still observing in epoch 1
    assert all(torch.equal(b[k], c[k]) for k in b)  # frozen in epoch 2
    weights = [k for k in torch.load(e3, weights_only=False)['state_dict']
               if k.endswith('conv.weight')]
    assert not torch.equal(torch.load(e2, weights_only=False)['state_dict'][weights[0]],
                           torch.load(e3, weights_only=False)['state_dict'][weights[0]])
    resumed = tmp_path / 'resumed'
    shutil.copytree(work, resumed)
    os.remove(resumed / 'epoch_3.pth')
    (resumed / 'last_checkpoint').write_text(str(resumed / 'epoch_2.pth'))
    status, _, err = tool_in_process('train.py', QAT_CONFIG, '--work-dir', str(resumed),
                                     '--resume', '--cfg-options', *options)
    assert status == 0, err
    again = _buffers(resumed / 'epoch_3.pth', ranges + bn)
    assert all(torch.equal(again[k], v) for k, v in _buffers(e2, ranges + bn).items())


def _two_rank_worker(rank: int, port: int, out: str) -> None:
    from torchao.quantization.pt2e import FakeQuantize, MovingAverageMinMaxObserver

    from repvgg_mm.models.quantizer import average_across_ranks
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=2)
    torch.manual_seed(rank)
    module = torch.nn.Sequential(
        torch.nn.BatchNorm2d(3),
        FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=-128, quant_max=127,
                     dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)).train()
    for _ in range(3):  # each rank sees its own data: ranks' states differ
        module(torch.randn(4, 3, 5, 5) * (1 + 9 * rank) + rank)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    assert average_across_ranks(module) > 0
    torch.save(dict(before=before, after=module.state_dict()), f'{out}/rank{rank}.pt')
    dist.destroy_process_group()


def test_two_ranks_end_every_iteration_with_one_quantization_state(tmp_path):
    """With two gloo ranks that saw different batches: after the sync both hold the
    same BN statistics and ranges -- the average of theirs -- and the scale of that
    range (QATSyncHook runs this after every iteration; the shipped QAT configs add
    the hook)."""
    mp.spawn(_two_rank_worker, args=(free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f'rank{r}.pt', weights_only=False) for r in (0, 1)]
    for key in ('0.running_mean', '0.running_var', '1.activation_post_process.min_val',
                '1.activation_post_process.max_val'):
        first, second = ranks[0]['before'][key], ranks[1]['before'][key]
        assert not torch.allclose(first, second)
        expected = (first.double() + second.double()) / 2
        assert torch.equal(ranks[0]['after'][key], ranks[1]['after'][key])
        assert torch.allclose(ranks[0]['after'][key].double(), expected)
    amax = torch.maximum(-ranks[0]['after']['1.activation_post_process.min_val'],
                         ranks[0]['after']['1.activation_post_process.max_val'])
    assert torch.allclose(ranks[1]['after']['1.scale'], amax / 127.5, rtol=1e-6)
    for path in ('configs/qat/repvgg-a0_qat.py', 'configs/qat/qarepvgg-a0_qat.py',
                 'configs/demo/repvgg-a0_qat_demo.py', 'configs/demo/qarepvgg-a0_qat_demo.py'):
        assert Config.fromfile(f'{ROOT}/{path}').custom_hooks_qat == [
            dict(type='QATSyncHook')], path


def test_options_that_do_not_fit_qat_are_refused(float_checkpoint, tiny_data, tmp_path):
    cases = [(['compile=True'], 'compile does not fit quantization-aware training'),
             (['optim_wrapper.type=AmpOptimWrapper', 'optim_wrapper.dtype=bfloat16'],
              'mixed precision (AmpOptimWrapper, --amp) does not fit')]
    for options, needle in cases:
        status, _, err = tool_in_process('qat.py', QAT_CONFIG, float_checkpoint,
                                         str(tmp_path / 'int8.onnx'), '--work-dir',
                                         str(tmp_path / 'work'), '--cfg-options',
                                         *_data(tiny_data), *options)
        assert status == 1 and needle in err.splitlines()[0], err
    assert os.listdir(tmp_path) == []
    # the model itself refuses autocast (tools/train.py --amp with a QAT config)
    from repvgg_mm.engine.runner import RepVGGRunner
    from repvgg_mm.models.qat import QATClassifier
    cfg = Config.fromfile(QAT_CONFIG)
    model = QATClassifier(**{k: v for k, v in cfg.model.items() if k != 'type'})
    with torch.autocast('cpu', dtype=torch.bfloat16), \
            pytest.raises(RuntimeError, match='mixed precision .* does not fit QAT'):
        model(torch.zeros(1, 3, 32, 32))
    runner = SimpleNamespace(model=model, cfg=Config(dict(compile=True)),
                             logger=SimpleNamespace(info=print))
    with pytest.raises(ValueError, match='compile .* does not fit'):
        RepVGGRunner._maybe_compile(runner, 'train_step')
