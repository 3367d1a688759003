"""The re-parameterization protocol.

A module that can fuse itself for inference has a ``switch_to_deploy()`` method
(idempotent). :func:`reparameterize_model` walks any module tree -- a classifier, a
detector with our backbone, a user's own model -- and calls it on every such module.
Modules that exist only for training remove themselves in the same call.
"""
import copy

import torch
import torch.nn as nn


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fuse every re-parameterizable module of ``model``.

    Args:
        model (nn.Module): Any module tree containing RepVGG blocks (or other modules
            that implement ``switch_to_deploy()``). Parts without the method are left
            untouched.
        inplace (bool): Fuse ``model`` itself instead of a deep copy. Defaults to False.

    Returns:
        nn.Module: The fused model (``model`` itself when ``inplace``), in the same
        train/eval mode as the input.
    """
    if not inplace:
        model = copy.deepcopy(model)
    # Collect first: switching mutates the tree being walked.
    for module in list(model.modules()):
        switch = getattr(module, 'switch_to_deploy', None)
        if callable(switch):
            switch()
    return model


@torch.no_grad()
def max_logit_difference(reference: nn.Module, fused: nn.Module,
                         inputs: torch.Tensor) -> tuple:
    """Max absolute and relative difference of two models' outputs on ``inputs``.

    Both models are run in eval mode; the relative difference is the absolute one
    divided by the largest absolute reference output.
    """
    ref_out = reference.eval()(inputs)
    fused_out = fused.eval()(inputs)
    if isinstance(ref_out, (tuple, list)):
        ref_out, fused_out = ref_out[-1], fused_out[-1]
    abs_diff = (ref_out - fused_out).abs().max().item()
    scale = ref_out.abs().max().item()
    return abs_diff, abs_diff / max(scale, 1e-12)
