"""INT8 post-training quantization end to end on a tiny model and tiny data."""
import json
import os

import numpy as np
import onnx
import pytest
import torch
from conftest import DEMO_CONFIG, randomize_bn, tool_in_process
from mmengine.config import Config

from repvgg_mm.apis import build_model, onnx_top1, quantize_onnx
from repvgg_mm.apis.export import ort_session


@pytest.fixture(scope='module')
def fp32_model(tmp_path_factory, tiny_data):
    """The demo config's A0 (random weights, random BN statistics) exported to ONNX."""
    folder = tmp_path_factory.mktemp('quant')
    torch.manual_seed(0)
    ckpt = folder / 'a0.pth'
    torch.save({'state_dict': randomize_bn(build_model(Config.fromfile(DEMO_CONFIG)))
                .state_dict()}, ckpt)
    status, _, err = tool_in_process('export_onnx.py', DEMO_CONFIG, str(ckpt),
                                     str(folder / 'fp32.onnx'))
    assert status == 0, err
    return str(folder / 'fp32.onnx')


def _tiny_cfg(root):
    cfg = Config.fromfile(DEMO_CONFIG)
    for split in ('train', 'val', 'test'):
        cfg[f'{split}_dataloader'].dataset.data_root = root
    return cfg


def test_quantize_tool_end_to_end(fp32_model, tiny_data, tmp_path):
    """The tool with the demo config's loaders (workers included): an INT8 QDQ file,
    FP32 and INT8 top-1 on the val set, the drop and the speed ratio reported."""
    out = tmp_path / 'int8.onnx'
    status, stdout, stderr = tool_in_process(
        'quantize.py', DEMO_CONFIG, fp32_model, str(out), '--calib-images', '20',
        '--cfg-options', *[f'{s}_dataloader.dataset.data_root={tiny_data}'
                           for s in ('train', 'val', 'test')])
    assert status == 0, stderr
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report['calib_images'] == 20 and report['val_images'] == 30
    assert 0 <= report['int8_top1'] <= 100 and 0 <= report['fp32_top1'] <= 100
    assert report['drop'] == pytest.approx(report['fp32_top1'] - report['int8_top1'])
    assert report['speed_ratio'] == pytest.approx(report['int8_img_s'] / report['fp32_img_s'])
    assert 'FP32' in stdout and 'INT8' in stdout and 'drop' in stdout
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count('QuantizeLinear') > 0 and ops.count('DequantizeLinear') > 0
    assert report['qdq_nodes'] == ops.count('QuantizeLinear') + ops.count('DequantizeLinear')
    assert os.listdir(tmp_path) == ['int8.onnx']  # no temporary files left
    # the INT8 model runs with a dynamic batch, and the reported top-1 is its own
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    assert ort_session(str(out)).run(None, {'input': x})[0].shape == (3, 10)
    assert onnx_top1(str(out), _tiny_cfg(tiny_data), 'val') == report['int8_top1']
    assert onnx_top1(fp32_model, _tiny_cfg(tiny_data), 'val') == report['fp32_top1']


@pytest.mark.parametrize('method,per_channel', [('entropy', True), ('percentile', False)])
def test_calibration_methods_and_per_channel(fp32_model, tiny_data, tmp_path, method,
                                              per_channel):
    out = tmp_path / 'int8.onnx'
    report = quantize_onnx(_tiny_cfg(tiny_data), fp32_model, str(out), calib_images=10,
                           method=method, per_channel=per_channel, evaluate=False)
    assert report['qdq_nodes'] > 0 and report['method'] == method
    graph = onnx.load(str(out)).graph
    inits = {i.name: i for i in graph.initializer}
    # the weight scales of the first conv: one per output channel, or one per tensor
    dq = next(n for n in graph.node if n.op_type == 'DequantizeLinear'
              and len(inits.get(n.input[0], onnx.TensorProto()).dims) == 4)
    scale = onnx.numpy_helper.to_array(inits[dq.input[1]])
    assert scale.size == (48 if per_channel else 1)


def test_quantize_tool_refuses_bad_inputs(fp32_model, tmp_path):
    missing = tool_in_process('quantize.py', DEMO_CONFIG, str(tmp_path / 'nope.onnx'),
                              str(tmp_path / 'int8.onnx'))
    (tmp_path / 'a_file').write_text('')
    below_file = tool_in_process('quantize.py', DEMO_CONFIG, fp32_model,
                                 str(tmp_path / 'a_file' / 'int8.onnx'))
    same = tool_in_process('quantize.py', DEMO_CONFIG, fp32_model, fp32_model)
    (tmp_path / 'not.onnx').write_text('a text file, not a model\n')
    not_onnx = tool_in_process('quantize.py', DEMO_CONFIG, str(tmp_path / 'not.onnx'),
                               str(tmp_path / 'int8.onnx'))
    for (status, _, stderr), needle in ((missing, 'nope.onnx'),
                                        (below_file, 'is a file, not a folder'),
                                        (same, 'refusing to overwrite an input'),
                                        (not_onnx, "not.onnx' could not be read: it is "
                                         'not an ONNX model, expected a .onnx file')):
        assert status == 1
        assert stderr.splitlines()[0].startswith('quantize.py: error:')
        assert needle in stderr.splitlines()[0]
    assert sorted(os.listdir(tmp_path)) == ['a_file', 'not.onnx']
