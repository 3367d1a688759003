"""Inference speed of a model and its fused copy, measured side by side."""
import contextlib
import statistics
import time
from typing import Dict, List, Optional

import torch
import torch.nn as nn


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


@torch.no_grad()
def compare_throughput(models: Dict[str, nn.Module], batch_size: int = 32,
                       input_size: int = 224, device: str = 'cpu',
                       amp_dtype: Optional[torch.dtype] = None, channels_last: bool = False,
                       warmup: int = 3, repeats: int = 5, iters: int = 5) -> List[dict]:
    """Images per second of each model on the same random batch.

    Each model is warmed up, then the models take turns: ``repeats`` rounds, each
    timing ``iters`` forward passes of every model in turn, so that drifts of a shared,
    noisy machine hit all of them alike. The median round counts.

    Returns:
        list[dict]: one entry per model: ``model``, ``imgs_per_s`` (median),
        ``median_ms`` per batch, ``rounds_ms`` and the settings used.
    """
    dev = torch.device(device)
    inputs = torch.randn(batch_size, 3, input_size, input_size, device=dev)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    inputs = inputs.contiguous(memory_format=memory_format)
    prepared = {name: m.to(dev).eval().to(memory_format=memory_format)
                for name, m in models.items()}

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(dev.type, dtype=amp_dtype)

    for model in prepared.values():
        with autocast():
            for _ in range(warmup):
                model(inputs)
    rounds: Dict[str, List[float]] = {name: [] for name in prepared}
    for _ in range(repeats):
        for name, model in prepared.items():
            _sync(dev)
            start = time.perf_counter()
            with autocast():
                for _ in range(iters):
                    model(inputs)
            _sync(dev)
            rounds[name].append((time.perf_counter() - start) / iters)
    results = []
    for name, times in rounds.items():
        median = statistics.median(times)
        results.append(dict(model=name, imgs_per_s=batch_size / median,
                            median_ms=median * 1e3, rounds_ms=[t * 1e3 for t in times],
                            batch_size=batch_size, input_size=input_size, device=device,
                            amp=str(amp_dtype).replace('torch.', '') if amp_dtype else 'none',
                            channels_last=channels_last,
                            threads=torch.get_num_threads()))
    return results
