"""FLOPs and parameter counts with MMEngine's complexity analysis."""
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer
from mmengine.config import Config

from .model import build_model, deploy_config, test_input_size


def model_complexity(model: nn.Module, shape: Sequence[int] = (224, 224)) -> dict:
    """FLOPs and parameters of ``model`` on one ``3 x H x W`` image.

    Counted by :class:`mmengine.analysis.FlopAnalyzer` (fvcore's counter): one
    multiply-add is one FLOP, convolutions and linear layers count
    ``output elements x (in_channels / groups) x kernel area``; a BatchNorm in eval
    mode counts one FLOP per element, and additions, ReLU, sigmoid and biases are not
    counted. So the fused model's count is the multiply-adds of its 3x3 convs plus
    the classifier -- the figure the RepVGG paper publishes.

    Args:
        model (nn.Module): A classifier whose ``forward(inputs)`` takes a batch.
        shape (Sequence[int]): Input height and width. Defaults to ``(224, 224)``.

    Returns:
        dict: ``flops`` (int), ``params`` (int) and ``shape`` (tuple).
    """
    if len(shape) != 2 or min(shape) <= 0:
        raise ValueError(f'shape must be (height, width) with positive sizes, got {shape}')
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    inputs = torch.zeros(1, 3, *shape, dtype=param.dtype, device=param.device)
    try:
        analyzer = FlopAnalyzer(model, inputs)
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        flops = int(analyzer.total())
    finally:
        model.train(was_training)
    return dict(flops=flops, params=sum(p.numel() for p in model.parameters()),
                shape=tuple(shape))


def config_complexity(cfg: Config, deploy: bool = False,
                      shape: Optional[Sequence[int]] = None) -> dict:
    """FLOPs and parameters of the model a config builds (fused with ``deploy``).

    Args:
        cfg (Config): The model's config.
        deploy (bool): Count the fused (inference-time) model. Defaults to False.
        shape (Sequence[int], optional): Input height and width; defaults to the
            config's test crop.

    Returns:
        dict: as :func:`model_complexity`, plus ``deploy``.
    """
    if shape is None:
        size = test_input_size(cfg)
        shape = (size, size)
    model = build_model(deploy_config(cfg) if deploy else cfg)
    with torch.no_grad():
        report = model_complexity(model, shape)
    report['deploy'] = deploy
    return report


def format_flops(flops: Union[int, float]) -> str:
    """``1519402240`` -> ``'1.52 G'``."""
    for unit, scale in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
        if flops >= scale:
            return f'{flops / scale:.2f} {unit}'
    return str(int(flops))
