"""Image data sets stored as zip archives: MMEngine file backend ``'zip'``.

ImageNet is 1.28 M small files; on the network file systems of GPU clusters opening
them is slow and loads the metadata servers. As the original repository's zip mode,
a split can be one archive -- ``train.zip`` holding ``n01440764/....JPEG`` -- and a
sample's path names the archive and the member: ``data/imagenet/train.zip@/n01440764/
n01440764_10026.JPEG``. Nothing is extracted.

Each process reads an archive's member table (its central directory) once, into a
:class:`ZipIndex` of a few NumPy arrays -- offsets, sizes, CRCs, the names in one byte
buffer and a sorted hash table to find them -- with no Python object per member:
Python's ``zipfile`` keeps a ``ZipInfo`` per member (9 s and 732 MiB for ImageNet's
1,281,167), and every forked data-loader worker that reopened the archive built the
table again. Data-loader workers forked after the table is built share it with the
parent (copy-on-write pages that reading never writes). Members are read with
positional reads (``os.pread``) from one descriptor, which forked processes may share
safely (no file position is involved); the zip format's CRC-32 is checked on every
read. Stored and deflated members are read; ZIP64 archives (over 4 GiB or 65,535
members) too.

Paths with ``.zip@/`` select the backend by themselves (:func:`backend_args_for`), so
``LoadImageFromFile`` and the GPU-decoding loader read archives with no setting; it is
registered with MMEngine (``backend_args=dict(backend='zip')``) for other readers.
"""
import os
import os.path as osp
import posixpath
import struct
import threading
import zlib
from array import array
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from mmengine.fileio import register_backend
from mmengine.fileio.backends import BaseStorageBackend

SEPARATOR = '.zip@/'

_EOCD = struct.Struct('<4s4H2LH')  # end of central directory record
_EOCD64_LOCATOR = struct.Struct('<4sLQL')
_EOCD64 = struct.Struct('<4sQ2H2L4Q')
_CENTRAL = struct.Struct('<4s6H3L5H2L')  # central directory file header (46 bytes)
_LOCAL = struct.Struct('<4s5H3L2H')  # local file header (30 bytes)
_STORED, _DEFLATED = 0, 8


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


def _name_hash(name: bytes) -> int:
    return zlib.crc32(name)


class ZipIndex:
    """The member table of one zip archive as compact arrays, and positional reads.

    Built from the central directory in one pass; every member name is checked
    (:func:`check_member_name`) when it is built, so no member leading outside the
    archive is ever listed or read. Picklable (the arrays travel, the descriptor is
    reopened), so it also reaches spawned workers.

    Args:
        archive: Path of the ``.zip`` file.

    Raises:
        ZipArchiveError: naming the archive when it is missing, not a zip file,
            truncated, or holds a name leading outside it.
    """

    def __init__(self, archive: str) -> None:
        self.archive = archive
        self._fd: Optional[int] = None
        try:
            with open(archive, 'rb') as f:
                self._parse(f)
        except FileNotFoundError:
            raise ZipArchiveError(f'zip archive {archive!r} does not exist') from None
        except IsADirectoryError:
            raise ZipArchiveError(f'{archive!r} is a folder, not a zip archive') from None
        except (struct.error, ValueError, OSError) as exc:
            raise ZipArchiveError(f'{archive!r} is not a readable zip archive ({exc}); '
                                  'expected a zip file, e.g. written by '
                                  'tools/dataset/pack_zip.py') from exc
        self._check_names()

    # -- reading the central directory ------------------------------------------------
    def _parse(self, f) -> None:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        tail_len = min(size, _EOCD.size + 65535)
        f.seek(size - tail_len)
        tail = f.read(tail_len)
        at = tail.rfind(b'PK\x05\x06')
        if at < 0 or at + _EOCD.size > len(tail):
            raise ValueError('no end-of-central-directory record (truncated, or not a '
                             'zip file)')
        (_, _, _, _, count, cd_size, cd_offset, _) = _EOCD.unpack_from(tail, at)
        eocd_pos = size - tail_len + at
        if eocd_pos >= _EOCD64_LOCATOR.size:
            f.seek(eocd_pos - _EOCD64_LOCATOR.size)
            sig, _, eocd64_pos, _ = _EOCD64_LOCATOR.unpack(f.read(_EOCD64_LOCATOR.size))
            if sig == b'PK\x06\x07':
                f.seek(eocd64_pos)
                record = f.read(_EOCD64.size)
                if len(record) < _EOCD64.size or record[:4] != b'PK\x06\x06':
                    raise ValueError('damaged ZIP64 end-of-central-directory record')
                (_, _, _, _, _, _, _, count, cd_size, cd_offset) = _EOCD64.unpack(record)
        if cd_offset + cd_size > eocd_pos:
            raise ValueError(f'the central directory ({cd_size} bytes at {cd_offset}) lies '
                             f'past the end of the archive ({size} bytes)')
        f.seek(cd_offset)
        cd = f.read(cd_size)
        if len(cd) != cd_size:
            raise ValueError('the central directory is truncated')
        self._parse_central(cd, count)

    def _parse_central(self, cd: bytes, count: int) -> None:
        offsets, csizes, sizes = array('q'), array('q'), array('q')
        crcs, methods, flags, starts, hashes = (array('I'), array('H'), array('H'),
                                                array('q'), array('I'))
        names = bytearray()
        unpack, pos, end = _CENTRAL.unpack_from, 0, len(cd)
        for _ in range(count):
            if pos + 46 > end:
                raise ValueError('the central directory is truncated')
            (sig, _, _, flag, method, _, _, crc, csize, size, n, m, k, _, _, _,
             offset) = unpack(cd, pos)
            if sig != b'PK\x01\x02':
                raise ValueError(f'damaged central directory entry at byte {pos}')
            name = cd[pos + 46:pos + 46 + n]
            if 0xFFFFFFFF in (csize, size, offset):  # ZIP64 extra field
                size, csize, offset = _zip64_fields(cd[pos + 46 + n:pos + 46 + n + m],
                                                    size, csize, offset)
            if not flag & 0x800 and max(name, default=0) > 127:
                name = name.decode('cp437').encode('utf-8')  # zipfile's reading
            starts.append(len(names))
            names += name
            hashes.append(_name_hash(name))
            offsets.append(offset)
            csizes.append(csize)
            sizes.append(size)
            crcs.append(crc)
            methods.append(method)
            flags.append(flag)
            pos += 46 + n + m + k
        starts.append(len(names))
        self.names_data = bytes(names)
        self.starts = np.frombuffer(starts, dtype=np.int64)
        self.offsets = np.frombuffer(offsets, dtype=np.int64)
        self.csizes = np.frombuffer(csizes, dtype=np.int64)
        self.sizes = np.frombuffer(sizes, dtype=np.int64)
        self.crcs = np.frombuffer(crcs, dtype=np.uint32)
        self.methods = np.frombuffer(methods, dtype=np.uint16)
        self.flags = np.frombuffer(flags, dtype=np.uint16)
        hash_values = np.frombuffer(hashes, dtype=np.uint32)
        # the last of equal names wins, as in zipfile; equal hashes keep archive order
        self.order = np.argsort(hash_values, kind='stable').astype(np.int64)
        self.sorted_hashes = hash_values[self.order]

    def _check_names(self) -> None:
        """:func:`check_member_name` for every member, vectorised: only names that
        start with a separator or hold ``..`` or ``:`` are looked at one by one."""
        data, starts = self.names_data, self.starts
        if not len(self):
            return
        named = np.flatnonzero(starts[1:] > starts[:-1])
        first = np.frombuffer(data, dtype=np.uint8)[starts[named]]
        suspects = set(named[np.isin(first, (ord('/'), ord('\\')))].tolist())
        for needle in (b'..', b':'):
            at = data.find(needle)
            while at >= 0:
                suspects.add(int(np.searchsorted(starts, at, side='right')) - 1)
                at = data.find(needle, at + 1)
        for i in sorted(suspects):
            check_member_name(self.archive, self.name(i))

    # -- looking members up -----------------------------------------------------------
    def __len__(self) -> int:
        return len(self.offsets)

    def _name_bytes(self, i: int) -> bytes:
        return self.names_data[int(self.starts[i]):int(self.starts[i + 1])]

    def name(self, i: int) -> str:
        return self._name_bytes(i).decode('utf-8')

    def names(self) -> List[str]:
        """Every member name, in archive order (folders included)."""
        data, starts = self.names_data, self.starts.tolist()
        return [data[a:b].decode('utf-8') for a, b in zip(starts[:-1], starts[1:])]

    def find(self, member: str) -> int:
        """The index of ``member``, or -1."""
        return self.find_many([member])[0]

    def find_many(self, members: Sequence[str]) -> np.ndarray:
        """The indices of ``members`` (-1 for each one that is missing), in one pass."""
        keys = [m.encode('utf-8') for m in members]
        wanted = np.fromiter((_name_hash(k) for k in keys), dtype=np.uint32,
                             count=len(keys))
        first = np.searchsorted(self.sorted_hashes, wanted, side='left')
        last = np.searchsorted(self.sorted_hashes, wanted, side='right')
        data, starts, order = self.names_data, self.starts, self.order
        found = np.full(len(keys), -1, dtype=np.int64)
        for q, (key, a, b) in enumerate(zip(keys, first.tolist(), last.tolist())):
            for j in order[a:b].tolist():
                if data[starts[j]:starts[j + 1]] == key:
                    found[q] = max(found[q], j)
        return found

    # -- reading members --------------------------------------------------------------
    def _descriptor(self) -> int:
        # one per process; a forked worker keeps the parent's: positional reads share
        # no file offset, so processes never disturb each other's reads
        if self._fd is None:
            try:
                self._fd = os.open(self.archive, os.O_RDONLY | getattr(os, 'O_CLOEXEC', 0))
            except OSError as exc:
                raise ZipArchiveError(f'zip archive {self.archive!r} cannot be opened '
                                      f'({exc})') from exc
        return self._fd

    def read(self, i: int) -> bytes:
        """The bytes of member ``i``, CRC-checked.

        Raises:
            ZipArchiveError: naming the archive and the member.
        """
        name = self.name(i)
        where = f'{self.archive}: member {name!r}'
        flag, method = int(self.flags[i]), int(self.methods[i])
        if flag & 0x1:
            raise ZipArchiveError(f'{where} is encrypted; expected a plain archive')
        if method not in (_STORED, _DEFLATED):
            raise ZipArchiveError(f'{where} uses compression method {method}; expected '
                                  'stored (0) or deflated (8)')
        offset, csize = int(self.offsets[i]), int(self.csizes[i])
        fd = self._descriptor()
        header = os.pread(fd, _LOCAL.size, offset)
        if len(header) < _LOCAL.size or header[:4] != b'PK\x03\x04':
            raise ZipArchiveError(f'{where} cannot be read (Bad magic number for file '
                                  f'header at byte {offset})')
        n, m = _LOCAL.unpack_from(header)[9:11]
        data = os.pread(fd, csize, offset + _LOCAL.size + n + m)
        if len(data) != csize:
            raise ZipArchiveError(f'{where} cannot be read (truncated: {len(data)} of '
                                  f'{csize} bytes)')
        if method == _DEFLATED:
            try:
                data = zlib.decompress(data, -15)
            except zlib.error as exc:
                raise ZipArchiveError(f'{where} cannot be read ({exc})') from None
        if len(data) != int(self.sizes[i]) or zlib.crc32(data) != int(self.crcs[i]):
            raise ZipArchiveError(f'{where} cannot be read (Bad CRC-32 or size)')
        return data

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state['_fd'] = None  # a descriptor means nothing in another process
        return state


def _zip64_fields(extra: bytes, size: int, csize: int, offset: int) -> Tuple[int, int, int]:
    """The 64-bit sizes and offset of a ZIP64 extra field (present only for the fields
    set to 0xFFFFFFFF, in this order)."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from('<2H', extra, pos)
        if tag == 0x0001:
            values = list(struct.unpack_from(f'<{length // 8}Q', extra, pos + 4))
            if size == 0xFFFFFFFF:
                size = values.pop(0)
            if csize == 0xFFFFFFFF:
                csize = values.pop(0)
            if offset == 0xFFFFFFFF:
                offset = values.pop(0)
            return size, csize, offset
        pos += 4 + length
    raise ValueError('a member lacks its ZIP64 extra field')


class _Indexes:
    """This process's archive indexes, built once each; a forked worker inherits the
    parent's (the member tables are not rebuilt, the descriptor is shared)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_path: Dict[str, ZipIndex] = {}

    def get(self, archive: str) -> ZipIndex:
        index = self.by_path.get(archive)
        if index is None:
            with self.lock:
                index = self.by_path.get(archive)
                if index is None:
                    index = self.by_path[archive] = ZipIndex(archive)
        return index


_INDEXES = _Indexes()


def archive_index(archive: str) -> ZipIndex:
    """This process's :class:`ZipIndex` of ``archive`` (built on first use)."""
    return _INDEXES.get(osp.abspath(archive))


def list_members(archive: str) -> List[str]:
    """The file members of ``archive`` (folders left out), in archive order; every
    name was checked when the index was built (:func:`check_member_name`)."""
    return [n for n in archive_index(archive).names() if not n.endswith('/')]


def read_member(path: str) -> bytes:
    """The bytes of ``ARCHIVE.zip@/MEMBER``; its CRC-32 is checked.

    Raises:
        ZipArchiveError: naming the archive and the member (missing, damaged).
    """
    archive, member = split_zip_path(path)
    index = archive_index(archive)
    i = index.find(member)
    if i < 0:
        raise ZipArchiveError(f'{archive}: no member {member!r}')
    return index.read(i)


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
        return archive_index(archive).find(member) >= 0  # unreadable archive: error

    isfile = exists

    def join_path(self, filepath: Union[str, os.PathLike], *filepaths: str) -> str:
        return posixpath.join(str(filepath), *filepaths)


register_backend('zip', ZipBackend, force=True)


def backend_args_for(path, backend_args: Optional[dict]) -> Optional[dict]:
    """The backend arguments to read ``path``: the given ones, or the zip backend's
    for an ``ARCHIVE.zip@/MEMBER`` path."""
    if backend_args or not is_zip_path(path):
        return backend_args
    return dict(backend='zip')
