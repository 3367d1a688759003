"""List every parameter of a config's model with its lr and weight decay.

    python tools/analysis/print_param_groups.py CONFIG [--decayed-only | --undecayed-only]

The lr shown is the config's (before linear scaling to the real batch).
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from repvgg_mm.apis import param_group_table  # noqa: E402
from repvgg_mm.cli import add_cfg_options, load_config, run_cli  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Print lr and weight decay per parameter')
    parser.add_argument('config')
    which = parser.add_mutually_exclusive_group()
    which.add_argument('--decayed-only', action='store_true')
    which.add_argument('--undecayed-only', action='store_true')
    add_cfg_options(parser)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    rows = param_group_table(load_config(args.config, args.cfg_options))
    if args.decayed_only:
        rows = [r for r in rows if r['weight_decay'] > 0]
    elif args.undecayed_only:
        rows = [r for r in rows if r['weight_decay'] == 0]
    width = max(len(r['name']) for r in rows)
    print(f"{'parameter':<{width}}  {'shape':<20} {'lr':>10} {'weight_decay':>13}")
    for r in rows:
        print(f"{r['name']:<{width}}  {str(r['shape']):<20} {r['lr']:>10.4g} "
              f"{r['weight_decay']:>13.4g}")
    decayed = sum(1 for r in rows if r['weight_decay'] > 0)
    print(f'{len(rows)} parameters: {decayed} with weight decay, {len(rows) - decayed} without')
    return 0


if __name__ == '__main__':
    run_cli(main, 'print_param_groups.py')
