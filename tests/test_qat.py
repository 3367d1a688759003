"""INT8 quantization-aware training: BN insertion keeps the fused model's outputs; the
INT8 demo runs PTQ and QAT side by side; the QAT tool writes a QDQ model whose Q/DQ
placement TensorRT takes and whose ONNX Runtime top-1 is the one reported; QAT resumes
as any training; bad inputs are refused with one line before anything is written."""
import json
import os
import os.path as osp
import sys

import numpy as np
import onnx
import pytest
import torch
from conftest import ROOT, randomize_bn, tool_in_process
from mmengine.config import Config
from onnx import TensorProto, helper, numpy_helper

from repvgg_mm.apis import build_model
from repvgg_mm.apis.quantize.qdq import check_tensorrt_placement, qdq_structure
from repvgg_mm.models import reparameterize_model
from repvgg_mm.models.qat import (
    LogitsNetwork,
    insert_bn,
    record_conv_statistics,
    set_bn_statistics,
)

QAT_CONFIG = f'{ROOT}/configs/demo/repvgg-a0_qat_demo.py'
QAT_QAREPVGG_CONFIG = f'{ROOT}/configs/demo/qarepvgg-a0_qat_demo.py'
FLOAT_CONFIG = f'{ROOT}/configs/demo/repvgg-a0_demo.py'


def _data_options(root):
    return [f'{s}_dataloader.dataset.data_root={root}' for s in ('train', 'val', 'test')]


def test_bn_insertion_keeps_the_fused_outputs():
    """A BN after every fused conv: eval outputs unchanged; the running statistics are
    the conv outputs' (so on the batch they were recorded on, train mode -- batch
    statistics -- gives the same outputs too); gamma = std, beta = mean + old bias."""
    torch.manual_seed(0)
    model = randomize_bn(build_model(Config.fromfile(FLOAT_CONFIG))).eval()
    fused = LogitsNetwork(reparameterize_model(model)).eval()
    network = LogitsNetwork(reparameterize_model(model)).eval()
    names = insert_bn(network)
    assert len(names) == 22  # A0: the stem and 21 blocks
    batch = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        expected = fused(batch)
        scale = expected.abs().max()
        assert (network(batch) - expected).abs().max() <= 1e-5 * scale  # BN as identity
    stats = record_conv_statistics(network, [batch[:8], batch[8:]])
    set_bn_statistics(network, stats)
    stage0 = network.classifier.backbone.stage0.rbr_reparam
    with torch.no_grad():
        y = stage0.conv(batch)
    assert torch.allclose(stage0.bn.running_mean, y.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(stage0.bn.running_var, y.var((0, 2, 3), unbiased=False), rtol=1e-4)
    assert torch.allclose(stage0.bn.weight, (stage0.bn.running_var + stage0.bn.eps).sqrt())
    old_bias = fused.classifier.backbone.stage0.rbr_reparam.bias
    assert torch.allclose(stage0.bn.bias, stage0.bn.running_mean + old_bias, atol=1e-6)
    with torch.no_grad():
        got = network.eval()(batch)
        assert (got - expected).abs().max() <= 1e-5 * scale
        # train mode normalises with the batch's statistics: the recorded ones here
        assert (network.train()(batch) - expected).abs().max() <= 1e-4 * scale
    with pytest.raises(ValueError, match='already has a BatchNorm'):
        insert_bn(network)
    with pytest.raises(ValueError, match='no fused RepVGG block'):
        insert_bn(LogitsNetwork(model))  # training-time: nothing fused yet


@pytest.fixture(scope='module')
def float_checkpoint(tmp_path_factory):
    """A training-time checkpoint of the demo config (random weights and BN)."""
    path = tmp_path_factory.mktemp('qat_float') / 'a0.pth'
    torch.manual_seed(0)
    model = randomize_bn(build_model(Config.fromfile(FLOAT_CONFIG)))
    torch.save({'state_dict': model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope='module')
def int8_demo(tiny_data, tmp_path_factory):
    """tools/int8_demo.py (what `make int8-demo` runs) as a process on the tiny data, one
    model: 2 epochs of training, export, PTQ, and QAT (tools/qat.py with the shipped
    QAT demo config, one epoch)."""
    from conftest import python_tool
    work = tmp_path_factory.mktemp('int8_demo') / 'int8'
    result = python_tool('int8_demo.py', '--data-root', tiny_data, '--work-dir', str(work),
                         '--epochs', '2', '--calib-images', '8', '--qat-epochs', '1',
                         '--models', 'QARepVGG-A0')
    summary = json.loads((work / 'summary.json').read_text())
    return dict(stdout=result.stdout, work=work, row=summary['rows'][0])


def test_int8_demo_tool_end_to_end(int8_demo):
    """Its table and summary: FP32, FP32 trained on for QAT's epochs, PTQ per tensor and
    per channel, and QAT, side by side in ONNX Runtime (optimisations on and off) and
    OpenVINO, each next to the PyTorch model it came from; the CPU's features named."""
    row, stdout, work = int8_demo['row'], int8_demo['stdout'], int8_demo['work']
    assert '===== INT8 on the demo data (2 epochs, minmax calibration on 8' in stdout
    assert 'CPU: ' in stdout and 'features: ' in stdout
    assert row['model'] == 'QARepVGG-A0' and row['calib_images'] == 8
    assert row['val_images'] == 30 and row['qat_epochs'] == 1
    files = {r['file']: r for r in row['files']}
    assert list(files) == ['FP32', 'FP32 +QAT epochs', 'PTQ per-tensor', 'PTQ per-channel',
                           'QAT']
    assert files['FP32']['pytorch_agreement'] == 1.0
    assert files['FP32']['top1'] == pytest.approx(files['FP32']['pytorch_top1'], abs=1e-3)
    for r in files.values():
        assert 0 <= r['pytorch_agreement'] <= 1 and r['speed_ratio'] > 0
        assert r['openvino_vs_onnxruntime'] >= 29 / 30  # the second runtime agrees
        assert r['optimised_vs_plain'] == 1.0  # INT32 biases: no rounding of its own
        assert f"{r['file']:<17} {r['top1']:>7.2f}" in stdout
    assert files['QAT']['pytorch_images'] == 30  # the export's check, whole val set
    assert osp.isfile(files['QAT']['tensorrt_onnx'])
    ops = {node.op_type for node in onnx.load(files['PTQ per-channel']['onnx']).graph.node}
    assert {'QuantizeLinear', 'DequantizeLinear'} <= ops
    assert not (work / 'repvgg-a0_demo').exists()  # only the model asked for
    assert sorted(p.name for p in (work / 'qarepvgg-a0_demo_qat').glob('*.pth')) == [
        'best_accuracy_top1_epoch_1.pth', 'epoch_1.pth']


def test_qat_files_biases_and_placement_per_runtime(int8_demo):
    """The ONNX Runtime file: every Conv and Gemm bias an INT32 DequantizeLinear output
    (scale = input scale x weight scale); the TensorRT file: narrow-range weights, no
    Q/DQ between a conv and its ReLU, nothing quantized twice -- which the ONNX Runtime
    file's layout would break."""
    files = {r['file']: r for r in int8_demo['row']['files']}
    ort_file, trt_file = files['QAT']['onnx'], files['QAT']['tensorrt_onnx']
    ort = qdq_structure(ort_file)
    assert ort['float_biases'] == 0 and ort['int32_biases'] >= 22 and not ort['problems']
    trt = check_tensorrt_placement(trt_file, runtime='tensorrt')
    assert trt['min_weight_code'] >= -127 and trt['int8_convs'] == 22
    assert 'QuantizeLinear' in trt['ops']
    problems = qdq_structure(ort_file, runtime='tensorrt')['problems']
    assert any('between it and its ReLU' in p for p in problems)
    graph = onnx.load(ort_file).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    for conv in (n for n in graph.node if n.op_type in ('Conv', 'Gemm') and len(n.input) > 2):
        bias = producer[conv.input[2]]
        x_scale = inits[producer[conv.input[0]].input[1]]
        w_scale = inits[producer[conv.input[1]].input[1]]
        assert bias.op_type == 'DequantizeLinear' and inits[bias.input[0]].dtype == np.int32
        assert np.array_equal(inits[bias.input[1]], (x_scale * w_scale).astype(np.float32))


def test_qat_resumes_as_any_training(int8_demo, tiny_data, tmp_path):
    """The QAT run continues with tools/train.py --resume (it is a training): the
    checkpoint loads strictly, quantizer state included, and the epochs go on."""
    import shutil
    work = tmp_path / 'qat'
    shutil.copytree(int8_demo['work'] / 'qarepvgg-a0_demo_qat', work)
    status, _, stderr = tool_in_process('train.py', QAT_QAREPVGG_CONFIG, '--work-dir',
                                        str(work), '--resume', '--cfg-options',
                                        *_data_options(tiny_data), 'train_cfg.max_epochs=2')
    assert status == 0, stderr
    first = torch.load(work / 'epoch_1.pth', weights_only=False)
    second = torch.load(work / 'epoch_2.pth', weights_only=False)
    assert second['meta']['epoch'] == 2 and second['meta']['iter'] == 2 * first['meta']['iter']
    assert second['state_dict'].keys() == first['state_dict'].keys()
    per_channel = [k for k, v in first['state_dict'].items()
                   if k.endswith('.scale') and v.numel() > 1]
    assert len(per_channel) == 23  # the 22 convs' and the classifier's weights


def _graph(nodes, inits):
    x = helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info('y', TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, 'g', [x], [y], inits),
                              opset_imports=[helper.make_opsetid('', 17)])
    return model


def test_placement_check_names_what_tensorrt_would_not_take(tmp_path):
    scale = numpy_helper.from_array(np.array(0.1, np.float32), 's')
    zero = numpy_helper.from_array(np.array(0, np.int8), 'z')
    weight = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), 'w')
    # a conv with a float weight, and a Q whose output nobody dequantizes
    nodes = [helper.make_node('QuantizeLinear', ['x', 's', 'z'], ['xq'], name='q_in'),
             helper.make_node('DequantizeLinear', ['xq', 's', 'z'], ['xd'], name='dq_in'),
             helper.make_node('Conv', ['xd', 'w'], ['y'], name='conv'),
             helper.make_node('QuantizeLinear', ['y', 's', 'z'], ['yq'], name='dangling')]
    path = str(tmp_path / 'bad.onnx')
    onnx.save(_graph(nodes, [scale, zero, weight]), path)
    report = qdq_structure(path)
    assert report['int8_convs'] == 0 and report['convs'] == 1
    assert any("'dangling'" in p for p in report['problems'])
    with pytest.raises(ValueError, match="Conv 'conv': its weight is not an INT8"):
        check_tensorrt_placement(path, runtime='tensorrt')


def test_qat_tool_refuses_bad_inputs(float_checkpoint, tiny_data, tmp_path):
    """Another arch, a NaN weight, OUTPUT equal to an input, a config that is not a
    QAT config: one line each, and nothing written -- not even the work dir."""
    qarepvgg = tmp_path / 'qarepvgg.pth'
    torch.save({'state_dict': build_model(Config.fromfile(
        f'{ROOT}/configs/demo/qarepvgg-a0_demo.py')).state_dict()}, qarepvgg)
    nan = tmp_path / 'nan.pth'
    state = torch.load(float_checkpoint, weights_only=True)['state_dict']
    state['backbone.stage0.rbr_dense.conv.weight'][0, 0, 0, 0] = float('nan')
    torch.save({'state_dict': state}, nan)
    out, work = tmp_path / 'out' / 'int8.onnx', tmp_path / 'work'
    before = sorted(os.listdir(tmp_path))
    cases = [((QAT_CONFIG, str(qarepvgg), str(out)), 'CheckpointError'),
             ((QAT_CONFIG, str(nan), str(out)), 'nan'),
             ((QAT_CONFIG, float_checkpoint, float_checkpoint), 'refusing to overwrite'),
             ((QAT_CONFIG, float_checkpoint, QAT_CONFIG), 'refusing to overwrite'),
             ((FLOAT_CONFIG, float_checkpoint, str(out)), 'is not a QAT config')]
    for args, needle in cases:
        status, _, stderr = tool_in_process('qat.py', *args, '--work-dir', str(work),
                                            '--cfg-options', *_data_options(tiny_data))
        line = stderr.splitlines()[0]
        assert status == 1 and line.startswith('qat.py: error:'), stderr
        assert needle.lower() in line.lower(), line
    assert sorted(os.listdir(tmp_path)) == before


def test_qat_tool_without_torchao_names_the_install(float_checkpoint, tmp_path,
                                                    monkeypatch):
    monkeypatch.setitem(sys.modules, 'torchao', None)  # import fails as if absent
    status, _, stderr = tool_in_process('qat.py', QAT_CONFIG, float_checkpoint,
                                        str(tmp_path / 'int8.onnx'))
    line = stderr.splitlines()[0]
    assert status == 1 and 'torchao not installed' in line
    assert 'pip install -r requirements/deploy.txt' in line
    assert os.listdir(tmp_path) == []


def test_conv_output_pair_changes_no_value(tmp_path):
    """The Q/DQ pair added between a conv and its ReLU (for ONNX Runtime's INT8 conv
    kernels) computes exactly what the graph computed before (Q/DQ arithmetic)."""
    import onnxruntime as ort

    from repvgg_mm.apis.quantize.qdq import quantize_conv_outputs
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), 'sx'),
             numpy_helper.from_array(np.array(0.02, np.float32), 'sy'),
             numpy_helper.from_array(np.array(0, np.int8), 'z'),
             numpy_helper.from_array(rng.integers(-127, 128, (2, 2, 3, 3)).astype(np.int8), 'w'),
             numpy_helper.from_array(np.array([0.01, 0.02], np.float32), 'sw'),
             numpy_helper.from_array(np.zeros(2, np.int8), 'zw')]
    nodes = [helper.make_node('QuantizeLinear', ['x', 'sx', 'z'], ['xq']),
             helper.make_node('DequantizeLinear', ['xq', 'sx', 'z'], ['xd']),
             helper.make_node('DequantizeLinear', ['w', 'sw', 'zw'], ['wd'], axis=0),
             helper.make_node('Conv', ['xd', 'wd'], ['c'], pads=[1, 1, 1, 1], name='conv'),
             helper.make_node('Relu', ['c'], ['r']),
             helper.make_node('QuantizeLinear', ['r', 'sy', 'z'], ['rq']),
             helper.make_node('DequantizeLinear', ['rq', 'sy', 'z'], ['y'])]
    model = _graph(nodes, inits)
    before, after = str(tmp_path / 'before.onnx'), str(tmp_path / 'after.onnx')
    onnx.save(model, before)
    assert quantize_conv_outputs(model) == 1
    onnx.save(model, after)
    assert check_tensorrt_placement(after)['int8_convs'] == 1
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32) * 3
    run = [ort.InferenceSession(p, options, providers=['CPUExecutionProvider'])
           .run(None, {'x': x})[0] for p in (before, after)]
    assert np.array_equal(run[0], run[1]) and run[0].any()


def test_calibration_reads_the_whole_split_on_every_rank(tiny_data, monkeypatch):
    """In a distributed run each rank must calibrate on the same images and evaluate
    the whole val split: image_batches does not shard."""
    import mmengine.dataset.sampler as sampler

    from repvgg_mm.apis import image_batches
    cfg = Config.fromfile(QAT_CONFIG)
    cfg.merge_from_dict(dict(option.split('=', 1) for option in _data_options(tiny_data)))
    single = [labels for _, labels in image_batches(cfg, 'train', shuffle=True, seed=3)]
    monkeypatch.setattr(sampler, 'get_dist_info', lambda: (1, 2))  # rank 1 of 2
    sharded = [labels for _, labels in image_batches(cfg, 'train', shuffle=True, seed=3)]
    assert sum(map(len, single)) == 60
    assert np.array_equal(np.concatenate(single), np.concatenate(sharded))


def test_int8_kernel_blocks_fuse_onto_the_int8_grid(tiny_data, tmp_path):
    """Route B: with backbone int8_kernel=True the training-time forward runs the
    equivalent kernel on the INT8 grid (gradients reach the branches), the fused model
    gives the same outputs, and INT8 per-channel quantization of its ONNX export (ONNX
    Runtime's PTQ) rounds no weight."""
    from repvgg_mm.apis import quantize_onnx
    from repvgg_mm.apis.export import LogitsModel, export_model
    from repvgg_mm.models.blocks import int8_grid
    cfg = Config.fromfile(FLOAT_CONFIG)
    cfg.merge_from_dict(dict(option.split('=', 1) for option in _data_options(tiny_data)))
    cfg.model.backbone.int8_kernel = True
    torch.manual_seed(0)
    model = randomize_bn(build_model(cfg))
    x = torch.randn(4, 3, 32, 32)
    model.train()(x, mode='tensor').sum().backward()
    assert model.backbone.stage1[0].rbr_1x1.conv.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        expected = model(x, mode='tensor')
    fused = reparameterize_model(model)
    with torch.no_grad():
        assert (fused(x, mode='tensor') - expected).abs().max() <= 1e-5 * expected.abs().max()
    weight = fused.backbone.stage1[0].rbr_reparam.weight
    steps = weight / (weight.abs().flatten(1).amax(1) / 127).view(-1, 1, 1, 1)
    assert (steps - steps.round()).abs().max() < 1e-3
    assert torch.equal(int8_grid(weight, straight_through=False).round(),
                       weight.round())  # idempotent
    fp32, int8 = str(tmp_path / 'fp32.onnx'), str(tmp_path / 'int8.onnx')
    export_model(LogitsModel(fused), fp32, 32)
    quantize_onnx(cfg, fp32, int8, calib_images=8, per_channel=True, evaluate=False)
    graph = onnx.load(int8).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    dq = next(n for n in graph.node if n.op_type == 'DequantizeLinear'
              and n.input[0].startswith('classifier.backbone.stage1.0.rbr_reparam.weight'))
    dequantized = inits[dq.input[0]].astype(np.float32) * inits[dq.input[1]].reshape(-1, 1, 1, 1)
    assert np.abs(dequantized - weight.detach().numpy()).max() <= 1e-6 * weight.abs().max()
