"""What the GPU-decoding loader's host side costs, on any machine (device 'cpu' here):

    python tools/analysis/loader_resources.py DATA_ROOT [--batch-size 256] [--workers 4]
        [--batches 3] [--long-list LIST_ROOT]

- the most file descriptors open at once, in the main process and in a worker, while
  batches cross from the workers (each shared-memory block is one);
- the main process's time to receive a batch the workers already have ready;
- the main process's time per batch for everything after that (decode, crop-resize-flip,
  the data samples), with the JPEG decoder on this machine's CPU;
- with --long-list: the memory of each worker after one epoch of reading over
  LIST_ROOT (e.g. a list file of 100,000 lines over one small image), where a copy of
  the sample list per worker would show.

Prints one JSON line. The numbers of the README and the loader's notes come from it.
"""
import argparse
import gc
import json
import os
import os.path as osp
import sys
import threading
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import torch  # noqa: E402

from repvgg_mm.cli import run_cli  # noqa: E402
from repvgg_mm.datasets.gpu_loader import build_loader  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The GPU-decoding loader's host costs")
    parser.add_argument('data_root', help='ImageNet-layout folder (train split)')
    parser.add_argument('--batch-size', type=int, default=256)
    parser.add_argument('--workers', type=int, default=4)
    parser.add_argument('--batches', type=int, default=3, help='batches timed')
    parser.add_argument('--long-list', metavar='LIST_ROOT',
                        help='data root whose train_list.txt is long: worker memory')
    return parser.parse_args(argv)


def _children() -> list:
    pids = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as f:
                    if int(f.read().rsplit(')', 1)[1].split()[1]) == os.getpid():
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def _open_files(pid: int) -> int:
    try:
        return len(os.listdir(f'/proc/{pid}/fd'))
    except OSError:
        return 0


def _memory_mb(pid: int) -> dict:
    keys = {'Rss:': 'rss', 'Pss:': 'pss', 'Private_Dirty:': 'private_dirty'}
    out = {}
    with open(f'/proc/{pid}/smaps_rollup') as f:
        for line in f:
            name, value = line.split()[:2]
            if name in keys:
                out[keys[name]] = round(int(value) / 1024, 1)
    return out


def _loader(root: str, batch_size: int, workers: int, **dataset):
    return build_loader(dict(
        type='GPUDecodeLoader', batch_size=batch_size, num_workers=workers, prefetch=0,
        persistent_workers=True, device='cpu', crop_size=224,
        dataset=dict(type='ImageNetLayoutDataset', data_root=root, split='train', **dataset),
        sampler=dict(type='DefaultSampler', shuffle=True)), seed=0)


def main() -> int:
    args = parse_args()
    torch.set_num_threads(1)
    loader = _loader(args.data_root, args.batch_size, args.workers)
    loader.sampler.set_epoch(0)
    batches = iter(loader._loader)
    peak = dict(main=0, worker=0)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak['main'] = max(peak['main'], _open_files(os.getpid()))
            for pid in _children():
                peak['worker'] = max(peak['worker'], _open_files(pid))
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    receive, host = [], []
    for _ in range(args.batches):
        time.sleep(3.0)  # the workers have the next batches ready
        start = time.perf_counter()
        packed = next(batches)
        receive.append(time.perf_counter() - start)
        start = time.perf_counter()
        loader._process(packed)
        host.append(time.perf_counter() - start)
    stop.set()
    watcher.join()
    report = dict(batch_size=args.batch_size, workers=args.workers,
                  open_files_main=peak['main'], open_files_worker=peak['worker'],
                  receive_ms=[round(s * 1e3, 1) for s in receive],
                  host_ms=[round(s * 1e3, 1) for s in host])
    del batches, loader
    gc.collect()
    if args.long_list:
        loader = _loader(args.long_list, 256, args.workers, check_files=False)
        loader.sampler.set_epoch(0)
        report['long_list_samples'] = len(loader.dataset)
        for _ in loader._loader:
            pass
        report['worker_memory_mb'] = [_memory_mb(pid) for pid in _children()]
    print(json.dumps(report))
    return 0


if __name__ == '__main__':
    run_cli(main, 'loader_resources.py')
