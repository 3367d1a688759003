"""End-to-end training speed of configs, side by side in one run.

    python tools/analysis/train_speed.py CONFIG [CONFIG ...] --data-root R
        [--reference CONFIG] [--compiled CONFIG ...] [--model-only]
        [--model-only-compiled] [--iters N] [--warmup W] [--batch-size B]
        [--workers K] [--amp] [--channels-last] [--rounds R] [--cfg-options ...]

Each CONFIG trains for W untimed + N timed iterations through its Runner on the
ImageNet-layout folder R (e.g. from make_synthetic_imagenet.py), data loading included;
--reference CONFIG is measured first and the ratios are to it (e.g. MMPretrain's stock
config, ``mmpretrain::repvgg/repvgg-A0_8xb32_in1k.py``, through MMEngine's Runner);
each --compiled CONFIG the same with torch.compile; --model-only adds the first
CONFIG's model training on one batch already on the device (the ceiling), and
--model-only-compiled the same compiled. Prints a table and one JSON line per run.
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import torch  # noqa: E402

from repvgg_mm.apis import compare_train_speed  # noqa: E402
from repvgg_mm.cli import add_cfg_options, load_config, run_cli  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='End-to-end training speed')
    parser.add_argument('configs', nargs='+', help='training configs, measured in turn')
    parser.add_argument('--data-root', required=True, help='ImageNet-layout train data')
    parser.add_argument('--compiled', nargs='+', default=[], metavar='CONFIG',
                        help='configs to measure again with torch.compile')
    parser.add_argument('--reference', metavar='CONFIG',
                        help='measured first, the ratios are to it (PACKAGE::PATH reads a '
                        'config of an installed OpenMMLab package)')
    parser.add_argument('--model-only', action='store_true',
                        help='also measure the model on a batch already on the device')
    parser.add_argument('--model-only-compiled', action='store_true',
                        help='also measure it compiled')
    parser.add_argument('--iters', type=int, default=20, help='timed iterations')
    parser.add_argument('--warmup', type=int, default=5, help='untimed iterations first')
    parser.add_argument('--rounds', type=int, default=1,
                        help='measure every run this many times, taking turns; the median '
                        'counts (for shared, noisy machines)')
    parser.add_argument('--batch-size', type=int, help='per-process batch (default: config)')
    parser.add_argument('--workers', type=int, help='loader workers (default: config)')
    parser.add_argument('--amp', action='store_true', help='bf16 mixed precision (GPU)')
    parser.add_argument('--channels-last', action='store_true',
                        help='channels-last model and batches')
    add_cfg_options(parser)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    if not osp.isdir(args.data_root):
        raise FileNotFoundError(f'--data-root {args.data_root!r} is not a folder')
    if args.amp and not torch.cuda.is_available():
        raise RuntimeError('--amp needs a CUDA GPU')
    reference = [(args.reference, load_config(args.reference), False)] \
        if args.reference else []
    runs = reference + [(path, load_config(path, args.cfg_options), False)
                        for path in args.configs]
    runs += [(path + ' + compile', load_config(path, args.cfg_options), True)
             for path in args.compiled]
    model_only = [False] * args.model_only + [True] * args.model_only_compiled
    results = compare_train_speed(
        runs, args.data_root, iters=args.iters, warmup=args.warmup,
        batch_size=args.batch_size, num_workers=args.workers, amp=args.amp,
        channels_last=args.channels_last, model_only=model_only,
        rounds=args.rounds, model_only_run=len(reference),
        report=lambda run, speed: print(f'measured {run}: {speed:.1f} images/s', flush=True))
    base = results[0]['imgs_per_s']
    width = max(len(r['run']) for r in results) + 2
    print(f"{'run':<{width}}{'images/s':>12}{'ratio':>8}")
    for r in results:
        print(f"{r['run']:<{width}}{r['imgs_per_s']:>12.1f}{r['imgs_per_s'] / base:>8.2f}")
    for r in results:
        print(json.dumps(r))
    return 0


if __name__ == '__main__':
    run_cli(main, 'train_speed.py')
