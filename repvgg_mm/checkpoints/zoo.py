"""Published weights: a zoo name or a URL turned into a verified file in the local cache.

The model zoo's index is ``configs/metafile.yml`` (MMPretrain's metafile convention).
An entry with published weights names their URL under ``Weights``; a ``_deploy`` entry
takes the weights of the entry it is ``Converted From`` and is fused after loading.

Downloads go where MMEngine and ``torch.hub`` keep theirs, ``<torch hub dir>/checkpoints``
(``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``), so a
file fetched by MMPretrain is reused here and the other way round. A file name that ends
in ``-<hex digits>.<ext>`` carries the start of the file's SHA-256 (the ``torch.hub``
convention): it is checked after every download and every time a cached file is used,
so a download that broke off, a page of HTML instead of the checkpoint or a cached file
damaged later is never loaded. Reading the file itself is left to the safe loader
(:func:`repvgg_mm.checkpoints.load_checkpoint_file`).
"""
import glob
import hashlib
import http.client
import os
import os.path as osp
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, List, Optional, Tuple

import torch.hub
import yaml
from mmengine.logging import print_log

from repvgg_mm.fileio import atomic_path
from repvgg_mm.resources import config_root

# `name-<hash prefix>.<ext>`: at least 8 hex digits (torch.hub and MMEngine write 8)
_HASH_IN_NAME = re.compile(r'-([0-9a-f]{8,64})\.[A-Za-z0-9]+$')
_HTML_START = (b'<!doctype', b'<html', b'<head', b'<?xml', b'<!--')


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
    metafiles) in this installation."""
    index: Dict[str, dict] = {}
    for path in _metafiles():
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


def cache_dir() -> str:
    """``<torch hub dir>/checkpoints``: where MMEngine and torch.hub cache downloads
    (``$TORCH_HOME`` is respected)."""
    return osp.join(torch.hub.get_dir(), 'checkpoints')


def hash_prefix(file_name: str) -> Optional[str]:
    """The SHA-256 prefix a file name carries (``...-60ae8e23.pth``), or None."""
    match = _HASH_IN_NAME.search(file_name)
    return match[1] if match else None


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def cached_path(url: str) -> str:
    """Where the download of ``url`` is (or will be) kept."""
    name = osp.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise DownloadError(f'{url!r} names no file (its path ends in /); expected a URL '
                            'of a checkpoint file')
    return osp.join(cache_dir(), name)


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
        if _looks_like_html(tmp):
            raise DownloadError(f'{url!r} returned an HTML page, not a checkpoint (a login '
                                'or confirmation page, as Google Drive serves for large '
                                f'files); it was not kept. Download it by hand (in a browser) '
                                f'and put it at {path!r}, or pass a local checkpoint file')
        if prefix is not None and not digest.hexdigest().startswith(prefix):
            raise DownloadError(f'{url!r}: the downloaded file\'s SHA-256 does not start with '
                                f'{prefix} as its name says (a page served in place of the '
                                'file, or another file); it was not kept')


def fetch_url(url: str) -> str:
    """A local, verified copy of ``url``: the cached file when it is there and passes
    its hash check, else a fresh download (written to a temporary file, checked and
    only then moved into the cache).

    Returns:
        str: the path of the file in the cache.

    Raises:
        DownloadError: one line naming the URL and what to do -- no network, an HTTP
            error, a download that broke off, a hash mismatch, an HTML page. Nothing is
            left in the cache in any of these cases.
    """
    path = cached_path(url)
    prefix = hash_prefix(osp.basename(path))
    if osp.isfile(path):
        if prefix is None or sha256_of(path).startswith(prefix):
            return path
        print_log(f'{path} does not match its SHA-256 prefix {prefix} (damaged since it was '
                  f'downloaded?); removing it and downloading {url} again',
                  logger='current', level=30)
        os.remove(path)
    try:
        os.makedirs(cache_dir(), exist_ok=True)
    except OSError as exc:
        raise DownloadError(f'cannot create the download cache {cache_dir()!r} for {url!r}: '
                            f'{exc.strerror or exc}; set TORCH_HOME to a writable folder') \
            from exc
    print_log(f'downloading {url} to {path}', logger='current')
    try:
        _download(url, path, prefix)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f'could not download {url!r}: HTTP {exc.code} {exc.reason}') \
            from exc
    except urllib.error.URLError as exc:
        raise DownloadError(f'could not download {url!r} ({exc.reason}); '
                            + _by_hand(url, path)) from exc
    except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
        raise DownloadError(f'the download of {url!r} broke off ({type(exc).__name__}: '
                            f'{exc}); nothing was kept, try again') from exc
    except OSError as exc:  # e.g. a full disk: atomic_path removed the partial file
        raise DownloadError(f'could not save the download of {url!r} to {path!r}: '
                            f'{exc.strerror or exc}; nothing was kept') from exc
    return path


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
    if re.fullmatch(r'[\w.+-]+', spec) and osp.splitext(spec)[1] not in ('.pth', '.pt'):
        index = model_index()
        if spec.lower() in index:
            url = published_url(spec)
            return fetch_url(url), url
    return spec, None


def forget_download(path: str, url: str) -> None:
    """Remove a downloaded file that turned out unreadable, so it is fetched again
    rather than failing from the cache forever."""
    if osp.dirname(osp.abspath(path)) == osp.abspath(cache_dir()) and osp.isfile(path):
        os.remove(path)
        print_log(f'removed {path} (downloaded from {url}) from the cache',
                  logger='current', level=30)
