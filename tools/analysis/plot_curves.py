"""Plot training curves: python tools/analysis/plot_curves.py WORK_DIR_OR_JSON_LOG
[--keys loss accuracy/top1] [--out curves.png]."""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from repvgg_mm.apis import plot_training_curves  # noqa: E402
from repvgg_mm.cli import run_cli  # noqa: E402
from repvgg_mm.fileio import check_output_paths  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description='Plot logged scalars of a training run')
    parser.add_argument('log', metavar='WORK_DIR_OR_JSON_LOG',
                        help='a work dir (its newest run) or a vis_data/scalars.json')
    parser.add_argument('--keys', nargs='+', default=['loss', 'accuracy/top1'],
                        help='logged scalars, one panel each (default: loss accuracy/top1)')
    parser.add_argument('--out', default='curves.png', help='PNG to write')
    args = parser.parse_args()
    check_output_paths({'--out': args.out}, {'WORK_DIR_OR_JSON_LOG': args.log})
    report = plot_training_curves(args.log, args.keys, args.out)
    counts = ', '.join(f'{k}: {n} points' for k, n in report['points'].items())
    print(f"{report['out']} written from {report['log']} ({counts})")
    return 0


if __name__ == '__main__':
    run_cli(main, 'plot_curves.py')
