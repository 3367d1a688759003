"""The original repository's in-memory cache modes, as a mixin of
:class:`~repvgg_mm.datasets.ImageNetLayoutDataset`: each rank's part of the image files
(or all of them) read once into one NumPy buffer, shared with forked data-loader
workers, kept sample for sample through MMEngine's subsets."""
from typing import List

import numpy as np
from mmengine import fileio
from mmengine.dist import get_dist_info
from mmengine.logging import print_log

from .zip_backend import backend_args_for

CACHE_MODES = (None, 'part', 'full')
# The largest in-memory cache a data-loader worker started by spawn/forkserver may copy.
SPAWN_CACHE_LIMIT = 256 * 2**20


class InMemoryCache:
    """``cache_mode`` of the data set (see
    :class:`~repvgg_mm.datasets.ImageNetLayoutDataset`): ``_cache`` is the buffer and
    ``_cache_at[i]`` sample i's ``(offset, length)``; the data set calls
    :meth:`_fill_cache` when fully initialised and adds the bytes in ``get_data_info``.
    """

    cache_mode = None
    _cache = _cache_at = _labels = None

    def _fill_cache(self) -> None:
        """Read this rank's share of the files (all of them for ``'full'``) into one
        buffer; ``_cache_at[i]`` is sample i's (offset, length); length -1 for a sample
        of another rank's part, -2 for one of this part that could not be read now."""
        rank, world = get_dist_info()
        start, step = (rank, world) if self.cache_mode == 'part' else (0, 1)
        at = np.full((len(self), 2), -1, dtype=np.int64)
        buffer, missed = bytearray(), 0
        # read as the pipeline's loading step reads (its file backend, if it names one)
        backend_args = next((t.backend_args for t in getattr(self.pipeline, 'transforms', [])
                             if getattr(t, 'backend_args', None)), None)
        for index in range(start, len(self), step):
            path = self._record(index)['img_path']
            try:
                data = fileio.get(path, backend_args=backend_args_for(path, backend_args))
            except Exception:  # reported, or skipped, when the sample is loaded
                missed += 1
                at[index, 1] = -2
                continue
            at[index] = len(buffer), len(data)
            buffer += data
        self._cache = np.frombuffer(buffer, dtype=np.uint8) if buffer else \
            np.zeros(0, dtype=np.uint8)
        self._cache_at = at
        cached = int((at[:, 1] >= 0).sum())
        print_log(f'{self.split}: {cached} of {len(self)} images cached in memory '
                  f'(cache_mode={self.cache_mode!r}, rank {rank} of {world}): '
                  f'{len(buffer) / 2**20:.1f} MiB'
                  + (f'; {missed} could not be read now and will be read when used'
                     if missed else ''), logger='current')

    def part_indices(self) -> List[int]:
        """The samples of this rank's cached part (``cache_mode='part'``; all samples
        otherwise), read or not: what :class:`SampleSeedSampler` draws from."""
        if self._cache_at is None:
            return list(range(len(self)))
        return np.flatnonzero(self._cache_at[:, 1] != -1).tolist()

    def _subset_rows(self, indices) -> np.ndarray:
        rows = np.arange(len(self))
        if isinstance(indices, int):  # MMEngine's meaning: the first / last |n|
            return rows[:indices] if indices >= 0 else rows[indices:]
        return rows[np.asarray(indices, dtype=np.int64)]

    def get_subset_(self, indices) -> None:
        """MMEngine's in-place subset; a cached sample keeps its bytes."""
        self.full_init()
        rows = self._subset_rows(indices)
        super().get_subset_(indices)
        self._take_rows(self, rows)

    def get_subset(self, indices) -> 'InMemoryCache':
        """MMEngine's subset; a cached sample keeps its bytes, and the subset shares
        the cache buffer (read-only) instead of copying it."""
        self.full_init()
        rows = self._subset_rows(indices)
        subset = super().get_subset(indices)
        self._take_rows(subset, rows)
        return subset

    def _take_rows(self, subset: 'InMemoryCache', rows: np.ndarray) -> None:
        """The per-sample arrays of ``subset``: this data set's ``rows``."""
        if self._cache_at is not None:
            subset._cache_at = self._cache_at[rows]
        if self._labels is not None:
            subset._labels = self._labels[rows]

    def _copy_without_annotation(self, memo=None) -> 'InMemoryCache':
        memo = {} if memo is None else memo  # MMEngine's default dict is shared
        if self._cache is not None:
            memo[id(self._cache)] = self._cache  # shared, never written
        return super()._copy_without_annotation(memo)

    def __getstate__(self) -> dict:
        """Pickled for a worker started by spawn or forkserver (a fork shares the
        cache instead): refused, in one line, for a cache above
        ``SPAWN_CACHE_LIMIT``, which would be copied into every worker."""
        from multiprocessing.context import get_spawning_popen
        state = dict(self.__dict__)
        size = 0 if self._cache is None else self._cache.nbytes
        if get_spawning_popen() is not None and size > SPAWN_CACHE_LIMIT:
            raise RuntimeError(
                f'cache_mode={self.cache_mode!r} holds {size / 2**20:.0f} MiB of images, '
                'which a data-loader worker started by spawn or forkserver would copy '
                f'(more than {SPAWN_CACHE_LIMIT // 2**20} MiB); use '
                "multiprocessing_context='fork' on the loader (the shipped configs do) "
                'or no cache_mode')
        return state
