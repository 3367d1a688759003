"""Writing result files (JSON, images) atomically: readers never see a partial file."""
import json
import os
import os.path as osp
import tempfile
from typing import Any, Union


def write_bytes_atomic(path: str, data: Union[bytes, str]) -> None:
    """Write ``data`` to a temporary file in ``path``'s folder, then rename it to
    ``path``; on any failure nothing is left behind."""
    folder = osp.dirname(osp.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path) + '.', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(path: str, obj: Any) -> None:
    """``json.dump`` (indented) to ``path`` atomically."""
    write_bytes_atomic(path, json.dumps(obj, indent=2) + '\n')


def check_output_path(path: str, inputs: tuple = ()) -> None:
    """Fail before any work when ``path`` cannot be written: its folder must exist and
    be writable, and it must not be one of ``inputs``.

    Raises:
        FileNotFoundError, PermissionError, ValueError: naming ``path``.
    """
    folder = osp.dirname(osp.abspath(path))
    if not osp.isdir(folder):
        raise FileNotFoundError(f'output folder {folder!r} (for {path!r}) does not exist')
    if not os.access(folder, os.W_OK):
        raise PermissionError(f'output folder {folder!r} (for {path!r}) is not writable')
    if osp.isdir(path):
        raise IsADirectoryError(f'output {path!r} is a directory, expected a file name')
    for item in inputs:
        if osp.exists(item) and osp.exists(path) and osp.samefile(item, path):
            raise ValueError(f'output {path!r} is also an input; choose another name')
