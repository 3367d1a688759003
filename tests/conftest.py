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


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
    """A small copy of the demo data set: 10 classes, 6 train and 3 val images each."""
    from repvgg_mm.datasets import generate_demo_dataset
    root = tmp_path_factory.mktemp('tiny_demo')
    generate_demo_dataset(str(root), train_per_class=6, val_per_class=3)
    return str(root)


def tiny_options(data_root, epochs=1):
    """--cfg-options that make the demo config train fast on ``tiny_data``."""
    return [f'{s}_dataloader.dataset.data_root={data_root}' for s in ('train', 'val', 'test')] \
        + [f'train_cfg.max_epochs={epochs}', 'train_dataloader.batch_size=8',
           'val_dataloader.batch_size=8', 'test_dataloader.batch_size=8',
           'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0',
           'test_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
           'val_dataloader.persistent_workers=False',
           'test_dataloader.persistent_workers=False', 'default_hooks.logger.interval=1']


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


def tool_in_process(tool, *args):
    """Run a tool's ``__main__`` in this process (as ``python tools/TOOL ARGS`` would,
    without the start-up cost of a new interpreter); returns (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = [tool, *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(f'{ROOT}/tools/{tool}', run_name='__main__')
        status = 0
    except SystemExit as exc:
        status = exc.code or 0
    finally:
        sys.argv = argv
    return status, out.getvalue(), err.getvalue()
