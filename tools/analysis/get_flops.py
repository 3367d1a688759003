"""FLOPs and parameters of a config's model: python tools/analysis/get_flops.py CONFIG
[--deploy] [--shape H W]."""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from repvgg_mm.apis import config_complexity, format_flops  # noqa: E402
from repvgg_mm.cli import add_cfg_options, load_config, run_cli  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Count FLOPs (MMEngine's analysis: one multiply-add = one FLOP) and "
        'parameters of the model a config builds')
    parser.add_argument('config', help='config file')
    parser.add_argument('--deploy', action='store_true',
                        help='count the fused (inference-time) model')
    parser.add_argument('--shape', nargs=2, type=int, metavar=('H', 'W'),
                        help="input size (default: the config's test crop)")
    add_cfg_options(parser)
    args = parser.parse_args()
    cfg = load_config(args.config, args.cfg_options)
    report = config_complexity(cfg, deploy=args.deploy, shape=args.shape)
    height, width = report['shape']
    print(f"{'fused' if args.deploy else 'training-time'} model of {args.config} at "
          f"{height}x{width}: {format_flops(report['flops'])}FLOPs, "
          f"{report['params']:,} parameters")
    print(json.dumps(dict(report, shape=list(report['shape']))))
    return 0


if __name__ == '__main__':
    run_cli(main, 'get_flops.py')
