"""The learning-rate schedule a config will really run, computed without training.

    python tools/analysis/vis_lr.py CONFIG --dataset-size N --gpus G [--batch-size B]
                                    [--out PATH]

Writes PATH.csv (iter,epoch,lr for every iteration) and PATH.png, and prints the peak
lr and the total number of iterations. The lr is scaled as at run time
(auto_scale_lr: per-GPU batch x GPUs / base batch).
"""
import argparse
import csv
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from repvgg_mm.apis import simulate_lr  # noqa: E402
from repvgg_mm.cli import add_cfg_options, load_config, run_cli  # noqa: E402
from repvgg_mm.fileio import atomic_open, atomic_write  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Compute and plot a config\'s lr schedule')
    parser.add_argument('config')
    parser.add_argument('--dataset-size', type=int, required=True,
                        help='training images (ImageNet-1k: 1281167)')
    parser.add_argument('--gpus', type=int, default=1, help='number of processes')
    parser.add_argument('--batch-size', type=int, help='per-GPU batch (default: config)')
    parser.add_argument('--out', help='output path without extension '
                        '(default: work_dirs/<config name>_lr)')
    add_cfg_options(parser)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    if args.dataset_size < 1 or args.gpus < 1:
        raise ValueError('--dataset-size and --gpus must be positive')
    cfg = load_config(args.config, args.cfg_options)
    rows = simulate_lr(cfg, args.dataset_size, args.gpus, args.batch_size)
    out = args.out or osp.join('work_dirs',
                               osp.splitext(osp.basename(args.config))[0] + '_lr')
    out = osp.splitext(out)[0] if out.endswith(('.csv', '.png')) else out
    with atomic_open(out + '.csv', 'w', encoding='utf-8') as f:
        writer = csv.writer(f)
        writer.writerow(['iter', 'epoch', 'lr'])
        writer.writerows((i, e, f'{lr:.10g}') for i, e, lr in rows)

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    iters_per_epoch = sum(1 for r in rows if r[1] == 0)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([r[0] / iters_per_epoch for r in rows], [r[2] for r in rows])
    ax.set_xlabel('epoch')
    ax.set_ylabel('learning rate')
    ax.set_title(f'{osp.basename(args.config)}: {args.gpus} GPUs, '
                 f'{args.dataset_size:,} images')
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(out + '.png', lambda f: fig.savefig(f, format='png', dpi=100))

    peak_iter, peak_epoch, peak = max(rows, key=lambda r: r[2])
    print(f'total iterations: {len(rows)} ({len(rows) // iters_per_epoch} epochs x '
          f'{iters_per_epoch} iterations)')
    print(f'peak lr: {peak:.6g} at iteration {peak_iter} (epoch {peak_epoch})')
    print(f'final lr: {rows[-1][2]:.6g}')
    print(f'wrote {out}.csv and {out}.png')
    return 0


if __name__ == '__main__':
    run_cli(main, 'vis_lr.py')
