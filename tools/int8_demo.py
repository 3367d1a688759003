"""The INT8 story on the demo data, end to end on CPU, through the real tools.

For RepVGG-A0 and QARepVGG-A0 (configs/demo/):

1. generate the demo data set in data/demo (if missing);
2. train on it (tools/train.py; --epochs, default 15);
3. fuse and export to ONNX, verified in ONNX Runtime (tools/export_onnx.py);
4. quantize to INT8 QDQ with ONNX Runtime's static quantization (tools/quantize.py);
5. compare the ONNX FP32 model with the fused PyTorch model on the val set;

then print one table (FP32 top-1, INT8 top-1, drop, ONNX-vs-PyTorch agreement) and
write it to work_dirs/int8_demo/summary.json. The demo task is far easier than
ImageNet: what it measures is the drop on this data, not the paper's.
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout

from repvgg_mm.cli import load_config, run_cli  # noqa: E402
from repvgg_mm.fileio import atomic_write_text  # noqa: E402

MODELS = (('RepVGG-A0', 'configs/demo/repvgg-a0_demo.py'),
          ('QARepVGG-A0', 'configs/demo/qarepvgg-a0_demo.py'))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train, fuse, export and quantize '
                                     'RepVGG-A0 and QARepVGG-A0 on the demo data')
    parser.add_argument('--data-root', default='data/demo')
    parser.add_argument('--work-dir', default='work_dirs/int8_demo')
    parser.add_argument('--epochs', type=int, default=15)
    parser.add_argument('--calib-images', type=int, default=256)
    parser.add_argument('--method', default='minmax',
                        help='calibration method passed to tools/quantize.py')
    parser.add_argument('--models', nargs='+', default=[name for name, _ in MODELS],
                        choices=[name for name, _ in MODELS],
                        help='the models to run (default: both)')
    return parser.parse_args(argv)


def run_tool(*args: str, capture: bool = True) -> str:
    """Run one of our tools with this interpreter; return its stdout (shown after it
    ends when captured, live otherwise), stop if it fails."""
    cmd = [sys.executable, *args]
    print('$ ' + ' '.join(cmd[1:]), flush=True)
    result = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE if capture else None,
                            text=True)
    if capture:
        print(result.stdout[-2000:], end='', flush=True)
    if result.returncode != 0:
        raise RuntimeError(f'{args[0]} failed with exit status {result.returncode}')
    return result.stdout


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def run_one(name: str, config: str, args: argparse.Namespace) -> dict:
    from repvgg_mm.apis import compare_onnx_with_pytorch
    work_dir = osp.join(args.work_dir, osp.splitext(osp.basename(config))[0])
    data = [f'{s}_dataloader.dataset.data_root={args.data_root}'
            for s in ('train', 'val', 'test')]
    run_tool('tools/train.py', config, '--work-dir', work_dir, '--cfg-options', *data,
             f'train_cfg.max_epochs={args.epochs}', f'param_scheduler.end={args.epochs}',
             capture=False)
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        checkpoint = f.read().strip()
    fp32 = osp.join(work_dir, 'model_fp32.onnx')
    int8 = osp.join(work_dir, 'model_int8.onnx')
    export = last_json(run_tool('tools/export_onnx.py', config, checkpoint, fp32,
                                '--cfg-options', *data))
    quant = last_json(run_tool('tools/quantize.py', config, fp32, int8,
                               '--calib-images', str(args.calib_images),
                               '--method', args.method, '--cfg-options', *data))
    cfg = load_config(config)
    cfg.merge_from_dict(dict(option.split('=', 1) for option in data))
    agreement = compare_onnx_with_pytorch(fp32, cfg, checkpoint, split='val')
    return dict(model=name, config=config, checkpoint=checkpoint, fp32_onnx=fp32,
                int8_onnx=int8, export_max_rel_diff=export['max_rel_diff'],
                pytorch_top1=agreement['pytorch_top1'], fp32_top1=quant['fp32_top1'],
                int8_top1=quant['int8_top1'], drop=quant['drop'],
                onnx_pytorch_agreement=agreement['agreement'],
                onnx_pytorch_max_abs_diff=agreement['max_abs_diff'],
                speed_ratio=quant['speed_ratio'], val_images=quant['val_images'],
                calib_images=quant['calib_images'], method=quant['method'])


def main() -> int:
    args = parse_args()
    os.chdir(ROOT)
    start = time.time()
    from repvgg_mm.apis import require_deploy_packages
    from repvgg_mm.datasets import generate_demo_dataset
    require_deploy_packages()
    if not all(osp.isfile(osp.join(args.data_root, f'{s}_list.txt')) for s in ('train', 'val')):
        print(f'generating the demo data set in {args.data_root} ...', flush=True)
        generate_demo_dataset(args.data_root)
    rows = [run_one(name, config, args) for name, config in MODELS if name in args.models]
    summary = dict(rows=rows, epochs=args.epochs, seconds=round(time.time() - start, 1))
    os.makedirs(args.work_dir, exist_ok=True)
    path = osp.join(args.work_dir, 'summary.json')
    atomic_write_text(path, json.dumps(summary, indent=2))

    print(f'\n===== INT8 on the demo data ({rows[0]["val_images"]} val images, '
          f'{args.epochs} epochs, {args.method} calibration on {rows[0]["calib_images"]} '
          'train images, CPU) =====')
    print(f"{'model':<12} {'PyTorch':>8} {'FP32':>7} {'INT8':>7} {'drop':>6} "
          f"{'ONNX=PT':>8} {'INT8 speed':>10}")
    for r in rows:
        print(f"{r['model']:<12} {r['pytorch_top1']:>8.2f} {r['fp32_top1']:>7.2f} "
              f"{r['int8_top1']:>7.2f} {r['drop']:>6.2f} "
              f"{100 * r['onnx_pytorch_agreement']:>7.1f}% {r['speed_ratio']:>9.2f}x")
    print('(top-1 in %; PyTorch = fused model in PyTorch, FP32/INT8 = ONNX Runtime; '
          'ONNX=PT = val images with the same prediction in ONNX FP32 and PyTorch; '
          'INT8 speed = INT8 img/s over FP32 img/s)')
    print(f'summary: {path} ({summary["seconds"]} s)')
    return 0


if __name__ == '__main__':
    run_cli(main, 'int8_demo.py')
