"""Published weights: a zoo name or a URL turned into a verified file in the local cache.

The model zoo's index is ``configs/metafile.yml`` (MMPretrain's metafile convention).
An entry with published weights names their URL under ``Weights``; a ``_deploy`` entry
takes the weights of the entry it is ``Converted From`` and is fused after loading.

Where downloads are kept (:func:`cached_path`):

- a zoo URL (one of the metafile's ``Weights``) under its plain file name in the
  ``torch.hub`` cache, ``<torch hub dir>/checkpoints`` (``$TORCH_HOME/hub/checkpoints``,
  by default ``~/.cache/torch/hub/checkpoints``), where MMEngine and MMPretrain keep
  theirs: a file fetched by MMPretrain is reused here and the other way round;
- any other URL in ``<that folder>/url-<16 hex digits of the URL's SHA-256>/<file name>``,
  so that two URLs ending in the same file name (``.../run1/epoch_100.pth`` and
  ``.../run2/epoch_100.pth``) never share a cache entry.

Checks: a zoo URL whose file name has the ``torch.hub`` form ``<name>-<8 hex>.<ext>``
carries the start of the file's SHA-256; it is checked after every download and every
time the cached file is used (a file verified once in this process is not hashed again
unless it changed). Any other file name is not a promise about the content -- a
``finetuned-20230515.pth`` from a user's server is used as it is. A cached file that
fails its check is never deleted: it is moved aside to ``<file>.corrupt-<UTC time>``
beside it (the log and any error name it) and downloaded again. Nothing that this
code did not write is ever removed.

Concurrency: each cache entry has a lock, ``fcntl.flock`` on ``<file>.lock`` beside it,
held around check-and-download, so processes on one machine (or sharing a cache on a
file system with working ``flock``) never race: one downloads, the others wait, then use
the verified file. A download is written to a temporary file and renamed into place.
Coordinating the ranks of a distributed job is :mod:`repvgg_mm.checkpoints.fetch_gate`'s
job. Reading the file itself is left to the safe loader
(:func:`repvgg_mm.checkpoints.load_checkpoint_file`).
"""
import functools
import glob
import hashlib
import http.client
import os
import os.path as osp
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, List, Optional, Set, Tuple

import torch.hub
import yaml
from mmengine.logging import print_log

from repvgg_mm.fileio import atomic_path, file_lock
from repvgg_mm.resources import config_root

# torch.hub's `<name>-<8 hex digits>.<ext>`: the start of the file's SHA-256
_HASH_IN_NAME = re.compile(r'.+-([0-9a-f]{8})\.[A-Za-z0-9]+')
_HTML_START = (b'<!doctype', b'<html', b'<head', b'<?xml', b'<!--')

# (device, inode, size, mtime) of files this process verified / wrote, by path
_verified: Dict[str, Tuple[Tuple[int, int, int, int], str]] = {}
_downloaded: Dict[str, Tuple[int, int, int, int]] = {}


class DownloadError(RuntimeError):
    """Published weights that could not be fetched or failed their check."""


def _metafiles() -> List[str]:
    root = config_root()  # the clone's configs/ or the installed package's .mim/configs
    files = sorted(glob.glob(osp.join(root, '**', 'metafile.yml'), recursive=True))
    if not files:
        raise FileNotFoundError(f'no metafile.yml under {root!r}: the model zoo index is '
                                'missing from this installation of repvgg_mm')
    return files


def model_index() -> Dict[str, dict]:
    """Every model entry of the metafiles, by lower-case name; ``config_path`` is the
    entry's ``Config`` (``configs/...``, relative to the repository as in MMPretrain's
    metafiles) in this installation. Read once per change of the metafiles (every
    checkpoint load asks several times); the caller gets its own copy of each entry."""
    files = _metafiles()
    key = tuple((path, os.stat(path).st_mtime_ns) for path in files)
    return {name: dict(entry) for name, entry in _read_index(key).items()}


@functools.lru_cache(maxsize=4)
def _read_index(key: tuple) -> Dict[str, dict]:
    index: Dict[str, dict] = {}
    for path, _ in key:
        with open(path) as f:
            content = yaml.safe_load(f) or {}
        for entry in content.get('Models', []):
            name = entry.get('Name')
            if not name or 'Config' not in entry:
                raise ValueError(f'{path}: every model needs a Name and a Config, got {entry}')
            if name.lower() in index:
                raise ValueError(f'{path}: model {name!r} is listed twice')
            relative = entry['Config']
            if relative.startswith('configs/'):
                relative = relative[len('configs/'):]
            index[name.lower()] = dict(entry, metafile=path,
                                       config_path=osp.join(config_root(), relative))
    return index


def _weights_entry(entry: dict, index: Dict[str, dict]) -> dict:
    """The entry whose ``Weights`` serve ``entry`` (a ``_deploy`` entry: its source's)."""
    source = entry.get('Converted From')
    if not entry.get('Weights') and isinstance(source, str) and source.lower() in index:
        return index[source.lower()]
    return entry


def published_url(name: str) -> str:
    """The URL of the published weights of zoo model ``name``.

    Raises:
        KeyError: for a name that is not in the zoo, or has no published weights (the
            message lists the names that have them).
    """
    index = model_index()
    entry = index.get(name.lower())
    if entry is None:
        raise KeyError(f'{name!r} is not a model of the zoo (see list_models())')
    url = _weights_entry(entry, index).get('Weights')
    if not isinstance(url, str) or not is_url(url):
        with_weights = [n for n, e in sorted(index.items())
                        if isinstance(_weights_entry(e, index).get('Weights'), str)]
        raise KeyError(f'{name!r} has no published weights to download; pass a checkpoint '
                       f'instead. Names with published weights: {", ".join(with_weights)}')
    return url


def is_url(text: str) -> bool:
    return isinstance(text, str) and text.startswith(('http://', 'https://'))


def zoo_urls() -> Set[str]:
    """The metafiles' ``Weights`` URLs (empty when this installation has no metafile)."""
    try:
        index = model_index()
    except FileNotFoundError:
        return set()
    return {e['Weights'] for e in index.values() if is_url(e.get('Weights'))}


def is_zoo_url(url: str) -> bool:
    """Whether ``url`` is one of the zoo's published ``Weights`` URLs."""
    return is_url(url) and url in zoo_urls()


def is_zoo_name(spec: str) -> bool:
    """Whether ``spec`` reads as the name of a zoo model (``'repvgg-a0'``), judged from
    the string and the metafiles alone (not from any file on this machine)."""
    if not (isinstance(spec, str) and re.fullmatch(r'[\w.+-]+', spec) is not None
            and osp.splitext(spec)[1] not in ('.pth', '.pt')):
        return False
    try:
        return spec.lower() in model_index()
    except FileNotFoundError:  # no metafile in this installation: no zoo names
        return False


def cache_dir() -> str:
    """``<torch hub dir>/checkpoints``: where MMEngine and torch.hub cache downloads
    (``$TORCH_HOME`` is respected)."""
    return osp.join(torch.hub.get_dir(), 'checkpoints')


def hash_prefix(file_name: str) -> Optional[str]:
    """The SHA-256 prefix a file name of torch.hub's form carries
    (``...-60ae8e23.pth``: exactly 8 hex digits before the extension), or None. It is
    only enforced for zoo URLs (:func:`expected_prefix`)."""
    match = _HASH_IN_NAME.fullmatch(file_name)
    return match[1] if match else None


def expected_prefix(url: str) -> Optional[str]:
    """The SHA-256 prefix the download of ``url`` must have: the one in the file name
    of a zoo URL; None for any other URL (its name is no promise about the content)."""
    if not is_zoo_url(url):
        return None
    return hash_prefix(osp.basename(urllib.parse.urlparse(url).path))


def cached_path(url: str) -> str:
    """Where the download of ``url`` is (or will be) kept: ``<cache>/<name>`` for a zoo
    URL (torch.hub's name, shared with MMEngine and MMPretrain), else
    ``<cache>/url-<first 16 hex of sha256(url)>/<name>``."""
    name = osp.basename(urllib.parse.urlparse(url).path)
    if name in ('', '.', '..'):
        raise DownloadError(f'{url!r} names no file (its path ends in {name or "/"!r}); '
                            'expected a URL of a checkpoint file')
    if is_zoo_url(url):
        return osp.join(cache_dir(), name)
    digest = hashlib.sha256(url.encode('utf-8')).hexdigest()[:16]
    return osp.join(cache_dir(), f'url-{digest}', name)


def _identity(st: os.stat_result) -> Tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _matches(path: str, prefix: str) -> bool:
    """Whether the file at ``path`` has a SHA-256 starting with ``prefix`` (hashed once
    per process while the file stays the same)."""
    try:
        with open(path, 'rb') as f:
            identity = _identity(os.fstat(f.fileno()))
            if _verified.get(path) == (identity, prefix):
                return True
            digest = hashlib.sha256()
            for chunk in iter(lambda: f.read(1 << 20), b''):
                digest.update(chunk)
    except FileNotFoundError:
        return False
    if digest.hexdigest().startswith(prefix):
        _verified[path] = (identity, prefix)
        return True
    return False


def _usable(path: str, prefix: Optional[str]) -> bool:
    return osp.isfile(path) and (prefix is None or _matches(path, prefix))


def _move_aside(path: str) -> str:
    """Rename ``path`` to ``<path>.corrupt-<UTC time>`` beside it (under its lock)."""
    stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
    target, n = f'{path}.corrupt-{stamp}', 1
    while osp.lexists(target):
        n += 1
        target = f'{path}.corrupt-{stamp}-{n}'
    os.rename(path, target)
    _verified.pop(path, None)
    return target


def _looks_like_html(path: str) -> bool:
    with open(path, 'rb') as f:
        start = f.read(512).lstrip().lower()
    return start.startswith(_HTML_START)


def _by_hand(url: str, path: str) -> str:
    return (f'without network access, download it elsewhere and put it at {path!r} '
            '(it is used from there), or pass a local checkpoint file instead')


def _download(url: str, path: str, prefix: Optional[str]) -> None:
    """Stream ``url`` into a temporary file beside ``path``; check its length against
    the server's ``Content-Length`` (a connection closed early is otherwise silent) and
    its SHA-256 against ``prefix``; only then rename it to ``path``. torch.hub's
    downloader checks the hash but not the length."""
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={'User-Agent': 'repvgg_mm'})
    with atomic_path(path) as tmp, urllib.request.urlopen(request, timeout=60) as response, \
            open(tmp, 'wb') as f:
        expected, received = response.headers.get('Content-Length'), 0
        for chunk in iter(lambda: response.read(1 << 20), b''):
            f.write(chunk)
            digest.update(chunk)
            received += len(chunk)
        if expected is not None and received != int(expected):
            raise http.client.IncompleteRead(b'', int(expected) - received)
        f.flush()
        os.fsync(f.fileno())
        if _looks_like_html(tmp):
            raise DownloadError(f'{url!r} returned an HTML page, not a checkpoint (a login '
                                'or confirmation page, as Google Drive serves for large '
                                f'files); it was not kept. Download it by hand (in a browser) '
                                f'and put it at {path!r}, or pass a local checkpoint file')
        if prefix is not None and not digest.hexdigest().startswith(prefix):
            raise DownloadError(f'{url!r}: the downloaded file\'s SHA-256 does not start with '
                                f'{prefix} as its name says (a page served in place of the '
                                'file, or another file); it was not kept')
    identity = _identity(os.stat(path))
    _downloaded[path] = identity
    if prefix is not None:
        _verified[path] = (identity, prefix)


def fetch_url(url: str) -> str:
    """A local, verified copy of ``url``: the cached file when it is there and passes
    its check (:func:`expected_prefix`), else a fresh download (written to a temporary
    file, checked and only then renamed into the cache), under the entry's file lock.

    Returns:
        str: the path of the file in the cache (:func:`cached_path`).

    Raises:
        DownloadError: one line naming the URL and what to do -- no network, an HTTP
            error, a download that broke off, a hash mismatch, an HTML page, a cache
            that cannot be written. No partial download is left in the cache; a cached
            file that failed its check was moved aside, and the message names it.
    """
    path = cached_path(url)
    prefix = expected_prefix(url)
    if _usable(path, prefix):  # read-only: no lock needed to use a good file
        return path
    moved = None
    try:
        with file_lock(path):
            if osp.lexists(path):
                if _usable(path, prefix):  # a peer downloaded it while we waited
                    return path
                moved = _move_aside(path)
                print_log(f'{path} does not match the SHA-256 prefix {prefix} of its name '
                          '(damaged since it was downloaded, or another file put there); '
                          f'moved it to {moved} and downloading {url} again',
                          logger='current', level=30)
            print_log(f'downloading {url} to {path}', logger='current')
            _download(url, path, prefix)
    except DownloadError as exc:
        if moved is None:
            raise
        raise DownloadError(_and_moved(str(exc), moved)) from exc
    except urllib.error.HTTPError as exc:
        raise DownloadError(_and_moved(f'could not download {url!r}: HTTP {exc.code} '
                                       f'{exc.reason}', moved)) from exc
    except urllib.error.URLError as exc:
        raise DownloadError(_and_moved(f'could not download {url!r} ({exc.reason}); '
                                       + _by_hand(url, path), moved)) from exc
    except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
        raise DownloadError(_and_moved(f'the download of {url!r} broke off '
                                       f'({type(exc).__name__}: {exc}); nothing was kept, '
                                       'try again', moved)) from exc
    except OSError as exc:  # the cache cannot be written (atomic_path left nothing)
        raise DownloadError(f'could not save the download of {url!r} to {path!r}: '
                            f'{exc.strerror or exc}; nothing was kept (set TORCH_HOME to '
                            'a writable folder)') from exc
    return path


def _and_moved(message: str, moved: Optional[str]) -> str:
    if moved is None:
        return message
    return f'{message} (the cached copy that failed its check was moved to {moved!r})'


def resolve_checkpoint(spec: str) -> Tuple[str, Optional[str]]:
    """Turn what a user passes as a checkpoint into a local file.

    Args:
        spec (str): A local file; an ``http(s)://`` URL (downloaded into the cache); or
            the name of a zoo model with published weights (``'repvgg-a0'``).

    Returns:
        tuple[str, str | None]: the local path, and the URL it was fetched from (None
        for a local file). A string that is none of the three is returned as it is,
        for the loader to report as missing.
    """
    if not isinstance(spec, str) or osp.exists(spec):
        return spec, None
    if is_url(spec):
        return fetch_url(spec), spec
    if is_zoo_name(spec):
        url = published_url(spec)
        return fetch_url(url), url
    return spec, None


def forget_download(path: str, url: str, seen: Optional[os.stat_result] = None) -> None:
    """Take a cached download that turned out unreadable out of the cache, so it is
    fetched again rather than failing from the cache forever: removed when this
    process downloaded it, else (a file put there by hand or by another program) moved
    aside to ``<file>.corrupt-<UTC time>``. ``seen``: the ``os.stat`` of the file that
    was read; a file replaced since (a peer's new download) is left alone."""
    if osp.abspath(path) != osp.abspath(cached_path(url)):
        return
    try:
        with file_lock(path):
            try:
                identity = _identity(os.stat(path))
            except FileNotFoundError:
                return
            if seen is not None and identity != _identity(seen):
                return
            _verified.pop(path, None)
            if _downloaded.pop(path, None) == identity:
                os.remove(path)
                print_log(f'removed {path} (downloaded from {url}) from the cache',
                          logger='current', level=30)
            else:
                moved = _move_aside(path)
                print_log(f'moved {path} (the cache entry of {url}) aside to {moved}',
                          logger='current', level=30)
    except OSError as exc:
        print_log(f'could not take {path} out of the cache: {exc}', logger='current',
                  level=30)
