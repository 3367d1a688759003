"""Inference speed of the training-time and the fused model, side by side in one run.

    python tools/benchmark.py CONFIG [--deploy] [--batch-size N] [--device cpu|cuda]
                              [--amp fp16|bf16] [--channels-last] [--input-size S]

Prints a small table and one JSON line per measurement. Weights are random: speed does
not depend on them.
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

import torch  # noqa: E402

from repvgg_mm import reparameterize_model  # noqa: E402
from repvgg_mm.apis import (  # noqa: E402
    build_model,
    compare_throughput,  # noqa: E402
    test_input_size,
)
from repvgg_mm.cli import add_cfg_options, load_config, run_cli  # noqa: E402

AMP = {'fp16': torch.float16, 'bf16': torch.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Benchmark training-time vs fused model')
    parser.add_argument('config', help='model config')
    parser.add_argument('--deploy', action='store_true',
                        help='measure the fused model only')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--input-size', type=int,
                        help="image size (default: the config's test crop)")
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        choices=('cpu', 'cuda'))
    parser.add_argument('--amp', choices=sorted(AMP), help='autocast dtype')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--repeats', type=int, default=5, help='timed rounds (median counts)')
    parser.add_argument('--iters', type=int, default=5, help='batches per round')
    parser.add_argument('--warmup', type=int, default=3, help='untimed batches per model')
    add_cfg_options(parser)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('--device cuda given but CUDA is not available')
    cfg = load_config(args.config, args.cfg_options)
    model = build_model(cfg).eval()
    models = {} if args.deploy else {'training-time': model}
    models['fused'] = reparameterize_model(model)
    results = compare_throughput(
        models, batch_size=args.batch_size,
        input_size=args.input_size or test_input_size(cfg), device=args.device,
        amp_dtype=AMP.get(args.amp), channels_last=args.channels_last,
        warmup=args.warmup, repeats=args.repeats, iters=args.iters)
    base = results[0]['imgs_per_s']
    print(f"{'model':<15}{'images/s':>12}{'ms/batch':>11}{'ratio':>8}")
    for r in results:
        print(f"{r['model']:<15}{r['imgs_per_s']:>12.1f}{r['median_ms']:>11.2f}"
              f"{r['imgs_per_s'] / base:>8.2f}")
    for r in results:
        print(json.dumps(dict(config=args.config, **r)))
    return 0


if __name__ == '__main__':
    run_cli(main, 'benchmark.py')
