"""Downloads (issue 24), against HTTP servers on 127.0.0.1 that the tests start and stop:
which files are hash-checked, nothing removed that a download did not write, one lock
per cache entry (4 processes over a damaged cached file), one cache entry per URL, and
the distributed gate with 2 gloo ranks (one download per node, a failure on one rank
shared at once, a file in one node's cache only, ranks of one node sharing a cache)."""
import http.server
import json
import multiprocessing
import os
import os.path as osp
import re
import shutil
import sys
import time
import traceback
from datetime import timedelta

import pytest
import torch
from conftest import DEMO_CONFIG, ROOT, free_port, randomize_bn, run_tool, serving, sha256_file

from repvgg_mm.apis import build_model
from repvgg_mm.checkpoints import CheckpointError, DownloadError, load_checkpoint_file, zoo
from repvgg_mm.checkpoints.fetch_gate import fetch_on_each_node, needs_fetch
from repvgg_mm.cli import load_config

# Forked children inherit the imported modules and the tests' monkeypatches (the zoo's
# URLs), and start in milliseconds instead of the seconds an import takes.
FORK = multiprocessing.get_context('fork')


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ``/503/...`` answers 503, ``/slow/<file>`` sends the file in
    1 MiB pieces 20 ms apart (so that concurrent clients overlap)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path.startswith('/503/'):
            self.send_error(503, 'Service Unavailable')
        elif self.path.startswith('/slow/'):
            with open(osp.join(self.directory, self.path[len('/slow/'):]), 'rb') as f:
                body = f.read()
            self.send_response(200)
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            for start in range(0, len(body), 1 << 20):
                self.wfile.write(body[start:start + (1 << 20)])
                self.wfile.flush()
                time.sleep(0.02)
        else:
            super().do_GET()


def _serving(folder):
    """``(base URL, requests)`` of a server of ``folder`` on 127.0.0.1."""
    return serving(folder, _Handler)


_sha256 = sha256_file


@pytest.fixture(scope='module')
def served(tmp_path_factory):
    """A server of a demo-model checkpoint (A0, 10 classes, ~30 MB) named with its
    SHA-256 prefix as torch.hub names files. Returns a dict: base, requests, folder,
    name, state (the state dict)."""
    folder = tmp_path_factory.mktemp('served')
    torch.manual_seed(0)
    state = randomize_bn(build_model(load_config(DEMO_CONFIG))).state_dict()
    torch.save(dict(state_dict=state), folder / 'demo.tmp')
    name = f'demo-{_sha256(folder / "demo.tmp")[:8]}.pth'
    os.replace(folder / 'demo.tmp', folder / name)
    with _serving(folder) as (base, requests):
        yield dict(base=base, requests=requests, folder=folder, name=name, state=state)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    return tmp_path / 'torch_home' / 'hub' / 'checkpoints'


def _zoo(patch, **weights):
    """Make the zoo's ``Weights`` of each model name (``repvgg_a0=url``) the given URL."""
    real = zoo.model_index

    def index():
        entries = real()
        for model, url in weights.items():
            model = model.replace('_', '-')
            entries[model] = dict(entries[model], Weights=url)
        return entries
    patch.setattr(zoo, 'model_index', index)


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file())


def _same_weights(checkpoint, state):
    weights = checkpoint['state_dict']
    return set(weights) == set(state) and all(torch.equal(weights[k], state[k]) for k in state)


def test_only_zoo_urls_are_hash_checked_and_other_files_are_left_alone(served, cache):
    """A date that reads as a hash (finetuned-20230515.pth) loads; a file of the same
    name that MMEngine downloaded into the shared hub cache is not touched; a file put
    where the offline message says is used as it is, and never deleted."""
    base, folder = served['base'], served['folder']
    shutil.copy(folder / served['name'], folder / 'finetuned-20230515.pth')
    cache.mkdir(parents=True)
    (cache / 'finetuned-20230515.pth').write_bytes(b'a file MMEngine downloaded')
    url = base + 'finetuned-20230515.pth'
    assert zoo.expected_prefix(url) is None
    assert _same_weights(load_checkpoint_file(url), served['state'])
    assert (cache / 'finetuned-20230515.pth').read_bytes() == b'a file MMEngine downloaded'
    entry = zoo.cached_path(url)
    assert re.fullmatch(re.escape(str(cache)) + r'/url-[0-9a-f]{16}/finetuned-20230515\.pth',
                        entry)

    offline = f'http://127.0.0.1:{free_port()}/run3/epoch-0badc0de.pth'
    with pytest.raises(DownloadError, match='without network access') as info:
        load_checkpoint_file(offline)
    by_hand = re.search(r"put it at '([^']+)'", str(info.value))[1]
    shutil.copy(folder / served['name'], by_hand)
    before = os.stat(by_hand)
    for _ in range(2):
        assert _same_weights(load_checkpoint_file(offline), served['state'])
    after = os.stat(by_hand)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert os.listdir(osp.dirname(by_hand)) == ['epoch-0badc0de.pth']  # no lock file left

    # an unreadable file put there by hand is moved aside, not deleted
    offline = f'http://127.0.0.1:{free_port()}/run4/weights-12345678.pth'
    os.makedirs(osp.dirname(zoo.cached_path(offline)))
    with open(zoo.cached_path(offline), 'wb') as f:
        f.write(b'not a checkpoint')
    with pytest.raises(CheckpointError, match='not a PyTorch checkpoint'):
        load_checkpoint_file(offline)
    (aside, ) = os.listdir(osp.dirname(zoo.cached_path(offline)))
    assert aside.startswith('weights-12345678.pth.corrupt-')
    with open(osp.join(osp.dirname(zoo.cached_path(offline)), aside), 'rb') as f:
        assert f.read() == b'not a checkpoint'


def test_damaged_zoo_file_is_moved_aside_named_and_downloaded_again(served, cache,
                                                                    monkeypatch):
    name, requests = served['name'], served['requests']
    url = served['base'] + name
    _zoo(monkeypatch, repvgg_a0=url)
    assert zoo.expected_prefix(url) == name[5:13]
    assert zoo.cached_path(url) == str(cache / name)  # torch.hub's name, shared with MMEngine
    cache.mkdir(parents=True)
    (cache / name).write_bytes(b'damaged')
    logged = []
    monkeypatch.setattr(zoo, 'print_log', lambda message, **_: logged.append(message))
    before = len(requests)
    assert load_checkpoint_file('repvgg-a0')['state_dict'].keys() == served['state'].keys()
    assert requests[before:] == [f'/{name}']
    (aside, ) = [f for f in _files(cache) if f != name]
    assert aside.startswith(f'{name}.corrupt-')
    assert (cache / aside).read_bytes() == b'damaged'
    assert any(f'moved it to {cache / aside}' in line for line in logged), logged
    assert _sha256(cache / name) == _sha256(served['folder'] / name)


def _fetch_in_child(url, start, results):
    start.wait(30)
    try:
        path = zoo.fetch_url(url)
        results.put(('ok', path, _sha256(path)))
    except BaseException as exc:
        results.put(('error', repr(exc), traceback.format_exc()))


def test_four_processes_over_a_damaged_cached_file(served, cache, monkeypatch):
    """One of them moves the damaged file aside and downloads, the others wait for it
    and use the verified file; the file another program put there is untouched."""
    name, requests = served['name'], served['requests']
    url = f'{served["base"]}slow/{name}'
    _zoo(monkeypatch, repvgg_a0=url)
    cache.mkdir(parents=True)
    (cache / name).write_bytes(b'damaged' * 1000)
    (cache / 'other-0123abcd.pth').write_bytes(b'written by another program')
    start, results = FORK.Event(), FORK.Queue()
    children = [FORK.Process(target=_fetch_in_child, args=(url, start, results))
                for _ in range(4)]
    before = len(requests)
    for child in children:
        child.start()
    start.set()
    outcomes = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=10)
    good = _sha256(served['folder'] / name)
    assert outcomes == [('ok', str(cache / name), good)] * 4, outcomes
    assert requests[before:] == [f'/slow/{name}']  # one download
    (aside, ) = [f for f in _files(cache) if f not in (name, 'other-0123abcd.pth')]
    assert aside.startswith(f'{name}.corrupt-'), _files(cache)
    assert (cache / aside).read_bytes() == b'damaged' * 1000
    assert (cache / 'other-0123abcd.pth').read_bytes() == b'written by another program'


def test_same_file_name_at_two_urls_is_two_cache_entries(cache, tmp_path):
    """``.../run1/epoch_100.pth`` and ``.../run2/epoch_100.pth`` (two servers): each is
    downloaded from its own server and kept under its own name."""
    for run, value in (('run1', 1.0), ('run2', 2.0)):
        (tmp_path / run / run).mkdir(parents=True)
        torch.save({'w': torch.tensor([value])}, tmp_path / run / run / 'epoch_100.pth')
    with _serving(tmp_path / 'run1') as (base1, requests1), \
            _serving(tmp_path / 'run2') as (base2, requests2):
        first, second = base1 + 'run1/epoch_100.pth', base2 + 'run2/epoch_100.pth'
        assert load_checkpoint_file(first)['w'].item() == 1.0
        assert load_checkpoint_file(second)['w'].item() == 2.0
        assert load_checkpoint_file(first)['w'].item() == 1.0  # from the cache
    assert requests1 == ['/run1/epoch_100.pth'] and requests2 == ['/run2/epoch_100.pth']
    entries = _files(cache)
    assert len(entries) == 2 and {osp.basename(e) for e in entries} == {'epoch_100.pth'}
    assert zoo.cached_path(first) != zoo.cached_path(second)


def test_without_a_process_group_the_gate_is_the_plain_fetch(served, cache):
    url = served['base'] + served['name']
    assert needs_fetch(url) and needs_fetch('repvgg-a0')
    assert not needs_fetch('work_dirs/epoch_1.pth') and not needs_fetch('repvgg-a0.pth')
    assert fetch_on_each_node(url) == (str(zoo.cached_path(url)), url)
    with pytest.raises(DownloadError, match='HTTP 503'):
        fetch_on_each_node(served['base'] + '503/' + served['name'])


# -- the distributed gate: 2 gloo ranks, forked ---------------------------------------

def _cache_of(home):
    folder = osp.join(home, 'hub', 'checkpoints')
    return sorted(osp.relpath(osp.join(d, f), folder)
                  for d, _, files in os.walk(folder) for f in files)


def _rank_main(rank, port, work, served, out):
    """One rank: the scenarios in turn, each rank with its own $TORCH_HOME unless the
    scenario shares one; results (outcome, message, seconds, cache) into ``out``."""
    import faulthandler

    import torch.distributed as dist

    from repvgg_mm.cli import build_runner
    from repvgg_mm.registry import MODELS
    faulthandler.dump_traceback_later(40, exit=True)  # a hang shows where, then ends
    # the parent's OpenMP pool does not survive fork (a forked child's first parallel
    # op waits for it forever): one thread, as PyTorch's data-loader workers do
    torch.set_num_threads(1)
    base, name, state = served['base'], served['name'], served['state']
    results = {}
    try:
        dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                                world_size=2, timeout=timedelta(seconds=30))
        cfg = load_config(DEMO_CONFIG)
        cfg.work_dir, cfg.launcher = osp.join(work, f'runner{rank}'), 'none'
        runner = build_runner(cfg)

        def load_from(spec):
            runner.load_checkpoint(spec)
            loaded = runner.model.state_dict()
            assert all(torch.equal(loaded[k], state[k]) for k in state)

        def backbone_pretrained(spec):
            backbone = MODELS.build(dict(type='RepVGG', arch='A0', init_cfg=dict(
                type='Pretrained', checkpoint=spec, prefix='backbone.')))
            backbone.init_weights()
            key = 'stage4.0.rbr_dense.conv.weight'
            assert torch.equal(backbone.state_dict()[key], state['backbone.' + key])

        scenarios = [
            # (a) two nodes, empty caches: each downloads once, by both entry points
            ('a', f'a/rank{rank}', '0',
             lambda: (backbone_pretrained(base + 'zoo-a/' + name),
                      load_from(base + 'zoo-a/' + name))),
            # (b) rank 1's server fails
            ('b', f'b/rank{rank}', '0',
             lambda: load_from(base + ('b/demo.pth' if rank == 0 else '503/demo.pth'))),
            # (c) the file in rank 0's cache only, by zoo name; then a file of the zoo
            # name in rank 0's working folder only (it is used there, rank 1 fetches)
            ('c', f'c/rank{rank}', '0', lambda: load_from('repvgg-a1')),
            ('c2', f'c2/rank{rank}', '0', lambda: load_from('repvgg-a2')),
            # (d) one node, one cache: local rank 0 downloads, local rank 1 waits
            ('d', 'd', str(rank), lambda: backbone_pretrained(base + 'd/demo.pth')),
            # (e) the same without LOCAL_RANK: the lowest rank of the host leads
            ('e', 'e', None, lambda: load_from(base + 'e/demo.pth')),
        ]
        for scenario, home, local_rank, action in scenarios:
            home = osp.join(work, home)
            os.environ['TORCH_HOME'] = home
            if local_rank is None:
                os.environ.pop('LOCAL_RANK', None)
            else:
                os.environ['LOCAL_RANK'] = local_rank
            if scenario == 'c' and rank == 0:
                os.makedirs(osp.join(home, 'hub', 'checkpoints'))
                shutil.copy(osp.join(served['folder'], name),
                            osp.join(home, 'hub', 'checkpoints', name))
            if scenario == 'c2':
                os.makedirs(home)
                if rank == 0:
                    shutil.copy(osp.join(served['folder'], name), osp.join(home, 'repvgg-a2'))
                os.chdir(home)
            dist.barrier()
            started = time.monotonic()
            try:
                action()
                result = dict(ok=True)
            except Exception as exc:
                result = dict(ok=False, error=type(exc).__name__, message=str(exc))
            result.update(seconds=time.monotonic() - started, cache=_cache_of(home))
            os.chdir(work)
            results[scenario] = result
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        results['crash'] = traceback.format_exc()
    with open(out, 'w') as f:
        json.dump(results, f)


@pytest.fixture(scope='module')
def two_ranks(served, tmp_path_factory):
    """Run :func:`_rank_main` on 2 forked gloo ranks; ``{rank: results}``."""
    work = tmp_path_factory.mktemp('ranks')
    for sub, file_name in (('zoo-a', served['name']), ('zoo-c', served['name']),
                           ('zoo-c2', served['name']),
                           ('b', 'demo.pth'), ('d', 'demo.pth'), ('e', 'demo.pth')):
        (served['folder'] / sub).mkdir(exist_ok=True)
        shutil.copy(served['folder'] / served['name'], served['folder'] / sub / file_name)
    before = len(served['requests'])
    with pytest.MonkeyPatch.context() as patch:
        _zoo(patch, repvgg_a0=served['base'] + 'zoo-a/' + served['name'],
             repvgg_a1=served['base'] + 'zoo-c/' + served['name'],
             repvgg_a2=served['base'] + 'zoo-c2/' + served['name'])
        port = free_port()
        ranks = [FORK.Process(target=_rank_main,
                              args=(rank, port, str(work), served, str(work / f'{rank}.json')))
                 for rank in range(2)]
        for process in ranks:
            process.start()
        deadline = time.monotonic() + 60
        for process in ranks:
            process.join(timeout=max(1, deadline - time.monotonic()))
        for process in ranks:
            if process.is_alive():
                process.kill()
                process.join()
        hung = [rank for rank, process in enumerate(ranks) if process.exitcode != 0]
        assert not hung, f'ranks {hung} hung or died (exit codes: ' \
                         f'{[p.exitcode for p in ranks]})'
    results = {}
    for rank in range(2):
        with open(work / f'{rank}.json') as f:
            results[rank] = json.load(f)
        assert 'crash' not in results[rank], results[rank]['crash']
    results['requests'] = served['requests'][before:]
    return results


def test_two_nodes_download_once_each_and_load(two_ranks, served):
    for rank in range(2):
        outcome = two_ranks[rank]['a']
        assert outcome['ok'], outcome
        assert outcome['cache'] == [served['name']]
    assert two_ranks['requests'].count(f'/zoo-a/{served["name"]}') == 2


def test_a_failure_on_one_rank_stops_every_rank_at_once_with_its_reason(two_ranks):
    import socket
    for rank in range(2):
        outcome = two_ranks[rank]['b']
        assert not outcome['ok'] and outcome['error'] == 'DownloadError', outcome
        message = outcome['message']
        assert f"rank 1 on host {socket.gethostname()!r}" in message, message
        assert 'HTTP 503' in message and '/503/demo.pth' in message
        assert outcome['seconds'] < 10  # not the process group's 30 s timeout
    assert two_ranks[0]['b']['cache'][0].endswith('/demo.pth')  # rank 0's own went fine


def test_a_file_in_one_nodes_cache_only_ends_in_both(two_ranks, served):
    for rank in range(2):
        outcome = two_ranks[rank]['c']
        assert outcome['ok'], outcome
        assert outcome['cache'] == [served['name']]
    assert two_ranks['requests'].count(f'/zoo-c/{served["name"]}') == 1  # rank 1's
    for rank in range(2):
        outcome = two_ranks[rank]['c2']
        assert outcome['ok'] and outcome['seconds'] < 10, outcome
        assert outcome['cache'] == ([] if rank == 0 else [served['name']])
    assert two_ranks['requests'].count(f'/zoo-c2/{served["name"]}') == 1  # rank 1's


def test_ranks_of_one_node_share_one_download(two_ranks):
    for scenario in ('d', 'e'):
        for rank in range(2):
            outcome = two_ranks[rank][scenario]
            assert outcome['ok'], (scenario, outcome)
            (entry, ) = outcome['cache']
            assert entry.startswith('url-') and entry.endswith('/demo.pth')
        assert two_ranks['requests'].count(f'/{scenario}/demo.pth') == 1, scenario


def test_test_tool_under_torchrun_fetches_once_per_node(served, tiny_data, tmp_path):
    """tools/test.py with 2 gloo ranks (torchrun, one node, one cache): the URL is fetched
    once the process group exists, by local rank 0; both ranks evaluate it."""
    (served['folder'] / 'tool').mkdir(exist_ok=True)
    shutil.copy(served['folder'] / served['name'], served['folder'] / 'tool' / 'demo.pth')
    before = len(served['requests'])
    metrics = tmp_path / 'metrics.json'
    run_tool(sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
             '--master_addr=127.0.0.1', f'--master_port={free_port()}',
             osp.join(ROOT, 'tools', 'test.py'), DEMO_CONFIG, served['base'] + 'tool/demo.pth',
             '--launcher', 'pytorch', '--work-dir', str(tmp_path / 'work'),
             '--out-metrics', str(metrics), '--cfg-options',
             f'test_dataloader.dataset.data_root={tiny_data}',
             env=dict(TORCH_HOME=str(tmp_path / 'torch_home')), timeout=120)
    assert 'accuracy/top1' in json.loads(metrics.read_text())
    assert served['requests'][before:] == ['/tool/demo.pth']
    (entry, ) = _files(tmp_path / 'torch_home' / 'hub' / 'checkpoints')
    assert entry.startswith('url-') and entry.endswith('/demo.pth')
