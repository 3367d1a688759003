"""Build hook: the package carries the configs, the tools and the model-zoo index.

Everything else is declared in setup.cfg. A wheel (``pip wheel .``, ``pip install .``)
gets the top-level ``configs/`` and ``tools/`` folders copied into the package in
OpenMMLab's layout, as MMPretrain's wheel carries its own::

    repvgg_mm/.mim/configs/...        (with _base_/ and metafile.yml)
    repvgg_mm/.mim/tools/...
    repvgg_mm/.mim/model-index.yml    (Import: the metafiles, MMPretrain's index)

so that the model zoo, ``repvgg_mm::`` configs and ``repvgg-mm TOOL`` work from any
folder. The copies are made in the build folder, never in the source tree; an
editable install (``pip install -e .``) makes none: the package then finds the
checkout's own folders (repvgg_mm/resources.py).
"""
import glob
import os.path as osp
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = osp.dirname(osp.abspath(__file__))
CARRIED = ('configs', 'tools')


class BuildPyWithMim(build_py):
    """setuptools' build_py, then ``.mim/`` written into the built package."""

    def run(self) -> None:
        super().run()
        if getattr(self, 'editable_mode', False):
            return
        target = osp.join(self.build_lib, 'repvgg_mm', '.mim')
        shutil.rmtree(target, ignore_errors=True)  # nothing stale from an earlier build
        for name in CARRIED:
            shutil.copytree(osp.join(ROOT, name), osp.join(target, name),
                            ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        metafiles = sorted(osp.relpath(p, ROOT) for p in glob.glob(
            osp.join(ROOT, 'configs', '**', 'metafile.yml'), recursive=True))
        with open(osp.join(target, 'model-index.yml'), 'w') as f:
            f.write('Import:\n' + ''.join(f'  - {p}\n' for p in metafiles))


setup(cmdclass={'build_py': BuildPyWithMim})
