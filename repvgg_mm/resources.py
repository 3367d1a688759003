"""Where the shipped configs, the model-zoo metafile and the tools are, in a clone and
in an installed package alike, and the ``PACKAGE::PATH`` config notation.

An installed wheel carries them in OpenMMLab's layout, as MMPretrain's does (written
by ``setup.py`` at build time from the top-level folders)::

    repvgg_mm/.mim/configs/...          the configs folder (``_base_/``, metafile.yml)
    repvgg_mm/.mim/tools/...            the tools folder
    repvgg_mm/.mim/model-index.yml      MMPretrain's index of the metafiles

A clone (editable install, or the checkout on ``PYTHONPATH``) has no ``.mim``: the
folders are the checkout's own ``configs/`` and ``tools/`` beside the package.

``PACKAGE::PATH`` names ``PATH`` below the configs an OpenMMLab package ships
(``<package>/.mim/configs/PATH``, MMEngine's rule; for ``repvgg_mm`` in a clone, the
checkout's ``configs/PATH``): ``repvgg_mm::repvgg-a0.py``,
``repvgg_mm::demo/repvgg-a0_demo.py``, ``mmpretrain::repvgg/repvgg-A0_8xb32_in1k.py``.
It works as a tool's config argument and in a config's ``_base_`` list.

Why the ``_base_`` form needs this module: MMEngine 0.10.7 resolves ``PKG::dir/file``
itself only for the packages of its fixed ``MODULE2PACKAGE`` table, only with a folder
in the path, and through ``pkg_resources``, which setuptools 81 and later no longer
ship (and which places an editable install in ``site-packages``, where it is not).
:func:`install_config_resolver`, called when ``repvgg_mm`` is imported, lets MMEngine's
``Config`` resolve ``PACKAGE::PATH`` base files with the same rule through
``importlib``; every other ``_base_`` entry is left to MMEngine.
"""
import difflib
import glob
import importlib.util
import os.path as osp
from typing import List, Optional, Tuple

PACKAGE = 'repvgg_mm'
PACKAGE_DIR = osp.dirname(osp.abspath(__file__))
MIM_DIR = osp.join(PACKAGE_DIR, '.mim')
# the folders of the checkout the package was imported from (absent in a wheel)
CHECKOUT_DIR = osp.dirname(PACKAGE_DIR)


def _root(name: str) -> str:
    """``.mim/<name>`` of an installed package, else the checkout's ``<name>``."""
    installed = osp.join(MIM_DIR, name)
    if osp.isdir(installed):
        return installed
    checkout = osp.join(CHECKOUT_DIR, name)
    if osp.isdir(checkout):
        return checkout
    raise FileNotFoundError(
        f'repvgg_mm has no {name!r} folder: neither {installed!r} (an installed package '
        f'built by setup.py) nor {checkout!r} (a clone); reinstall the package '
        '(pip install repvgg_mm-*.whl, or pip install -e . in a clone)')


def config_root() -> str:
    """The shipped configs folder (``_base_/``, ``demo/``, ``metafile.yml``, ...)."""
    return _root('configs')


def tools_root() -> str:
    """The tools folder (``train.py``, ``dist_train.sh``, ``analysis/``, ...)."""
    return _root('tools')


def shipped_configs(root: Optional[str] = None) -> List[str]:
    """Every shipped config, as a path relative to the configs folder."""
    root = root or config_root()
    return sorted(osp.relpath(p, root) for p in
                  glob.glob(osp.join(root, '**', '*.py'), recursive=True))


def package_configs_dir(package: str) -> str:
    """The configs folder an installed OpenMMLab package ships:
    ``<package>/.mim/configs`` (for ``repvgg_mm`` in a clone, the checkout's)."""
    if package == PACKAGE:
        return config_root()
    spec = importlib.util.find_spec(package) if package.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f'config {package}::...: the package {package!r} is not '
                                'installed')
    return osp.join(list(spec.submodule_search_locations)[0], '.mim', 'configs')


def resolve_package_config(path: str) -> str:
    """The file behind ``PACKAGE::PATH`` (see the module doc).

    Raises:
        FileNotFoundError: naming the config and the nearest shipped ones when it does
            not exist, or the package when it is not installed.
    """
    package, _, relative = path.partition('::')
    root = package_configs_dir(package)
    full = osp.join(root, relative)
    if osp.isfile(full):
        return full
    hint = ''
    if osp.isdir(root):
        known = shipped_configs(root)
        close = difflib.get_close_matches(relative, known, n=5, cutoff=0.4) or \
            difflib.get_close_matches(osp.basename(relative),
                                      [osp.basename(k) for k in known], n=5, cutoff=0.4)
        hint = (f'; nearest shipped configs: {", ".join(f"{package}::{c}" for c in close)}'
                if close else f'; {len(known)} configs are shipped under {root!r}')
    raise FileNotFoundError(f'config {path!r} does not exist ({full!r}){hint}')


def _resolve_base(original):
    """MMEngine's ``Config._get_cfg_path`` with ``PACKAGE::PATH`` resolved through
    :func:`resolve_package_config` (scope: the package, as MMEngine gives it)."""

    def get_cfg_path(cfg_path: str, filename: str) -> Tuple[str, Optional[str]]:
        if '::' in cfg_path:
            package = cfg_path.partition('::')[0]
            return resolve_package_config(cfg_path), package
        return original(cfg_path, filename)

    get_cfg_path._repvgg_mm = True
    return get_cfg_path


def install_config_resolver() -> None:
    """Let MMEngine's ``Config`` read ``_base_ = ['PACKAGE::PATH']`` (see the module
    doc); idempotent."""
    from mmengine.config import Config
    current = Config._get_cfg_path
    if not getattr(current, '_repvgg_mm', False):
        Config._get_cfg_path = staticmethod(_resolve_base(current))
