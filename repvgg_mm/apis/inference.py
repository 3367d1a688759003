"""Classify images with a trained or fused model, through MMPretrain's inferencer."""
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.registry import init_default_scope
from mmpretrain.apis import ImageClassificationInferencer

from repvgg_mm.registry import TRANSFORMS

from .model_zoo import get_model

ImageInput = Union[str, np.ndarray]

# Loading is done by the inferencer itself (from a path or an array, as MMCV loads: BGR
# arrays), so the config's loading step is dropped from its test pipeline; a tensor
# pipeline's is replaced by the conversion of that array to its RGB tensor
# (ArrayToImageTensor).


class RepVGGInferencer(ImageClassificationInferencer):
    """MMPretrain's :class:`ImageClassificationInferencer` for repvgg_mm models.

    It differs only where our scope matters: the model comes from :func:`get_model`
    (zoo names, config files, every checkpoint format, training-time or fused), and
    the test pipeline of the model's config is built in the config's scope
    (``repvgg_mm``). Calling it takes one image or a list (paths or BGR arrays) and
    returns one dict per image: ``pred_label``, ``pred_score``, ``pred_class`` (when
    class names are known) and ``pred_scores`` (all classes). ``show_dir=DIR`` also
    writes each image with its prediction drawn by MMPretrain's visualizer
    (``DIR/<image stem>.png``).

    Args:
        model (nn.Module | str | Config): A model from :func:`get_model`, or what
            :func:`get_model` takes (a zoo name or a config).
        checkpoint (str, optional): Weights (file, URL or zoo name), when ``model`` is
            a name or config.
        deploy (bool): Fuse the model, when ``model`` is a name or config.
        device (str): Device, when ``model`` is a name or config. Defaults to 'cpu'.
        classes (Sequence[str], optional): Class names; defaults to the model's
            ``_dataset_meta['classes']``.
        pretrained (bool | str): As :func:`get_model`'s: ``True`` loads the published
            ImageNet weights of a zoo name. Defaults to False.
    """

    def __init__(self, model: Union[nn.Module, str, Config], checkpoint: Optional[str] = None,
                 deploy: bool = False, device: str = 'cpu',
                 classes: Optional[Sequence[str]] = None,
                 pretrained: Union[bool, str] = False) -> None:
        if not isinstance(model, nn.Module):
            model = get_model(model, checkpoint, deploy=deploy, device=device,
                              pretrained=pretrained)
        elif checkpoint is not None or pretrained:
            raise ValueError('pass checkpoint/pretrained to get_model() when giving a built '
                             'model')
        if getattr(model, '_config', None) is None:
            raise ValueError(f'{type(model).__name__} has no _config (the config its test '
                             'pipeline comes from): build it with repvgg_mm.apis.get_model')
        super().__init__(model, pretrained=False, device=None, classes=classes)

    def __call__(self, inputs: Union[ImageInput, Sequence[ImageInput]],
                 return_datasamples: bool = False, batch_size: int = 1,
                 **kwargs) -> list:
        """MMPretrain's inference loop without its progress bar: library code does
        not print (a tool's output stays parseable). ``kwargs`` are the parent's
        (``show_dir``, ``resize``, ``draw_score``, ...)."""
        preprocess_kwargs, forward_kwargs, visualize_kwargs, postprocess_kwargs = \
            self._dispatch_kwargs(**kwargs)
        images = self._inputs_to_list(inputs)
        preds = []
        for batch in self.preprocess(images, batch_size=batch_size, **preprocess_kwargs):
            preds.extend(self.forward(batch, **forward_kwargs))
        visualization = self.visualize(images, preds, **visualize_kwargs)
        return self.postprocess(preds, visualization, return_datasamples,
                                **postprocess_kwargs)

    def _init_pipeline(self, cfg: Config) -> Compose:
        init_default_scope(cfg.get('default_scope', 'repvgg_mm'))
        try:
            steps = cfg.test_dataloader.dataset.pipeline
        except AttributeError as exc:
            raise KeyError(f'config {cfg.filename!r} has no test_dataloader.dataset.pipeline '
                           '(needed to prepare images)') from exc
        built = [TRANSFORMS.build(dict(type='ArrayToImageTensor')
                                  if step.get('type') == 'LoadImageTensor' else step)
                 for step in steps if step.get('type') != 'LoadImageFromFile']
        return Compose(built)


def inference_model(model: Union[nn.Module, str], image_or_path: ImageInput) -> dict:
    """Classify one image.

    Args:
        model (nn.Module | str): A model from :func:`get_model` (training-time or
            fused), or a zoo name (``'repvgg-a0'``): its published ImageNet weights are
            loaded (downloaded once), as MMPretrain's ``inference_model`` does.
        image_or_path (str | np.ndarray): An image file or a BGR ``H x W x 3`` array.

    Returns:
        dict: ``pred_label`` (int), ``pred_score`` (float, softmax probability),
        ``pred_class`` (str, or None when the model has no class names) and
        ``pred_scores`` (numpy array over all classes).
    """
    if isinstance(model, str):
        model = get_model(model, pretrained=True)
    result = RepVGGInferencer(model)(image_or_path)[0]
    result.setdefault('pred_class', None)
    return result


def top_k(result: dict, k: int, classes: Optional[Sequence[str]]) -> List[dict]:
    """The ``k`` best classes of one inference result, best first:
    ``[{'label', 'class', 'score'}, ...]``."""
    scores = torch.as_tensor(result['pred_scores'])
    values, labels = scores.topk(min(k, scores.numel()))
    return [dict(label=int(label), score=float(value),
                 **{'class': classes[label] if classes else None})
            for value, label in zip(values.tolist(), labels.tolist())]
