"""How often the ranks of a distributed run draw the same class at the same step:

    python tools/analysis/sampler_overlap.py [--ranks 8] [--classes 100]
        [--per-class 1300] [--batch 32] [--epochs 3]

on a class-sorted sample list (as a list file or class folders give it), simulated
ranks, SampleSeedSampler with each rank's cached part (cache_mode='part') next to
MMEngine's DefaultSampler (shuffling across ranks, as without the cache), and the part
sampler as it was (every rank's shuffle seeded alike). Per sampler:
the mean number of distinct classes among the ranks' samples of one step, the share of
steps at which all ranks drew one class, and the distinct classes of the first global
batch (ranks x batch). Prints a table and one JSON line.
"""
import argparse
import json
import os.path as osp
import sys
from unittest import mock

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import numpy as np  # noqa: E402
from mmengine.dataset import DefaultSampler  # noqa: E402

from repvgg_mm.cli import run_cli  # noqa: E402
from repvgg_mm.datasets import SampleSeedSampler  # noqa: E402


class _SortedList:
    """A data set of ``classes x per_class`` samples, sorted by class."""

    def __init__(self, classes: int, per_class: int, cache_mode, rank: int, world: int):
        self.labels = np.repeat(np.arange(classes), per_class)
        self.cache_mode, self.rank, self.world = cache_mode, rank, world

    def __len__(self) -> int:
        return len(self.labels)

    def part_indices(self):
        return list(range(self.rank, len(self), self.world))


def overlap(sampler_type, cache_mode, ranks: int, classes: int, per_class: int,
            batch: int, epochs: int, seed: int = 0) -> dict:
    distinct, same, first_batch = [], [], None
    for epoch in range(epochs):
        orders = []
        for rank in range(ranks):
            dataset = _SortedList(classes, per_class, cache_mode, rank, ranks)
            with mock.patch('mmengine.dataset.sampler.get_dist_info',
                            return_value=(rank, ranks)):
                sampler = sampler_type(dataset, shuffle=True, seed=seed)
            sampler.set_epoch(epoch)
            orders.append(dataset.labels[[int(i) for i in sampler]])
        steps = np.stack(orders)  # (ranks, steps)
        counts = np.array([len(np.unique(steps[:, k])) for k in range(steps.shape[1])])
        distinct.append(counts.mean())
        same.append((counts == 1).mean())
        if first_batch is None:
            first_batch = len(np.unique(steps[:, :batch]))
    return dict(mean_distinct_classes_per_step=float(np.mean(distinct)),
                steps_all_ranks_one_class=float(np.mean(same)),
                first_global_batch_classes=int(first_batch))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--ranks', type=int, default=8)
    parser.add_argument('--classes', type=int, default=100)
    parser.add_argument('--per-class', type=int, default=1300)
    parser.add_argument('--batch', type=int, default=32, help='per rank')
    parser.add_argument('--epochs', type=int, default=3)
    args = parser.parse_args()
    setting = (args.ranks, args.classes, args.per_class, args.batch, args.epochs)
    results = dict(
        cache_part=overlap(SampleSeedSampler, 'part', *setting),
        no_cache=overlap(DefaultSampler, None, *setting))
    # the sampler before each rank had a stream of its own: one shuffle seed for all
    with mock.patch('repvgg_mm.datasets.samplers.part_order_seed',
                    lambda seed, epoch, rank: seed + epoch):
        results['cache_part_one_seed'] = overlap(SampleSeedSampler, 'part', *setting)
    print(f"{'sampler':<52}{'classes/step':>13}{'one class':>11}{'1st batch':>11}")
    for name, key in (("SampleSeedSampler, cache_mode='part'", 'cache_part'),
                      ('DefaultSampler (no cache)', 'no_cache'),
                      ("cache_mode='part', one seed for all ranks (before)",
                       'cache_part_one_seed')):
        r = results[key]
        print(f"{name:<52}{r['mean_distinct_classes_per_step']:>13.2f}"
              f"{100 * r['steps_all_ranks_one_class']:>10.1f}%"
              f"{r['first_global_batch_classes']:>11}")
    print(json.dumps(dict(results, ranks=args.ranks, classes=args.classes,
                          per_class=args.per_class, batch=args.batch, epochs=args.epochs)))
    return 0


if __name__ == '__main__':
    run_cli(main, 'sampler_overlap.py')
