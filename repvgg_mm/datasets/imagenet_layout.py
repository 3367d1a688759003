"""The ImageNet folder layout of the specification, with or without list files."""
import codecs
import os
import os.path as osp
import pickle
from array import array
from typing import Iterable, Iterator, List, Optional, Tuple

import numpy as np
from mmpretrain.datasets import CustomDataset

from repvgg_mm.registry import DATASETS

from .memory_cache import CACHE_MODES, InMemoryCache
from .samplers import seed_everything
from .zip_backend import (
    archive_index,
    is_zip_path,
    list_members,
    split_zip_path,
)

# Listed zip members are looked up in chunks of this many lines (bounded memory).
_CHECK_CHUNK = 65536


def read_text_lines(path: str) -> Iterator[Tuple[int, str]]:
    """``(line number, text)`` of a list or map file: UTF-8 (a byte-order mark at the
    start accepted, as some editors write it), line ends removed.

    Raises:
        ValueError: naming the file, the line and the column of a byte that is not
            UTF-8.
    """
    with open(path, 'rb') as f:
        raw_lines = f.read().splitlines()
    for number, raw in enumerate(raw_lines, 1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        try:
            yield number, raw.decode('utf-8')
        except UnicodeDecodeError as exc:
            raise ValueError(f'{path}:{number}: not UTF-8 text (byte '
                             f'{raw[exc.start:exc.start + 1]!r} at column '
                             f'{exc.start + 1})') from None


def expected_layout(split: str) -> str:
    """The layout, spelled out for one split, for error messages."""
    return (f'<data_root>/{split}/<class folder>/<image> (or <data_root>/{split}.zip '
            f'holding <class folder>/<image>), optionally with <data_root>/{split}_list.txt '
            'whose lines read "<image path relative to data_root> <integer label>"')


@DATASETS.register_module()
class ImageNetLayoutDataset(InMemoryCache, CustomDataset):
    """An image classification split stored in the ImageNet layout.

    ``<data_root>/<split>_list.txt`` (lines ``<path relative to data_root> <label>``)
    is used when it exists; otherwise the classes are the sorted sub-folders of
    ``<data_root>/<split>`` and each image is labelled by its folder.

    A zip archive can stand in for the split folder (the original repository's zip
    mode, read through the ``zip`` file backend of :mod:`repvgg_mm.datasets.zip_backend`;
    nothing is extracted): ``<data_root>/<split>.zip`` holding the class folders, or
    listed by ``<data_root>/<split>_list.txt`` (paths ``<split>.zip@/<member>``, as
    ``tools/dataset/pack_zip.py`` writes them) or by the original's
    ``<data_root>/<split>_map.txt`` (lines ``<member>\t<label>``). Member names that
    would lead outside the archive (absolute, ``..``) are refused when the split is
    listed.

    Args:
        data_root (str): Root holding the split folders and list files.
        split (str): ``'train'`` or ``'val'`` (any folder name works).
            Defaults to ``'train'``.
        list_file (str, optional): List file relative to ``data_root``. Defaults to
            None, meaning ``<split>_list.txt`` if present, else the folders.
        check_files (bool): Check that every listed image exists when the list is
            read (one ``stat`` per image). Defaults to True.
        allow_outside_root (bool): Accept list lines whose path leads outside
            ``data_root`` (``../``, absolute paths). Defaults to False: such a line is
            an error naming the file and line.
        cache_mode (str, optional): Keep the image files' bytes in memory, read once
            when the data set is built (the original repository's cache modes):
            ``'part'`` -- each rank the samples ``rank, rank + world_size, ...``, the
            ones :class:`~repvgg_mm.datasets.SampleSeedSampler` then gives that rank in
            every epoch (shuffled within them, as the original's
            ``SubsetRandomSampler``), and MMEngine's ``DefaultSampler`` without
            shuffling (validation) gives it anyway; ``'full'`` -- every rank all of
            them. The bytes sit in one NumPy buffer that data-loader workers share
            with the process that built it. Memory: the files' total size divided by
            the number of ranks (``'part'``) on each rank -- ImageNet-1k's train set is
            about 140 GB, so 17.5 GB per rank on 8 ranks, 140 GB on an 8-GPU node;
            ``'full'`` the whole size on every rank. The images decode as from the
            files (bit for bit), with the same checks; a file that cannot be read
            when the cache is filled is not cached and fails (or is skipped) when
            its sample is loaded, as without the cache. Defaults to None.
        **kwargs: Passed on to :class:`mmpretrain.datasets.CustomDataset`
            (``pipeline``, ``metainfo``, ``lazy_init`` ...).
    """

    def __init__(self, data_root: str, split: str = 'train',
                 list_file: Optional[str] = None, check_files: bool = True,
                 allow_outside_root: bool = False, cache_mode: Optional[str] = None,
                 **kwargs) -> None:
        if cache_mode not in CACHE_MODES:
            raise ValueError(f"cache_mode must be None, 'part' or 'full', got {cache_mode!r}")
        self.cache_mode = cache_mode
        self._cache = self._cache_at = None
        self.check_files = check_files
        self.allow_outside_root = allow_outside_root
        if not data_root or not osp.isdir(data_root):
            raise FileNotFoundError(f'data root {data_root!r} does not exist or is not a '
                                    f'directory; expected the layout {expected_layout(split)}')
        self.split = split
        self.archive = self.map_file = self._listed_from = self._path_base = None
        self._labels: Optional[np.ndarray] = None
        archive = osp.join(data_root, f'{split}.zip')
        if list_file is None and osp.isfile(osp.join(data_root, f'{split}_list.txt')):
            list_file = f'{split}_list.txt'
        if list_file is None and osp.isfile(archive) and \
                not osp.isdir(osp.join(data_root, split)):
            self.archive = archive  # the split's images are this archive's members
            map_file = osp.join(data_root, f'{split}_map.txt')
            self.map_file = map_file if osp.isfile(map_file) else None
            data_prefix, ann_file = '', ''
        elif list_file is not None:
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
            self._check_class_folders(osp.join(data_root, split), kwargs)
        super().__init__(data_root=data_root, data_prefix=data_prefix, ann_file=ann_file,
                         **kwargs)

    @staticmethod
    def _check_class_folders(folder: str, kwargs: dict) -> None:
        """Every class folder must hold at least one image: an empty one would shift
        nothing but silently train a class without examples."""
        extensions = tuple(e.lower() for e in kwargs.get(
            'extensions', ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif')))
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.is_dir() and not any(
                    f.name.lower().endswith(extensions) for f in os.scandir(entry.path)):
                raise ValueError(f'class folder {entry.path!r} holds no image '
                                 f'(extensions {", ".join(extensions)}); remove it or add '
                                 'images')

    def load_data_list(self) -> List[dict]:
        if self.archive is None and not self.ann_file:
            return super().load_data_list()  # class folders: MMPretrain's scan
        return list(self._listed_records())

    def _listed_records(self) -> Iterator[dict]:
        """The samples of a list file, a map file or an archive's class folders, one
        at a time. ``img_path`` is relative to ``self._path_base`` (joined again by
        :meth:`get_data_info`) and ``list_line`` is a line number: at 1.28 M samples
        every byte per sample counts on every rank."""
        if self.archive is not None:
            self._path_base = self.archive + '@/'
            yield from (self._map_file_records() if self.map_file is not None
                        else self._class_folder_records())
            return
        self._listed_from = self.ann_file
        self._path_base = self.img_prefix
        root = osp.normpath(osp.abspath(self.data_root))
        pending: dict = {}  # archive -> [(member, line)]: checked in chunks, together
        listed = 0
        for number, line in read_text_lines(self.ann_file):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(' ', 1)
            where = f'{self.ann_file}:{number}'
            if len(parts) != 2:
                raise ValueError(f'{where}: expected "<image path> <label>", got {line!r}')
            path, label = parts
            try:
                label = int(label)
            except ValueError:
                raise ValueError(f'{where}: label {label!r} is not an integer') from None
            if label < 0:
                raise ValueError(f'{where}: label {label} is negative')
            img_path = osp.join(self.img_prefix, path)
            # only a path that is absolute or climbs ('..') can lead outside the root
            if not self.allow_outside_root and (osp.isabs(path) or '..' in path) and \
                    osp.commonpath([root, osp.normpath(osp.abspath(img_path))]) != root:
                raise ValueError(f'{where}: image {path!r} lies outside the data root '
                                 f'{self.data_root!r}; set allow_outside_root=True in the '
                                 'dataset config to accept such paths')
            if self.check_files:
                if is_zip_path(img_path):
                    archive, member = split_zip_path(img_path)
                    members = pending.setdefault(archive, [])
                    members.append((member, number))
                    if len(members) >= _CHECK_CHUNK:
                        self._check_members(archive, pending.pop(archive))
                elif not osp.isfile(img_path):
                    raise FileNotFoundError(f'{where}: image {img_path!r} does not exist')
            listed += 1
            yield dict(img_path=path, gt_label=label, list_line=number)
        for archive, members in pending.items():
            self._check_members(archive, members)
        if not listed:
            raise ValueError(f'list file {self.ann_file!r} lists no images')

    def _check_members(self, archive: str, members: List[Tuple[str, int]]) -> None:
        found = archive_index(archive).find_many([m for m, _ in members])
        missing = np.flatnonzero(found < 0)
        if len(missing):
            member, number = members[int(missing[0])]
            raise FileNotFoundError(
                f'{self._listed_from}:{number}: image {archive + "@/" + member!r} does not '
                f'exist ({archive} has no member {member!r}; {len(missing)} of these '
                f'{len(members)} listed members are missing)')

    def _map_file_records(self) -> Iterator[dict]:
        """The original's ``<split>_map.txt``: lines ``<member>\t<label>``, read with the
        list files' rules (UTF-8, a BOM accepted, errors naming file and line)."""
        archive_index(self.archive)  # names leading outside the archive are refused
        self._listed_from = self.map_file
        pending, listed = [], 0
        for number, line in read_text_lines(self.map_file):
            where = f'{self.map_file}:{number}'
            if not line.strip():
                continue
            parts = line.split('\t')
            if len(parts) != 2 or not parts[1].strip().lstrip('-').isdigit():
                raise ValueError(f'{where}: expected "<member path>\\t<integer '
                                 f'label>", got {line.strip()!r}')
            member, label = parts[0].strip(), int(parts[1])
            if label < 0:
                raise ValueError(f'{where}: label {label} is negative')
            pending.append((member, number))
            if len(pending) >= _CHECK_CHUNK:
                self._check_members(self.archive, pending)
                pending = []
            listed += 1
            yield dict(img_path=member, gt_label=label, list_line=number)
        self._check_members(self.archive, pending)
        if not listed:
            raise ValueError(f'map file {self.map_file!r} lists no images')

    def _class_folder_records(self) -> Iterator[dict]:
        """``<split>.zip``'s class folders (sorted, as on disk)."""
        images = [m for m in list_members(self.archive)
                  if '/' in m and self.is_valid_file(m)]
        classes = sorted({m.split('/', 1)[0] for m in images})
        if not classes:
            raise ValueError(f'{self.archive} holds no <class folder>/<image> members '
                             f'(extensions {", ".join(self.extensions)}); expected the '
                             f'layout {expected_layout(self.split)}')
        if self.CLASSES is not None and len(self.CLASSES) != len(classes):
            raise ValueError(f'{self.archive} has {len(classes)} class folders but '
                             f'metainfo.classes names {len(self.CLASSES)}')
        if self.CLASSES is None:
            self._metainfo['classes'] = tuple(classes)
        index = {name: i for i, name in enumerate(classes)}
        images.sort()
        for m in images:
            yield dict(img_path=m, gt_label=index[m.split('/', 1)[0]])

    def full_init(self) -> None:
        """MMEngine's, except that listed samples (a list file, a map file, an
        archive) go straight into the serialized buffer, one at a time -- no list of
        1.28 M dicts, no array per sample -- with their labels kept as one array."""
        if self._fully_initialized:
            return
        if (self.archive is not None or self.ann_file) and self.serialize_data and \
                self._indices is None:
            labels = array('q')

            def records() -> Iterator[dict]:
                for record in self._listed_records():
                    labels.append(record['gt_label'])
                    yield record
            self.data_bytes, self.data_address = _pack_records(records())
            self.data_list = []
            self._labels = np.frombuffer(labels, dtype=np.int64)
            self._fully_initialized = True
        else:
            super().full_init()
        if self.cache_mode is not None:
            self._fill_cache()

    def _serialize_data(self) -> Tuple[np.ndarray, np.ndarray]:
        """MMEngine's serialization into one buffer, without an array per sample."""
        packed = _pack_records(self.data_list)
        self.data_list.clear()
        return packed

    def get_gt_labels(self) -> np.ndarray:
        """Every sample's label (from the array kept when listed: no per-sample
        decoding at 1.28 M samples)."""
        if self._labels is not None:
            return self._labels.copy()
        return super().get_gt_labels()

    def _record(self, idx: int) -> dict:
        """MMEngine's record of sample ``idx``, its path and list line spelled out."""
        info = super().get_data_info(idx)
        if self._path_base is not None:  # stored relative (see _listed_records)
            info['img_path'] = osp.join(self._path_base, info['img_path'])
        if isinstance(info.get('list_line'), int):  # stored as a number
            info['list_line'] = f"{self._listed_from}:{info['list_line']}"
        return info

    def get_data_info(self, idx: int) -> dict:
        """MMEngine's, plus ``img_bytes`` (the file's bytes) for a cached sample."""
        info = self._record(idx)
        if self._cache_at is not None:
            offset, length = self._cache_at[idx]
            if length >= 0:
                info['img_bytes'] = self._cache[offset:offset + length].tobytes()
        return info

    def __getitem__(self, idx):
        """Like MMEngine's, but an index from :class:`SampleSeedSampler` (an ``int``
        carrying ``.seed``) first reseeds Python, NumPy and PyTorch with that seed, so
        the sample's random augmentation depends only on (seed, epoch, sample) -- not
        on which worker runs it or what that worker ran before."""
        seed = getattr(idx, 'seed', None)
        if seed is not None:
            seed_everything(seed)
        return super().__getitem__(int(idx))


def _pack_records(records: Iterable[dict]) -> Tuple[np.ndarray, np.ndarray]:
    """MMEngine's serialized form of ``records`` (pickled one after the other into one
    buffer, and their end offsets), built without an array per record."""
    buffer, ends = bytearray(), array('q')
    for record in records:
        buffer += pickle.dumps(record, protocol=4)
        ends.append(len(buffer))
    return np.frombuffer(buffer, dtype=np.uint8), np.frombuffer(ends, dtype=np.int64)
