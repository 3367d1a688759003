"""Run a model over a config's test split and collect its logits."""
import copy
from typing import Tuple

import torch
from mmengine.config import Config
from mmengine.runner import Runner

from .model import build_model, load_checkpoint_into


@torch.no_grad()
def split_logits(cfg: Config, checkpoint: str,
                 dataloader_key: str = 'test_dataloader') -> Tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of ``checkpoint`` (built from ``cfg``) on a split, in order.

    Returns:
        tuple[Tensor, Tensor]: logits (N, num_classes) and labels (N, ).
    """
    model = build_model(cfg)
    load_checkpoint_into(model, checkpoint)
    model.eval()
    loader_cfg = copy.deepcopy(cfg[dataloader_key])
    loader_cfg['sampler'] = dict(type='DefaultSampler', shuffle=False)
    dataloader = Runner.build_dataloader(loader_cfg)
    logits, labels = [], []
    for data in dataloader:
        data = model.data_preprocessor(data, False)
        logits.append(model(data['inputs'], mode='tensor'))
        labels.extend(int(s.gt_label) for s in data['data_samples'])
    return torch.cat(logits), torch.tensor(labels)
