"""Hooks that keep runs honest: reproducible epochs, sane data, finite losses."""
import logging
import os.path as osp
import random

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

from repvgg_mm.registry import HOOKS


@HOOKS.register_module()
class EpochSeedHook(Hook):
    """Reseed Python, NumPy and PyTorch at the start of every epoch from
    ``(seed, epoch, rank)``, so that an epoch's random augmentations do not depend on
    what ran before it in the same process -- the condition for a resumed run to end
    with the same weights as an uninterrupted one."""

    priority = 'VERY_HIGH'

    def before_train_epoch(self, runner) -> None:
        seed = runner.seed if runner.seed is not None else 0
        value = (seed + 1_000_003 * runner.epoch + 7919 * runner.rank) % (2**32)
        random.seed(value)
        np.random.seed(value)
        torch.manual_seed(value)



@HOOKS.register_module()
class DataModelCheckHook(Hook):
    """Fail early, with the file and line at fault, when the data does not fit the
    model: a class count different from the head's ``num_classes`` (folder layout), or
    a label outside ``[0, num_classes)`` (list files)."""

    priority = 'VERY_HIGH'

    def _check(self, runner, dataloader) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        num_classes = getattr(getattr(model, 'head', None), 'num_classes', None)
        dataset = getattr(dataloader, 'dataset', None)
        if num_classes is None or dataset is None or not hasattr(dataset, 'get_gt_labels'):
            return
        where = getattr(dataset, 'ann_file', '') or getattr(dataset, 'img_prefix', '')
        classes = dataset.metainfo.get('classes')
        if classes is not None and len(classes) != num_classes:
            raise ValueError(
                f'the model has num_classes={num_classes} (model.head.num_classes) but the '
                f'data in {where!r} has {len(classes)} classes; set model.head.num_classes '
                f'and data_preprocessor.num_classes to {len(classes)}')
        labels = dataset.get_gt_labels()
        bad = np.flatnonzero(labels >= num_classes)
        if len(bad):
            info = dataset.get_data_info(int(bad[0]))
            line = info.get('list_line', info.get('img_path'))
            raise ValueError(f'{line}: label {int(labels[bad[0]])} is >= num_classes='
                             f'{num_classes} of the model ({len(bad)} such labels in {where!r})')

    def before_train(self, runner) -> None:
        self._check(runner, runner.train_dataloader)
        self._check_channel_order(runner, runner.train_dataloader)
        self._check_cache_sampler(runner.train_dataloader)

    @staticmethod
    def _check_cache_sampler(dataloader) -> None:
        """``cache_mode='part'`` keeps each rank's fixed part of the data in memory;
        only :class:`~repvgg_mm.datasets.SampleSeedSampler` keeps a shuffling rank on
        it -- another sampler works, but reads most files from disk again."""
        from repvgg_mm.datasets import SampleSeedSampler
        sampler = getattr(dataloader, 'sampler', None)
        if getattr(getattr(dataloader, 'dataset', None), 'cache_mode', None) == 'part' \
                and getattr(sampler, 'world_size', 1) > 1 \
                and getattr(sampler, 'shuffle', False) \
                and not isinstance(sampler, SampleSeedSampler):
            print_log(f"cache_mode='part' keeps each rank's part of the training data in "
                      f'memory, but the sampler {type(sampler).__name__} shuffles across '
                      "ranks: most samples are read from the files again; use "
                      "sampler=dict(type='SampleSeedSampler', shuffle=True)",
                      logger='current', level=logging.WARNING)

    @staticmethod
    def _gives_rgb(dataloader) -> bool:
        if getattr(dataloader, 'channel_order', None) == 'rgb':  # the GPU-decoding loader
            return True
        from repvgg_mm.datasets import ArrayToImageTensor, LoadImageTensor
        pipeline = getattr(getattr(dataloader, 'dataset', None), 'pipeline', None)
        return any(isinstance(t, (LoadImageTensor, ArrayToImageTensor))
                   for t in getattr(pipeline, 'transforms', []))

    @classmethod
    def _check_channel_order(cls, runner, dataloader) -> None:
        """A loader that gives RGB images (the GPU-decoding loader, the tensor
        pipeline's ``LoadImageTensor``) needs a data preprocessor that reads their
        declared channel order: a plain ClsDataPreprocessor with ``to_rgb=True`` would
        swap red and blue without a word."""
        if not cls._gives_rgb(dataloader):
            return
        from repvgg_mm.models import OrderAwareClsDataPreprocessor
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        preprocessor = getattr(model, 'data_preprocessor', None)
        if getattr(preprocessor, 'to_rgb', False) and not isinstance(
                preprocessor, OrderAwareClsDataPreprocessor):
            raise ValueError(
                f'the loader {type(dataloader).__name__} gives RGB images but the '
                f"model's data preprocessor {type(preprocessor).__name__} flips every batch "
                "(to_rgb=True); set data_preprocessor.type='OrderAwareClsDataPreprocessor' "
                "(it reads the declared channel order), or load with LoadImageFromFile "
                "(BGR) / channel_order='bgr' on the GPU-decoding loader")

    def before_val(self, runner) -> None:
        self._check(runner, runner.val_dataloader)
        self._check_channel_order(runner, runner.val_dataloader)

    def before_test(self, runner) -> None:
        self._check(runner, runner.test_dataloader)
        self._check_channel_order(runner, runner.test_dataloader)


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Stop at the first NaN/inf training loss, before it can reach a checkpoint."""

    priority = 'VERY_HIGH'

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        loss = (outputs or {}).get('loss')
        if loss is None or bool(torch.isfinite(loss).all()):
            return
        pointer = osp.join(runner.work_dir, 'last_checkpoint')
        last = open(pointer).read().strip() if osp.isfile(pointer) else 'none saved yet'
        raise FloatingPointError(
            f'the training loss is {loss.item()} at iteration {runner.iter + 1} '
            f'(epoch {runner.epoch + 1}); stopped here, the last good checkpoint is {last}. '
            'Hints: lower the learning rate (optim_wrapper.optimizer.lr), look for broken '
            'images or labels, or train without --amp.')


@HOOKS.register_module()
class BrokenImageReportHook(Hook):
    """At the end of each training epoch, report how many unreadable images the
    ``skip_broken`` option of our ``LoadImageFromFile`` skipped."""

    def after_train_epoch(self, runner) -> None:
        from repvgg_mm.datasets.loading import take_skipped_count
        count = take_skipped_count()
        if count:
            # runner.epoch is still the 0-based index of the epoch that just ended
            runner.logger.warning(f'epoch {runner.epoch + 1}: skipped {count} unreadable '
                                  'image(s) (LoadImageFromFile skip_broken=True); each was '
                                  'replaced by another random sample')


@HOOKS.register_module()
class QATSyncHook(Hook):
    """Quantization-aware training on several ranks: after every iteration, the BN
    running statistics and observed INT8 ranges of a ``QATClassifier`` are averaged
    over the ranks and the scales recomputed
    (:func:`~repvgg_mm.models.quantizer.average_across_ranks`), so every rank
    fake-quantizes alike and each checkpoint and the exported file hold the state of
    all ranks' data -- not rank 0's alone, and not ranks drifting apart (MMEngine's DDP
    wrapper does not broadcast buffers). One all-reduce of a small tensor per
    iteration; nothing on a single process. The QAT configs add it."""

    priority = 'HIGH'

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        from repvgg_mm.models.quantizer import average_across_ranks
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        average_across_ranks(getattr(model, 'network', model))
