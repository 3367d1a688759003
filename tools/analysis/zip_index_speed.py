"""The cost of a zip archive's member table at ImageNet's size (1,281,167 members):

    python tools/analysis/zip_index_speed.py ROOT [--members 1281167]

writes ROOT/train.zip (tiny members named as ImageNet's) and ROOT/train_list.txt
unless present, then measures, each in a fresh process: Python's zipfile member table,
repvgg_mm's ZipIndex, a forked worker's first read after the parent built either, and
building the list-file data set. Prints a table and one JSON line.
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from repvgg_mm.apis.zip_index_speed import zip_index_figures  # noqa: E402
from repvgg_mm.cli import run_cli  # noqa: E402
from repvgg_mm.datasets.synthetic_imagenet import make_member_archive  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('root', help='folder for train.zip and train_list.txt')
    parser.add_argument('--members', type=int, default=1281167)
    args = parser.parse_args()
    if not osp.isfile(osp.join(args.root, 'train_list.txt')):
        made = make_member_archive(args.root, args.members)
        print(f"wrote {args.root}/train.zip: {made['members']} members, "
              f"{made['archive_mb']:.0f} MiB", flush=True)
    figures = zip_index_figures(args.root)
    rows = [('zipfile member table (parent)', figures['zipfile_table']),
            ('ZipIndex (parent)', figures['index']),
            ('forked worker, first read after zipfile', figures['zipfile_worker_first_read']
             ['worker']),
            ('forked worker, first read after ZipIndex', figures['worker_first_read']
             ['worker']),
            ('list-file data set build', figures['dataset'])]
    print(f"{'step':<44}{'seconds':>9}{'memory MiB':>12}")
    for name, r in rows:
        memory = r.get('private_mib', r.get('rss_increase_mib'))
        print(f"{name:<44}{r['seconds']:>9.2f}{memory:>12.0f}")
    print(json.dumps(figures))
    return 0


if __name__ == '__main__':
    run_cli(main, 'zip_index_speed.py')
