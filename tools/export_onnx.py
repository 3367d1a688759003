"""Export a RepVGG checkpoint (training-time or fused) to ONNX, verified in ONNX Runtime.

    python tools/export_onnx.py CONFIG CHECKPOINT OUTPUT.onnx [--input-size N]
        [--fold-normalization] [--tolerance T]

The model is fused first (as tools/reparam.py does), exported with a dynamic batch
dimension, checked with onnx.checker, run in ONNX Runtime on a fixed random batch and
compared with the fused PyTorch model; nothing is written above the tolerance. Input:
NCHW float32 normalised with the config's mean/std (raw 0-255 RGB with
--fold-normalization); output: the logits.
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from repvgg_mm.apis import export_onnx, require_deploy_packages  # noqa: E402
from repvgg_mm.checkpoints import FORMATS  # noqa: E402
from repvgg_mm.cli import add_cfg_options, load_config, run_cli  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Export a RepVGG checkpoint to ONNX')
    parser.add_argument('config', help='the config the checkpoint was trained with')
    parser.add_argument('checkpoint', help='training-time or fused checkpoint, any format')
    parser.add_argument('output', help='where to write the .onnx file')
    parser.add_argument('--input-size', type=int,
                        help="height/width of the verification input (default: the "
                        "config's test crop; the exported batch size is dynamic)")
    parser.add_argument('--fold-normalization', action='store_true',
                        help='put the mean/std into the graph: the model takes raw '
                        '0-255 RGB')
    parser.add_argument('--tolerance', type=float, default=1e-4,
                        help='largest relative ONNX-vs-PyTorch logit difference '
                        'accepted (default 1e-4)')
    parser.add_argument('--src-format', choices=sorted(FORMATS),
                        help='format of CHECKPOINT (default: detected from its keys)')
    parser.add_argument('--dynamo', action='store_true',
                        help="use torch's torch.export-based exporter (needs onnxscript) "
                        'instead of the TorchScript-based one')
    add_cfg_options(parser)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    require_deploy_packages()
    cfg = load_config(args.config, args.cfg_options)
    report = export_onnx(cfg, args.checkpoint, args.output, input_size=args.input_size,
                         fold_normalization=args.fold_normalization,
                         tolerance=args.tolerance, src_format=args.src_format,
                         dynamo=args.dynamo)
    fused = 'already fused' if report['already_fused'] else 'fused'
    print(f"read {args.checkpoint} ({report['src_format']} format, {fused})")
    print(f"verified in ONNX Runtime at {report['input_size']}x{report['input_size']}: "
          f"max abs logit diff {report['max_abs_diff']:.3g}, "
          f"max rel diff {report['max_rel_diff']:.3g}")
    print(f"wrote {report['output']} (input: {report['input']}, exporter "
          f"{report['exporter']}, opset {report['opset']})")
    print(json.dumps(report))
    return 0


if __name__ == '__main__':
    run_cli(main, 'export_onnx.py')
