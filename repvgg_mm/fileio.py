"""Writing files without ever leaving a partial one or overwriting an input.

Every file the project writes (checkpoints, deploy configs, ONNX models, JSON reports,
plots) goes through :func:`atomic_path`: the content is written to a temporary file in
the target folder, flushed to disk and renamed over the target, so a reader -- or a run
killed half-way -- never sees a partial file, and a failed write leaves nothing behind.
:func:`check_output_paths` is called by tools before any expensive work, so that an
output path that would destroy an input is refused before anything is written.

One behaviour for every tool: a missing output folder is created (as ``mkdir -p``)
when the file is written, after every check has passed; if the write fails, the
folders it created are removed again. A folder that cannot be created (a file is in
the way, no permission) is refused by :func:`check_output_paths` up front.
"""
import contextlib
import errno
import fcntl
import os
import os.path as osp
import tempfile
from typing import IO, Callable, Dict, Iterator, Optional

# errors of a file system without working ``flock``
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


class OutputPathError(ValueError):
    """An output path that cannot or must not be written."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path`` for a writer that needs a file name (ONNX
    export, ONNX Runtime's quantizer); on success it replaces ``path``.

    Missing folders above ``path`` are created first, then the temporary file, so an
    unwritable folder fails before any work. The file gets the permissions a plain
    ``open`` would give (0666 less the umask), not ``mkstemp``'s 0600. On any failure
    it is removed, so are the folders created for it, and the error passes unchanged.
    """
    folder = osp.dirname(osp.abspath(path))
    created = []
    try:
        created = make_folders(path)
        fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path) + '.', suffix='.tmp',
                                   dir=folder)
        os.close(fd)
    except OSError as exc:
        _remove_folders(created)
        raise OSError(f'cannot write {path!r}: {_first_line(exc)}') from exc
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        _remove_folders(created)
        raise


def _remove_folders(created: list) -> None:
    """Remove folders that :func:`make_folders` created, deepest first, if empty."""
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            os.rmdir(folder)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = 'wb', encoding: Optional[str] = None) -> Iterator[IO]:
    """Open a temporary file beside ``path``; flushed to disk, it replaces ``path`` on
    success (see :func:`atomic_path`). A write error (``OSError``, or the
    ``RuntimeError`` of ``torch.save``'s zip writer) is raised again as one ``OSError``
    naming ``path`` (the original chained)."""
    try:
        with atomic_path(path) as tmp:
            with open(tmp, mode, encoding=encoding) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, OutputPathError) or str(exc).startswith(f'cannot write {path!r}'):
            raise
        raise OSError(f'cannot write {path!r}: {_first_line(exc)}') from exc


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = True) -> None:
    """Write ``path`` atomically: ``write(f)`` fills the temporary file ``f``."""
    with atomic_open(path, 'wb' if binary else 'w',
                     encoding=None if binary else 'utf-8') as f:
        write(f)


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text), binary=False)


def is_inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies below it, symbolic links resolved."""
    path, folder = osp.realpath(path), osp.realpath(folder)
    return osp.commonpath([path, folder]) == folder


def _same_file(a: str, b: str) -> bool:
    if osp.exists(a) and osp.exists(b):
        return osp.samefile(a, b)
    return osp.realpath(a) == osp.realpath(b)


def check_output_paths(outputs: Dict[str, str], inputs: Dict[str, str]) -> None:
    """Refuse outputs that would overwrite an input, each other, or cannot be written.

    A missing folder is fine (:func:`atomic_path` creates it when writing); one that
    cannot be created -- below a file, or below a folder that is not writable -- is not.

    Args:
        outputs: What the tool will write, ``{description: path}``.
        inputs: What the tool reads, ``{description: path}``.

    Raises:
        OutputPathError: naming the output and what is wrong with it -- it is one of the
            inputs (same file by real path), two outputs are the same file, its folder
            cannot be created or is not writable, or it is an existing folder.
    """
    items = list(outputs.items())
    for i, (name, path) in enumerate(items):
        for in_name, in_path in inputs.items():
            if in_path and _same_file(path, in_path):
                raise OutputPathError(f'{name} {path!r} is the {in_name} {in_path!r}: '
                                      'refusing to overwrite an input')
        for other_name, other in items[:i]:
            if _same_file(path, other):
                raise OutputPathError(f'{name} {path!r} and {other_name} {other!r} are the '
                                      'same file')
        if osp.isdir(path):
            raise OutputPathError(f'{name} {path!r} is a folder, expected a file path')
        folder = osp.dirname(osp.abspath(path))
        while not osp.exists(folder):  # the nearest existing ancestor is what counts
            folder = osp.dirname(folder)
        if not osp.isdir(folder):
            raise OutputPathError(f'{name} {path!r}: {folder!r} is a file, not a folder')
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputPathError(f'{name} {path!r}: the folder {folder!r} is not writable')
        if osp.exists(path) and not os.access(path, os.W_OK):
            raise OutputPathError(f'{name} {path!r} exists and is not writable')


def make_folders(*paths: str) -> list:
    """Create the missing parent folders of ``paths``.

    Returns:
        list[str]: the folders created, outermost first.
    """
    created = []
    for path in paths:
        missing, folder = [], osp.dirname(osp.abspath(path))
        while not osp.exists(folder):
            missing.append(folder)
            folder = osp.dirname(folder)
        for folder in reversed(missing):
            os.makedirs(folder, exist_ok=True)
            created.append(folder)
    return created


def fsync_path(path: str) -> None:
    """Flush a written file -- or a folder, to make the renames in it durable -- to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """Hold ``fcntl.flock`` on ``<path>.lock``, for processes on one machine (or sharing
    a file system with working locks) that write ``path``. The holder removes the lock
    file when it is done; a waiter that then holds the lock of a removed file takes the
    new one (the inode check), so the removal never lets two processes in at once. On a
    file system without locks a warning is logged and the block runs unlocked."""
    from mmengine.logging import print_log
    lock, folder = path + '.lock', osp.dirname(osp.abspath(path))
    while True:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(lock, os.O_RDONLY | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held, current = os.fstat(fd), os.stat(lock)
        except FileNotFoundError:
            os.close(fd)
            continue
        except OSError as exc:
            os.close(fd)
            if exc.errno not in _NO_LOCKS:
                raise
            print_log(f'{folder} does not support file locks ({exc.strerror}); concurrent '
                      f'writers of {path} are not coordinated', logger='current', level=30)
            with contextlib.suppress(OSError):
                os.remove(lock)
            yield
            return
        if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
            break
        os.close(fd)  # the lock file was replaced after we opened it
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(lock)
        os.close(fd)
