"""Loading checkpoints without executing pickled code.

PyTorch >= 2.6 unpickles with ``weights_only=True`` by default. MMEngine's own training
checkpoints hold a few non-tensor objects -- the message hub's ``HistoryBuffer`` with numpy
arrays and scalars, and its ``statistics_methods``, bound methods that pickle as
``getattr(HistoryBuffer, 'mean')`` -- so resuming needs exactly those globals allow-listed,
never the protection turned off.

``builtins.getattr`` is not allowed as such -- ``getattr(getattr, '__self__')`` reaches the
builtins module, and from there ``eval``, which a later call of a statistics method could
invoke. The name is mapped to :func:`statistics_method`, which only fetches the statistics
methods registered on ``HistoryBuffer`` and refuses anything else.
"""
import contextlib
import pickle
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


def statistics_method(owner: Any, name: str) -> Any:
    """``getattr`` as MMEngine checkpoints use it, and nothing more: a statistics method
    registered on ``HistoryBuffer`` (``mean``, ``max``, ``min``, ``current``, ...)."""
    if owner is HistoryBuffer and isinstance(name, str) and (
            name in HistoryBuffer._statistics_methods
            or name in ('mean', 'max', 'min', 'current')):
        return getattr(owner, name)
    raise pickle.UnpicklingError(
        f'getattr({getattr(owner, "__name__", type(owner).__name__)}, {name!r}) is not a '
        'HistoryBuffer statistics method; refusing it')


def trusted_checkpoint_globals() -> List[Any]:
    """The non-tensor globals found in MMEngine training checkpoints (``getattr``
    restricted to :func:`statistics_method`)."""
    return [HistoryBuffer, (statistics_method, 'builtins.getattr'), *_numpy_globals()]


@contextlib.contextmanager
def allow_training_checkpoints() -> Iterator[None]:
    """Let ``torch.load(weights_only=True)`` read MMEngine training checkpoints.

    Only the types of :func:`trusted_checkpoint_globals` are added; anything else in a
    pickle (a function call, an arbitrary class) is still refused.
    """
    with torch.serialization.safe_globals(trusted_checkpoint_globals()):
        yield
