"""The original RepVGG weight-decay rules as an MMEngine optimizer-wrapper constructor."""
from typing import Dict, List, Optional

import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor
from torch.nn.modules.batchnorm import _BatchNorm

from repvgg_mm.registry import OPTIM_WRAPPER_CONSTRUCTORS

DECAY_RULES = ('original', 'paper')


def _batchnorm_params(model: nn.Module) -> set:
    return {id(p) for m in model.modules() if isinstance(m, _BatchNorm)
            for p in m.parameters(recurse=False)}


def decayed(name: str, param, rule: str = 'original', is_bn: bool = False) -> bool:
    """Whether parameter ``name`` gets weight decay under ``rule``.

    ``'original'`` (the specification's training code, docs/repvgg.md 3a), in this order: a
    name containing ``identity.weight`` is decayed; any other 1-D parameter or name
    ending in ``.bias`` is not; everything else is.

    ``'paper'`` (the 120-epoch recipe, docs/repvgg.md 3b): no decay on any BatchNorm
    parameter or bias, except the identity branch's BN weight; everything else decayed.
    """
    if rule == 'original':
        if 'identity.weight' in name:
            return True
        return not (param.ndim == 1 or name.endswith('.bias'))
    if rule == 'paper':
        if name.endswith('rbr_identity.weight'):
            return True
        return not (is_bn or name.endswith('.bias'))
    raise ValueError(f'unknown decay_rule {rule!r}; expected one of {DECAY_RULES}')


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class RepVGGOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Parameter groups with the original RepVGG weight-decay rule.

    Works for any model -- our classifiers, RepVGGplus with its aux classifiers and SE,
    or a user's model that embeds our backbone -- since the rule reads only parameter
    names, shapes and whether a parameter belongs to a BatchNorm layer.

    ``paramwise_cfg`` keys:
        decay_rule (str): ``'original'`` (default) or ``'paper'``, see :func:`decayed`.
        bias_lr_mult (float): Learning-rate multiplier of biases (the paper's old script
            used 2; reported to make no difference). Defaults to 1.
        custom_keys (dict): ``{name part: dict(lr_mult=..., decay_mult=...)}`` as in
            MMEngine's ``DefaultOptimWrapperConstructor``: a parameter whose name
            contains the key (the longest matching key wins) gets its learning rate and
            weight decay multiplied -- e.g. ``{'backbone': dict(lr_mult=0.1)}`` to
            fine-tune a pretrained backbone slower than a new head. The decay rule
            still decides which parameters are decayed at all.

    Each group carries ``param_names`` so that the assignment can be printed
    (``tools/analysis/print_param_groups.py``).
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        self.decay_rule = paramwise_cfg.pop('decay_rule', 'original')
        self.bias_lr_mult = paramwise_cfg.pop('bias_lr_mult', 1.0)
        self.custom_keys = dict(paramwise_cfg.pop('custom_keys', None) or {})
        if paramwise_cfg:
            raise KeyError(f'RepVGGOptimWrapperConstructor got unknown paramwise_cfg keys '
                           f"{sorted(paramwise_cfg)}; it takes 'decay_rule', "
                           "'bias_lr_mult' and 'custom_keys' (use "
                           "DefaultOptimWrapperConstructor for MMEngine's other options)")
        for key, rule in self.custom_keys.items():
            unknown = set(rule) - {'lr_mult', 'decay_mult'} if isinstance(rule, dict) else None
            if unknown is None or unknown:
                raise KeyError(f'paramwise_cfg.custom_keys[{key!r}] = {rule!r}: expected a '
                               "dict with 'lr_mult' and/or 'decay_mult'")
        if self.decay_rule not in DECAY_RULES:
            raise ValueError(f'unknown decay_rule {self.decay_rule!r}; expected one of '
                             f'{DECAY_RULES}')
        # a non-empty paramwise_cfg makes the base class call add_params()
        super().__init__(optim_wrapper_cfg, dict(decay_rule=self.decay_rule))

    def add_params(self, params: List[dict], module: nn.Module, **kwargs) -> None:
        bn_params = _batchnorm_params(module)
        groups: Dict[tuple, dict] = {}
        # MMEngine's order: the longest key first, alphabetical among equals
        custom = sorted(sorted(self.custom_keys), key=len, reverse=True)
        unused = set(custom)
        for name, param in module.named_parameters():
            decay = decayed(name, param, self.decay_rule, id(param) in bn_params)
            lr_mult = self.bias_lr_mult if name.endswith('.bias') else 1.0
            decay_mult = 1.0
            match = next((k for k in custom if k in name), None)
            if match is not None:
                unused.discard(match)
                lr_mult *= self.custom_keys[match].get('lr_mult', 1.0)
                decay_mult = self.custom_keys[match].get('decay_mult', 1.0)
            key = (decay, lr_mult, decay_mult)
            if key not in groups:
                decay_value = self.base_wd * decay_mult if self.base_wd is not None \
                    else self.base_wd
                group = dict(params=[], param_names=[],
                             weight_decay=decay_value if decay else 0.0)
                if lr_mult != 1.0:
                    group['lr'] = self.base_lr * lr_mult
                groups[key] = group
            groups[key]['params'].append(param)
            groups[key]['param_names'].append(name)
        if unused:  # a typo would otherwise silently train everything at the base rate
            raise KeyError(f'paramwise_cfg.custom_keys {sorted(unused)} match no parameter '
                           'name of the model')
        params.extend(groups.values())
