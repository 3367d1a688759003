"""MMEngine's TensorBoard backend, with a clear message when TensorBoard is missing."""
from mmengine.visualization import TensorboardVisBackend as MMEngineTensorboardVisBackend

from repvgg_mm.registry import VISBACKENDS

INSTALL_HINT = ('TensorBoard logging (configs/_base_/options/tensorboard.py) needs the '
                'tensorboard package: pip install tensorboard '
                '(or pip install -r requirements/optional.txt)')


@VISBACKENDS.register_module()
class TensorboardVisBackend(MMEngineTensorboardVisBackend):
    """MMEngine's :class:`~mmengine.visualization.TensorboardVisBackend`, checking at
    construction -- before training starts -- that TensorBoard is importable.

    MMEngine itself only notices on the first logged value and then asks for
    packages (``future``) that current PyTorch does not need.
    """

    def __init__(self, save_dir: str, **kwargs) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError as exc:
            raise ImportError(INSTALL_HINT) from exc
        super().__init__(save_dir, **kwargs)
