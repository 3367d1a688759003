"""How many classes a training data set has, read without building it: what
``num_classes='auto'`` in a fine-tuning config becomes."""
import os
import os.path as osp
from typing import Optional, Tuple

from .imagenet_layout import expected_layout
from .zip_backend import list_members


def count_classes(dataset_cfg: dict) -> Tuple[int, str]:
    """The number of classes of a data set config, without reading its images:
    ``metainfo.classes`` when given; else the highest label + 1 of its list file; else
    its class folders (``<data_root>/<split>/*/``).

    Returns:
        tuple[int, str]: the count and where it came from, for the log.
    """
    classes = (dataset_cfg.get('metainfo') or {}).get('classes')
    if classes:
        return len(classes), 'metainfo.classes of the training data set'
    data_root, split = dataset_cfg.get('data_root'), dataset_cfg.get('split', 'train')
    if not data_root or not osp.isdir(data_root):
        raise FileNotFoundError(f'num_classes="auto" counts the classes of the training data, '
                                f'but its data_root {data_root!r} does not exist; expected the '
                                f'layout {expected_layout(split)}')
    list_file = dataset_cfg.get('list_file') or f'{split}_list.txt'
    if osp.isfile(osp.join(data_root, list_file)):
        with open(osp.join(data_root, list_file), encoding='utf-8') as f:
            labels = [int(ln.rsplit(' ', 1)[1]) for ln in f if ln.strip()]
        if not labels:
            raise ValueError(f'{osp.join(data_root, list_file)} lists no images')
        return max(labels) + 1, osp.join(data_root, list_file)
    folder = osp.join(data_root, split)
    archive = osp.join(data_root, f'{split}.zip')
    if not osp.isdir(folder) and osp.isfile(archive):
        classes = {m.split('/', 1)[0] for m in list_members(archive) if '/' in m}
        if not classes:
            raise ValueError(f'num_classes="auto": {archive!r} has no class folders')
        return len(classes), f'the class folders of {archive}'
    if not osp.isdir(folder):
        raise FileNotFoundError(f'num_classes="auto": neither {list_file!r} nor the folder '
                                f'{folder!r} exists; expected the layout '
                                f'{expected_layout(split)}')
    folders = [e.name for e in os.scandir(folder) if e.is_dir()]
    if not folders:
        raise ValueError(f'num_classes="auto": {folder!r} has no class folders; expected '
                         f'the layout {expected_layout(split)}')
    return len(folders), f'the class folders of {folder}'


def resolve_auto_num_classes(cfg) -> Optional[str]:
    """Replace ``num_classes='auto'`` (``model.head`` and the data preprocessors) by the
    class count of ``train_dataloader.dataset`` (:func:`count_classes`), so a
    fine-tuning config fits the user's folder of class sub-folders without editing.

    Returns:
        str | None: what was set and from where (for the log), or None when nothing
        was ``'auto'``.
    """
    head = cfg.get('model', {}).get('head') or {}
    preprocessors = [p for p in (cfg.get('data_preprocessor'),
                                 cfg.get('model', {}).get('data_preprocessor'))
                     if isinstance(p, dict)]
    autos = [p for p in [head, *preprocessors] if p.get('num_classes') == 'auto']
    if not autos:
        return None
    dataset = cfg.get('train_dataloader', {}).get('dataset')
    if not isinstance(dataset, dict):
        raise KeyError('num_classes="auto" needs train_dataloader.dataset to count classes')
    count, source = count_classes(dataset)
    for part in autos:
        part['num_classes'] = count
    return f'num_classes="auto": {count} classes ({source})'
