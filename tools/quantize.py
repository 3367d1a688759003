"""INT8 post-training quantization of an exported model (ONNX Runtime, QDQ format).

    python tools/quantize.py CONFIG MODEL.onnx OUTPUT.onnx [--calib-images N]
        [--method minmax|entropy|percentile] [--per-channel]

Calibrates on N images drawn from the config's training set through its test
pipeline, writes the INT8 QDQ model, then evaluates FP32 and INT8 top-1 on the val set
and prints both, the drop and the CPU speed of each (one run) as a table and a JSON line.
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from repvgg_mm.apis import quantize_onnx, require_deploy_packages  # noqa: E402
from repvgg_mm.apis.quantize import CALIBRATION_METHODS  # noqa: E402
from repvgg_mm.cli import add_cfg_options, load_config, run_cli  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='INT8 post-training quantization')
    parser.add_argument('config', help='the config the model was trained with')
    parser.add_argument('model', help='FP32 ONNX model written by tools/export_onnx.py')
    parser.add_argument('output', help='where to write the INT8 QDQ .onnx file')
    parser.add_argument('--calib-images', type=int, default=256,
                        help='training images used for calibration (default 256)')
    parser.add_argument('--method', choices=CALIBRATION_METHODS, default='minmax',
                        help='calibration method (default minmax)')
    parser.add_argument('--per-channel', action='store_true',
                        help='one weight scale per output channel')
    parser.add_argument('--seed', type=int, default=0, help='seed of the calibration draw')
    parser.add_argument('--threads', type=int,
                        help='ONNX Runtime threads for the evaluation (default: its choice)')
    parser.add_argument('--no-eval', action='store_true',
                        help='do not evaluate the FP32 and INT8 models on the val set')
    add_cfg_options(parser)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    require_deploy_packages()
    cfg = load_config(args.config, args.cfg_options)
    r = quantize_onnx(cfg, args.model, args.output, calib_images=args.calib_images,
                      method=args.method, per_channel=args.per_channel, seed=args.seed,
                      threads=args.threads, evaluate=not args.no_eval)
    print(f"wrote {r['output']} ({r['qdq_nodes']} QuantizeLinear/DequantizeLinear nodes; "
          f"{r['method']} calibration on {r['calib_images']} images, "
          f"{'per-channel' if r['per_channel'] else 'per-tensor'} weights)")
    if args.no_eval:
        print(json.dumps(r))
        return 0
    print(f"val set: {r['val_images']} images")
    print(f"{'model':<6} {'top-1 %':>8} {'img/s':>8}")
    print(f"{'FP32':<6} {r['fp32_top1']:>8.2f} {r['fp32_img_s']:>8.1f}")
    print(f"{'INT8':<6} {r['int8_top1']:>8.2f} {r['int8_img_s']:>8.1f}")
    print(f"drop {r['drop']:.2f} points; INT8/FP32 speed {r['speed_ratio']:.2f}x")
    print(json.dumps(r))
    return 0


if __name__ == '__main__':
    run_cli(main, 'quantize.py')
