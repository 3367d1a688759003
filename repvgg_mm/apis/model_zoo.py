"""The model zoo: models by name from the metafile(s), the MMPretrain way.

``configs/metafile.yml`` follows MMPretrain's ``metafile.yml`` convention (a
``Collections`` list and a ``Models`` list whose entries name a ``Config``, their
``Metadata`` -- parameters, FLOPs --, published ``Results`` and ``Weights``). Every
arch is listed twice: ``repvgg-a0`` (training-time structure) and ``repvgg-a0_deploy``
(the fused structure, ``Metadata.Deploy: true``).
"""
import copy
import difflib
import fnmatch
import os.path as osp
from functools import lru_cache
from typing import List, Optional, Union

import torch.nn as nn
from mmengine.config import Config

from repvgg_mm.checkpoints.zoo import model_index, published_url

from .model import (
    build_model,
    config_class_names,
    deploy_config,
)
from .reparam import load_fused_model


def list_models(pattern: Optional[str] = None) -> List[str]:
    """Names of the models in the zoo, sorted.

    Args:
        pattern (str, optional): A shell-style wildcard (``'repvgg-b*'``,
            ``'*_deploy'``), case-insensitive. Defaults to None (all).

    Returns:
        list[str]: the matching names, usable with :func:`get_model`.
    """
    names = sorted(model_index())
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatch(n, pattern.lower())]
    return names


@lru_cache(maxsize=None)
def _zoo_config(path: str) -> Config:
    # a name and its _deploy twin share a config: parse it once (callers copy it)
    return Config.fromfile(path)


def _resolve(name_or_config: Union[str, Config]) -> tuple:
    """``(config, deploy-by-name)`` of a model name, config path or Config."""
    if isinstance(name_or_config, Config):
        return copy.deepcopy(name_or_config), False
    if not isinstance(name_or_config, str):
        raise TypeError(f'expected a model name, a config path or a Config, got '
                        f'{type(name_or_config).__name__}')
    if name_or_config.endswith('.py') or osp.isfile(name_or_config):
        from repvgg_mm.cli import load_config
        return load_config(name_or_config), False
    index = model_index()
    entry = index.get(name_or_config.lower())
    if entry is None:
        close = difflib.get_close_matches(name_or_config.lower(), list(index), n=5,
                                          cutoff=0.5)
        hint = f'close matches: {", ".join(close)}' if close else \
            f'known: {", ".join(sorted(index))}'
        raise ValueError(f'unknown model name {name_or_config!r} (neither a zoo name nor '
                         f'a config file); {hint}')
    cfg = copy.deepcopy(_zoo_config(entry['config_path']))
    return cfg, bool(entry.get('Metadata', {}).get('Deploy', False))


def get_model(name_or_config: Union[str, Config], checkpoint: Optional[str] = None,
              deploy: bool = False, device: str = 'cpu',
              pretrained: Union[bool, str] = False) -> nn.Module:
    """A ready-to-run classifier in eval mode, by zoo name or config.

    Args:
        name_or_config (str | Config): A name of :func:`list_models` (``'repvgg-a0'``,
            ``'repvgg-a0_deploy'``), a config file or a :class:`Config`.
        checkpoint (str, optional): Weights in any format the project reads (ours,
            the original code's, MMPretrain's, timm's; training-time or fused): a
            file, an ``http(s)://`` URL (downloaded once into the torch.hub cache) or
            a zoo name with published weights. A fused checkpoint gives the fused
            model; a training-time one is loaded strictly and, with ``deploy``, fused
            afterwards. Defaults to None (random initialisation).
        deploy (bool): Return the fused (inference-time) structure. Names ending in
            ``_deploy`` imply it. Defaults to False.
        device (str): Where to put the model. Defaults to ``'cpu'``.
        pretrained (bool | str): ``True`` loads the published ImageNet weights of a
            zoo name (downloaded once, SHA-256 checked, read safely; ``_deploy`` names
            are fused after loading); a path or URL is the same as ``checkpoint``.
            Defaults to False.

    Returns:
        nn.Module: the model, with ``_config`` (its config, for the test pipeline)
        and ``_dataset_meta`` (``classes``: from the checkpoint's meta when present,
        else from the config's data set, else None) as MMPretrain's ``get_model`` sets.
    """
    cfg, deploy_by_name = _resolve(name_or_config)
    deploy = deploy or deploy_by_name
    if pretrained is not False and pretrained is not None:
        if checkpoint is not None:
            raise ValueError('pass either checkpoint or pretrained, not both')
        if pretrained is True:
            if not isinstance(name_or_config, str) or name_or_config.lower() not in \
                    model_index():
                raise ValueError('pretrained=True needs a zoo name (list_models()); for a '
                                 'config, pass the weights as checkpoint=PATH or URL')
            checkpoint = published_url(name_or_config)
        elif isinstance(pretrained, str):
            checkpoint = pretrained
        else:
            raise TypeError(f'pretrained must be True, False or a path/URL, got '
                            f'{pretrained!r}')
    dataset_meta = None
    if checkpoint is None:
        model = build_model(deploy_config(cfg) if deploy else cfg)
    else:
        loaded = load_fused_model(cfg, checkpoint, fuse=deploy)
        deploy = loaded['fused'] is not None  # a fused checkpoint gives the fused model
        model = loaded['fused'] if deploy else loaded['training']
        dataset_meta = loaded['meta'].get('dataset_meta')
    if not dataset_meta or not dataset_meta.get('classes'):
        dataset_meta = dict(classes=config_class_names(cfg))
    classes, num_classes = dataset_meta['classes'], cfg.model.get('head', {}).get('num_classes')
    if classes and num_classes and len(classes) != num_classes:
        raise ValueError(f'{len(classes)} class names (from '
                         f"{'the checkpoint' if checkpoint else 'the config data set'}) for "
                         f'a model with model.head.num_classes={num_classes}')
    model._config = deploy_config(cfg) if deploy else cfg
    model._dataset_meta = dataset_meta
    return model.to(device).eval()
