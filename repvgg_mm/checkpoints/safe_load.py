"""Loading checkpoints without executing pickled code.

PyTorch >= 2.6 unpickles with ``weights_only=True`` by default. MMEngine's own training
checkpoints hold a few non-tensor objects -- the message hub's ``HistoryBuffer`` with numpy
arrays and scalars, and its ``statistics_methods``, bound methods that pickle as
``getattr(HistoryBuffer, 'mean')`` -- so resuming needs exactly those globals allow-listed,
never the protection turned off.

``getattr`` is safe to allow here: the weights-only unpickler only *calls* (REDUCE)
allow-listed callables and only BUILDs allow-listed types, so an attribute fetched with
``getattr`` can be stored but never invoked.
"""
import builtins
import contextlib
from typing import Any, Iterator, List

import numpy as np
import torch
from mmengine.logging import HistoryBuffer


def _numpy_globals() -> List[Any]:
    try:
        multiarray = np._core.multiarray  # numpy >= 2
    except AttributeError:  # pragma: no cover - numpy 1.x
        multiarray = np.core.multiarray
    dtype_classes = [type(np.dtype(t)) for t in
                     ('float64', 'float32', 'float16', 'int64', 'int32', 'bool')]
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype,
            *dtype_classes]


def trusted_checkpoint_globals() -> List[Any]:
    """The non-tensor globals found in MMEngine training checkpoints."""
    return [HistoryBuffer, builtins.getattr, *_numpy_globals()]


@contextlib.contextmanager
def allow_training_checkpoints() -> Iterator[None]:
    """Let ``torch.load(weights_only=True)`` read MMEngine training checkpoints.

    Only the types of :func:`trusted_checkpoint_globals` are added; anything else in a
    pickle (a function call, an arbitrary class) is still refused.
    """
    with torch.serialization.safe_globals(trusted_checkpoint_globals()):
        yield
