"""Train a model from a config: python tools/train.py CONFIG [options]."""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

import torch  # noqa: E402

from repvgg_mm.checkpoints import allow_training_checkpoints  # noqa: E402
from repvgg_mm.cli import (  # noqa: E402
    Interrupted,
    add_cfg_options,
    add_launcher_options,
    build_runner,
    default_work_dir,
    explain_out_of_memory,
    finish_distributed,
    install_interrupt_handlers,
    load_config,
    prepare_launcher,
    run_cli,
    set_local_rank,
)
from repvgg_mm.engine import find_resumable_checkpoint  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a classifier')
    parser.add_argument('config', help='training config file')
    parser.add_argument('--work-dir', help='where logs and checkpoints go '
                        '(default: work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', const='auto', metavar='CKPT',
                        help='resume from CKPT, or without a value from the latest '
                        'checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision training: bf16 where the GPU supports it, '
                        'else fp16 with dynamic loss scaling (needs a GPU)')
    parser.add_argument('--no-validate', action='store_true',
                        help='skip validation during training')
    add_cfg_options(parser)
    add_launcher_options(parser)
    return parser.parse_args(argv)


def merge_args(cfg, args):
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or default_work_dir(args.config)
    if args.amp:
        if not torch.cuda.is_available():
            raise RuntimeError('--amp needs a CUDA GPU (MMEngine has no CPU mixed precision)')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        if torch.cuda.is_bf16_supported():
            cfg.optim_wrapper.setdefault('dtype', 'bfloat16')  # no loss scaling needed
        else:
            cfg.optim_wrapper.setdefault('dtype', 'float16')
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    return cfg


def main() -> int:
    args = parse_args()
    set_local_rank(args.local_rank)
    cfg = merge_args(load_config(args.config, args.cfg_options), args)
    prepare_launcher(cfg, args.launcher)
    install_interrupt_handlers()
    runner = build_runner(cfg)
    try:
        with allow_training_checkpoints():
            runner.train()
    except torch.OutOfMemoryError as exc:
        raise explain_out_of_memory(exc, cfg) from exc
    except Interrupted as exc:
        last = find_resumable_checkpoint(cfg.work_dir)
        where = (f'the last complete checkpoint is {last}' if last else
                 f'no complete checkpoint in {cfg.work_dir} yet')
        work_dir = '' if args.work_dir is None else f' --work-dir {args.work_dir}'
        raise Interrupted(f'{exc}; {where}; continue with: python tools/train.py '
                          f'{args.config}{work_dir} --resume', exc.signum) from None
    finish_distributed()
    return 0


if __name__ == '__main__':
    run_cli(main, 'train.py')
