"""Export a RepVGG classifier to ONNX, verified against PyTorch in ONNX Runtime, and
evaluate an exported model on a config's data.

The exported graph takes an NCHW float32 batch (dynamic batch dimension) and returns the
logits. By default the input is already normalised with the config's mean/std -- what
the original repository's deployed models take; ``fold_normalization=True`` moves the
normalisation into the graph, so that the model takes raw 0-255 RGB images instead. The
input convention is recorded in the file's metadata (``repvgg_mm.input``).
"""
import contextlib
import io
import os.path as osp
import time
import warnings
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config

from repvgg_mm.fileio import atomic_path, check_output_paths
from repvgg_mm.registry import MODELS

from .model import test_input_size
from .reparam import load_fused_model

DEPLOY_INSTALL = 'pip install -r requirements/deploy.txt (or pip install "repvgg_mm[deploy]")'
INPUT_KEY = 'repvgg_mm.input'
OPSET = 17


def require_deploy_packages() -> None:
    """Raise ImportError naming the install command when onnx/onnxruntime are missing."""
    missing = []
    for name in ('onnx', 'onnxruntime'):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f'{" and ".join(missing)} not installed; install the deploy '
                          f'requirements: {DEPLOY_INSTALL}')


class LogitsModel(nn.Module):
    """A classifier as a plain ``images -> logits`` module, for export.

    Args:
        classifier (nn.Module): An MMPretrain classifier (``forward(x, mode='tensor')``).
        mean (Sequence[float], optional): Per-channel mean to subtract in the graph
            (0-255 scale); None when the input arrives normalised.
        std (Sequence[float], optional): Per-channel std to divide by, with ``mean``.
    """

    def __init__(self, classifier: nn.Module, mean=None, std=None) -> None:
        super().__init__()
        self.classifier = classifier
        self.normalize = mean is not None
        if self.normalize:
            self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = (x - self.mean) / self.std
        out = self.classifier(x, mode='tensor')
        return out[-1] if isinstance(out, (tuple, list)) else out


def normalization_of(cfg: Config) -> Tuple[list, list]:
    """The config's ``data_preprocessor`` mean and std (0-255 scale)."""
    pre = cfg.get('data_preprocessor') or cfg.model.get('data_preprocessor') or {}
    if pre.get('mean') is None or pre.get('std') is None:
        raise KeyError(f'config {cfg.filename!r} has no data_preprocessor.mean/std to fold '
                       'into the graph')
    return list(pre['mean']), list(pre['std'])


@contextlib.contextmanager
def atomic_output(output: str, inputs: Dict[str, str]) -> Iterator[str]:
    """Check ``output`` against ``inputs`` (``{description: path}``, see
    :func:`repvgg_mm.fileio.check_output_paths`) and yield a temporary path that
    replaces ``output`` on success."""
    check_output_paths({'output': output}, inputs)
    with atomic_path(output) as tmp:
        yield tmp


def relative_difference(reference: np.ndarray, other: np.ndarray) -> Tuple[float, float]:
    """Max absolute difference, and the same divided by the largest ``|reference|``."""
    abs_diff = float(np.abs(reference - other).max())
    return abs_diff, abs_diff / max(float(np.abs(reference).max()), 1e-12)


def ort_session(path: str, threads: Optional[int] = None, optimised: bool = True):
    """An ONNX Runtime CPU session for ``path``; ``optimised=False`` turns its graph
    optimisations off (every QuantizeLinear/DequantizeLinear computed as written)."""
    require_deploy_packages()
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if not optimised:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def set_input_kind(proto, kind: str) -> None:
    """Record in an ONNX model's metadata what its input is (``'normalized'`` or
    ``'raw'`` 0-255 RGB; read by :func:`onnx_input_kind`), unless it says already."""
    if not any(p.key == INPUT_KEY for p in proto.metadata_props):
        meta = proto.metadata_props.add()
        meta.key, meta.value = INPUT_KEY, kind


def export_model(model: LogitsModel, path: str, input_size: int, opset: int = OPSET,
                 dynamo: bool = False) -> None:
    """Write ``model`` (eval mode) to ``path`` with a dynamic batch dimension, then check
    the file with ``onnx.checker``. ``dynamo`` selects torch's torch.export-based
    exporter (needs ``onnxscript``) instead of the TorchScript-based one."""
    require_deploy_packages()
    import onnx
    example = (torch.zeros(1, 3, input_size, input_size), )
    kwargs = dict(input_names=['input'], output_names=['logits'], opset_version=opset)
    if dynamo:
        kwargs.update(dynamic_shapes=({0: torch.export.Dim('batch')}, ),
                      external_data=False, verbose=False)
    else:
        kwargs.update(dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}})
    buffer = io.BytesIO()  # in memory: the file is written once, with its metadata
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter warns that it is deprecated on every call
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(model.eval(), example, buffer, dynamo=dynamo, **kwargs)
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)
    set_input_kind(proto, 'raw' if model.normalize else 'normalized')
    onnx.save(proto, path)


def export_onnx(cfg: Config, checkpoint: str, output: str, input_size: Optional[int] = None,
                fold_normalization: bool = False, tolerance: float = 1e-4,
                batch_size: int = 2, src_format: Optional[str] = None,
                opset: int = OPSET, dynamo: bool = False) -> dict:
    """Fuse ``checkpoint`` and export it to ``output`` (ONNX), verified in ONNX Runtime.

    The checkpoint may be training-time or fused, in any format the project reads; it
    is fused by :func:`~repvgg_mm.apis.load_fused_model` (what ``tools/reparam.py``
    uses). The fused model is exported with a dynamic batch dimension, checked with
    ``onnx.checker``, run in ONNX Runtime on a fixed random batch and compared with the
    fused PyTorch model; above ``tolerance`` (relative) nothing is written. The file is
    written atomically, and the output location is checked before any work.

    Args:
        cfg (Config): The config the checkpoint was trained with (or its deploy config).
        input_size (int, optional): Height and width of the verification batch and of
            the example input. Defaults to the config's test crop.
        fold_normalization (bool): Put the config's mean/std into the graph (the model
            then takes raw 0-255 RGB). Defaults to False (normalised input).
        dynamo (bool): Use torch's torch.export-based exporter. Defaults to False
            (the TorchScript-based one).

    Returns:
        dict: ``output``, ``src_format``, ``already_fused``, ``input_size``, ``input``
        (``'normalized'`` or ``'raw'``), ``max_abs_diff``, ``max_rel_diff``,
        ``exporter`` and ``opset``.
    """
    require_deploy_packages()
    with atomic_output(output, {'CHECKPOINT': checkpoint}) as tmp:
        loaded = load_fused_model(cfg, checkpoint, src_format)
        mean, std = normalization_of(cfg) if fold_normalization else (None, None)
        model = LogitsModel(loaded['fused'], mean, std).eval()
        size = input_size or test_input_size(cfg)
        export_model(model, tmp, size, opset=opset, dynamo=dynamo)
        generator = torch.Generator().manual_seed(0)
        batch = torch.randn(batch_size, 3, size, size, generator=generator)
        if fold_normalization:
            batch = torch.rand(batch_size, 3, size, size, generator=generator) * 255
        with torch.no_grad():
            expected = model(batch).numpy()
        got = ort_session(tmp).run(None, {'input': batch.numpy()})[0]
        abs_diff, rel_diff = relative_difference(expected, got)
        if not rel_diff <= tolerance:
            raise RuntimeError(f'ONNX Runtime output of {checkpoint!r} differs from PyTorch '
                               f'by {rel_diff:.3g} (relative, tolerance {tolerance:g}); '
                               'nothing written')
    return dict(output=output, src_format=loaded['src_format'],
                already_fused=loaded['training'] is None, input_size=size,
                input='raw' if fold_normalization else 'normalized',
                max_abs_diff=abs_diff, max_rel_diff=rel_diff,
                exporter='dynamo' if dynamo else 'torchscript', opset=opset)


def load_onnx(path: str, what: str = 'ONNX model', load_external_data: bool = True):
    """Read an ONNX file; a missing file or one that is not an ONNX model is an error
    naming it and what was expected (onnx's own message names neither)."""
    require_deploy_packages()
    import onnx
    if not osp.isfile(path):
        raise FileNotFoundError(f'{what} {path!r} does not exist' +
                                (' (it is a folder)' if osp.isdir(path) else ''))
    try:
        proto = onnx.load(path, load_external_data=load_external_data)
    except Exception as exc:  # protobuf raises DecodeError, onnx others
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f'{what} {path!r} could not be read: it is not an ONNX model, '
                         'expected a .onnx file as tools/export_onnx.py writes '
                         f'({type(exc).__name__}: {reason})') from exc
    if not proto.graph.node:
        raise ValueError(f'{what} {path!r} is not an ONNX model: its graph has no '
                         'nodes; expected a .onnx file as tools/export_onnx.py writes')
    return proto


def onnx_input_kind(path: str) -> str:
    """``'normalized'`` or ``'raw'``: the input an exported model expects."""
    proto = load_onnx(path, load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    return meta.get(INPUT_KEY, 'normalized')


def image_batches(cfg: Config, split: str = 'test', normalized: bool = True,
                  limit: Optional[int] = None, shuffle: bool = False,
                  seed: int = 0) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Batches ``(images NCHW float32, labels)`` of a config's split through its *test*
    pipeline and data preprocessor (stacking, channel order and, when ``normalized``,
    the mean/std) -- what an exported model takes.

    Args:
        split (str): ``'train'``, ``'val'`` or ``'test'``: whose dataset (and, for
            val/test, whose loader settings) to read. The train split is read with the
            test dataloader's pipeline and settings (for calibration).
        limit (int, optional): Stop after this many images.
        shuffle (bool): Draw the images in a seeded random order.

    Every process of a distributed run reads the whole split (the same images).
    """
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner
    init_default_scope(cfg.get('default_scope', 'repvgg_mm'))
    loader_cfg = Config(dict(cfg.test_dataloader)).to_dict()
    dataset = Config(dict(cfg[f'{split}_dataloader'].dataset)).to_dict()
    dataset['pipeline'] = cfg.test_dataloader.dataset.pipeline
    loader_cfg.update(dataset=dataset, sampler=dict(type='DefaultSampler', shuffle=shuffle))
    loader = Runner.build_dataloader(loader_cfg, seed=seed)
    sampler = loader.sampler
    if getattr(sampler, 'world_size', 1) > 1:
        # in a distributed run every process reads the whole split, in the same order
        # (calibration must see the same images on every rank, evaluation all of them)
        sampler.rank, sampler.world_size = 0, 1
        sampler.num_samples = sampler.total_size = len(sampler.dataset)
    pre_cfg = dict(cfg.get('data_preprocessor') or cfg.model.get('data_preprocessor') or {})
    pre_cfg.setdefault('type', 'ClsDataPreprocessor')
    if not normalized:
        pre_cfg.update(mean=None, std=None)
    preprocessor = MODELS.build(pre_cfg)
    seen = 0
    for data in loader:
        out = preprocessor(data, training=False)
        images = out['inputs'].float().numpy()
        labels = np.array([int(s.gt_label[0]) for s in out['data_samples']])
        if limit is not None and seen + len(images) > limit:
            images, labels = images[:limit - seen], labels[:limit - seen]
        seen += len(images)
        yield images, labels
        if limit is not None and seen >= limit:
            return


def evaluate_onnx(onnx_path: str, cfg: Config, split: str = 'test',
                  threads: Optional[int] = None) -> dict:
    """Top-1 accuracy of an exported model on a config's ``split``, fed through the
    config's test pipeline as :func:`image_batches`; the input convention (normalised
    or raw) is read from the file.

    Returns:
        dict: ``top1`` (%), ``images`` and ``seconds`` (time spent in ONNX Runtime
        only, data loading excluded) -- ``images / seconds`` is the model's img/s.
    """
    session = ort_session(onnx_path, threads)
    normalized = onnx_input_kind(onnx_path) == 'normalized'
    correct = total = 0
    seconds = 0.0
    for images, labels in image_batches(cfg, split, normalized=normalized):
        start = time.perf_counter()
        logits = session.run(None, {'input': images})[0]
        seconds += time.perf_counter() - start
        correct += int((logits.argmax(1) == labels).sum())
        total += len(labels)
    if total == 0:
        raise ValueError(f'the {split} split of config {cfg.filename!r} has no images')
    return dict(top1=100.0 * correct / total, images=total, seconds=seconds)


def onnx_top1(onnx_path: str, cfg: Config, split: str = 'test') -> float:
    """Top-1 accuracy (%) of an exported model (e.g. written by :func:`export_onnx`) on
    a config's ``split``, its test set by default; see :func:`evaluate_onnx`."""
    return evaluate_onnx(onnx_path, cfg, split)['top1']


@torch.no_grad()
def compare_onnx_with_pytorch(onnx_path: str, cfg: Config, checkpoint: str,
                              split: str = 'test') -> dict:
    """Evaluate an exported model and the fused PyTorch model of ``checkpoint`` on the
    same images of a config's ``split``.

    Returns:
        dict: ``images``, ``onnx_top1`` and ``pytorch_top1`` (%), ``agreement`` (the
        fraction of images with the same top-1 prediction) and ``max_abs_diff`` (of the
        logits).
    """
    model = load_fused_model(cfg, checkpoint)['fused']
    session = ort_session(onnx_path)
    raw = onnx_input_kind(onnx_path) == 'raw'
    mean, std = normalization_of(cfg) if raw else (None, None)
    reference = LogitsModel(model, mean, std).eval()
    totals = dict(images=0, onnx=0, pytorch=0, agree=0)
    max_abs = 0.0
    for images, labels in image_batches(cfg, split, normalized=not raw):
        got = session.run(None, {'input': images})[0]
        expected = reference(torch.from_numpy(images)).numpy()
        max_abs = max(max_abs, float(np.abs(got - expected).max()))
        totals['images'] += len(labels)
        totals['onnx'] += int((got.argmax(1) == labels).sum())
        totals['pytorch'] += int((expected.argmax(1) == labels).sum())
        totals['agree'] += int((got.argmax(1) == expected.argmax(1)).sum())
    n = totals['images']
    if n == 0:
        raise ValueError(f'the {split} split of config {cfg.filename!r} has no images')
    return dict(images=n, onnx_top1=100.0 * totals['onnx'] / n,
                pytorch_top1=100.0 * totals['pytorch'] / n,
                agreement=totals['agree'] / n, max_abs_diff=max_abs)
