"""Convert an official / MMPretrain / timm RepVGG checkpoint into ours.

    python tools/convert_checkpoint.py SRC DST [--src-format official|mmpretrain|timm|ours]

DST can then be used as ``load_from`` in a config to fine-tune from published weights
(training-time checkpoints), or tested with a deploy config (fused ones).
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from repvgg_mm.checkpoints import FORMATS, convert_checkpoint  # noqa: E402
from repvgg_mm.cli import run_cli  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Convert a RepVGG checkpoint to ours')
    parser.add_argument('src', help='source checkpoint')
    parser.add_argument('dst', help='where to write the converted checkpoint')
    parser.add_argument('--src-format', choices=sorted(FORMATS),
                        help='format of SRC (default: detected from its keys)')
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    info = convert_checkpoint(args.src, args.dst, args.src_format)
    arch = info['arch'] or 'no known arch'
    kind = 'fused (deploy)' if info['deploy'] else 'training-time'
    print(f"{args.src}: {info['src_format']} format, {kind}, {arch}, "
          f"{info['num_tensors']} tensors -> {args.dst}")
    return 0


if __name__ == '__main__':
    run_cli(main, 'convert_checkpoint.py')
