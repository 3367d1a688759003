"""Build models from configs and load weights into them strictly."""
import copy
import inspect
import os
import os.path as osp
from typing import List, Optional

import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import init_default_scope

from repvgg_mm.checkpoints import load_checkpoint_file, load_weights_into, read_state_dict
from repvgg_mm.datasets import resolve_auto_num_classes
from repvgg_mm.registry import MODELS


def build_model(cfg: Config) -> nn.Module:
    """Build ``cfg.model`` in the config's scope (``repvgg_mm`` by default), with the
    top-level ``data_preprocessor`` merged in as MMEngine's Runner does, and
    ``num_classes='auto'`` set from the training data (as the runner does)."""
    init_default_scope(cfg.get('default_scope', 'repvgg_mm'))
    if 'model' not in cfg:
        raise KeyError(f"config {cfg.filename!r} has no 'model' key")
    resolved = resolve_auto_num_classes(cfg)
    if resolved:
        print_log(resolved, logger='current')
    model_cfg = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor') is not None:
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    return MODELS.build(model_cfg)


def _accepts_deploy(module_cfg: dict) -> bool:
    module_type = module_cfg.get('type')
    cls = MODELS.get(module_type) if isinstance(module_type, str) else module_type
    if cls is None:
        return False
    # a subclass may pass `deploy` on through **kwargs: look along the MRO
    return any('deploy' in inspect.signature(c.__init__).parameters
               for c in cls.__mro__ if '__init__' in vars(c))


def _is_pretrained_init(init_cfg) -> bool:
    return isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained'


def deploy_config(cfg: Config) -> Config:
    """A copy of ``cfg`` whose model builds the fused structure directly: the model and
    every part (backbone, neck, head, decode/auxiliary head) whose class takes
    ``deploy`` get ``deploy=True`` -- the fused backbone, and no aux classifiers
    (RepVGGplus) or auxiliary heads (segmentors). The fused weights come from the
    deploy checkpoint, so ``load_from`` and ``Pretrained`` initialisations are dropped."""
    cfg = copy.deepcopy(cfg)
    init_default_scope(cfg.get('default_scope', 'repvgg_mm'))
    keys = ('backbone', 'neck', 'head', 'decode_head', 'auxiliary_head')
    parts = [cfg.model] + [cfg.model.get(k) for k in keys]
    parts = [p for p in parts if isinstance(p, dict) and _accepts_deploy(p)]
    if not parts:
        raise KeyError(f'no part of the model in config {cfg.filename!r} can be deployed: '
                       f"model.backbone.type is {cfg.model.get('backbone', {}).get('type')!r}, "
                       'expected a RepVGG backbone')
    for part in [cfg.model] + [cfg.model.get(k) for k in keys]:
        if not isinstance(part, dict):
            continue
        init_cfg = part.get('init_cfg')
        if _is_pretrained_init(init_cfg):
            part['init_cfg'] = None
        elif isinstance(init_cfg, list):
            part['init_cfg'] = [c for c in init_cfg if not _is_pretrained_init(c)] or None
    for part in parts:
        part['deploy'] = True
    cfg.load_from = None
    return cfg


def test_input_size(cfg: Config, default: int = 224) -> int:
    """The image size the config tests at (its CenterCrop), for verification."""
    pipeline = cfg.get('test_dataloader', {}).get('dataset', {}).get('pipeline', [])
    for step in pipeline:
        if step.get('type') in ('CenterCrop', 'CenterCropTensor'):
            size = step.get('crop_size')
            return size if isinstance(size, int) else max(size)
    return default


def load_checkpoint_into(model: nn.Module, checkpoint: str,
                         src_format: Optional[str] = None) -> str:
    """Read ``checkpoint`` (any known format) and load it strictly into ``model``.

    Returns:
        str: the checkpoint's detected key format.
    """
    state_dict, fmt = read_state_dict(checkpoint, src_format)
    load_weights_into(model, state_dict, checkpoint)
    return fmt


def checkpoint_meta(checkpoint: str) -> dict:
    """The ``meta`` dict of a checkpoint (MMEngine stores ``dataset_meta`` there), or
    an empty dict for plain state dicts."""
    content = load_checkpoint_file(checkpoint)
    meta = content.get('meta') if isinstance(content, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def config_class_names(cfg: Config) -> Optional[List[str]]:
    """Class names of the config's test data set, without reading its images.

    In this order: ``metainfo.classes`` of the data set config; the sorted class
    folders of ``<data_root>/<split>`` when the data is there and has no list file;
    MMPretrain's ImageNet names for a 1000-class model. None when none applies.
    """
    dataset = cfg.get('test_dataloader', {}).get('dataset', {})
    classes = (dataset.get('metainfo') or {}).get('classes')
    if classes:
        return list(classes)
    root, split = dataset.get('data_root'), dataset.get('split', 'val')
    folder = osp.join(root, split) if root else None
    if folder and osp.isdir(folder) and not osp.isfile(osp.join(root, f'{split}_list.txt')):
        return sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if cfg.model.get('head', {}).get('num_classes') == 1000:
        from mmpretrain.datasets.categories import IMAGENET_CATEGORIES
        return list(IMAGENET_CATEGORIES)
    return None
