"""What the README's "When things go wrong" promises: no code from a checkpoint runs, no
tool destroys its inputs, weights that do not fit (or are not finite) never train or
evaluate silently, and every error is one line naming the file, key, line or value."""
import hashlib
import os
import os.path as osp
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import (
    DEMO_CONFIG,
    ROOT,
    error_lines,
    plant_crafted_checkpoint,
    tiny_options,
    tool_in_process,
)

pytestmark = pytest.mark.slow


def load(path):
    return torch.load(path, map_location='cpu', weights_only=False)


def digest(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def code_writing(marker):
    """Python config text that creates ``marker`` when MMEngine parses it."""
    return f"import os\nopen({str(marker)!r}, 'w').close()\nx = 1\n"


@pytest.fixture(scope='module')
def trained(tiny_run):
    """The first-epoch checkpoint of the shared training run (conftest ``tiny_run``):
    the input of the tests below."""
    return tiny_run / 'epoch_1.pth'


def plant_code_strings(src, dst, marker):
    """A plain-data copy of a training checkpoint whose every config-text field holds
    code: it passes ``weights_only=True``."""
    ckpt = load(src)
    ckpt['meta']['config'] = code_writing(marker)
    ckpt['meta']['cfg'] = code_writing(marker)
    ckpt['message_hub']['runtime_info']['cfg'] = code_writing(marker)
    torch.save(ckpt, dst)
    return dst


# -- no code from a checkpoint, anywhere --------------------------------------------

@pytest.mark.parametrize('how', ['path', 'pointer'])
def test_resume_never_executes_config_text_of_a_checkpoint(trained, tiny_data, tmp_path, how):
    marker = tmp_path / 'code_ran'
    work = tmp_path / 'work'
    work.mkdir()
    ckpt = plant_code_strings(trained, work / 'epoch_1.pth', marker)
    resume = ['--resume', str(ckpt)] if how == 'path' else ['--resume']
    (work / 'last_checkpoint').write_text(str(ckpt))
    status, out, err = tool_in_process('train.py', DEMO_CONFIG, '--work-dir', work,
                                       '--cfg-options', *tiny_options(tiny_data, epochs=2),
                                       *resume)
    assert status == 0, err[-2000:]
    assert not marker.exists(), 'code stored in the checkpoint ran'
    assert 'ignored the config text stored in' in out + err
    assert 'resumed epoch: 1' in out + err
    # the next checkpoint carries this run's config, not the planted text
    runtime = load(work / 'epoch_2.pth')['message_hub']['runtime_info']
    assert 'open(' not in str(runtime.get('cfg', ''))


def test_no_tool_runs_code_from_a_checkpoint(trained, tiny_data, tmp_path):
    plain_marker, pickle_marker = tmp_path / 'plain_ran', tmp_path / 'pickle_ran'
    plain = plant_code_strings(trained, tmp_path / 'plain.pth', plain_marker)
    crafted = plant_crafted_checkpoint(tmp_path / 'crafted.pth', pickle_marker)
    data = tiny_options(tiny_data)
    image = osp.join(tiny_data, 'val', 'disk', os.listdir(osp.join(tiny_data, 'val', 'disk'))[0])
    for ckpt in (plain, crafted):
        runs = {
            'test': ('test.py', DEMO_CONFIG, ckpt, '--work-dir', tmp_path / 't',
                     '--cfg-options', *data),
            'reparam': ('reparam.py', DEMO_CONFIG, ckpt, tmp_path / f'{ckpt.stem}_d.pth'),
            'convert': ('convert_checkpoint.py', ckpt, tmp_path / f'{ckpt.stem}_c.pth'),
            'infer': ('infer.py', DEMO_CONFIG, ckpt, image),
            'export': ('export_onnx.py', DEMO_CONFIG, ckpt, tmp_path / f'{ckpt.stem}.onnx'),
            'load_from': ('train.py', DEMO_CONFIG, '--work-dir', tmp_path / 'l',
                          '--cfg-options', *data, f'load_from={ckpt}'),
            'resume': ('train.py', DEMO_CONFIG, '--work-dir', tmp_path / 'r',
                       '--cfg-options', *tiny_options(tiny_data, epochs=2), '--resume',
                       ckpt),
        }
        for name, args in runs.items():
            status, out, err = tool_in_process(*args)
            if ckpt is crafted:
                assert status == 1, (name, err)
                lines = error_lines(err)
                assert len(lines) == 1 and 'refusing to load' in lines[0], (name, err)
                assert str(crafted) in lines[0], name
            else:
                assert status == 0, (name, err[-2000:])
    assert not plain_marker.exists() and not pickle_marker.exists()


# -- tools never destroy their inputs ------------------------------------------------

@pytest.mark.parametrize('case', ['output_is_checkpoint', 'config_next_to_output_is_config',
                                  'out_config_is_checkpoint', 'output_ends_in_py',
                                  'out_config_below_a_file'])
def test_reparam_refuses_outputs_that_would_destroy_inputs(trained, tmp_path, case):
    config = tmp_path / 'demo.py'
    shutil.copy(DEMO_CONFIG, config)
    config.write_text(config.read_text().replace("'../repvgg-a0.py'",
                                                 repr(osp.join(ROOT, 'configs',
                                                               'repvgg-a0.py'))))
    ckpt = tmp_path / 'epoch_1.pth'
    shutil.copy(trained, ckpt)
    output, extra = {
        'output_is_checkpoint': (ckpt, []),
        'config_next_to_output_is_config': (tmp_path / 'demo.pth', []),
        'out_config_is_checkpoint': (tmp_path / 'fused.pth', ['--out-config', ckpt]),
        'output_ends_in_py': (tmp_path / 'fused.py', []),
        'out_config_below_a_file': (tmp_path / 'fused.pth',
                                    ['--out-config', ckpt / 'f.py']),
    }[case]
    before = {p.name: digest(p) for p in tmp_path.iterdir()}
    status, out, err = tool_in_process('reparam.py', config, ckpt, output, *extra)
    assert status == 1
    assert len(error_lines(err)) == 1, err
    assert {p.name: digest(p) for p in tmp_path.iterdir()} == before  # nothing written


def test_failed_checkpoint_save_leaves_nothing_and_names_the_file(tiny_data, tmp_path):
    """A full disk, simulated with a file-size limit: the save fails with one line naming
    the checkpoint and the work dir, and no partial temporary file stays behind."""
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))

    work = tmp_path / 'work'
    result = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'train.py'), DEMO_CONFIG, '--work-dir',
         str(work), '--cfg-options', *tiny_options(tiny_data)], cwd=ROOT, text=True,
        capture_output=True, preexec_fn=limit_file_size, timeout=600)
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-2000:]
    assert f"could not write checkpoint '{work / 'epoch_1.pth'}'" in lines[0]
    assert 'File too large' in lines[0]
    assert not [p for p in work.iterdir() if p.name.endswith('.tmp')]
    assert not (work / 'epoch_1.pth').exists()


# -- weights that do not fit never train -----------------------------------------------

def test_load_from_another_arch_stops_before_training(trained, tiny_data, tmp_path):
    status, out, err = tool_in_process(
        'train.py', DEMO_CONFIG, '--work-dir', tmp_path, '--cfg-options',
        *tiny_options(tiny_data), f'load_from={trained}', 'model.backbone.arch=A1')
    assert status == 1
    (line, ) = error_lines(err)
    assert str(trained) in line and 'does not fit the model' in line
    assert "looks like RepVGG arch 'a0'" in line
    assert 'Epoch(train)' not in out + err
    assert not list(tmp_path.glob('epoch_*.pth'))


def test_resume_without_optimizer_state_after_changing_arch_stops(trained, tiny_data,
                                                                   tmp_path):
    weights_only = tmp_path / 'best.pth'
    ckpt = load(trained)
    torch.save(dict(state_dict=ckpt['state_dict'], meta=ckpt['meta']), weights_only)
    status, out, err = tool_in_process(
        'train.py', DEMO_CONFIG, '--work-dir', tmp_path / 'w', '--cfg-options',
        *tiny_options(tiny_data, epochs=2), 'model.backbone.arch=A1', '--resume',
        weights_only)
    assert status == 1
    (line, ) = error_lines(err)
    assert str(weights_only) in line and "looks like RepVGG arch 'a0'" in line


def test_resume_from_plain_weights_says_to_use_load_from(trained, tiny_data, tmp_path):
    plain = tmp_path / 'plain.pth'
    torch.save(load(trained)['state_dict'], plain)
    status, out, err = tool_in_process(
        'train.py', DEMO_CONFIG, '--work-dir', tmp_path / 'w', '--cfg-options',
        *tiny_options(tiny_data, epochs=2), '--resume', plain)
    assert status == 1
    (line, ) = error_lines(err)
    assert f"cannot resume from '{plain}'" in line and 'load_from' in line


def test_load_ignore_keys_fine_tunes_a_new_head(trained, tiny_data, tmp_path):
    """Partial loading only as the config asks: a 7-class head from a 10-class run."""
    options = [*tiny_options(tiny_data), f'load_from={trained}', 'model.head.num_classes=7',
               'data_preprocessor.num_classes=7']
    status, out, err = tool_in_process('train.py', DEMO_CONFIG, '--work-dir', tmp_path / 'a',
                                       '--cfg-options', *options)
    assert status == 1 and 'head.fc.weight' in error_lines(err)[0]
    # the data has 10 classes: relabel it as 7 by listing only labels < 7
    data = tmp_path / 'data'
    shutil.copytree(tiny_data, data)
    for split in ('train', 'val'):
        lines = (data / f'{split}_list.txt').read_text().splitlines()
        (data / f'{split}_list.txt').write_text(
            '\n'.join(ln for ln in lines if int(ln.rsplit(' ', 1)[1]) < 7) + '\n')
    seven = ('bars', 'diamond', 'disk', 'frame', 'plus', 'ring', 'square')
    options = [*tiny_options(str(data)), f'load_from={trained}', 'model.head.num_classes=7',
               'data_preprocessor.num_classes=7',
               *(f'{s}_dataloader.dataset.metainfo.classes={seven}'.replace(' ', '')
                 for s in ('train', 'val'))]
    status, out, err = tool_in_process('train.py', DEMO_CONFIG, '--work-dir', tmp_path / 'b',
                                       '--cfg-options', *options,
                                       "load_ignore_keys=['head.fc.*']")
    assert status == 0, err[-2000:]
    assert "kept the initial values of 2 keys ['head.fc.weight', 'head.fc.bias']" in out + err
    loaded = load(tmp_path / 'b' / 'epoch_1.pth')['state_dict']
    assert loaded['head.fc.weight'].shape == (7, 1280)
    status, out, err = tool_in_process('train.py', DEMO_CONFIG, '--work-dir', tmp_path / 'c',
                                       '--cfg-options', *options,
                                       "load_ignore_keys=['head.fcc.*']")
    assert status == 1 and "pattern 'head.fcc.*' matches no key" in error_lines(err)[0]


# -- non-finite weights are refused ----------------------------------------------------

def test_non_finite_weights_are_refused_naming_the_tensor(trained, tiny_data, tmp_path):
    from mmengine.config import Config

    from repvgg_mm.apis import reparameterize_checkpoint
    from repvgg_mm.checkpoints import CheckpointError
    ckpt = load(trained)
    key = 'backbone.stage2.0.rbr_dense.conv.weight'
    ckpt['state_dict'][key][0, 0, 0, 0] = float('nan')
    nan_ckpt = tmp_path / 'nan.pth'
    torch.save(ckpt, nan_ckpt)
    cfg = Config.fromfile(DEMO_CONFIG)
    for verify in (True, False):
        with pytest.raises(CheckpointError, match=f"tensor '{key}' holds NaN"):
            reparameterize_checkpoint(cfg, str(nan_ckpt), str(tmp_path / 'd.pth'),
                                      verify=verify)
    # an already fused checkpoint with an infinite weight
    reparameterize_checkpoint(cfg, str(trained), str(tmp_path / 'fused.pth'))
    fused = load(tmp_path / 'fused.pth')
    fused_key = 'backbone.stage1.0.rbr_reparam.weight'
    fused['state_dict'][fused_key][0, 0, 0, 0] = float('inf')
    torch.save(fused, tmp_path / 'fused_inf.pth')
    with pytest.raises(CheckpointError, match=f"tensor '{fused_key}' holds NaN or infinite"):
        reparameterize_checkpoint(cfg, str(tmp_path / 'fused_inf.pth'),
                                  str(tmp_path / 'again.pth'))
    assert not (tmp_path / 'd.pth').exists() and not (tmp_path / 'again.pth').exists()
    status, out, err = tool_in_process('test.py', DEMO_CONFIG, nan_ckpt, '--work-dir',
                                       tmp_path / 't', '--cfg-options', *tiny_options(tiny_data))
    assert status == 1
    (line, ) = error_lines(err)
    assert str(nan_ckpt) in line and key in line


# -- one-line errors ---------------------------------------------------------------

def test_text_file_as_checkpoint_is_one_line(tmp_path):
    text = tmp_path / 'notes.pth'
    text.write_text('these are not weights\n' * 50)
    status, out, err = tool_in_process('reparam.py', DEMO_CONFIG, text, tmp_path / 'o.pth')
    assert status == 1
    (line, ) = error_lines(err)
    assert f"checkpoint '{text}' could not be read: it is not a PyTorch checkpoint" in line


def test_cfg_option_of_the_wrong_kind_names_the_key(tmp_path):
    status, out, err = tool_in_process('train.py', DEMO_CONFIG, '--work-dir', tmp_path,
                                       '--cfg-options', 'train_cfg.max_epochs=abc')
    assert status == 1 and out == ''
    (line, ) = error_lines(err)
    assert "train_cfg.max_epochs='abc': expected an integer" in line


@pytest.mark.parametrize('args,message', [
    ([], 'expected at least 2 arguments'),
    ([DEMO_CONFIG], 'expected at least 2 arguments'),
    ([DEMO_CONFIG, '0'], "GPUS must be a positive integer (the number of processes), got '0'"),
    ([DEMO_CONFIG, '-1'], "got '-1'"),
    ([DEMO_CONFIG, 'abc'], "got 'abc'"),
])
def test_dist_train_checks_its_arguments(args, message):
    result = subprocess.run(['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), *args],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0].startswith('usage: tools/dist_train.sh CONFIG GPUS')
    assert message in result.stderr and 'Traceback' not in result.stderr


def test_sigterm_says_where_the_last_checkpoint_is(tiny_data, tmp_path):
    work = tmp_path / 'work'
    proc = subprocess.Popen(
        [sys.executable, osp.join(ROOT, 'tools', 'train.py'), DEMO_CONFIG, '--work-dir',
         str(work), '--cfg-options', *tiny_options(tiny_data, epochs=50)], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (work / 'epoch_1.pth').exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    (line, ) = error_lines(err)
    assert line.startswith('train.py: interrupted by SIGTERM; the last complete checkpoint '
                           f'is {work}/epoch_')
    assert line.endswith(f'--work-dir {work} --resume')
    assert not [p for p in work.iterdir() if p.name.endswith('.tmp')]


def test_an_interruption_that_a_library_turned_into_another_error_stays_one(monkeypatch):
    """MMEngine formats the config for each checkpoint with a bare ``except`` that
    re-raises anything as SyntaxError: a SIGTERM arriving then must still end training
    as an interruption (exit 143 and the resume hint), not as an error."""
    from mmengine.runner import Runner

    from repvgg_mm.cli import Interrupted
    from repvgg_mm.engine.runner import RepVGGRunner

    def formatting_interrupted(self):
        try:
            raise Interrupted('interrupted by SIGTERM', signal.SIGTERM)
        except BaseException:  # as mmengine.Config.pretty_text does
            raise SyntaxError('Failed to format the config file') from None
    monkeypatch.setattr(Runner, 'train', formatting_interrupted)
    runner = RepVGGRunner.__new__(RepVGGRunner)
    with pytest.raises(Interrupted, match='SIGTERM'):
        runner.train()

    def plain_error(self):
        raise SyntaxError('a real one')
    monkeypatch.setattr(Runner, 'train', plain_error)
    with pytest.raises(SyntaxError, match='a real one'):
        runner.train()
