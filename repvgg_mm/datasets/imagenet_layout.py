"""The ImageNet folder layout of the specification, with or without list files."""
import os.path as osp
from typing import Optional

from mmpretrain.datasets import CustomDataset

from repvgg_mm.registry import DATASETS


def expected_layout(split: str) -> str:
    """The layout, spelled out for one split, for error messages."""
    return (f'<data_root>/{split}/<class folder>/<image>, optionally with '
            f'<data_root>/{split}_list.txt whose lines read '
            '"<image path relative to data_root> <integer label>"')


@DATASETS.register_module()
class ImageNetLayoutDataset(CustomDataset):
    """An image classification split stored in the ImageNet layout.

    ``<data_root>/<split>_list.txt`` (lines ``<path relative to data_root> <label>``)
    is used when it exists; otherwise the classes are the sorted sub-folders of
    ``<data_root>/<split>`` and each image is labelled by its folder.

    Args:
        data_root (str): Root holding the split folders and list files.
        split (str): ``'train'`` or ``'val'`` (any folder name works).
            Defaults to ``'train'``.
        list_file (str, optional): List file relative to ``data_root``. Defaults to
            None, meaning ``<split>_list.txt`` if present, else the folders.
        **kwargs: Passed on to :class:`mmpretrain.datasets.CustomDataset`
            (``pipeline``, ``metainfo``, ``lazy_init`` ...).
    """

    def __init__(self, data_root: str, split: str = 'train',
                 list_file: Optional[str] = None, **kwargs) -> None:
        if not data_root or not osp.isdir(data_root):
            raise FileNotFoundError(f'data root {data_root!r} does not exist or is not a '
                                    f'directory; expected the layout {expected_layout(split)}')
        self.split = split
        if list_file is None and osp.isfile(osp.join(data_root, f'{split}_list.txt')):
            list_file = f'{split}_list.txt'
        if list_file is not None:
            if not osp.isfile(osp.join(data_root, list_file)):
                raise FileNotFoundError(
                    f'list file {osp.join(data_root, list_file)!r} does not exist; '
                    f'expected the layout {expected_layout(split)}')
            data_prefix, ann_file = '', list_file
        else:
            if not osp.isdir(osp.join(data_root, split)):
                raise FileNotFoundError(
                    f'neither {osp.join(data_root, split + "_list.txt")!r} nor the folder '
                    f'{osp.join(data_root, split)!r} exists; '
                    f'expected the layout {expected_layout(split)}')
            data_prefix, ann_file = split, ''
        super().__init__(data_root=data_root, data_prefix=data_prefix, ann_file=ann_file,
                         **kwargs)
