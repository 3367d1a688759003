"""The classification head that adds the weighted aux-classifier losses of RepVGGplus."""
from typing import List, Sequence, Tuple

import torch.nn as nn
from mmpretrain.models.heads import LinearClsHead
from torch import Tensor

from repvgg_mm.registry import MODELS

from ..necks.aux_neck import AUX_NAMES


@MODELS.register_module()
class RepVGGplusClsHead(LinearClsHead):
    """Linear main classifier plus, during training, one linear aux classifier per
    aux feature of :class:`~repvgg_mm.models.necks.RepVGGplusAuxNeck`.

    ``loss`` returns the main loss as ``loss`` and each aux loss, already multiplied by
    ``aux_loss_weight``, as ``loss_<aux name>`` (MMEngine sums them and logs each).
    Prediction and evaluation use the main output only. After :meth:`switch_to_deploy`
    (or with ``deploy=True``) the aux classifiers are gone.

    Args:
        num_classes (int): Number of classes.
        in_channels (int): Channels of the main features (2560 for L2pse).
        aux_in_channels (Sequence[int]): Channels of the aux features.
        aux_loss_weight (float): Weight of every aux loss. Defaults to 0.1.
        aux_names (Sequence[str]): Names of the aux classifiers (``<name>_fc``).
        deploy (bool): Build without aux classifiers. Defaults to False.
        **kwargs: Passed on to :class:`mmpretrain.models.heads.LinearClsHead`
            (``loss``, ``topk``, ``init_cfg``...).
    """

    def __init__(self, num_classes: int, in_channels: int,
                 aux_in_channels: Sequence[int] = (160, 320, 640),
                 aux_loss_weight: float = 0.1, aux_names: Sequence[str] = AUX_NAMES,
                 deploy: bool = False, **kwargs) -> None:
        super().__init__(num_classes, in_channels, **kwargs)
        if len(aux_in_channels) != len(aux_names):
            raise ValueError(f'aux_in_channels {list(aux_in_channels)} and aux_names '
                             f'{list(aux_names)} need the same length')
        self.aux_names = tuple(aux_names)
        self.aux_loss_weight = aux_loss_weight
        self.deploy = deploy
        if not deploy:
            for name, channels in zip(self.aux_names, aux_in_channels):
                self.add_module(f'{name}_fc', nn.Linear(channels, num_classes))

    def aux_scores(self, feats: Tuple[Tensor, ...]) -> List[Tensor]:
        """Logits of the aux classifiers for the aux features ``feats[:-1]``."""
        return [getattr(self, f'{name}_fc')(x) for name, x in zip(self.aux_names, feats)]

    def loss(self, feats: Tuple[Tensor, ...], data_samples, **kwargs) -> dict:
        losses = self._get_loss(self(feats), data_samples, **kwargs)
        if not self.deploy:
            for name, score in zip(self.aux_names, self.aux_scores(feats)):
                aux = self._get_loss(score, data_samples, **kwargs)['loss']
                losses[f'loss_{name}'] = self.aux_loss_weight * aux
        return losses

    def switch_to_deploy(self) -> None:
        """Remove the aux classifiers: they exist only for training."""
        if self.deploy:
            return
        for name in self.aux_names:
            delattr(self, f'{name}_fc')
        self.deploy = True
