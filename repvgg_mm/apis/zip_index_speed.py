"""What a zip archive's member table costs at ImageNet's size: building it, a forked
data-loader worker's first read, and building the list-file data set -- time and
memory, each measured in a fresh process, next to Python's ``zipfile`` (the table
every process built before :class:`~repvgg_mm.datasets.zip_backend.ZipIndex`).
"""
import json
import os
import random
import subprocess
import sys
import time
from typing import Dict, List

STEPS = ('zipfile_table', 'index', 'worker_first_read', 'zipfile_worker_first_read',
         'dataset')


def _memory_kib() -> Dict[str, int]:
    """This process's resident and private memory (kiB), from /proc."""
    out = {}
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(('VmRSS:', 'VmHWM:')):
                out[line.split(':')[0]] = int(line.split()[1])
    with open('/proc/self/smaps_rollup') as f:
        private = 0
        for line in f:
            if line.startswith(('Private_Clean:', 'Private_Dirty:')):
                private += int(line.split()[1])
    out['private'] = private
    return out


def _forked_first_read(read, members: List[str]) -> dict:
    """Fork; in the child, time the first read and its private memory afterwards."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        try:
            os.close(reader)
            start = time.perf_counter()
            read(random.Random(0).choice(members))
            seconds = time.perf_counter() - start
            os.write(writer, json.dumps(dict(
                seconds=seconds, private_mib=_memory_kib()['private'] / 1024)).encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as f:
        result = json.loads(f.read())
    os.waitpid(pid, 0)
    return result


def measure_step(step: str, root: str, split: str = 'train') -> dict:
    """One measurement, in this (fresh) process: seconds and memory."""
    import zipfile

    import repvgg_mm  # noqa: F401  (registers the data set; imported before measuring)
    from repvgg_mm.datasets import ImageNetLayoutDataset
    from repvgg_mm.datasets.zip_backend import archive_index, read_member
    archive = os.path.join(root, f'{split}.zip')
    before = _memory_kib()
    start = time.perf_counter()
    result: dict = {}
    if step == 'zipfile_table':
        members = len(zipfile.ZipFile(archive).infolist())
        result.update(members=members)
    elif step == 'index':
        result.update(members=len(archive_index(archive)))
    elif step == 'worker_first_read':
        index = archive_index(archive)
        names = [index.name(i) for i in random.Random(1).sample(range(len(index)), 100)]
        result['parent_seconds'] = time.perf_counter() - start
        result['worker'] = _forked_first_read(
            lambda m: read_member(f'{archive}@/{m}'), names)
    elif step == 'zipfile_worker_first_read':
        table = zipfile.ZipFile(archive)
        names = random.Random(1).sample(table.namelist(), 100)
        result['parent_seconds'] = time.perf_counter() - start
        # what a forked worker did before: reopen the archive, then read
        result['worker'] = _forked_first_read(
            lambda m: zipfile.ZipFile(archive).read(m), names)
    elif step == 'dataset':
        dataset = ImageNetLayoutDataset(data_root=root, split=split, pipeline=[])
        result.update(samples=len(dataset))
    else:
        raise ValueError(f'unknown step {step!r}; expected one of {", ".join(STEPS)}')
    result['seconds'] = time.perf_counter() - start
    after = _memory_kib()
    result['rss_increase_mib'] = (after['VmRSS'] - before['VmRSS']) / 1024
    result['peak_increase_mib'] = (after['VmHWM'] - before['VmRSS']) / 1024
    return result


def _measure_into(step: str, root: str, out: str) -> None:
    """:func:`measure_step` in this process, its result written to ``out`` as JSON."""
    with open(out, 'w') as f:
        json.dump(measure_step(step, root), f)


def zip_index_figures(root: str, steps=STEPS) -> Dict[str, dict]:
    """Every step of :data:`STEPS` in a fresh Python process of its own, one after
    the other, on ``root``'s ``train.zip`` and ``train_list.txt``."""
    import tempfile
    figures = {}
    with tempfile.TemporaryDirectory() as folder:
        for step in steps:
            out = os.path.join(folder, f'{step}.json')
            result = subprocess.run(
                [sys.executable, '-c', 'import sys; from repvgg_mm.apis.zip_index_speed '
                 'import _measure_into; _measure_into(*sys.argv[1:])', step, root, out],
                capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise RuntimeError(f'measuring {step!r} failed: '
                                   f'{result.stderr.strip()[-2000:]}')
            with open(out) as f:
                figures[step] = json.load(f)
    return figures
