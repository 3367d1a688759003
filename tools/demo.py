"""The embedded demo, end to end on CPU, through the real tools.

1. generate the demo data set in data/demo (if missing);
2. train RepVGG-A0 on it (tools/train.py);
3. test the trained checkpoint (tools/test.py);
4. re-parameterize it (tools/reparam.py), at the same time as 3;
5. test the fused checkpoint with the deploy config (tools/test.py);
6. export the fused model to ONNX (tools/export_onnx.py), at the same time as 5;
7. compare the models' logits on the whole val set (training-time, fused, fused in ONNX
   Runtime), plot the training curves and write work_dirs/demo/summary.json.
"""
import argparse
import json
import os
import os.path as osp
import re
import subprocess
import sys
import time
from typing import Callable, Optional, Sequence, Tuple

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout

from repvgg_mm.cli import load_config, run_cli  # noqa: E402
from repvgg_mm.fileio import atomic_write_text  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Run the embedded demo end to end')
    parser.add_argument('--config', default='configs/demo/repvgg-a0_demo.py')
    parser.add_argument('--data-root', default='data/demo')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--cfg-options', nargs='+', default=[],
                        help='passed on to tools/train.py (e.g. train_cfg.max_epochs=2)')
    return parser.parse_args(argv)


class Console:
    """What the demo shows: one line per step and per training epoch. Each tool's full
    output goes to a log file in the work dir."""

    def __init__(self, work_dir: str) -> None:
        self.start = time.time()
        self.work_dir = work_dir

    def elapsed(self) -> str:
        return f'{time.time() - self.start:5.0f} s'

    def say(self, text: str) -> None:
        print(f'[{self.elapsed()}] {text}', flush=True)

    def _start(self, title: str, log_name: str, args: Sequence[str], pipe: bool):
        """Start one of our tools with this interpreter, its output going to
        ``log_name`` in the work dir (through a pipe for the caller to read, if
        ``pipe``); returns ``(log path, open log file, process)``."""
        self.say(title)
        log = osp.join(self.work_dir, log_name)
        f = open(log, 'w')
        f.write('$ ' + ' '.join(args) + '\n')
        f.flush()
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE if pipe else f,
                                stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED='1'))
        return log, f, proc

    @staticmethod
    def _stop_demo(log: str, args: Sequence[str], status: int, tail: Sequence[str]):
        """Stop the demo: the failed tool's last lines, then one line naming its log."""
        print('\n'.join(tail[-6:]), file=sys.stderr)
        raise RuntimeError(f'{args[0]} failed with exit status {status}; its full output '
                           f'is in {log}')

    def run(self, title: str, log_name: str, *args: str,
            on_line: Optional[Callable[[str], None]] = None) -> None:
        """Run one tool, each output line also passed to ``on_line``; stop the demo
        with the log's last lines if it fails."""
        log, f, proc = self._start(title, log_name, args, pipe=True)
        tail = []
        with f:
            for line in proc.stdout:
                f.write(line)
                tail = (tail + [line.rstrip()])[-6:]
                if on_line:
                    on_line(line)
            status = proc.wait()
        if status != 0:
            self._stop_demo(log, args, status, tail)

    def run_together(self, *steps: Tuple[str, str, Sequence[str]]) -> None:
        """Run independent tools at the same time, each ``(title, log_name, args)``
        (most of a short tool run is Python importing, one core each); stop the demo
        naming the first that failed, with its log's last lines."""
        running = [(args, *self._start(title, log_name, args, pipe=False))
                   for title, log_name, args in steps]
        statuses = []
        for args, log, f, proc in running:
            statuses.append(proc.wait())
            f.close()
        for (args, log, _, _), status in zip(running, statuses):
            if status != 0:
                with open(log) as f:
                    self._stop_demo(log, args, status, [ln.rstrip() for ln in f])


class EpochProgress:
    """Turns MMEngine's training log lines into one line per epoch."""

    TRAIN = re.compile(r'Epoch\(train\)\s*\[(\d+)\]\[\s*\d+/\d+\].*?\sloss: ([\d.naif]+)')
    VAL = re.compile(r'Epoch\(val\)\s*\[(\d+)\]\[\s*\d+/\d+\].*?accuracy/top1: ([\d.]+)')

    def __init__(self, console: Console, max_epochs: int) -> None:
        self.console, self.max_epochs, self.loss = console, max_epochs, {}

    def __call__(self, line: str) -> None:
        if m := self.TRAIN.search(line):
            self.loss[int(m[1])] = m[2]
        elif m := self.VAL.search(line):
            epoch = int(m[1])
            self.console.say(f'  epoch {epoch:>2}/{self.max_epochs}  train loss '
                             f'{self.loss.get(epoch, "?"):>6}  val top-1 {float(m[2]):5.1f} %')


def trained_checkpoint(work_dir: str) -> str:
    """The checkpoint the training run ended with (MMEngine's ``last_checkpoint``)."""
    pointer = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(pointer):
        raise FileNotFoundError(f'training wrote no {pointer!r}')
    with open(pointer) as f:
        return f.read().strip()


def main() -> int:
    args = parse_args()
    os.chdir(ROOT)
    work_dir = args.work_dir
    os.makedirs(work_dir, exist_ok=True)
    console = Console(work_dir)
    start = console.start
    from repvgg_mm.datasets import generate_demo_dataset
    if not all(osp.isfile(osp.join(args.data_root, f'{s}_list.txt')) for s in ('train', 'val')):
        console.say(f'generating the demo data set in {args.data_root}')
        generate_demo_dataset(args.data_root)

    data_options = [f'{split}_dataloader.dataset.data_root={args.data_root}'
                    for split in ('train', 'val', 'test')]
    cfg = load_config(args.config)
    cfg.merge_from_dict(dict(option.split('=', 1) for option in data_options))
    max_epochs = cfg.train_cfg.max_epochs
    for option in args.cfg_options:
        if option.startswith('train_cfg.max_epochs='):
            max_epochs = int(option.split('=', 1)[1])
    console.say(f'training RepVGG-A0 for {max_epochs} epochs on the CPU '
                f'(full log: {osp.join(work_dir, "train.log")})')
    console.run('  tools/train.py', 'train.log', 'tools/train.py', args.config,
                '--work-dir', work_dir, '--cfg-options', *data_options, *args.cfg_options,
                on_line=EpochProgress(console, max_epochs))
    checkpoint = trained_checkpoint(work_dir)
    metrics_train = osp.join(work_dir, 'metrics_train.json')
    deploy_ckpt = osp.join(work_dir, 'repvgg-a0_demo_deploy.pth')
    deploy_cfg = osp.splitext(deploy_ckpt)[0] + '.py'
    console.run_together(
        (f'testing {checkpoint} (tools/test.py)', 'test.log',
         ['tools/test.py', args.config, checkpoint, '--work-dir',
          osp.join(work_dir, 'test'), '--out-metrics', metrics_train,
          '--cfg-options', *data_options]),
        ('re-parameterizing it (tools/reparam.py)', 'reparam.log',
         ['tools/reparam.py', args.config, checkpoint, deploy_ckpt, '--cfg-options',
          *data_options]))

    metrics_deploy = osp.join(work_dir, 'metrics_deploy.json')
    onnx_path = osp.join(work_dir, 'repvgg-a0_demo_deploy.onnx')
    console.run_together(
        (f'testing the fused model {deploy_ckpt} (tools/test.py)', 'test_deploy.log',
         # its own work dir: MMEngine rewrites the config it runs into its work dir,
         # and the export reads that config at the same time
         ['tools/test.py', deploy_cfg, deploy_ckpt, '--work-dir',
          osp.join(work_dir, 'test_deploy'), '--out-metrics', metrics_deploy]),
        ('exporting the fused model to ONNX (tools/export_onnx.py)', 'export.log',
         ['tools/export_onnx.py', deploy_cfg, deploy_ckpt, onnx_path]))

    console.say('comparing the models on every val image (PyTorch and ONNX Runtime)')
    from repvgg_mm.apis import compare_onnx_with_pytorch, plot_training_curves, split_logits
    logits_train, labels = split_logits(cfg, checkpoint)
    logits_deploy, _ = split_logits(load_config(deploy_cfg), deploy_ckpt)
    onnx = compare_onnx_with_pytorch(onnx_path, load_config(deploy_cfg), deploy_ckpt)
    curves = plot_training_curves(work_dir, ('loss', 'accuracy/top1'),
                                  osp.join(work_dir, 'curves.png'))['out']

    with open(metrics_train) as f:
        top1 = json.load(f)['accuracy/top1']
    with open(metrics_deploy) as f:
        top1_deploy = json.load(f)['accuracy/top1']
    import torch

    from repvgg_mm.apis import build_model
    summary = dict(
        top1=top1,
        top1_deploy=top1_deploy,
        max_abs_logit_diff=(logits_train - logits_deploy).abs().max().item(),
        val_images=len(labels),
        prediction_agreement=(logits_train.argmax(1) == logits_deploy.argmax(1))
        .float().mean().item(),
        params_train=sum(p.numel() for p in build_model(cfg).parameters()),
        params_deploy=sum(p.numel() for p in
                          build_model(load_config(deploy_cfg)).parameters()),
        top1_onnx=onnx['onnx_top1'],
        onnx_prediction_agreement=onnx['agreement'],
        onnx_max_abs_logit_diff=onnx['max_abs_diff'],
        checkpoint=checkpoint,
        deploy_checkpoint=deploy_ckpt,
        onnx_model=onnx_path,
        curves=curves,
        deploy_config=deploy_cfg,
        seconds=round(time.time() - start, 1),
        device='cuda' if torch.cuda.is_available() else 'cpu',
    )
    path = osp.join(work_dir, 'summary.json')
    atomic_write_text(path, json.dumps(summary, indent=2))

    device = 'GPU' if torch.cuda.is_available() else 'CPU'
    print(f'\n===== repvgg_mm demo: RepVGG-A0 on the embedded 10-class data set ({device}) =====')
    print(f"val top-1, training-time model: {top1:.2f}%")
    print(f"val top-1, fused (deploy) model: {top1_deploy:.2f}%")
    print(f"val top-1, fused model in ONNX Runtime: {onnx['onnx_top1']:.2f}% "
          f"(same prediction as PyTorch on {onnx['agreement']:.1%} of the images, max "
          f"|logit difference| {onnx['max_abs_diff']:.3g})")
    print(f"max |logit difference| over {len(labels)} val images: "
          f"{summary['max_abs_logit_diff']:.3g}")
    print(f"parameters: {summary['params_train']:,} -> {summary['params_deploy']:,}")
    print(f"fused model: {deploy_ckpt} (config {deploy_cfg}); ONNX: {onnx_path}")
    print(f"training curves: {curves}")
    print(f"summary: {path}; tool logs: {work_dir}/*.log")
    print(f"the demo took {summary['seconds']:.0f} s")
    if top1 != top1_deploy:
        raise RuntimeError(f'fused top-1 {top1_deploy} differs from training-time {top1}')
    if abs(onnx['onnx_top1'] - top1_deploy) > 1e-3:  # percent; metrics JSON is float32
        raise RuntimeError(f"ONNX Runtime top-1 {onnx['onnx_top1']} differs from PyTorch's "
                           f'{top1_deploy}')
    return 0


if __name__ == '__main__':
    run_cli(main, 'demo.py')
