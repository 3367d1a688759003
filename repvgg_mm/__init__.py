"""repvgg_mm: RepVGG training and re-parameterization on MMPretrain and MMEngine.

Importing the package registers every module in the ``repvgg_mm`` scope.
"""
import warnings

# mmcv-lite ships without compiled ops on purpose (RepVGG needs none); its import-time
# warning about the missing deformable-attention op is noise for this project.
warnings.filterwarnings('ignore', message='Fail to import ``MultiScaleDeformableAttention``')

from mmpretrain.utils import register_all_modules  # noqa: E402

# Our registries are children of MMPretrain's; a child looks names up in its parents
# but does not import them, so MMPretrain's modules are registered here once.
register_all_modules(init_default_scope=False)

from . import apis, checkpoints, cli, datasets, engine, models, registry  # noqa: E402,F401
from .resources import install_config_resolver  # noqa: E402

# `_base_ = ['repvgg_mm::repvgg-a0.py']` in a user's own config (repvgg_mm.resources)
install_config_resolver()
from .models import reparameterize_model  # noqa: E402

__version__ = '0.1.0'

__all__ = ['reparameterize_model', '__version__']
