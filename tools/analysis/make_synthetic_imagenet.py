"""Write an ImageNet-like JPEG folder for measuring training speed without ImageNet.

    python tools/analysis/make_synthetic_imagenet.py ROOT [--images N] [--val-images N]
        [--classes C] [--workers W] [--seed S]

ROOT gets train/<class>/*.JPEG (and val/), train_list.txt (and val_list.txt) in the
layout of data/imagenet: resolutions around 500x375, files around 100 kB, 1,000 class
folders. Prints one JSON line with the counts and the mean file size.
"""
import argparse
import json
import os
import os.path as osp
import shutil
import sys
import tempfile

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from repvgg_mm.cli import run_cli  # noqa: E402
from repvgg_mm.datasets.synthetic_imagenet import make_synthetic_imagenet  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Write an ImageNet-like JPEG folder')
    parser.add_argument('root', help='folder to write (new or empty)')
    parser.add_argument('--images', type=int, default=20000, help='training images')
    parser.add_argument('--val-images', type=int, default=0, help='validation images')
    parser.add_argument('--classes', type=int, default=1000)
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                        help='processes drawing images')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    root = osp.abspath(args.root)
    parent = osp.dirname(root)
    if not osp.exists(parent):  # as every tool: a missing output folder is created
        os.makedirs(parent, exist_ok=True)
    if not osp.isdir(parent) or not os.access(parent, os.W_OK):
        raise OSError(f'cannot create {args.root!r}: {parent!r} is not a writable folder')
    if osp.exists(root) and (not osp.isdir(root) or os.listdir(root)):
        raise FileExistsError(f'{args.root!r} exists and is not an empty folder')
    # written next to ROOT and renamed when complete: an interrupted run leaves nothing
    tmp = tempfile.mkdtemp(prefix=f'.{osp.basename(root)}.', dir=parent)
    try:
        result = make_synthetic_imagenet(tmp, images=args.images,
                                         val_images=args.val_images, classes=args.classes,
                                         seed=args.seed, workers=args.workers)
        if osp.isdir(root):
            os.rmdir(root)  # empty, checked above
        os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(json.dumps(dict(root=args.root, **result)))
    return 0


if __name__ == '__main__':
    run_cli(main, 'make_synthetic_imagenet.py')
