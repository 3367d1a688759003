"""Re-parameterize a trained checkpoint for deployment.

    python tools/reparam.py CONFIG CHECKPOINT OUTPUT [--out-config PATH] [--no-verify]

Writes OUTPUT (fused weights) and a deploy config next to it (OUTPUT with .py), so
that ``python tools/test.py OUTPUT.py OUTPUT`` evaluates the fused model.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from repvgg_mm.apis import DEFAULT_TOLERANCE, reparameterize_checkpoint  # noqa: E402
from repvgg_mm.checkpoints import FORMATS  # noqa: E402
from repvgg_mm.cli import add_cfg_options, load_config, run_cli  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Fuse a RepVGG checkpoint for deployment')
    parser.add_argument('config', help='the config the checkpoint was trained with')
    parser.add_argument('checkpoint', help='training-time checkpoint, in any known format')
    parser.add_argument('output', help='where to write the fused checkpoint')
    parser.add_argument('--out-config', help='where to write the deploy config '
                        '(default: OUTPUT with .py)')
    parser.add_argument('--no-verify', action='store_true',
                        help='skip the output comparison before writing')
    parser.add_argument('--tolerance', type=float, default=DEFAULT_TOLERANCE,
                        help='largest relative logit difference accepted '
                        f'(default {DEFAULT_TOLERANCE:g})')
    parser.add_argument('--src-format', choices=sorted(FORMATS),
                        help='format of CHECKPOINT (default: detected from its keys)')
    parser.add_argument('--to-format', choices=('ours', 'official'), default='ours',
                        help="'official' writes a plain state dict with the original "
                        "code's deploy keys instead (no config)")
    add_cfg_options(parser)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options)
    report = reparameterize_checkpoint(cfg, args.checkpoint, args.output,
                                       out_config=args.out_config,
                                       verify=not args.no_verify,
                                       tolerance=args.tolerance,
                                       src_format=args.src_format,
                                       to_format=args.to_format)
    print(f"read {args.checkpoint} ({report['src_format']} format)")
    if report['already_fused']:
        print('it is already re-parameterized: loaded into the deploy model as it is, '
              'nothing fused')
    else:
        print(f"parameters: {report['params_train']:,} training-time -> "
              f"{report['params_deploy']:,} fused")
    if report['max_abs_diff'] is not None:
        print(f"verified: max abs logit diff {report['max_abs_diff']:.3g}, "
              f"max rel diff {report['max_rel_diff']:.3g}")
    written = [report['output']] + ([report['config']] if report['config'] else [])
    print('wrote ' + ' and '.join(written))
    return 0


if __name__ == '__main__':
    run_cli(main, 'reparam.py')
