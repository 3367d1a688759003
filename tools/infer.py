"""Classify images:

    python tools/infer.py CONFIG CHECKPOINT IMAGE [IMAGE ...]
    python tools/infer.py MODEL_NAME IMAGE [IMAGE ...]      # published weights, by name

Prints the top-k classes of each image; ``--out`` writes them as JSON, ``--show-dir``
writes each image with its prediction drawn (MMPretrain's visualizer). Works with
training-time and fused checkpoints of every format the project reads; CHECKPOINT may
also be a URL. A zoo name (``repvgg-a0``, ``repvgg-a0_deploy``; see ``list_models()``)
in place of CONFIG CHECKPOINT loads its published ImageNet weights (downloaded once).
"""
import argparse
import json
import os
import os.path as osp
import shutil
import sys
import tempfile

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from repvgg_mm.apis import RepVGGInferencer, get_model, list_models, top_k  # noqa: E402
from repvgg_mm.checkpoints.zoo import is_url, model_index, published_url  # noqa: E402
from repvgg_mm.cli import add_cfg_options, load_config, run_cli  # noqa: E402
from repvgg_mm.fileio import atomic_write_text, check_output_paths  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Classify images with a trained or '
                                     'fused model')
    parser.add_argument('model', metavar='CONFIG|MODEL_NAME',
                        help='config file (training or deploy), or a zoo name with '
                        'published weights (then no CHECKPOINT follows)')
    parser.add_argument('inputs', nargs='+', metavar='[CHECKPOINT] IMAGE',
                        help='with a config: the checkpoint (file, URL or zoo name, any '
                        'known format), then the image files; with a name: the images')
    parser.add_argument('--topk', type=int, default=5, help='classes shown per image')
    parser.add_argument('--out', metavar='JSON', help='write the predictions to this file')
    parser.add_argument('--show-dir', metavar='DIR',
                        help='write <DIR>/<image name>.png with the prediction drawn')
    parser.add_argument('--show-size', type=int, default=224, metavar='PIXELS',
                        help='short side of the written pictures (default: 224; small '
                        'images are enlarged so that the drawn text stays readable)')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--device', default='cpu', help="e.g. 'cpu' or 'cuda:0'")
    add_cfg_options(parser)
    args = parser.parse_args(argv)
    split_inputs(args)
    return args


def split_inputs(args: argparse.Namespace) -> None:
    """Set ``config``, ``checkpoint`` and ``images`` from the positional arguments:
    a config file takes a CHECKPOINT next; a zoo name takes its published weights."""
    if args.model.endswith('.py') or osp.isfile(args.model):
        if len(args.inputs) < 2:
            raise ValueError(f'after the config {args.model!r} give CHECKPOINT and at least '
                             'one IMAGE')
        args.config, args.checkpoint, args.images = args.model, args.inputs[0], args.inputs[1:]
        args.name = None
    else:
        if args.model.lower() not in model_index():
            raise ValueError(f'{args.model!r} is neither a config file nor a zoo name; known '
                             f'names: {", ".join(list_models())}')
        args.name, args.config, args.images = args.model, None, args.inputs
        args.checkpoint = published_url(args.model)  # says so when there are none


def check_arguments(args: argparse.Namespace) -> None:
    """Everything that can be checked before the model is built."""
    for name in ('topk', 'show_size', 'batch_size'):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, "
                             f'got {getattr(args, name)}')
    local_checkpoint = [] if is_url(args.checkpoint) or \
        args.checkpoint.lower() in model_index() else [args.checkpoint]
    for path in (*local_checkpoint, *args.images):
        if not osp.isfile(path):
            raise FileNotFoundError(f'{path!r} does not exist')
    if args.out:
        check_output_paths({'--out': args.out},
                           {'CONFIG': args.config or '', 'CHECKPOINT': args.checkpoint,
                            **{f'IMAGE {p}': p for p in args.images}})
    if args.show_dir:
        stems = [osp.splitext(osp.basename(p))[0] for p in args.images]
        clashes = sorted({s for s in stems if stems.count(s) > 1})
        if clashes:
            raise ValueError(f'--show-dir: images share the names {clashes}; their '
                             'pictures would overwrite each other')
        os.makedirs(args.show_dir, exist_ok=True)
        if not os.access(args.show_dir, os.W_OK):
            raise PermissionError(f'--show-dir {args.show_dir!r} is not writable')


def main() -> int:
    args = parse_args()
    check_arguments(args)
    target = args.name if args.name else load_config(args.config, args.cfg_options)
    if args.name and args.cfg_options:
        raise ValueError('--cfg-options needs a config file; with a zoo name, pass the '
                         "name's config (list_models() / configs/metafile.yml) instead")
    inferencer = RepVGGInferencer(get_model(target, args.checkpoint, device=args.device))
    # pictures go to a hidden folder first and are moved in when all are complete
    staging = tempfile.mkdtemp(prefix='.infer-', dir=args.show_dir) if args.show_dir else None
    try:
        results = inferencer(args.images, batch_size=args.batch_size, show_dir=staging,
                             resize=args.show_size)
        for name in os.listdir(staging) if staging else []:
            os.replace(osp.join(staging, name), osp.join(args.show_dir, name))
    finally:
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
    records = []
    for path, result in zip(args.images, results):
        best = top_k(result, args.topk, inferencer.classes)
        records.append(dict(image=path, pred_label=best[0]['label'],
                            pred_class=best[0]['class'], pred_score=best[0]['score'],
                            topk=best))
        shown = ', '.join(f"{b['class'] if b['class'] is not None else b['label']} "
                          f"{b['score']:.4f}" for b in best)
        print(f'{path}: {shown}')
    if args.out:
        atomic_write_text(args.out, json.dumps(records, indent=2) + '\n')
        print(f'predictions written to {args.out}')
    if args.show_dir:
        print(f'pictures written to {args.show_dir}')
    return 0


if __name__ == '__main__':
    run_cli(main, 'infer.py')
