"""The original RepVGG learning-rate schedule, in closed form."""
import math

from mmengine.optim.scheduler.lr_scheduler import LRSchedulerMixin
from mmengine.optim.scheduler.param_scheduler import INF, _ParamScheduler

from repvgg_mm.registry import PARAM_SCHEDULERS


@PARAM_SCHEDULERS.register_module()
class WarmupCosineLR(LRSchedulerMixin, _ParamScheduler):
    """Linear warm-up from 0, then cosine to 0 computed over the whole run.

    For step ``t`` of ``T = end - begin`` (``T_w`` warm-up steps), with ``peak`` the
    optimizer's (linearly scaled) learning rate::

        lr(t) = peak * t / T_w                         if t < T_w
        lr(t) = 0.5 * peak * (1 + cos(pi * t / T))     otherwise

    exactly the schedule of the original training code (docs/repvgg.md 3a): the cosine
    runs over all ``T`` steps, warm-up included. Use ``by_epoch=True`` with
    ``convert_to_iter_based=True`` to give ``warmup``, ``begin`` and ``end`` in
    epochs and step every iteration.

    Args:
        optimizer: Wrapped optimizer.
        warmup (int | float): Warm-up length, in epochs or iterations (as ``by_epoch``).
            Defaults to 0.
        begin (int): First step. Defaults to 0.
        end (int): Last step (exclusive); must be finite.
        last_step (int): Used when resuming without a state dict. Defaults to -1.
        by_epoch (bool): Whether the steps are epochs. Defaults to True.
        verbose (bool): Print each update. Defaults to False.
    """

    def __init__(self, optimizer, warmup: float = 0, begin: int = 0, end: int = INF,
                 last_step: int = -1, by_epoch: bool = True, verbose: bool = False):
        if end == INF:
            raise ValueError('WarmupCosineLR needs a finite `end` (the length of the run)')
        if not 0 <= warmup < end - begin:
            raise ValueError(f'warmup must be in [0, end - begin), got {warmup} '
                             f'for begin={begin}, end={end}')
        self.warmup = warmup
        super().__init__(optimizer, begin=begin, end=end, last_step=last_step,
                         by_epoch=by_epoch, verbose=verbose)

    @classmethod
    def build_iter_from_epoch(cls, *args, warmup=0, begin=0, end=INF, by_epoch=True,
                              epoch_length=None, **kwargs):
        """Build the iteration-based scheduler from epoch-based arguments."""
        if not by_epoch or not epoch_length:
            raise ValueError('convert_to_iter_based needs by_epoch=True and an epoch length')
        return cls(*args, warmup=warmup * epoch_length, begin=int(begin * epoch_length),
                   end=int(end * epoch_length), by_epoch=False, **kwargs)

    def factor(self, step: int) -> float:
        """The multiplier of the peak learning rate at ``step`` (from ``begin``)."""
        if step < self.warmup:
            return step / self.warmup
        return 0.5 * (1 + math.cos(math.pi * step / (self.end - self.begin)))

    def _get_value(self) -> list:
        f = self.factor(self.last_step - self.begin)
        return [base * f for base in self.base_values]
