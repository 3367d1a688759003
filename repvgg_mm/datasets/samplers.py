"""A sampler that gives every sample of every epoch its own random seed."""
import hashlib
import random
import struct
from typing import Iterator

import numpy as np
import torch
from mmengine.dataset import DefaultSampler

from repvgg_mm.registry import DATA_SAMPLERS


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's CPU global generators (this process only).

    Only torch's CPU generator: data transforms run on the CPU, and ``torch.manual_seed``
    would also queue a reseed of every accelerator backend, each with a formatted stack
    trace until the backend starts -- 1.1 ms per sample, more than decoding it.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.random.default_generator.manual_seed(seed)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed determined by (seed, epoch, index) alone: the first 4 bytes of
    their BLAKE2b hash (1 µs; NumPy's SeedSequence took 15 µs per sample)."""
    key = struct.pack('<3Q', seed % 2**64, epoch % 2**64, index % 2**64)
    return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), 'little')


def part_order_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one rank's shuffle of its own part in an epoch: determined by (seed,
    epoch, rank), so ranks shuffle independently of each other (as the original's
    per-rank seeded ``SubsetRandomSampler``) and a resumed run reshuffles the same."""
    key = struct.pack('<4Q', seed % 2**64, epoch % 2**64, rank % 2**64, 0x70617274)
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), 'little') >> 1


class SeededIndex(int):
    """A dataset index that carries the seed its sample's augmentation must use."""

    seed: int

    def __new__(cls, index: int, seed: int) -> 'SeededIndex':
        obj = super().__new__(cls, index)
        obj.seed = seed
        return obj

    def __reduce__(self):  # to data-loader workers and back
        return SeededIndex, (int(self), self.seed)


@DATA_SAMPLERS.register_module()
class SampleSeedSampler(DefaultSampler):
    """MMEngine's ``DefaultSampler`` (sharding across ranks, reshuffling per epoch
    from (seed, epoch)) whose indices carry a per-sample seed.

    With data-loader workers, and above all *persistent* ones, the random state a
    sample's augmentation sees otherwise depends on the worker's history: a run that
    resumes with fresh workers then augments differently from one never interrupted.
    :class:`~repvgg_mm.datasets.ImageNetLayoutDataset` reseeds from the index's seed
    before running its pipeline, so each sample's augmentation depends only on
    (seed, epoch, sample) -- the same with 0, 1 or 8 workers, persistent or not, on
    any number of ranks. Datasets that ignore the seed see plain ``int`` indices.

    With a data set that caches each rank's part of the files in memory
    (``cache_mode='part'`` of :class:`~repvgg_mm.datasets.ImageNetLayoutDataset`) and
    ``shuffle=True``, each rank draws from its own fixed part in every epoch --
    samples ``rank, rank + world_size, ...``, in an order reshuffled per epoch from
    (seed, epoch, rank) (:func:`part_order_seed`: every rank its own stream, so ranks
    do not draw neighbouring samples -- the same class -- at the same step), padded
    from its own part to the same length on every rank -- as the original's
    ``SubsetRandomSampler`` does in that mode. One rank's part is then the whole data
    set, so a single-process run samples exactly as without the cache.
    """

    def __iter__(self) -> Iterator[int]:
        for index in (self._part_indices() if self._fixed_parts() else super().__iter__()):
            yield SeededIndex(index, sample_seed(self.seed, self.epoch, int(index)))

    def _fixed_parts(self) -> bool:
        return self.shuffle and self.world_size > 1 and \
            getattr(self.dataset, 'cache_mode', None) == 'part'

    def _part_indices(self) -> list:
        part_of = getattr(self.dataset, 'part_indices', None)  # after get_subset too
        part = part_of() if part_of is not None else \
            list(range(self.rank, len(self.dataset), self.world_size))
        if not part:
            raise ValueError(f"cache_mode='part': {len(self.dataset)} samples for "
                             f'{self.world_size} ranks leave rank {self.rank} none')
        generator = torch.Generator()
        generator.manual_seed(part_order_seed(self.seed, self.epoch, self.rank))
        order = [part[i] for i in torch.randperm(len(part), generator=generator).tolist()]
        while len(order) < self.num_samples:  # equal lengths on every rank
            order += order[:self.num_samples - len(order)]
        return order[:self.num_samples]
