"""Exported models in the CPU runtimes, side by side: ONNX Runtime (its graph
optimisations on, as deployed, and off: every Q/DQ computed as the graph states) and
OpenVINO (an optional extra: ``pip install -r requirements/openvino.txt``), the same
files on the same images, with the machine's CPU features named next to every figure.
"""
import os
import platform
import time
from typing import Callable, Dict, Optional, Sequence

import numpy as np
from mmengine.config import Config

from .export import image_batches, onnx_input_kind, ort_session

RUNTIMES = ('onnxruntime', 'onnxruntime-plain', 'openvino')
OPENVINO_INSTALL = 'pip install -r requirements/openvino.txt (or pip install "repvgg_mm[openvino]")'
_CPU_FLAGS = ('avx2', 'avx512f', 'avx512_vnni', 'avx_vnni', 'amx_int8')


def cpu_description() -> Dict[str, object]:
    """The CPU's model name, core count and the features INT8 kernels depend on
    (AVX2, AVX-512, VNNI, AMX), read from ``/proc/cpuinfo``."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name') and model in ('', platform.machine()):
                    model = line.split(':', 1)[1].strip()
                elif line.startswith('flags'):
                    flags |= set(line.split(':', 1)[1].split())
    except OSError:
        pass
    return dict(model=model, cores=os.cpu_count(),
                features=[f for f in _CPU_FLAGS if f in flags])


def runtime_session(path: str, runtime: str = 'onnxruntime',
                    threads: Optional[int] = None) -> Callable[[np.ndarray], np.ndarray]:
    """A function ``images (NCHW float32) -> logits`` running ``path`` on the CPU in
    ``runtime`` (one of :data:`RUNTIMES`).

    Raises:
        ImportError: naming the install command when the runtime is missing.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f'runtime must be one of {list(RUNTIMES)}, got {runtime!r}')
    if runtime == 'openvino':
        try:
            import openvino as ov
        except ImportError:
            raise ImportError(f'OpenVINO is not installed; {OPENVINO_INSTALL}') from None
        config = {'INFERENCE_NUM_THREADS': threads} if threads else {}
        compiled = ov.Core().compile_model(path, 'CPU', config)
        return lambda images: compiled(images)[0]
    session = ort_session(path, threads, optimised=runtime == 'onnxruntime')
    return lambda images: session.run(None, {'input': images})[0]


def compare_runtimes(paths: Dict[str, str], cfg: Config, split: str = 'val',
                     runtimes: Sequence[str] = ('onnxruntime', ),
                     references: Optional[Dict[str, Callable]] = None,
                     threads: Optional[int] = None) -> Dict[str, Dict[str, dict]]:
    """Every model of ``paths`` in every runtime on the same images of a config's
    ``split``: each batch goes through every (model, runtime) in turn, so the speeds
    are measured under the same conditions (a shared machine's load falls on all alike).

    Args:
        paths: ``{name: onnx file}``.
        runtimes: Of :data:`RUNTIMES`; the first is the one the others are compared to.
        references: ``{name: images -> logits}``, e.g. the PyTorch model a file came
            from; its agreement is reported for that file in every runtime.

    Returns:
        dict: name -> runtime -> ``top1`` (%), ``images``, ``img_s`` (the runtime's time
        only), ``agreement_first_runtime`` (share of images with the first runtime's
        prediction for that file) and, with a reference, ``agreement_reference`` and
        ``reference_top1``.
    """
    references = references or {}
    kinds = {onnx_input_kind(path) for path in paths.values()}
    if len(kinds) != 1:
        raise ValueError(f'the models take different inputs ({sorted(kinds)}): {paths}')
    sessions = {(name, rt): runtime_session(path, rt, threads)
                for name, path in paths.items() for rt in runtimes}
    stats = {key: dict(correct=0, first=0, reference=0, seconds=0.0) for key in sessions}
    reference_correct = {name: 0 for name in references}
    total = 0
    for images, labels in image_batches(cfg, split, normalized=kinds == {'normalized'}):
        if total == 0:  # warm-up, untimed: first-call allocations and kernel choices
            for run in sessions.values():
                run(images)
        for name in paths:
            expected = None
            if name in references:
                expected = np.asarray(references[name](images)).argmax(1)
                reference_correct[name] += int((expected == labels).sum())
            first = None
            for rt in runtimes:
                start = time.perf_counter()
                predicted = np.asarray(sessions[name, rt](images)).argmax(1)
                s = stats[name, rt]
                s['seconds'] += time.perf_counter() - start
                first = predicted if first is None else first
                s['correct'] += int((predicted == labels).sum())
                s['first'] += int((predicted == first).sum())
                if expected is not None:
                    s['reference'] += int((predicted == expected).sum())
        total += len(labels)
    if total == 0:
        raise ValueError(f'the {split} split of config {cfg.filename!r} has no images')
    report: Dict[str, Dict[str, dict]] = {}
    for (name, rt), s in stats.items():
        row = dict(top1=100.0 * s['correct'] / total, images=total,
                   img_s=total / s['seconds'], agreement_first_runtime=s['first'] / total)
        if name in references:
            row.update(agreement_reference=s['reference'] / total,
                       reference_top1=100.0 * reference_correct[name] / total)
        report.setdefault(name, {})[rt] = row
    return report
