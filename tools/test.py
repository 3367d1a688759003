"""Evaluate a checkpoint: python tools/test.py CONFIG CHECKPOINT [options].

CHECKPOINT may be a URL or a zoo name: it is fetched once the runner is built, that is
once the process group of a distributed run exists (the runner starts it), through
:func:`repvgg_mm.checkpoints.fetch_gate.fetch_on_each_node` -- the local rank 0 of each
node downloads, the other ranks wait, and a failure on any rank stops every rank with
that rank's reason. Fetching earlier, before the group, could only be coordinated by
guessing from the environment (``LOCAL_RANK``) and could not share a failure; building
the runner first costs little (the data is only read by ``runner.test()``). A
CHECKPOINT that is neither a file nor a URL nor a zoo name is refused before anything.
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from mmengine.model import is_model_wrapper  # noqa: E402

from repvgg_mm.apis import load_checkpoint_into  # noqa: E402
from repvgg_mm.checkpoints import FORMATS  # noqa: E402
from repvgg_mm.checkpoints.fetch_gate import (  # noqa: E402
    fetch_on_each_node,
    needs_fetch,
)
from repvgg_mm.cli import (  # noqa: E402
    add_cfg_options,
    add_launcher_options,
    build_runner,
    default_work_dir,
    finish_distributed,
    load_config,
    prepare_launcher,
    run_cli,
    set_local_rank,
)
from repvgg_mm.fileio import atomic_write_text, check_output_paths  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (evaluate) a checkpoint')
    parser.add_argument('config', help='config file (training or deploy)')
    parser.add_argument('checkpoint', help='checkpoint file in any known format, a URL or '
                        'a zoo name with published weights')
    parser.add_argument('--work-dir', help='where the test log goes '
                        '(default: work_dirs/<config name>)')
    parser.add_argument('--out-metrics', metavar='JSON',
                        help='also write the metrics dict to this JSON file')
    parser.add_argument('--src-format', choices=sorted(FORMATS),
                        help='format of CHECKPOINT (default: detected from its keys)')
    add_cfg_options(parser)
    add_launcher_options(parser)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    set_local_rank(args.local_rank)
    if not osp.isfile(args.checkpoint) and not needs_fetch(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint!r} does not exist (not a '
                                'file, an http(s):// URL nor a zoo name with weights)')
    cfg = load_config(args.config, args.cfg_options)
    if args.out_metrics:
        check_output_paths({'--out-metrics': args.out_metrics},
                           {'CONFIG': args.config, 'CHECKPOINT': args.checkpoint})
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or default_work_dir(args.config)
    # Load the weights ourselves, strictly and in any known format: MMEngine's test
    # path loads non-strictly and would evaluate random weights for missing keys.
    cfg.load_from, cfg.resume = None, False
    prepare_launcher(cfg, args.launcher)
    runner = build_runner(cfg)
    fetch_on_each_node(args.checkpoint)  # after the runner: the process group exists
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    load_checkpoint_into(model, args.checkpoint, args.src_format)
    metrics = runner.test()
    if args.out_metrics and runner.rank == 0:
        atomic_write_text(args.out_metrics,
                          json.dumps({k: float(v) for k, v in metrics.items()}, indent=2))
    finish_distributed()
    return 0


if __name__ == '__main__':
    run_cli(main, 'test.py')
