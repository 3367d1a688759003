"""Pack an ImageNet-layout folder into zip archives, one per split:

    python tools/dataset/pack_zip.py SRC_ROOT DST_ROOT [--splits train val]

writes DST_ROOT/train.zip and DST_ROOT/train_list.txt (lines ``train.zip@/<member>
<label>``), the same for val; then use ``data_root=DST_ROOT`` in a config (or
``--cfg-options train_dataloader.dataset.data_root=DST_ROOT ...``). The images are stored
as they are (not recompressed), every member is verified after writing, and files appear
only when complete: interrupted (SIGINT, SIGTERM) it leaves nothing, and temporary files
of an earlier run that was killed outright are removed when it starts.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from repvgg_mm.cli import install_interrupt_handlers, run_cli  # noqa: E402
from repvgg_mm.datasets.zip_pack import pack_imagenet_zip  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Pack an ImageNet-layout folder into '
                                     'one zip archive per split')
    parser.add_argument('src_root', help='data root with train/ val/ (or list files)')
    parser.add_argument('dst_root', help='where the archives and list files go')
    parser.add_argument('--splits', nargs='+', default=['train', 'val'])
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    install_interrupt_handlers()  # SIGTERM/SIGINT: temporary files removed, then exit
    for split, info in pack_imagenet_zip(args.src_root, args.dst_root, args.splits).items():
        print(f"{split}: {info['images']} images -> {info['archive']} "
              f"({info['bytes'] / 2**20:.1f} MiB), {info['list_file']}")
    return 0


if __name__ == '__main__':
    run_cli(main, 'pack_zip.py')
