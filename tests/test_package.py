"""repvgg_mm as a package: a wheel that works from any folder (configs, metafile and tools
inside, OpenMMLab's ``.mim`` layout), the ``repvgg-mm`` entry point, ``repvgg_mm::``
configs in a user's own folder, and the layering of ``models/``."""
import ast
import glob
import os
import os.path as osp
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT
from mmengine.config import Config

from repvgg_mm.__main__ import available_tools
from repvgg_mm.__main__ import main as entry_point
from repvgg_mm.apis import list_models
from repvgg_mm.cli import ConfigError, load_config

# what setup.py needs to build the wheel (a copy: the build never writes into the clone)
_SOURCES = ('setup.py', 'setup.cfg', 'pyproject.toml', 'MANIFEST.in', 'README.md',
            'requirements', 'repvgg_mm', 'configs', 'tools')


def _run(args, cwd, env=None, check=True, timeout=300):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f'{args} failed ({result.returncode}):\n'
                             f'{result.stdout[-3000:]}\n{result.stderr[-3000:]}')
    return result


@pytest.fixture(scope='module')
def installed_wheel(tmp_path_factory):
    """``pip wheel --no-deps`` of a copy of the sources, installed with ``--no-deps``
    into an empty target folder (no network: the venv's setuptools builds it)."""
    base = tmp_path_factory.mktemp('wheel')
    src = base / 'src'
    for name in _SOURCES:
        path = osp.join(ROOT, name)
        if osp.isdir(path):
            shutil.copytree(path, src / name,
                            ignore=shutil.ignore_patterns('__pycache__', '*.pyc', '.mim'))
        else:
            os.makedirs(src, exist_ok=True)
            shutil.copy(path, src / name)
    pip = [sys.executable, '-m', 'pip']
    _run([*pip, 'wheel', '--no-deps', '--no-build-isolation', '--no-index', '-q', '-w',
          str(base / 'dist'), str(src)], cwd=str(base))
    (wheel, ) = glob.glob(str(base / 'dist' / 'repvgg_mm-*.whl'))
    target = base / 'site'
    _run([*pip, 'install', '--no-deps', '--no-index', '-q', '--target', str(target), wheel],
         cwd=str(base))
    return dict(wheel=wheel, target=str(target))


def test_the_wheel_carries_configs_metafile_and_tools_in_the_mim_layout(installed_wheel):
    names = set(zipfile.ZipFile(installed_wheel['wheel']).namelist())
    shipped = {osp.relpath(p, ROOT) for pattern in ('configs/**/*.py', 'configs/**/*.yml',
                                                    'tools/**/*.py', 'tools/**/*.sh')
               for p in glob.glob(osp.join(ROOT, pattern), recursive=True)}
    assert shipped and {f'repvgg_mm/.mim/{p}' for p in shipped} <= names
    index = zipfile.ZipFile(installed_wheel['wheel']).read('repvgg_mm/.mim/model-index.yml')
    assert index.decode() == 'Import:\n  - configs/metafile.yml\n'
    entry_points = [n for n in names if n.endswith('entry_points.txt')]
    assert entry_points and 'repvgg-mm = repvgg_mm.__main__:main' in \
        zipfile.ZipFile(installed_wheel['wheel']).read(entry_points[0]).decode()


def test_wheel_from_another_folder(installed_wheel, tiny_data, tmp_path):
    """From a folder outside the clone, the installed package first on PYTHONPATH: the
    zoo, get_model, a user config inheriting a shipped one with ``repvgg_mm::``, and
    one epoch of training through the entry point."""
    target = installed_wheel['target']
    env = dict(os.environ, PYTHONPATH=target)
    user = tmp_path / 'my_project'
    user.mkdir()
    (user / 'my_a0.py').write_text(
        "_base_ = ['repvgg_mm::demo/repvgg-a0_demo.py']\n"
        f"data_root = {tiny_data!r}\n"
        "train_dataloader = dict(dataset=dict(data_root=data_root))\n"
        "val_dataloader = dict(dataset=dict(data_root=data_root))\n"
        "test_dataloader = dict(dataset=dict(data_root=data_root))\n"
        "train_cfg = dict(max_epochs=1)\n")
    entry = osp.join(target, 'bin', 'repvgg-mm')
    out = _run([entry, 'train', 'my_a0.py'], cwd=str(user), env=env)
    work_dir = user / 'work_dirs' / 'my_a0'
    assert (work_dir / 'epoch_1.pth').is_file(), out.stderr[-2000:]
    assert not (work_dir / 'epoch_2.pth').exists()
    assert 'Epoch(train) [1]' in out.stdout + out.stderr
    dumped = Config.fromfile(str(work_dir / 'my_a0.py'))
    assert dumped.model.backbone.arch.lower() == 'a0' and dumped.train_cfg.max_epochs == 1

    # the same code as tools/reparam.py, through the entry point
    _run([entry, 'reparam', 'my_a0.py', str(work_dir / 'epoch_1.pth'), 'fused.pth'],
         cwd=str(user), env=env)
    assert (user / 'fused.pth').is_file() and (user / 'fused.py').is_file()

    # the zoo, get_model (by name, and a user config with weights from a file by
    # pretrained=) and inference, from the installed package: one process
    image = glob.glob(osp.join(tiny_data, 'val', '*', '*.JPEG'))[0]
    probe = _run([sys.executable, '-c', (
        'import repvgg_mm; from repvgg_mm.apis import get_model, inference_model, '
        'list_models\n'
        'print(repvgg_mm.__file__)\n'
        "print(' '.join(list_models()))\n"
        "print(type(get_model('repvgg-a0')).__name__)\n"
        "print(type(get_model('repvgg-b1g2_deploy')).__name__)\n"
        f"m = get_model('my_a0.py', pretrained={str(work_dir / 'epoch_1.pth')!r})\n"
        f"r = inference_model(m, {image!r})\n"
        "print(r['pred_label'], len(r['pred_scores']))\n")],
        cwd=str(user), env=env).stdout.split('\n')
    assert probe[0] == osp.join(target, 'repvgg_mm', '__init__.py')  # not the clone's
    assert probe[1].split() == list_models()  # every arch, as in the clone
    assert {'repvgg-a0', 'repvgg-b3g4_deploy', 'repvggplus-l2pse'} <= set(list_models())
    assert probe[2:4] == ['ImageClassifier', 'ImageClassifier']
    label, scores = probe[4].split()
    assert 0 <= int(label) < 10 and scores == '10'

    bad = _run([entry, 'trian'], cwd=str(user), env=env, check=False)
    assert bad.returncode == 2 and "unknown tool 'trian'" in bad.stderr
    assert '  train ' in bad.stderr  # the list of tools


def test_user_config_in_its_own_folder_inherits_from_the_clone(tmp_path):
    """The same ``_base_`` form with the clone's editable install: the checkout's
    configs are the shipped ones."""
    (tmp_path / 'mine.py').write_text("_base_ = ['repvgg_mm::repvgg-a0.py']\n"
                                      "train_cfg = dict(max_epochs=7)\n")
    cfg = load_config(str(tmp_path / 'mine.py'))
    assert cfg.model.backbone.arch.lower() == 'a0' and cfg.train_cfg.max_epochs == 7
    shipped = Config.fromfile(osp.join(ROOT, 'configs', 'repvgg-a0.py'))
    assert cfg.optim_wrapper.optimizer.lr == shipped.optim_wrapper.optimizer.lr
    # as a tool's config argument too
    assert load_config('repvgg_mm::repvgg-a0.py').model.backbone.arch.lower() == 'a0'
    # MMPretrain's shipped configs, the same notation (its own .mim folder)
    mm = load_config('mmpretrain::repvgg/repvgg-A0_8xb32_in1k.py')
    assert mm.model.backbone.type == 'RepVGG'


def test_a_shipped_name_that_does_not_exist_names_the_nearest(tmp_path):
    (tmp_path / 'typo.py').write_text("_base_ = ['repvgg_mm::repvgg-a00.py']\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / 'typo.py'))
    message = str(info.value)
    assert "'repvgg_mm::repvgg-a00.py' does not exist" in message
    assert 'nearest shipped configs: repvgg_mm::repvgg-a0.py' in message
    assert '\n' not in message
    with pytest.raises(ConfigError, match=r"nearest shipped configs: repvgg_mm::demo/"):
        load_config('repvgg_mm::demo/repvgg-a0_dmeo.py')
    with pytest.raises(ConfigError, match="package 'no_such_pkg' is not installed"):
        load_config('no_such_pkg::a/b.py')


def test_entry_point_lists_tools_and_runs_them(capsys):
    tools = available_tools()
    assert {'train', 'test', 'reparam', 'export_onnx', 'quantize', 'qat', 'infer',
            'dist_train', 'pack_zip', 'get_flops'} <= set(tools)
    assert not {'demo', 'int8_demo'} & set(tools)  # they write into a clone
    assert tools['train'] == osp.join(ROOT, 'tools', 'train.py')  # clone: its tools/
    assert entry_point([]) == 2
    assert 'usage: repvgg-mm TOOL' in capsys.readouterr().err
    assert entry_point(['--help']) == 0
    assert '  reparam ' in capsys.readouterr().out
    assert entry_point(['reparam', '--help']) == 0
    assert 'usage: reparam.py' in capsys.readouterr().out


def _imported_modules(path: str):
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):  # lazy imports inside functions included
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                package = osp.relpath(osp.dirname(path), ROOT).split(os.sep)
                package = package[:len(package) - node.level + 1]
                yield '.'.join(package + ([node.module] if node.module else []))
            else:
                yield node.module


def test_models_do_not_import_checkpoints_or_apis():
    """Data flows one way: models know modules only; weights reach them through the
    registered ``repvgg_mm.Pretrained`` initializer (checkpoints/) or the runner."""
    files = glob.glob(osp.join(ROOT, 'repvgg_mm', 'models', '**', '*.py'), recursive=True)
    assert len(files) > 10
    offenders = [(osp.relpath(f, ROOT), m) for f in files for m in _imported_modules(f)
                 if m and m.startswith(('repvgg_mm.checkpoints', 'repvgg_mm.apis'))]
    assert not offenders
