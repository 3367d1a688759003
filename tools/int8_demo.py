"""The INT8 story on the demo data, end to end on CPU, through the real tools.

For RepVGG-A0 and QARepVGG-A0 (configs/demo/):

1. generate the demo data set in data/demo (if missing);
2. train on it (tools/train.py; --epochs, default 15);
3. train the float model on for as many epochs as QAT gets, with QAT's optimizer and
   schedule (the fair FP32 baseline for QAT: the same extra training, in float);
4. fuse and export both to ONNX, verified in ONNX Runtime (tools/export_onnx.py);
5. quantize the FP32 model to INT8 QDQ with ONNX Runtime's static quantization
   (tools/quantize.py), per tensor and per output channel;
6. quantization-aware training from the same checkpoint (tools/qat.py with
   configs/demo/*_qat_demo.py; --qat-epochs, default: the config's);
7. run every file side by side on the val set in ONNX Runtime (graph optimisations on,
   and off: each Q/DQ computed as written) and in OpenVINO, next to the PyTorch model
   it came from;

then print one table per model (top-1 in each runtime, agreement with its PyTorch
model, INT8/FP32 speed per runtime) with the CPU's model and features, and write it to
work_dirs/int8_demo/summary.json. The demo task is far easier than ImageNet: what it
measures is the drop on this data, not the paper's.
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
    parser.add_argument('--no-openvino', dest='openvino', action='store_false',
                        help='leave OpenVINO out (it is an optional extra)')
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


def _fine_tune_options(qat_config: str, checkpoint: str, epochs: int) -> list:
    """--cfg-options that train the float model on as the QAT config trains: the same
    epochs, optimizer settings and schedule."""
    qat = load_config(qat_config)
    optimizer, scheduler = qat.optim_wrapper.optimizer, qat.param_scheduler
    return [f'load_from={checkpoint}', f'train_cfg.max_epochs={epochs}',
            f'optim_wrapper.optimizer.lr={optimizer.lr}',
            f'optim_wrapper.optimizer.weight_decay={optimizer.weight_decay}',
            f'param_scheduler.warmup={scheduler.warmup}', f'param_scheduler.end={epochs}']


def _pytorch_logits(cfg, checkpoint: str):
    import torch

    from repvgg_mm.apis import load_fused_model
    from repvgg_mm.apis.export import LogitsModel
    model = LogitsModel(load_fused_model(cfg, checkpoint)['fused']).eval()

    def logits(images):
        with torch.no_grad():
            return model(torch.from_numpy(images)).numpy()
    return logits


def run_one(name: str, config: str, args: argparse.Namespace) -> dict:
    from repvgg_mm.apis import compare_runtimes
    work_dir = osp.join(args.work_dir, osp.splitext(osp.basename(config))[0])
    data = [f'{s}_dataloader.dataset.data_root={args.data_root}'
            for s in ('train', 'val', 'test')]
    run_tool('tools/train.py', config, '--work-dir', work_dir, '--cfg-options', *data,
             f'train_cfg.max_epochs={args.epochs}', f'param_scheduler.end={args.epochs}',
             capture=False)
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        checkpoint = f.read().strip()
    files = {'FP32': osp.join(work_dir, 'model_fp32.onnx')}
    export = last_json(run_tool('tools/export_onnx.py', config, checkpoint, files['FP32'],
                                '--cfg-options', *data))
    cfg = load_config(config)
    cfg.merge_from_dict(dict(option.split('=', 1) for option in data))
    references = {'FP32': _pytorch_logits(cfg, checkpoint)}
    qat_epochs = args.qat_epochs if args.qat_epochs is not None else \
        load_config(QAT_CONFIGS[name]).train_cfg.max_epochs
    tuned = None
    if qat_epochs:
        tuned_dir = work_dir + '_finetuned'
        run_tool('tools/train.py', config, '--work-dir', tuned_dir, '--cfg-options', *data,
                 *_fine_tune_options(QAT_CONFIGS[name], checkpoint, qat_epochs),
                 capture=False)
        with open(osp.join(tuned_dir, 'last_checkpoint')) as f:
            tuned = f.read().strip()
        files['FP32 +QAT epochs'] = osp.join(work_dir, 'model_fp32_finetuned.onnx')
        run_tool('tools/export_onnx.py', config, tuned, files['FP32 +QAT epochs'],
                 '--cfg-options', *data)
        references['FP32 +QAT epochs'] = _pytorch_logits(cfg, tuned)
    ptq = {}
    for label, extra in (('PTQ per-tensor', []), ('PTQ per-channel', ['--per-channel'])):
        files[label] = osp.join(work_dir, 'model_int8_ptq_per_'
                                + ('channel' if extra else 'tensor') + '.onnx')
        ptq[label] = last_json(run_tool(
            'tools/quantize.py', config, files['FP32'], files[label], '--calib-images',
            str(args.calib_images), '--method', args.method, '--no-eval', *extra,
            '--cfg-options', *data))
        references[label] = references['FP32']  # quantized from the FP32 model
    qat = None
    if qat_epochs:
        files['QAT'] = osp.join(work_dir, 'model_int8_qat.onnx')
        qat = last_json(run_tool('tools/qat.py', QAT_CONFIGS[name], checkpoint, files['QAT'],
                                 '--work-dir', work_dir + '_qat', '--no-eval',
                                 '--cfg-options', *data, f'train_cfg.max_epochs={qat_epochs}',
                                 f'param_scheduler.end={qat_epochs}'))
    runtimes = ('onnxruntime', 'onnxruntime-plain') + (('openvino', ) if args.openvino
                                                        else ())
    side = compare_runtimes(files, cfg, 'val', runtimes, references)
    fp32 = side['FP32']
    rows = []
    for label, path in files.items():
        r = side[label]
        row = dict(file=label, onnx=path, top1=r['onnxruntime']['top1'],
                   plain_top1=r['onnxruntime-plain']['top1'],
                   optimised_vs_plain=r['onnxruntime-plain']['agreement_first_runtime'],
                   speed_ratio=r['onnxruntime']['img_s'] / fp32['onnxruntime']['img_s'])
        if 'agreement_reference' in r['onnxruntime']:
            row.update(pytorch_agreement=r['onnxruntime']['agreement_reference'],
                       pytorch_top1=r['onnxruntime']['reference_top1'])
        if label == 'QAT':  # against the trained fake-quant model (tools/qat.py's check)
            e = qat['export']
            row.update(pytorch_agreement=e['agreement'], pytorch_top1=e['trained_top1'],
                       pytorch_images=e['check_images'], tensorrt_onnx=qat['tensorrt_output'])
        if 'openvino' in r:
            row.update(openvino_top1=r['openvino']['top1'],
                       openvino_vs_onnxruntime=r['openvino']['agreement_first_runtime'],
                       openvino_speed_ratio=r['openvino']['img_s'] / fp32['openvino']['img_s'])
        rows.append(row)
    return dict(model=name, config=config, checkpoint=checkpoint, finetuned_checkpoint=tuned,
                export_max_rel_diff=export['max_rel_diff'], qat_epochs=qat_epochs,
                val_images=fp32['onnxruntime']['images'],
                calib_images=next(iter(ptq.values()))['calib_images'], method=args.method,
                files=rows, runtimes=side)


def print_table(model: dict) -> None:
    print(f"\n{model['model']}: {model['val_images']} val images; FP32 +QAT epochs = "
          f"{model['qat_epochs']} more float epochs, QAT's schedule")
    print(f"{'file':<17} {'ORT':>7} {'=PyTorch':>9} {'ORT off':>8} {'=ORT':>7} "
          f"{'OpenVINO':>9} {'=ORT':>7} {'ORT x':>6} {'OV x':>6}")
    for r in model['files']:
        agree = f"{100 * r['pytorch_agreement']:.1f}%" if 'pytorch_agreement' in r else '-'
        ov = (f"{r['openvino_top1']:>9.2f} {100 * r['openvino_vs_onnxruntime']:>6.1f}%"
              if 'openvino_top1' in r else f"{'-':>9} {'-':>7}")
        ov_speed = f"{r['openvino_speed_ratio']:>6.2f}" if 'openvino_top1' in r else f"{'-':>6}"
        print(f"{r['file']:<17} {r['top1']:>7.2f} {agree:>9} {r['plain_top1']:>8.2f} "
              f"{100 * r['optimised_vs_plain']:>6.1f}% {ov} {r['speed_ratio']:>6.2f} "
              f"{ov_speed}")


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
    from repvgg_mm.apis import cpu_description
    cpu = cpu_description()
    rows = [run_one(name, config, args) for name, config in MODELS if name in args.models]
    summary = dict(rows=rows, epochs=args.epochs, cpu=cpu,
                   seconds=round(time.time() - start, 1))
    os.makedirs(args.work_dir, exist_ok=True)
    path = osp.join(args.work_dir, 'summary.json')
    atomic_write_text(path, json.dumps(summary, indent=2))

    print(f'\n===== INT8 on the demo data ({args.epochs} epochs, {args.method} calibration on '
          f'{rows[0]["calib_images"]} train images) =====')
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores, features: "
          f"{', '.join(cpu['features']) or 'none of ' + 'AVX2/AVX-512/VNNI/AMX'}")
    for model in rows:
        print_table(model)
    print('\n(top-1 in %. ORT = ONNX Runtime as deployed (graph optimisations on: integer '
          'kernels); =PyTorch = val images with the prediction of the PyTorch model the file '
          'came from (FP32, PTQ: the fused float model; QAT: the trained fake-quant model); '
          'ORT off = optimisations off, each Q/DQ computed as written; =ORT = same prediction '
          'as ORT; x = img/s over the FP32 file\'s in that runtime, measured side by side)')
    print(f'summary: {path} ({summary["seconds"]} s)')
    return 0


if __name__ == '__main__':
    run_cli(main, 'int8_demo.py')
