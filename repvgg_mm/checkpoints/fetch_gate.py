"""One download per node, one outcome for every rank: the gate in front of every
fetch of published weights in a distributed job.

The runner's ``load_from`` and resume (:meth:`RepVGGRunner.load_checkpoint
<repvgg_mm.engine.runner.RepVGGRunner.load_checkpoint>`), the ``repvgg_mm.Pretrained``
initializer and ``tools/test.py`` call :func:`fetch_on_each_node` before they read a
checkpoint. In a process group of more than one rank:

1. every rank says who it is (an all-gather of host name and ``LOCAL_RANK``);
2. the leader of each node -- the rank with ``LOCAL_RANK`` 0 (torchrun sets it), or the
   lowest rank on its host where ``LOCAL_RANK`` is not set -- fetches the file into its
   node's cache (every node has its own) while the other ranks wait;
3. every rank learns every leader's outcome (an all-gather of success or failure with
   its reason); if any failed, every rank raises :class:`DownloadError` naming the
   failing rank, its host and its reason -- at once, nobody waits for a timeout;
4. the other ranks then take the file from their node's cache (verified, or fetched
   if their cache is not the leader's), and their outcomes are agreed the same way.

Whether a rank takes part is decided from the checkpoint string alone (a URL or a zoo
name; :func:`needs_fetch`), never from the files a rank happens to see, so every rank
enters the same collectives. A file already in a cache is simply verified there. The
processes of one node that share a cache are also kept apart by the cache entry's file
lock (:mod:`repvgg_mm.checkpoints.zoo`), so even a node whose leader's cache is not the
others' never downloads one file twice at once.

Without a process group (a single process, or a tool before its group starts) this is
:func:`~repvgg_mm.checkpoints.zoo.resolve_checkpoint` itself, with its own exceptions;
concurrent processes on one machine are then still coordinated by the file lock.
A download that takes longer than the process group's timeout fails the waiting ranks
with the collective's timeout error.
"""
import os
import socket
from typing import List, Optional, Tuple

from mmengine.dist import all_gather_object, get_rank, get_world_size, is_distributed

from .zoo import DownloadError, cache_dir, is_url, is_zoo_name, resolve_checkpoint


def needs_fetch(spec: str) -> bool:
    """Whether ``spec`` is fetched rather than read from a given path: an ``http(s)://``
    URL or the name of a zoo model. Judged from the string and the zoo's index, the
    same on every rank whatever its disks hold."""
    return isinstance(spec, str) and (is_url(spec) or is_zoo_name(spec))


def _node_leaders(ranks: List[dict]) -> List[bool]:
    """For each rank, whether it fetches for its node: ``LOCAL_RANK`` 0 when every rank
    knows its local rank, else the lowest rank of each host name."""
    if all(r['local_rank'] is not None for r in ranks):
        return [r['local_rank'] == 0 for r in ranks]
    first: dict = {}
    for i, r in enumerate(ranks):
        first.setdefault(r['host'], i)
    return [first[r['host']] == i for i, r in enumerate(ranks)]


def _local_rank() -> Optional[int]:
    value = os.environ.get('LOCAL_RANK', '')
    return int(value) if value.strip().isdigit() else None


def _attempt(spec: str) -> Tuple[Optional[Tuple[str, Optional[str]]], Optional[str],
                                 Optional[BaseException]]:
    """``resolve_checkpoint(spec)``: (result, None, None) or (None, reason, exception)."""
    try:
        return resolve_checkpoint(spec), None, None
    except Exception as exc:  # every rank stops with this reason, whatever its type
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        reason = text if isinstance(exc, DownloadError) else f'{type(exc).__name__}: {text}'
        return None, reason, exc


def _agree(spec: str, ranks: List[dict], reason: Optional[str],
           own_error: Optional[BaseException]) -> None:
    """All-gather every rank's outcome; raise the same error on every rank if any
    rank failed."""
    outcomes = all_gather_object(reason)
    failed = [i for i, r in enumerate(outcomes) if r is not None]
    if not failed:
        return
    first = failed[0]
    more = f' (and {len(failed) - 1} other ranks: {failed[1:]})' if len(failed) > 1 else ''
    raise DownloadError(
        f'could not fetch {spec!r}: rank {first} on host {ranks[first]["host"]!r} (cache '
        f'{ranks[first]["cache"]!r}) failed{more}: {outcomes[first]}') from own_error


def fetch_on_each_node(spec: str) -> Tuple[str, Optional[str]]:
    """:func:`~repvgg_mm.checkpoints.zoo.resolve_checkpoint` for every rank of a
    distributed job, with one download per node (see the module doc).

    Args:
        spec: A local file, an ``http(s)://`` URL or a zoo name with published weights.
            Every rank of the process group must call this together when
            :func:`needs_fetch` is true for ``spec``.

    Returns:
        tuple[str, str | None]: this rank's local path and the URL it came from (None
        for a local file), as ``resolve_checkpoint``.

    Raises:
        DownloadError: on every rank when any rank failed, naming that rank, its host,
            its cache folder and its reason. Without a process group, whatever
            ``resolve_checkpoint`` raises.
    """
    if not needs_fetch(spec) or not is_distributed() or get_world_size() == 1:
        return resolve_checkpoint(spec)
    me = dict(rank=get_rank(), host=socket.gethostname(), local_rank=_local_rank(),
              cache=cache_dir())
    ranks = all_gather_object(me)
    leaders = _node_leaders(ranks)
    leading = leaders[me['rank']]
    result, reason, error = _attempt(spec) if leading else (None, None, None)
    _agree(spec, ranks, reason, error)
    if not all(leaders):  # the same decision on every rank: they all gathered `ranks`
        if not leading:
            result, reason, error = _attempt(spec)
        _agree(spec, ranks, reason, error)
    return result
