"""Error reporting for the command-line tools: the library raises, the tools report."""
import argparse
import os
import sys
from typing import Callable

from mmengine.config import DictAction


def error_message(exc: BaseException) -> str:
    """One readable line for ``exc`` (KeyError's repr-quoting removed)."""
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = str(exc.args[0])
    else:
        text = str(exc)
    return f'{type(exc).__name__}: {text}'


def run_cli(main: Callable[[], int], prog: str) -> None:
    """Run a tool's ``main`` and exit with its status.

    Any exception becomes one line on stderr and exit status 1. Set the environment
    variable ``REPVGG_MM_DEBUG=1`` to get the full traceback instead.
    """
    try:
        status = main()
    except KeyboardInterrupt:
        sys.exit(130)
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
    from .launch import LAUNCHERS
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none',
                        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=None)
