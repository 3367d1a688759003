"""Data-only images/s of configs' data pipelines, side by side in one run:

    python tools/analysis/data_speed.py CONFIG [CONFIG ...] --data-root R [--zip]
        [--split train [val]] [--workers N [N ...]] [--images 256] [--rounds 3]
        [--no-reference]

Each CONFIG's train (and val) pipeline is measured per core (one process, one thread,
every sample seeded as in training, the whole way to the packed sample; for a
GPUDecodeLoader config its workers' share: bytes, header, crop box) and with each
number of --workers through its own loader. MMPretrain's stock pipeline
(mmpretrain::_base_/datasets/imagenet_bs32.py: OpenCV decode and resize) is the first
row unless --no-reference. --zip packs R into zip archives first (in a temporary
folder) and reads from those. Rounds are taken in turns; the median counts. Prints a
table and one JSON line per measurement.
"""
import argparse
import json
import os.path as osp
import shutil
import sys
import tempfile

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from repvgg_mm.apis.data_speed import (  # noqa: E402
    MMPRETRAIN_REFERENCE,
    compare_data_speed,
    reference_config,
)
from repvgg_mm.cli import install_interrupt_handlers, load_config, run_cli  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Data-only speed of data pipelines')
    parser.add_argument('configs', nargs='+')
    parser.add_argument('--data-root', required=True, help='ImageNet-layout folder')
    parser.add_argument('--zip', action='store_true', help='read from zip archives of it')
    parser.add_argument('--split', nargs='+', default=['train'], choices=['train', 'val'])
    parser.add_argument('--workers', nargs='+', type=int, default=[])
    parser.add_argument('--images', type=int, default=256, help='images per measurement')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--no-reference', action='store_true',
                        help="leave out MMPretrain's stock pipeline")
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    install_interrupt_handlers()  # SIGTERM/SIGINT: the packed copy (--zip) is removed
    if not osp.isdir(args.data_root):
        raise FileNotFoundError(f'--data-root {args.data_root!r} is not a folder')
    if args.images < 1 or args.rounds < 1 or any(n < 1 for n in args.workers):
        raise ValueError('--images, --rounds and --workers must be >= 1')
    configs = [] if args.no_reference else [(MMPRETRAIN_REFERENCE, reference_config())]
    configs += [(path, load_config(path)) for path in args.configs]
    root, packed = args.data_root, None
    try:
        if args.zip:
            from repvgg_mm.datasets.zip_pack import pack_imagenet_zip
            packed = tempfile.mkdtemp(prefix='data_speed_zip_')
            pack_imagenet_zip(args.data_root, packed, args.split)
            root = packed
        results = compare_data_speed(configs, root, args.split, args.workers, args.images,
                                     args.rounds)
    finally:
        if packed:
            shutil.rmtree(packed, ignore_errors=True)
    width = max(len(r['run']) for r in results) + 2
    print(f"{'run':<{width}}{'split':<7}{'mode':<12}{'images/s':>10}{'ratio':>8}")
    base = {(r['split'], r['mode']): r['imgs_per_s'] for r in results[::-1]}
    for r in results:
        ratio = r['imgs_per_s'] / base[(r['split'], r['mode'])]
        print(f"{r['run']:<{width}}{r['split']:<7}{r['mode']:<12}{r['imgs_per_s']:>10.1f}"
              f'{ratio:>8.2f}')
    for r in results:
        print(json.dumps(dict(r, zip=args.zip)))
    return 0


if __name__ == '__main__':
    run_cli(main, 'data_speed.py')
