"""Published weights by name: the zoo's URLs, download + cache + hash + safe load against
a local HTTP server on 127.0.0.1 (never the internet), class names, tools/infer.py by
name, load_from by name, the fine-tuning config, the segmentation example, and every
bad download."""
import http.server
import os
import os.path as osp
import re
import shutil

import pytest
import torch
from conftest import (
    DEMO_CONFIG,
    ROOT,
    free_port,
    randomize_bn,
    serving,
    sha256_file,
    tool_in_process,
)
from mmpretrain.datasets.categories import IMAGENET_CATEGORIES

from repvgg_mm.apis import build_model, get_model, inference_model, list_models
from repvgg_mm.checkpoints import FORMATS, CheckpointError, DownloadError, zoo
from repvgg_mm.cli import load_config
from repvgg_mm.datasets import generate_demo_dataset

pytestmark = pytest.mark.usefixtures('one_thread')

MMPRETRAIN = 'https://download.openmmlab.com/mmclassification/v0/repvgg/'
# The published weights as MMPretrain's configs/repvgg/metafile.yml lists them: file name
# (the 8 hex digits are the start of the file's SHA-256) and top-1.
PUBLISHED = {
    'repvgg-a0': ('repvgg-A0_8xb32_in1k_20221213-60ae8e23.pth', 72.37),
    'repvgg-a1': ('repvgg-A1_8xb32_in1k_20221213-f81bf3df.pth', 74.23),
    'repvgg-a2': ('repvgg-A2_8xb32_in1k_20221213-a8767caf.pth', 76.49),
    'repvgg-b0': ('repvgg-B0_8xb32_in1k_20221213-5091ecc7.pth', 75.27),
    'repvgg-b1': ('repvgg-B1_8xb32_in1k_20221213-d17c45e7.pth', 78.19),
    'repvgg-b1g2': ('repvgg-B1g2_8xb32_in1k_20221213-ae6428fd.pth', 77.87),
    'repvgg-b1g4': ('repvgg-B1g4_8xb32_in1k_20221213-a7a4aaea.pth', 77.81),
    'repvgg-b2': ('repvgg-B2_8xb32_in1k_20221213-d8b420ef.pth', 78.58),
    'repvgg-b2g4': ('repvgg-B2g4_8xb32_in1k_20221213-0c1990eb.pth', 79.44),
    'repvgg-b3': ('repvgg-B3_8xb32_in1k_20221213-927a329a.pth', 80.58),
    'repvgg-b3g4': ('repvgg-B3g4_8xb32_in1k_20221213-e01cb280.pth', 80.26),
    'repvgg-d2se': ('repvgg-D2se_3rdparty_4xb64-autoaug-lbs-mixup-coslr-200e_in1k_'
                    '20210909-cf3139b7.pth', 81.81),
}
TABBY = 281  # 'tabby, tabby cat'


def test_metafile_urls_are_mmpretrains():
    index = zoo.model_index()
    for name, (file_name, top1) in PUBLISHED.items():
        url = index[name]['Weights']
        assert url == MMPRETRAIN + file_name, name
        assert zoo.hash_prefix(osp.basename(url)) == re.search(r'-([0-9a-f]{8})\.pth$',
                                                               file_name)[1]
        assert index[name]['Weights Results']['Top 1 Accuracy'] == top1, name
        assert index[name]['Original Weights'].endswith('.pth'), name
        # the fused name takes the same weights
        assert zoo.published_url(name + '_deploy') == url
    without = sorted(n for n in list_models() if n.replace('_deploy', '') not in PUBLISHED)
    assert without == ['repvgg-b2g2', 'repvgg-b2g2_deploy', 'repvgg-b3g2',
                       'repvgg-b3g2_deploy', 'repvggplus-l2pse', 'repvggplus-l2pse_deploy']
    for name in without:
        with pytest.raises(KeyError, match='has no published weights.*repvgg-a0, '):
            zoo.published_url(name)


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ``/truncated/<file>`` promises the whole file and sends half,
    ``/html/<name>`` answers with a web page, as Google Drive does."""

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path.startswith('/html/'):
            body = b'<!DOCTYPE html><html><body>Sign in to continue</body></html>'
            self.send_response(200)
            self.send_header('Content-Type', 'text/html')
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path.startswith('/truncated/'):
            with open(osp.join(self.directory, self.path.split('/')[-1]), 'rb') as f:
                body = f.read()
            self.send_response(200)
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            super().do_GET()


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    """``(base URL, folder, requests)`` of an HTTP server on 127.0.0.1 for this module."""
    folder = tmp_path_factory.mktemp('served')
    with serving(folder, _Handler) as (base, requests):
        yield base, folder, requests


_sha256 = sha256_file


@pytest.fixture(scope='module')
def a0_weights(server):
    """A stand-in for MMPretrain's RepVGG-A0 ImageNet file: a full A0 classifier in
    MMPretrain's key format, no class names inside, the tabby class favoured; served
    under a name that carries its SHA-256 prefix. Returns (URL, state dict, ours)."""
    _, folder, _ = server
    torch.manual_seed(0)
    model = randomize_bn(build_model(load_config(osp.join(ROOT, 'configs', 'repvgg-a0.py'))))
    with torch.no_grad():
        model.head.fc.bias[TABBY] = 50.0
    ours = model.state_dict()
    tmp = folder / 'a0.tmp'
    torch.save(dict(state_dict=FORMATS['mmpretrain'].from_ours(ours),
                    meta=dict(mmpretrain_version='1.0.0rc5')), tmp)
    name = f'repvgg-A0_8xb32_in1k_local-{_sha256(tmp)[:8]}.pth'
    os.replace(tmp, folder / name)
    return server[0] + name, name, ours


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty torch.hub cache: $TORCH_HOME points into the test's folder."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    return tmp_path / 'torch_home' / 'hub' / 'checkpoints'


@pytest.fixture
def zoo_served(a0_weights, monkeypatch):
    """The zoo with repvgg-a0's Weights URL on the local server (the one place the code
    reads URLs from); everything else as shipped."""
    real = zoo.model_index

    def index():
        entries = real()
        entries['repvgg-a0'] = dict(entries['repvgg-a0'], Weights=a0_weights[0])
        return entries
    monkeypatch.setattr(zoo, 'model_index', index)
    return a0_weights


def _cache_files(cache):
    """The files below the cache folder (relative paths), sub-folders included."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob('*') if p.is_file())


def _in_zoo(monkeypatch, url, name='repvgg-a0'):
    """Make ``url`` the Weights of zoo model ``name`` (what makes a URL a zoo URL)."""
    real = zoo.model_index

    def index():
        entries = real()
        entries[name] = dict(entries[name], Weights=url)
        return entries
    monkeypatch.setattr(zoo, 'model_index', index)


def test_pretrained_by_name_downloads_once_and_names_imagenet_classes(zoo_served, cache,
                                                                      server, tmp_path):
    url, name, ours = zoo_served
    requests = server[2]
    before = len(requests)
    model = get_model('repvgg-a0', pretrained=True)
    assert _cache_files(cache) == [name]  # $TORCH_HOME/hub/checkpoints, as torch.hub's
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, ours[key], rtol=0, atol=0)
    assert model._dataset_meta['classes'] == list(IMAGENET_CATEGORIES)
    image = tmp_path / 'cat.png'
    from PIL import Image
    Image.new('RGB', (300, 240), (128, 100, 90)).save(image)
    result = inference_model('repvgg-a0', str(image))  # MMPretrain's call: a name
    assert result['pred_label'] == TABBY and result['pred_class'] == 'tabby, tabby cat'
    fused = get_model('repvgg-a0_deploy', pretrained=True)
    assert not any('rbr_dense' in k for k in fused.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-3)
    assert requests[before:] == [f'/{name}']  # downloaded once, then read from the cache
    # a path or URL works as pretrained too; both together are refused
    same = get_model('configs/repvgg-a0.py', pretrained=url)
    torch.testing.assert_close(same.head.fc.weight, model.head.fc.weight)
    with pytest.raises(ValueError, match='either checkpoint or pretrained'):
        get_model('repvgg-a0', checkpoint=url, pretrained=True)
    with pytest.raises(KeyError, match='repvgg-b2g2.*no published weights.*repvgg-a0'):
        get_model('repvgg-b2g2', pretrained=True)


def test_infer_tool_by_name_prints_the_imagenet_class(zoo_served, cache, tmp_path):
    from PIL import Image
    image = tmp_path / 'photo.jpg'
    Image.new('RGB', (200, 150), (30, 60, 90)).save(image)
    status, out, err = tool_in_process('infer.py', 'repvgg-a0', str(image), '--topk', '2')
    assert status == 0, err
    assert f'\n{image}: tabby, tabby cat 1.0000, ' in out, out  # after 'downloading ...'
    status, _, err = tool_in_process('infer.py', 'repvgg-b3g2', str(image))
    assert status == 1 and 'has no published weights' in err.splitlines()[0]
    status, _, err = tool_in_process('infer.py', 'repvgg-a7', str(image))
    assert status == 1 and 'neither a config file nor a zoo name' in err.splitlines()[0]


def test_bad_downloads_are_refused_and_never_kept(zoo_served, cache, server, monkeypatch):
    base, folder, _ = server
    url, name, _ = zoo_served
    # the download breaks off half-way (a hash in the name, and none)
    for served in (name, 'weights.pth'):
        if served == 'weights.pth':
            shutil.copy(folder / name, folder / served)
        with pytest.raises(DownloadError, match=f"'{base}truncated/{served}'.*broke off"):
            get_model('configs/repvgg-a0.py', checkpoint=f'{base}truncated/{served}')
        assert _cache_files(cache) == []
    # an HTML page instead of the checkpoint, without and with a hash in the name
    with pytest.raises(DownloadError, match='returned an HTML page'):
        get_model('configs/repvgg-a0.py', pretrained=f'{base}html/weights.pth')
    with pytest.raises(DownloadError, match='returned an HTML page.*put it at'):
        get_model('configs/repvgg-a0.py',
                  pretrained=f'{base}html/repvgg-A0_8xb32_in1k_20221213-60ae8e23.pth')
    assert _cache_files(cache) == []
    # the right file under a zoo URL whose hash prefix is another file's: refused; the
    # same name at any other URL is no promise about the content (issue 24)
    shutil.copy(folder / name, folder / 'repvgg-A0-deadbeef.pth')
    _in_zoo(monkeypatch, f'{base}repvgg-A0-deadbeef.pth', 'repvgg-a1')
    with pytest.raises(DownloadError, match='does not start with deadbeef'):
        get_model('configs/repvgg-a0.py', checkpoint=f'{base}repvgg-A0-deadbeef.pth')
    assert _cache_files(cache) == []
    shutil.copy(folder / name, folder / 'other-deadbeef.pth')
    get_model('configs/repvgg-a0.py', checkpoint=f'{base}other-deadbeef.pth')
    (other, ) = _cache_files(cache)
    assert other.startswith('url-') and other.endswith('/other-deadbeef.pth')
    os.remove(cache / other)
    # bytes that are not a checkpoint, at a URL without a hash: refused, then removed
    # (this process downloaded them)
    (folder / 'noise.pth').write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match=f"'{base}noise.pth' \\(downloaded to .*"
                                              '(could not be read|refusing to load)'):
        get_model('configs/repvgg-a0.py', checkpoint=f'{base}noise.pth')
    assert _cache_files(cache) == []
    # a 404
    with pytest.raises(DownloadError, match='HTTP 404'):
        get_model('configs/repvgg-a0.py', checkpoint=f'{base}missing-0123abcd.pth')
    # a cached file damaged later: detected by its hash, moved aside, downloaded again
    get_model('repvgg-a0', pretrained=True)
    (cache / name).write_bytes(b'damaged')
    model = get_model('repvgg-a0', pretrained=True)
    assert model.head.fc.bias[TABBY] == 50.0 and _sha256(cache / name).startswith(
        zoo.hash_prefix(name))
    (aside, ) = [f for f in _cache_files(cache) if f != name]
    assert aside.startswith(f'{name}.corrupt-') and (cache / aside).read_bytes() == b'damaged'
    os.remove(cache / aside)
    # ... or refused when it cannot be fetched again (no network): the damaged copy is
    # out of the way (moved aside, named in the message), nothing of it is deleted
    (cache / name).write_bytes(b'damaged')
    offline = f'http://127.0.0.1:{free_port()}/{name}'
    _in_zoo(monkeypatch, offline)
    with pytest.raises(DownloadError) as info:
        get_model('repvgg-a0', checkpoint='repvgg-a0')
    message = str(info.value)
    assert offline in message and str(cache / name) in message
    assert 'without network access' in message and 'local checkpoint' in message
    (aside, ) = _cache_files(cache)
    assert aside.startswith(f'{name}.corrupt-') and f'moved to {str(cache / aside)!r}' in message
    assert (cache / aside).read_bytes() == b'damaged'


def test_no_network_is_one_line_from_the_tools(cache, tmp_path):
    """The tool's one line: the URL, and where to put the file by hand."""
    offline = f'http://127.0.0.1:{free_port()}/repvgg-a0-0123abcd.pth'
    image = tmp_path / 'x.png'
    from PIL import Image
    Image.new('RGB', (40, 40)).save(image)
    status, _, err = tool_in_process('infer.py', 'configs/repvgg-a0.py', offline, str(image))
    lines = [ln for ln in err.splitlines() if 'REPVGG_MM_DEBUG' not in ln]
    assert status == 1 and len(lines) == 1, err
    assert offline in lines[0] and 'without network access' in lines[0]
    # not a zoo URL: its cache entry is named after the whole URL
    entry = re.search(r"put it at '([^']+)'", lines[0])[1]
    assert re.fullmatch(re.escape(str(cache)) + r'/url-[0-9a-f]{16}/repvgg-a0-0123abcd\.pth',
                        entry), entry
    assert not cache.exists() or _cache_files(cache) == []


@pytest.fixture(scope='module')
def folder_data(tmp_path_factory):
    """A user's folder of class sub-folders (no list files): 10 classes, 2 train and 1
    val image each."""
    root = tmp_path_factory.mktemp('custom')
    generate_demo_dataset(str(root), train_per_class=2, val_per_class=1)
    for split in ('train', 'val'):
        os.remove(root / f'{split}_list.txt')
    return str(root)


FINETUNE = osp.join(ROOT, 'configs', 'finetune', 'repvgg-a0_custom-folder.py')


def _data_options(root):
    return [f'{s}_dataloader.dataset.data_root={root}' for s in ('train', 'val', 'test')]


def test_finetune_config_starts_from_published_weights(zoo_served, cache, folder_data,
                                                       tmp_path):
    """The shipped config as it is (its own load_from = 'repvgg-a0', its loaders'
    persistent workers, batch, pipeline at 224) for one epoch: the published weights by
    name, a 10-class head, a 10x slower backbone."""
    _, _, ours = zoo_served
    work = tmp_path / 'work'
    status, _, err = tool_in_process('train.py', FINETUNE, '--work-dir', str(work),
                                     '--cfg-options', *_data_options(folder_data),
                                     'train_cfg.max_epochs=1')
    assert status == 0, err[-3000:]
    log = open(next(work.glob('*/*.log'))).read()
    assert 'num_classes="auto": 10 classes' in log
    assert "load_ignore_keys: kept the initial values of 2 keys ['head.fc.weight', " \
           "'head.fc.bias']" in log
    checkpoint = torch.load(work / 'epoch_1.pth', map_location='cpu', weights_only=False)
    weights = checkpoint['state_dict']
    assert tuple(weights['head.fc.weight'].shape) == (10, 1280)
    assert list(checkpoint['meta']['dataset_meta']['classes']) == sorted(
        os.listdir(osp.join(folder_data, 'train')))
    # the backbone starts from the published weights (one warm-up step changes little)
    key = 'backbone.stage4.0.rbr_dense.conv.weight'
    assert (weights[key] - ours[key]).abs().max() <= 1e-3 * ours[key].abs().max()
    lrs = {}
    for group in checkpoint['optimizer']['param_groups']:
        part = {n.split('.')[0] for n in group['param_names']}
        assert len(part) == 1
        lrs.setdefault(part.pop(), set()).add(round(group['lr'] / 1e-12) * 1e-12)
    (backbone_lr, ), (head_lr, ) = lrs['backbone'], lrs['head']
    assert backbone_lr == pytest.approx(0.1 * head_lr) and head_lr > 0
    # the same weights into another arch: the strict error, with the arch they look like
    status, _, err = tool_in_process('train.py', FINETUNE, '--work-dir', str(tmp_path / 'w3'),
                                     '--cfg-options', *_data_options(folder_data),
                                     'model.backbone.arch=B0')
    (line, ) = [ln for ln in err.splitlines() if ln.startswith('train.py: error:')]
    assert status == 1 and "looks like RepVGG arch 'a0'" in line


def test_segmentation_example_of_the_docs_runs(zoo_served, cache, tmp_path, monkeypatch,
                                               capsys):
    """docs/backbone.md's PSPNet example as it stands: the backbone loads the published
    weights by name, trains, fuses as a whole with the same output, reloads fused."""
    _, _, ours = zoo_served
    with open(osp.join(ROOT, 'docs', 'backbone.md')) as f:
        code = re.findall(r'```python\n(.*?)```', f.read(), re.S)[-1]
    os.symlink(osp.join(ROOT, 'configs'), tmp_path / 'configs')
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, 'docs/backbone.md', 'exec'), namespace)
    fused, deploy = namespace['fused'], namespace['deploy']
    logits, fused_logits = namespace['logits'], namespace['fused_logits']
    assert tuple(logits.shape) == (4, 3, 64, 64)
    torch.testing.assert_close(fused_logits, logits, rtol=1e-4, atol=1e-4)
    assert fused.auxiliary_head is None and deploy.auxiliary_head is None
    assert not any('rbr_dense' in k for k in deploy.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(deploy(namespace['inputs']), logits, rtol=1e-4, atol=1e-4)
    assert tuple(namespace['predicted'].shape) == (4, 64, 64)
    assert set(namespace['losses']) == {'loss', 'loss_decode', 'loss_aux'}  # loss: the sum
    printed = capsys.readouterr().out
    assert "'loss'" in printed and '(4, 3, 64, 64)' in printed
    # the backbone was loaded from the published weights (not random, not partial):
    # the stage-0 BN statistics are not touched by training in eval mode and SGD
    fresh = build_model(load_config(osp.join(ROOT, 'configs', 'segmentation',
                                             'pspnet_repvgg-a0_example.py')))
    fresh.init_weights()
    for key, value in fresh.backbone.state_dict().items():
        torch.testing.assert_close(value, ours['backbone.' + key], rtol=0, atol=0)
    assert osp.isfile(tmp_path / 'work_dirs' / 'pspnet-a0_fused.pth')


def test_backbone_pretrained_refuses_what_does_not_fit(zoo_served, cache, tmp_path):
    """init_cfg Pretrained is strict and safe: another arch is an error naming it."""
    from repvgg_mm.registry import MODELS
    backbone = MODELS.build(dict(type='RepVGG', arch='A1', init_cfg=dict(
        type='Pretrained', checkpoint='repvgg-a0', prefix='backbone.')))
    with pytest.raises(CheckpointError, match="looks like RepVGG arch 'a0'"):
        backbone.init_weights()
    with pytest.raises(CheckpointError, match="no weights under 'neck.'"):
        MODELS.build(dict(type='RepVGG', arch='A0', init_cfg=dict(
            type='Pretrained', checkpoint='repvgg-a0', prefix='neck.'))).init_weights()


def test_convert_tool_reports_its_input_before_any_folder(tmp_path):
    """Every tool that writes creates a missing output folder; so convert_checkpoint
    gets to say what is wrong with its input -- and leaves no folder behind."""
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'not a checkpoint')
    out = tmp_path / 'new' / 'sub' / 'out.pth'
    status, _, err = tool_in_process('convert_checkpoint.py', str(bad), str(out))
    assert status == 1 and 'not a PyTorch checkpoint' in err.splitlines()[0]
    assert not (tmp_path / 'new').exists()
    model = build_model(load_config(DEMO_CONFIG))
    torch.save(model.state_dict(), tmp_path / 'good.pth')
    status, out_text, err = tool_in_process('convert_checkpoint.py', str(tmp_path / 'good.pth'),
                                            str(out))
    assert status == 0, err
    assert out.is_file()
