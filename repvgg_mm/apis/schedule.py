"""Look at what a config will do before running it: its lr schedule and param groups."""
import copy
import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import PARAM_SCHEDULERS, init_default_scope


def iters_per_epoch(dataset_size: int, gpus: int, batch_size: int) -> int:
    """Iterations per epoch of MMEngine's DefaultSampler (padded to the world size,
    last partial batch kept)."""
    per_rank = math.ceil(dataset_size / gpus)
    return math.ceil(per_rank / batch_size)


def scaled_lr(cfg: Config, gpus: int, batch_size: int) -> float:
    """The optimizer's lr after MMEngine's linear scaling (``auto_scale_lr``)."""
    lr = cfg.optim_wrapper.optimizer.lr
    auto = cfg.get('auto_scale_lr') or {}
    if auto.get('enable', False):
        lr *= gpus * batch_size / auto['base_batch_size']
    return lr


def simulate_lr(cfg: Config, dataset_size: int, gpus: int,
                batch_size: Optional[int] = None) -> List[Tuple[int, int, float]]:
    """The learning rate of every training iteration, as the runner would set it.

    Builds the config's param schedulers on a one-parameter optimizer (with the lr
    scaled as at run time) and steps them the way MMEngine's ParamSchedulerHook does.

    Returns:
        list of ``(iteration, epoch, lr)``, iterations and epochs counted from 0.
    """
    init_default_scope(cfg.get('default_scope', 'repvgg_mm'))
    batch_size = batch_size or cfg.train_dataloader.batch_size
    epoch_length = iters_per_epoch(dataset_size, gpus, batch_size)
    optim_cfg = copy.deepcopy(cfg.optim_wrapper)
    optim_cfg.optimizer.lr = scaled_lr(cfg, gpus, batch_size)
    optim_cfg.pop('constructor', None)
    optim_cfg.pop('paramwise_cfg', None)
    optim_wrapper = build_optim_wrapper(nn.Linear(1, 1), optim_cfg)
    scheduler_cfgs = cfg.param_scheduler
    if isinstance(scheduler_cfgs, dict):
        scheduler_cfgs = [scheduler_cfgs]
    schedulers = [PARAM_SCHEDULERS.build(copy.deepcopy(s), default_args=dict(
        optimizer=optim_wrapper, epoch_length=epoch_length)) for s in scheduler_cfgs]
    max_epochs = cfg.train_cfg.max_epochs
    rows = []
    with torch.no_grad():
        for epoch in range(max_epochs):
            for i in range(epoch_length):
                rows.append((epoch * epoch_length + i, epoch,
                             optim_wrapper.optimizer.param_groups[0]['lr']))
                for s in schedulers:
                    if not s.by_epoch:
                        s.step()
            for s in schedulers:
                if s.by_epoch:
                    s.step()
    return rows


def param_group_table(cfg: Config) -> List[dict]:
    """Every parameter of ``cfg.model`` with the lr and weight decay the config's
    optimizer wrapper gives it (lr before linear scaling)."""
    from .model import build_model
    model = build_model(cfg)
    optim_wrapper = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    names = {id(p): n for n, p in model.named_parameters()}
    rows = []
    # the wrapper's own param_groups adds a bookkeeping group; the optimizer's are real
    for index, group in enumerate(optim_wrapper.optimizer.param_groups):
        for param in group['params']:
            rows.append(dict(name=names[id(param)], shape=tuple(param.shape), group=index,
                             lr=group['lr'], weight_decay=group['weight_decay']))
    order = {n: i for i, n in enumerate(names.values())}
    return sorted(rows, key=lambda r: order[r['name']])
