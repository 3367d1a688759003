"""Image data sets stored as zip archives: MMEngine file backend ``'zip'``.

ImageNet is 1.28 M small files; on the network file systems of GPU clusters opening
them is slow and loads the metadata servers. As the original repository's zip mode,
a split can be one archive -- ``train.zip`` holding ``n01440764/....JPEG`` -- and a
sample's path names the archive and the member: ``data/imagenet/train.zip@/n01440764/
n01440764_10026.JPEG``. The backend reads members without extracting anything: each
process opens each archive once (reopened after a fork: an open file shared by forked
data-loader workers would be read from one file position by all of them) and reads
members by name; the zip format's CRC-32 is checked on every read.

Paths with ``.zip@/`` select the backend by themselves (:func:`backend_args_for`), so
``LoadImageFromFile`` and the GPU-decoding loader read archives with no setting; it is
registered with MMEngine (``backend_args=dict(backend='zip')``) for other readers.
"""
import os
import os.path as osp
import posixpath
import threading
import zipfile
from typing import Dict, List, Optional, Tuple, Union

from mmengine.fileio import register_backend
from mmengine.fileio.backends import BaseStorageBackend

SEPARATOR = '.zip@/'


class ZipArchiveError(OSError):
    """An archive that cannot be opened, or a member that cannot be read."""


def split_zip_path(path: Union[str, os.PathLike]) -> Tuple[str, str]:
    """``'a/train.zip@/n01/x.JPEG'`` -> ``('a/train.zip', 'n01/x.JPEG')``.

    Raises:
        ValueError: for a path that names no archive member.
    """
    path = str(path)
    head, sep, member = path.partition(SEPARATOR)
    if not sep:
        raise ValueError(f'{path!r} names no member of a zip archive (expected '
                         f'ARCHIVE.zip@/MEMBER)')
    return head + '.zip', member


def is_zip_path(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and SEPARATOR in str(path)


def check_member_name(archive: str, name: str) -> None:
    """Refuse a member name that would lead outside the archive when extracted (zip
    slip): absolute, a drive, or with a ``..`` component.

    Raises:
        ZipArchiveError: naming the archive and the member.
    """
    if name.startswith(('/', '\\')) or (len(name) > 1 and name[1] == ':') or \
            '..' in name.replace('\\', '/').split('/'):
        raise ZipArchiveError(f'{archive}: member {name!r} has an absolute path or a ".." '
                              'component; refusing the archive (it could write outside a '
                              'folder when extracted)')


class _OpenArchives(threading.local):
    """The archives this process (and thread) has open, reopened after a fork."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.files: Dict[str, zipfile.ZipFile] = {}

    def get(self, archive: str) -> zipfile.ZipFile:
        if self.pid != os.getpid():  # a forked worker: the parent's handles are shared
            self.files, self.pid = {}, os.getpid()
        handle = self.files.get(archive)
        if handle is None:
            try:
                handle = zipfile.ZipFile(archive)
            except FileNotFoundError:
                raise ZipArchiveError(f'zip archive {archive!r} does not exist') from None
            except (zipfile.BadZipFile, OSError) as exc:
                raise ZipArchiveError(f'{archive!r} is not a readable zip archive ({exc}); '
                                      'expected a zip file, e.g. written by '
                                      'tools/dataset/pack_zip.py') from exc
            self.files[archive] = handle
        return handle


_ARCHIVES = _OpenArchives()


def open_archive(archive: str) -> zipfile.ZipFile:
    """This process's open handle of ``archive``."""
    return _ARCHIVES.get(osp.abspath(archive))


def list_members(archive: str) -> List[str]:
    """The file members of ``archive`` (folders left out), each name checked
    (:func:`check_member_name`)."""
    names = [n for n in open_archive(archive).namelist() if not n.endswith('/')]
    for name in names:
        check_member_name(archive, name)
    return names


def read_member(path: str) -> bytes:
    """The bytes of ``ARCHIVE.zip@/MEMBER``; its CRC-32 is checked.

    Raises:
        ZipArchiveError: naming the archive and the member (missing, damaged).
    """
    archive, member = split_zip_path(path)
    handle = open_archive(archive)
    try:
        return handle.read(member)
    except KeyError:
        raise ZipArchiveError(f'{archive}: no member {member!r}') from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise ZipArchiveError(f'{archive}: member {member!r} cannot be read ({exc})') from exc


class ZipBackend(BaseStorageBackend):
    """MMEngine storage backend for ``ARCHIVE.zip@/MEMBER`` paths (see the module)."""

    def get(self, filepath: Union[str, os.PathLike]) -> bytes:
        return read_member(str(filepath))

    def get_text(self, filepath: Union[str, os.PathLike], encoding: str = 'utf-8') -> str:
        return self.get(filepath).decode(encoding)

    def exists(self, filepath: Union[str, os.PathLike]) -> bool:
        try:
            archive, member = split_zip_path(filepath)
        except ValueError:
            return False
        return member in _member_set(archive)  # an unreadable archive is an error

    isfile = exists

    def join_path(self, filepath: Union[str, os.PathLike], *filepaths: str) -> str:
        return posixpath.join(str(filepath), *filepaths)


def _member_set(archive: str) -> set:
    handle = open_archive(archive)
    names = getattr(handle, '_repvgg_mm_names', None)
    if names is None:
        names = set(list_members(archive))
        handle._repvgg_mm_names = names
    return names


register_backend('zip', ZipBackend, force=True)


def backend_args_for(path, backend_args: Optional[dict]) -> Optional[dict]:
    """The backend arguments to read ``path``: the given ones, or the zip backend's
    for an ``ARCHIVE.zip@/MEMBER`` path."""
    if backend_args or not is_zip_path(path):
        return backend_args
    return dict(backend='zip')
