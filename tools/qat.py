"""INT8 quantization-aware training: from a float checkpoint to an INT8 QDQ ONNX model.

    python tools/qat.py QAT_CONFIG CHECKPOINT OUTPUT.onnx [--work-dir DIR] [--resume]
        [--launcher pytorch] [--cfg-options ...]

CHECKPOINT is a float checkpoint of the QAT config's arch (training-time or fused,
any format the project reads). It is fused, a BatchNorm goes after every fused conv
(statistics on training images, outputs unchanged), the INT8 ranges are calibrated,
the model is trained with fake quantization through the Runner (checkpoints and logs
in the work dir; --resume continues an interrupted run), then written to OUTPUT as a
QDQ ONNX model for ONNX Runtime, and beside it as <OUTPUT stem>_tensorrt.onnx in
TensorRT's layout, and evaluated in ONNX Runtime on the val set. The ONNX Runtime file
is checked against the trained model on val images before it is kept.
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from repvgg_mm.apis import quantization_aware_training, require_deploy_packages  # noqa: E402
from repvgg_mm.cli import (  # noqa: E402
    Interrupted,
    add_cfg_options,
    add_launcher_options,
    default_work_dir,
    finish_distributed,
    install_interrupt_handlers,
    load_config,
    prepare_launcher,
    run_cli,
    set_local_rank,
)
from repvgg_mm.models.qat import require_torchao  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='INT8 quantization-aware training')
    parser.add_argument('config', help='QAT config, e.g. configs/qat/repvgg-a0_qat.py')
    parser.add_argument('checkpoint', help='float checkpoint of the arch (training-time or '
                        'fused, any format)')
    parser.add_argument('output', help='where to write the INT8 QDQ .onnx file')
    parser.add_argument('--work-dir', help='where QAT checkpoints and logs go '
                        '(default: work_dirs/<config name>)')
    parser.add_argument('--resume', action='store_true',
                        help='continue from the latest complete checkpoint in the work dir')
    parser.add_argument('--no-eval', action='store_true',
                        help='do not evaluate the INT8 model on the val set')
    add_cfg_options(parser)
    add_launcher_options(parser)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    set_local_rank(args.local_rank)
    require_deploy_packages()
    require_torchao()
    cfg = load_config(args.config, args.cfg_options)
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or default_work_dir(args.config)
    prepare_launcher(cfg, args.launcher)
    install_interrupt_handlers()
    try:
        r = quantization_aware_training(cfg, args.checkpoint, args.output,
                                        resume=args.resume, evaluate=not args.no_eval)
    except Interrupted as exc:
        work_dir = '' if args.work_dir is None else f' --work-dir {args.work_dir}'
        raise Interrupted(f'{exc}; checkpoints are in {cfg.work_dir}; continue with: python '
                          f'tools/qat.py {args.config} {args.checkpoint} {args.output}'
                          f'{work_dir} --resume', exc.signum) from None
    finish_distributed()
    if 'export' not in r:  # not rank 0
        return 0
    e = r['export']
    print(f"wrote {r['output']} for ONNX Runtime ({e['int8_convs']} of {e['convs']} convs "
          f"INT8, {e['qdq_nodes']} QuantizeLinear/DequantizeLinear nodes, "
          f"{e['int32_biases']} INT32 biases, opset {e['opset']}) and "
          f"{r['tensorrt_output']} for TensorRT (placement checked, weight codes >= "
          f"{e['tensorrt']['min_weight_code']})")
    print(f"checked on {e['check_images']} val images: ONNX Runtime top-1 "
          f"{e['ort_top1']:.2f} % (optimisations off: {e['ort_plain_top1']:.2f} %, same "
          f"prediction on {100 * e['ort_optimised_vs_plain']:.2f} %), the QAT model's "
          f"{e['trained_top1']:.2f} %, agreement {100 * e['agreement']:.2f} % (TensorRT "
          f"file, run as written: {100 * e['tensorrt_file_agreement']:.2f} %; biases on "
          f"the INT32 grid moved {100 * (1 - e['bias_rounding_agreement']):.2f} % of the "
          'training graph\'s predictions)')
    if 'int8_top1' in r:
        print(f"val set: {r['val_images']} images; INT8 top-1 in ONNX Runtime "
              f"{r['int8_top1']:.2f} % ({r['int8_img_s']:.1f} img/s)")
    print(json.dumps(r))
    return 0


if __name__ == '__main__':
    run_cli(main, 'qat.py')
