"""The INT8 story on the demo data, end to end on CPU, through the real tools.

For RepVGG-A0 and QARepVGG-A0 (configs/demo/):

1. generate the demo data set in data/demo (if missing);
2. train on it (tools/train.py; --epochs, default 15);
3. fuse and export to ONNX, verified in ONNX Runtime (tools/export_onnx.py);
4. quantize to INT8 QDQ with ONNX Runtime's static quantization (tools/quantize.py);
5. quantization-aware training from the same checkpoint to an INT8 QDQ model
   (tools/qat.py with configs/demo/*_qat_demo.py; --qat-epochs, default: the config's);
6. compare the ONNX FP32 model with the fused PyTorch model, and FP32, PTQ and QAT
   side by side in ONNX Runtime, on the val set;

then print one table (FP32, PTQ INT8 and QAT INT8 top-1, drops, agreement with FP32,
INT8/FP32 speed) and write it to work_dirs/int8_demo/summary.json. The demo task is
far easier than ImageNet: what it measures is the drop on this data, not the paper's.
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
QAT_CONFIGS = {'RepVGG-A0': 'configs/demo/repvgg-a0_qat_demo.py',
               'QARepVGG-A0': 'configs/demo/qarepvgg-a0_qat_demo.py'}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train, fuse, export and quantize '
                                     'RepVGG-A0 and QARepVGG-A0 on the demo data')
    parser.add_argument('--data-root', default='data/demo')
    parser.add_argument('--work-dir', default='work_dirs/int8_demo')
    parser.add_argument('--epochs', type=int, default=15)
    parser.add_argument('--calib-images', type=int, default=256)
    parser.add_argument('--method', default='minmax',
                        help='calibration method passed to tools/quantize.py')
    parser.add_argument('--qat-epochs', type=int,
                        help="QAT epochs (default: the QAT demo config's); 0 skips QAT")
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
    from repvgg_mm.apis.export import compare_onnx_models
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
    onnx_files = {'FP32': fp32, 'PTQ': int8}
    qat = None
    if args.qat_epochs != 0:
        qat_onnx = osp.join(work_dir, 'model_int8_qat.onnx')
        epochs = [] if args.qat_epochs is None else [
            f'train_cfg.max_epochs={args.qat_epochs}', f'param_scheduler.end={args.qat_epochs}']
        qat = last_json(run_tool('tools/qat.py', QAT_CONFIGS[name], checkpoint, qat_onnx,
                                 '--work-dir', work_dir + '_qat', '--cfg-options', *data,
                                 *epochs))
        onnx_files['QAT'] = qat_onnx
    cfg = load_config(config)
    cfg.merge_from_dict(dict(option.split('=', 1) for option in data))
    agreement = compare_onnx_with_pytorch(fp32, cfg, checkpoint, split='val')
    # FP32, PTQ and QAT side by side: the same batches through each in turn
    side = compare_onnx_models(onnx_files, cfg, 'val', exact=True)
    row = dict(model=name, config=config, checkpoint=checkpoint, fp32_onnx=fp32,
               int8_onnx=int8, export_max_rel_diff=export['max_rel_diff'],
               pytorch_top1=agreement['pytorch_top1'], fp32_top1=side['FP32']['top1'],
               int8_top1=side['PTQ']['top1'], drop=side['FP32']['top1'] - side['PTQ']['top1'],
               int8_exact_top1=side['PTQ']['exact_top1'],
               int8_agreement=side['PTQ']['agreement'],
               onnx_pytorch_agreement=agreement['agreement'],
               onnx_pytorch_max_abs_diff=agreement['max_abs_diff'],
               speed_ratio=side['PTQ']['img_s'] / side['FP32']['img_s'],
               val_images=quant['val_images'], calib_images=quant['calib_images'],
               method=quant['method'])
    if qat is not None:
        row.update(qat_onnx=onnx_files['QAT'], qat_top1=side['QAT']['top1'],
                   qat_drop=side['FP32']['top1'] - side['QAT']['top1'],
                   qat_exact_top1=side['QAT']['exact_top1'],
                   qat_agreement=side['QAT']['agreement'],
                   qat_speed_ratio=side['QAT']['img_s'] / side['FP32']['img_s'],
                   qat_reported_top1=qat['int8_top1'], qat_work_dir=qat['work_dir'])
    return row


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
    print(f"{'model':<12} {'PyTorch':>8} {'FP32':>7} {'PTQ':>7} {'QAT':>7} {'PTQ drop':>9} "
          f"{'QAT drop':>9} {'=FP32 PTQ/QAT':>14} {'exact PTQ/QAT':>14} {'speed PTQ/QAT':>14}")
    for r in rows:
        has_qat = 'qat_top1' in r
        qat = f"{r['qat_top1']:>7.2f}" if has_qat else f"{'-':>7}"
        qat_drop = f"{r['qat_drop']:>9.2f}" if has_qat else f"{'-':>9}"
        agree = f"{100 * r['int8_agreement']:.1f}/" + (
            f"{100 * r['qat_agreement']:.1f}%" if has_qat else '-')
        exact = f"{r['int8_exact_top1']:.1f}/" + (
            f"{r['qat_exact_top1']:.1f}" if has_qat else '-')
        speed = f"{r['speed_ratio']:.2f}/" + (f"{r['qat_speed_ratio']:.2f}x" if has_qat else '-')
        print(f"{r['model']:<12} {r['pytorch_top1']:>8.2f} {r['fp32_top1']:>7.2f} "
              f"{r['int8_top1']:>7.2f} {qat} {r['drop']:>9.2f} {qat_drop} {agree:>14} "
              f"{exact:>14} {speed:>14}")
    print('(top-1 in %; PyTorch = fused model in PyTorch; FP32, PTQ (tools/quantize.py) and '
          'QAT (tools/qat.py) INT8 = ONNX Runtime, evaluated side by side; =FP32 = val '
          'images with the FP32 prediction; exact = the same INT8 files with ONNX Runtime\'s '
          'graph optimizations off (each Q/DQ computed as the graph states, no integer '
          'kernels); speed = INT8 img/s over FP32 img/s)')
    print(f'summary: {path} ({summary["seconds"]} s)')
    return 0


if __name__ == '__main__':
    run_cli(main, 'int8_demo.py')
