import contextlib
import io
import os
import os.path as osp
import runpy
import socket
import subprocess
import sys

import pytest
import torch
from mmengine.registry import init_default_scope
from torch.nn.modules.batchnorm import _BatchNorm

import repvgg_mm  # noqa: F401  (registers our modules)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CONFIG = osp.join(ROOT, 'configs', 'demo', 'repvgg-a0_demo.py')


@pytest.fixture(autouse=True)
def _scope():
    init_default_scope('repvgg_mm')


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BN layer random statistics and affine parameters, so that a wrong
    fusion cannot hide behind an identity BN."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
    return model


@contextlib.contextmanager
def serving(folder, handler_class):
    """``(base URL, requests seen)`` of an HTTP server of ``folder`` on 127.0.0.1,
    started here and stopped on exit: downloads are tested without the internet.
    ``handler_class`` is a ``SimpleHTTPRequestHandler`` that appends each path to
    ``self.server.requests``."""
    import functools
    import http.server
    import threading
    httpd = http.server.ThreadingHTTPServer(
        ('127.0.0.1', 0), functools.partial(handler_class, directory=str(folder)))
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{httpd.server_address[1]}/', httpd.requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def sha256_file(path) -> str:
    import hashlib
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_tool(*args, env=None, timeout=600, check=True):
    """Run a command line tool of the repo as a user would, from the repo root."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    result = subprocess.run([*args], cwd=ROOT, env=full_env, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f'{args} failed ({result.returncode}):\n'
                             f'{result.stdout[-3000:]}\n{result.stderr[-3000:]}')
    return result


def python_tool(tool, *args, **kwargs):
    return run_tool(sys.executable, osp.join(ROOT, 'tools', tool), *args, **kwargs)


def _forget_mmengine_instances():
    """Drop MMEngine's named loggers, message hubs and visualizers. They are keyed by a
    timestamp with one-second resolution, so a tool run in the same second as the
    previous one would reuse that run's instances -- its log streams and files, its
    runtime info. In a real process each tool starts with none."""
    from mmengine.logging import MessageHub, MMLogger
    from mmengine.visualization import Visualizer
    classes = [MMLogger, MessageHub, Visualizer]
    while classes:
        cls = classes.pop()
        if '_instance_dict' in vars(cls):
            cls._instance_dict.clear()
        classes.extend(cls.__subclasses__())


def tool_in_process(tool, *args):
    """Run ``tools/<tool>`` as ``__main__`` inside this process (no interpreter start-up:
    fast enough for many error-path checks). Returns ``(exit status, stdout, stderr)``.
    At least one test per tool also runs it as a real process (:func:`python_tool`)."""
    import signal
    out, err = io.StringIO(), io.StringIO()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    argv, cwd = sys.argv, os.getcwd()
    sys.argv = [osp.join(ROOT, 'tools', tool), *map(str, args)]
    status = 0
    _forget_mmengine_instances()
    try:
        os.chdir(ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(sys.argv[0], run_name='__main__')
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
        os.chdir(cwd)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        _end_worker_processes()
    return status, out.getvalue(), err.getvalue()


def _end_worker_processes():
    """Stop the data-loader workers a tool run left behind, as the end of a real process
    does. Otherwise their loaders' shutdown, whenever the garbage collector gets to it
    in a later test, waited 5 s per loader for persistent workers that never answered
    (measured: 10 s after one run of the fine-tuning config; the same happens to any
    Python session that drops a runner after training). The loaders' queues, collected
    here, complain about the pipes of the stopped workers: that noise is dropped."""
    import gc
    import multiprocessing
    import threading
    workers = [c for c in multiprocessing.active_children() if c.daemon]
    if not workers:
        return
    with contextlib.redirect_stderr(io.StringIO()):
        for child in workers:
            child.terminate()
            child.join(timeout=5)
        gc.collect()
        for thread in threading.enumerate():
            if thread.name == 'QueueFeederThread':
                thread.join(timeout=1)


def quick_tool(tool, *args, check=True):
    """:func:`tool_in_process` with :func:`python_tool`'s result (``returncode``,
    ``stdout``, ``stderr``), for error paths of tools that other tests run as real
    processes."""
    from types import SimpleNamespace
    status, out, err = tool_in_process(tool, *args)
    if check and status != 0:
        raise AssertionError(f'{tool} {args} failed ({status}):\n{out[-3000:]}\n{err[-3000:]}')
    return SimpleNamespace(returncode=status, stdout=out, stderr=err)


def error_lines(stderr):
    """The lines a tool printed as its error (without the REPVGG_MM_DEBUG hint)."""
    return [line for line in stderr.splitlines()
            if line.strip() and 'REPVGG_MM_DEBUG' not in line]


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
    """A small copy of the demo data set: 10 classes, 6 train and 3 val images each."""
    from repvgg_mm.datasets import generate_demo_dataset
    root = tmp_path_factory.mktemp('tiny_demo')
    generate_demo_dataset(str(root), train_per_class=6, val_per_class=3)
    return str(root)


@pytest.fixture(scope='session')
def tiny_run(tiny_data, tmp_path_factory):
    """The work dir of one 2-epoch run of ``tools/train.py`` (a real process) with the
    demo config on ``tiny_data``, shared by every test that needs trained checkpoints.
    Tests copy from it and never write into it."""
    work_dir = tmp_path_factory.mktemp('tiny_run')
    python_tool('train.py', DEMO_CONFIG, '--work-dir', str(work_dir),
                '--cfg-options', *tiny_options(tiny_data, epochs=2))
    return work_dir


def tiny_options(data_root, epochs=1, persistent_workers=0):
    """--cfg-options that make the demo config train fast on ``tiny_data``.

    The data loaders load in the main process (the demo config's own setting), or with
    ``persistent_workers=N`` through N persistent workers each, as the ImageNet configs
    load.
    """
    workers = max(persistent_workers, 0)
    loader = [f'{split}_dataloader.{key}'
              for split in ('train', 'val', 'test')
              for key in (f'num_workers={workers}', f'persistent_workers={workers > 0}')]
    return [f'{s}_dataloader.dataset.data_root={data_root}' for s in ('train', 'val', 'test')] \
        + [f'train_cfg.max_epochs={epochs}', 'train_dataloader.batch_size=8',
           'val_dataloader.batch_size=8', 'test_dataloader.batch_size=8', *loader,
           'default_hooks.logger.interval=1']


class _RunsCode:
    """Unpickling this object runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


def plant_crafted_checkpoint(path, marker):
    """Write a checkpoint whose unpickling would create ``marker`` (code execution)."""
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'x': _RunsCode(marker)}, path)
    return path


@pytest.fixture(scope='module')
def one_thread():
    """Run a module's in-process models on one thread: on a small machine shared by
    other processes, more threads only contend (a 5x slowdown measured on 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
