"""Pack an ImageNet-layout folder into one zip archive per split (the zip mode of
:mod:`repvgg_mm.datasets.zip_backend`)."""
import contextlib
import glob
import os
import os.path as osp
import zipfile
from collections import Counter
from typing import Dict, Iterator, List, Sequence

from mmengine.logging import print_log

from repvgg_mm.fileio import (
    OutputPathError,
    atomic_open,
    atomic_path,
    file_lock,
    fsync_path,
    is_inside,
)

from .imagenet_layout import ImageNetLayoutDataset


def _member_name(img_path: str, src_root: str, split: str) -> str:
    """The member name of a source image: its path below the split folder (so that a
    class folder stays the first component), else below the data root. The path as
    listed, links not followed: a symbolic link is stored under its own name, with
    the bytes of the file it points to."""
    for base in (osp.join(src_root, split), src_root):
        relative = osp.relpath(osp.normpath(osp.abspath(img_path)),
                               osp.normpath(osp.abspath(base)))
        if not relative.startswith(os.pardir):
            return relative.replace(os.sep, '/')
    raise ValueError(f'image {img_path!r} lies outside the data root {src_root!r}')


@contextlib.contextmanager
def _packing(dst_root: str, names: Sequence[str]) -> Iterator[None]:
    """Hold ``dst_root``'s packing lock (two packers never write into one folder at
    once: the second waits); first remove the temporary files an earlier run that was
    killed (SIGKILL, power loss) left for ``names`` (named in the log)."""
    with file_lock(osp.join(dst_root, '.pack_zip')):
        for name in names:  # atomic_path's temporaries: .<name>.<random>.tmp
            for stale in glob.glob(osp.join(glob.escape(dst_root), f'.{name}.*.tmp')):
                os.remove(stale)
                print_log(f'removed {stale!r}, left by an earlier packing run that was '
                          'killed', logger='current', level=30)
        yield


def _write_archive(archive: str, samples: List[dict], members: List[str]) -> None:
    """Write ``archive`` (stored, not recompressed: JPEGs are compressed already), verify
    every member against its source (CRC-32 and size) and rename it into place.
    Nothing is left behind on failure."""
    with atomic_path(archive) as tmp:
        # timestamps before 1980 (which zip cannot store) are stored as 1980-01-01
        with zipfile.ZipFile(tmp, 'w', compression=zipfile.ZIP_STORED, allowZip64=True,
                             strict_timestamps=False) as zf:
            for sample, member in zip(samples, members):
                try:
                    zf.write(sample['img_path'], arcname=member)
                except OSError as exc:
                    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
                        raise OSError(f'cannot read source image {sample["img_path"]!r}: '
                                      f'{exc.strerror or exc}; nothing was written') from exc
                    raise OSError(f'cannot write {archive!r} (at source image '
                                  f'{sample["img_path"]!r}): {exc.strerror or exc}; nothing '
                                  'was written') from exc
                except ValueError as exc:
                    raise ValueError(f'cannot pack source image {sample["img_path"]!r}: '
                                     f'{exc}; nothing was written') from exc
        fsync_path(tmp)  # on disk before the rename makes it the archive
        with zipfile.ZipFile(tmp) as zf:
            bad = zf.testzip()  # reads every member and checks its CRC-32
            if bad is not None:
                raise OSError(f'{archive!r}: member {bad!r} failed its CRC check after '
                              'writing; nothing was kept')
            infos = {i.filename: i for i in zf.infolist()}
            for sample, member in zip(samples, members):
                info = infos.get(member)
                if info is None or info.file_size != osp.getsize(sample['img_path']):
                    raise OSError(f'{archive!r}: member {member!r} does not match its source '
                                  f'{sample["img_path"]!r} after writing; nothing was kept')
    return members


def pack_imagenet_zip(src_root: str, dst_root: str,
                      splits: Sequence[str] = ('train', 'val')) -> Dict[str, dict]:
    """Pack each split of ``src_root`` (ImageNet layout: class folders or list files)
    into ``dst_root/<split>.zip`` with ``dst_root/<split>_list.txt`` beside it (lines
    ``<split>.zip@/<member> <label>``), which :class:`ImageNetLayoutDataset` reads with
    ``data_root=dst_root``. Splits missing from ``src_root`` are skipped.

    Every file is written to a temporary name and renamed when complete and verified,
    so an interrupted or failed run (unreadable source image, full disk) leaves no
    partial archive.

    Returns:
        dict: per split packed, ``images``, ``archive``, ``list_file`` and ``bytes``.

    Raises:
        OutputPathError: ``dst_root`` is ``src_root`` or inside it.
    """
    if not osp.isdir(src_root):
        raise FileNotFoundError(f'source data root {src_root!r} is not a folder')
    if is_inside(dst_root, src_root):
        raise OutputPathError(f'destination {dst_root!r} is inside the source {src_root!r}: '
                              'refusing to write into the data being packed')
    if osp.exists(dst_root) and not osp.isdir(dst_root):
        raise OutputPathError(f'destination {dst_root!r} is a file, expected a folder')
    found = [s for s in splits if osp.isdir(osp.join(src_root, s))
             or osp.isfile(osp.join(src_root, f'{s}_list.txt'))]
    if not found:
        raise FileNotFoundError(f'{src_root!r} has none of the splits {list(splits)} (a '
                                'class-folder split or a <split>_list.txt)')
    report = {}
    with _packing(dst_root, [n for s in found for n in (f'{s}.zip', f'{s}_list.txt')]):
        for split in found:
            report[split] = _pack_split(src_root, dst_root, split)
    return report


def _pack_split(src_root: str, dst_root: str, split: str) -> dict:
    """Pack one split (see :func:`pack_imagenet_zip`)."""
    dataset = ImageNetLayoutDataset(data_root=src_root, split=split, pipeline=[])
    samples = [dataset.get_data_info(i) for i in range(len(dataset))]
    archive = osp.join(dst_root, f'{split}.zip')
    list_file = osp.join(dst_root, f'{split}_list.txt')
    members = [_member_name(s['img_path'], src_root, split) for s in samples]
    repeated = [m for m, n in Counter(members).items() if n > 1]
    if repeated:
        raise ValueError(f'{split}: several samples would be stored as the same member '
                         f'{sorted(repeated)[:3]}; pack a list without repeated images')
    # the list is complete in its temporary file before the archive is renamed in
    with atomic_open(list_file, 'w', encoding='utf-8') as f:
        f.write(''.join(f'{split}.zip@/{m} {int(s["gt_label"])}\n'
                        for m, s in zip(members, samples)))
        _write_archive(archive, samples, members)
    fsync_path(dst_root)  # the renames too
    return dict(images=len(samples), archive=archive, list_file=list_file,
                bytes=osp.getsize(archive))
