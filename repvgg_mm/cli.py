"""What every command-line tool shares: arguments, one-line error reporting, loading
configs, launcher set-up, building runners and the out-of-memory hint.

The library raises; the tools report through :func:`run_cli`.
"""
import argparse
import os
import os.path as osp
import signal
import sys
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction
from mmengine.runner import Runner


class ConfigError(ValueError):
    """A config file that is missing, does not parse or lacks a required key."""


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """Read a config file and apply ``--cfg-options`` overrides. ``PACKAGE::PATH``
    (MMEngine's notation: ``repvgg_mm::repvgg-a0.py``,
    ``mmpretrain::repvgg/repvgg-A0_8xb32_in1k.py``) reads a config shipped inside an
    installed OpenMMLab package (or this checkout's ``configs/``).

    Raises:
        ConfigError: naming the file, when it does not exist or does not parse.
    """
    path = package_config_path(path)
    if not osp.isfile(path):
        raise ConfigError(f'config file {path!r} does not exist')
    try:
        cfg = Config.fromfile(path)
    except Exception as exc:  # MMEngine raises many types; keep its message
        raise ConfigError(f'config file {path!r} could not be loaded: '
                          f'{type(exc).__name__}: {exc}') from exc
    if cfg_options:
        for key, value in cfg_options.items():
            check_override_type(cfg, key, value)
        cfg.merge_from_dict(cfg_options)
    return cfg


def package_config_path(path: str) -> str:
    """The file behind ``PACKAGE::PATH`` (:mod:`repvgg_mm.resources`): ``PATH`` below
    the configs an OpenMMLab package ships; any other path as it is.

    Raises:
        ConfigError: naming the config and the nearest shipped ones, or the package
            when it is not installed.
    """
    if '::' not in path:
        return path
    from repvgg_mm.resources import resolve_package_config
    try:
        return resolve_package_config(path)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from exc


_MISSING = object()


def _lookup(cfg: Config, dotted: str):
    node = cfg
    for part in dotted.split('.'):
        if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif hasattr(node, 'get') and part in node:
            node = node.get(part)
        else:
            return _MISSING
    return node


def check_override_type(cfg: Config, key: str, value) -> None:
    """Refuse a ``--cfg-options`` value of another kind than the config's: a number
    or a flag given as text (``train_cfg.max_epochs=abc``) would otherwise fail deep
    inside a run, naming the value but not the key.

    Raises:
        ConfigError: naming the key, the value given and the kind expected.
    """
    old = _lookup(cfg, key)
    if old is _MISSING or old is None or value is None:
        return
    if isinstance(old, bool):
        ok, kind = isinstance(value, bool) or value in (0, 1), 'True or False'
    elif isinstance(old, int):
        ok, kind = isinstance(value, int) and not isinstance(value, bool), 'an integer'
    elif isinstance(old, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        kind = 'a number'
    else:
        return
    if not ok:
        raise ConfigError(f'--cfg-options {key}={value!r}: expected {kind} '
                          f'(the config has {key}={old!r})')


def default_work_dir(config_path: str) -> str:
    """``work_dirs/<config file name without .py>``, as MMPretrain's tools."""
    return osp.join('work_dirs', osp.splitext(osp.basename(config_path))[0])


def prepare_launcher(cfg: Config, launcher: str) -> None:
    """Make ``cfg`` run under ``launcher``, also on machines without CUDA.

    MMEngine's launcher assumes CUDA (``torch.cuda.set_device``, NCCL, DDP with
    ``device_ids=[rank]``). Without CUDA we initialise a gloo process group ourselves
    from the torchrun environment -- MMEngine then keeps it -- and wrap the model in
    DDP with ``device_ids=None``.
    """
    cfg.launcher = launcher
    if launcher == 'none' or torch.cuda.is_available():
        return
    cfg.env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'
    if not dist.is_initialized():
        if launcher != 'pytorch':
            raise RuntimeError(f'launcher {launcher!r} needs CUDA on this machine; '
                               "without CUDA only 'pytorch' (torchrun) is supported")
        dist.init_process_group(backend='gloo')
    wrapper_cfg = dict(cfg.get('model_wrapper_cfg') or {})
    wrapper_cfg.setdefault('type', 'MMDistributedDataParallel')
    wrapper_cfg['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper_cfg


def build_runner(cfg: Config) -> Runner:
    """Build the runner named by ``cfg.runner_type`` (default: MMEngine's Runner),
    looked up in the config's scope."""
    from mmengine.registry import RUNNERS, init_default_scope
    if 'runner_type' in cfg:
        # MMEngine finds scoped names only one level below its root; ours sits below
        # MMPretrain's, so resolve through the default scope instead.
        init_default_scope(cfg.get('default_scope', 'repvgg_mm'))
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def set_local_rank(local_rank: Optional[int]) -> None:
    """torch.distributed.launch passes ``--local-rank``; torchrun sets LOCAL_RANK."""
    if local_rank is not None and 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(local_rank)


LAUNCHERS: Sequence[str] = ('none', 'pytorch', 'slurm', 'mpi')


def finish_distributed() -> None:
    """Wait for every rank, then tear the process group down.

    Without this, a gloo rank that leaves while its peers still hold the group can
    abort at interpreter exit ('terminate called without an active exception').
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def explain_out_of_memory(exc: BaseException, cfg: Config) -> RuntimeError:
    """The error to raise for an out-of-memory failure: which batch size to reduce."""
    batch = cfg.train_dataloader.batch_size
    return RuntimeError(
        f'out of memory at train_dataloader.batch_size={batch} per GPU ({exc}); reduce it, '
        f'e.g. --cfg-options train_dataloader.batch_size={max(1, batch // 2)} (the '
        'learning rate follows the batch automatically)')

_WORKER_TRACEBACK = 'Original Traceback (most recent call last):\n'


def worker_error_line(text: str) -> Optional[str]:
    """The ``Type: message`` line of an exception that torch's DataLoader re-raised
    from a worker process ("Caught OSError in DataLoader worker process 0. Original
    Traceback ..."), or None for any other text: the same line the error gives without
    workers."""
    if not text.startswith('Caught ') or _WORKER_TRACEBACK not in text:
        return None
    lines = text.rsplit(_WORKER_TRACEBACK, 1)[1].rstrip('\n').splitlines()
    last_frame = max((i for i, ln in enumerate(lines) if ln.startswith(' ')), default=-1)
    return ' '.join(ln.strip() for ln in lines[last_frame + 1:]) or None


def error_message(exc: BaseException) -> str:
    """One readable line for ``exc`` (KeyError's repr-quoting removed; an error raised in
    a data-loader worker as the worker raised it)."""
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = str(exc.args[0])
    else:
        text = str(exc)
    return worker_error_line(text) or f'{type(exc).__name__}: {text}'


class Interrupted(KeyboardInterrupt):
    """The process received SIGTERM or SIGINT; ``signum`` says which."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def install_interrupt_handlers() -> None:
    """Turn SIGTERM and SIGINT into :class:`Interrupted` in this (main) process, so a
    tool can say where things stand before it exits; forked children (data-loader
    workers) keep the default behaviour."""
    main_pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != main_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Interrupted(f'interrupted by {signal.Signals(signum).name}', signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handler)


def run_cli(main: Callable[[], int], prog: str) -> None:
    """Run a tool's ``main`` and exit with its status.

    Any exception becomes one line on stderr and exit status 1; an interruption
    (:class:`Interrupted`, Ctrl-C) one line and status 128 + the signal number. Set the
    environment variable ``REPVGG_MM_DEBUG=1`` to get the full traceback instead.
    """
    try:
        status = main()
    except KeyboardInterrupt as exc:
        signum = getattr(exc, 'signum', signal.SIGINT)
        if os.environ.get('RANK', '0') == '0':
            sys.stderr.write(f'{prog}: {exc or "interrupted (SIGINT)"}\n')
        sys.exit(128 + signum)
    except Exception as exc:
        if os.environ.get('REPVGG_MM_DEBUG'):
            raise
        sys.stderr.write(f'{prog}: error: {error_message(exc)}\n'
                         f'{prog}: (set REPVGG_MM_DEBUG=1 for the full traceback)\n')
        sys.exit(1)
    sys.exit(status or 0)


def add_cfg_options(parser: argparse.ArgumentParser) -> None:
    """``--cfg-options key=value ...``: override any config key."""
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. train_dataloader.batch_size=64')


def add_launcher_options(parser: argparse.ArgumentParser) -> None:
    """``--launcher`` and the ``--local-rank`` that torch.distributed.launch passes."""
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none',
                        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=None)
