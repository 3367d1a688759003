"""The documentation: every relative link resolves (anchors included), every command or
Python block is run by a test or says what it needs that a test machine lacks, and the
README stays one page.

A fenced block tagged bash/sh/shell/console/python in README.md or docs/ carries, on the
line(s) directly above its fence, HTML comments saying how it is covered:

- ``<!-- needs: imagenet -->`` (also ``gpu``, ``network``; several: ``needs: gpu, imagenet``)
  -- it cannot run here;
- ``<!-- tested-by: tests/test_x.py::test_name -->`` (several, comma-separated) -- that
  test runs what the block shows;
- ``<!-- run -->`` -- cheap enough to run here, and run by :func:`test_run_block`: Python
  in this process (a block that assigns ``_base_`` is a config file and is loaded as one,
  from a folder beside the shipped configs), shell with bash from the repository root.

Output examples are tagged ``text`` (or ``json``) and are not run. The blocks of
docs/repvgg.md and docs/backbone.md are run by tests/test_feature_extractor.py and
tests/test_pretrained.py as they stand and carry no markers.
"""
import ast
import glob
import os
import os.path as osp
import re
import subprocess
import sys
from dataclasses import dataclass, field
from typing import List

import pytest
from conftest import ROOT

README_MAX_LINES = 250
DOC_FILES = ['README.md'] + sorted(
    osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'docs', '**', '*.md'),
                                            recursive=True))
UNMARKED_FILES = {'docs/repvgg.md', 'docs/backbone.md'}  # covered by other tests as is
COMMAND_LANGUAGES = {'bash', 'sh', 'shell', 'console', 'python'}
NEEDS = {'imagenet', 'gpu', 'network'}
RUN_TIMEOUT_S = 120

FENCE = re.compile(r'^(\s*)(`{3,}|~{3,})\s*([^`\s]*)')
MARKER = re.compile(r'^\s*<!--\s*(.*?)\s*-->\s*$')
DIRECTIVE = re.compile(r'^(run|needs|tested-by)\s*(?::\s*(.*))?$')
LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
HEADING = re.compile(r'^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$')


@dataclass
class Block:
    path: str  # relative to the repository root
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    markers: List[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f'{self.path}:{self.line}'


def _read(path: str) -> List[str]:
    with open(osp.join(ROOT, path), encoding='utf-8') as f:
        return f.read().splitlines()


def parse(path: str):
    """The fenced blocks of a Markdown file and its prose lines (``(number, text)``,
    outside the fences)."""
    lines = _read(path)
    blocks, prose, i = [], [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        indent, fence, language = match.groups()
        body, j = [], i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence) and not stripped.strip(fence[0]):
                break
            body.append(lines[j][len(indent):] if lines[j].startswith(indent)
                        else lines[j].lstrip())
            j += 1
        markers, k = [], i - 1
        while k >= 0 and MARKER.match(lines[k]):
            markers.insert(0, MARKER.match(lines[k]).group(1))
            k -= 1
        blocks.append(Block(path, i + 1, language.lower(), '\n'.join(body) + '\n', markers))
        i = j + 1
    return blocks, prose


def command_blocks():
    return [block for path in DOC_FILES if path not in UNMARKED_FILES
            for block in parse(path)[0] if block.language in COMMAND_LANGUAGES]


def directives(block: Block):
    """``{'run': bool, 'needs': set, 'tested-by': list}`` of a block's markers; an
    unknown directive raises ``ValueError``."""
    found = {'run': False, 'needs': set(), 'tested-by': []}
    for marker in block.markers:
        match = DIRECTIVE.match(marker)
        if not match:
            raise ValueError(f'{block.where}: unknown marker <!-- {marker} -->; expected '
                             'run, needs: ... or tested-by: ...')
        name, value = match.group(1), [v.strip() for v in (match.group(2) or '').split(',')
                                       if v.strip()]
        if name == 'run':
            found['run'] = True
        elif not value:
            raise ValueError(f'{block.where}: <!-- {marker} --> names nothing')
        elif name == 'needs':
            found['needs'].update(value)
        else:
            found['tested-by'].extend(value)
    return found


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: links reduced to their text, lowercase, every
    character but letters, digits, spaces, '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading)
    text = re.sub(r'[^\w\- ]', '', text.strip().lower())
    return text.replace(' ', '-')


def anchors(path: str) -> set:
    seen, result = {}, set()
    for _, line in parse(path)[1]:
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f'{slug}-{count}')
    return result


def _without_code_spans(line: str) -> str:
    return re.sub(r'(`+)(?:(?!\1).)+?\1', '', line)


def test_doc_files_are_found():
    assert 'README.md' in DOC_FILES and 'docs/get_started.md' in DOC_FILES
    assert {'docs/benchmarks.md', 'docs/changelog.md', 'docs/README.md'} <= set(DOC_FILES)


def test_relative_links_resolve_to_files_and_headings():
    problems = []
    for path in DOC_FILES:
        for number, line in parse(path)[1]:
            for target in LINK.findall(_without_code_spans(line)):
                if re.match(r'^(https?:|mailto:)', target):
                    continue
                file_part, _, anchor = target.partition('#')
                linked = (osp.normpath(osp.join(osp.dirname(path), file_part)) if file_part
                          else path)
                where = f'{path}:{number}: [{target}]'
                if not osp.exists(osp.join(ROOT, linked)):
                    problems.append(f'{where}: {linked} does not exist')
                elif anchor and (not linked.endswith('.md') or anchor not in anchors(linked)):
                    problems.append(f'{where}: {linked} has no heading #{anchor}')
    assert not problems, '\n'.join(problems)


def test_github_slug_rules():
    assert github_slug('Why `mmcv-lite`?') == 'why-mmcv-lite'
    assert github_slug('3a. The specification\'s recipe (`configs/repvgg-<arch>.py`)') == \
        '3a-the-specifications-recipe-configsrepvgg-archpy'
    assert github_slug('Registries and the `repvgg_mm` scope') == \
        'registries-and-the-repvgg_mm-scope'
    assert github_slug('Inference: training-time vs fused') == 'inference-training-time-vs-fused'


def _test_function_exists(name: str) -> str:
    """'' when ``tests/file.py::[Class::]function`` exists, else what is wrong."""
    path, _, qualified = name.partition('::')
    if not qualified or not path.startswith('tests/') or not path.endswith('.py'):
        return f'{name!r} is not tests/<file>.py::<test function>'
    if not osp.isfile(osp.join(ROOT, path)):
        return f'{path} does not exist'
    with open(osp.join(ROOT, path), encoding='utf-8') as f:
        scope = ast.parse(f.read(), path).body
    for part in qualified.split('::'):
        found = [node for node in scope if isinstance(
            node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == part]
        if not found:
            return f'{path} has no {qualified}'
        scope = found[0].body
    return ''


def test_every_command_block_is_run_or_says_what_it_needs():
    problems = []
    blocks = command_blocks()
    assert len(blocks) > 20, 'the parser lost the blocks'
    for block in blocks:
        try:
            found = directives(block)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if not (found['run'] or found['needs'] or found['tested-by']):
            first = block.code.strip().splitlines()[0] if block.code.strip() else ''
            problems.append(f'{block.where}: a {block.language} block ({first!r}) with no '
                            '<!-- run -->, <!-- needs: imagenet|gpu|network --> or '
                            '<!-- tested-by: tests/...::test_... --> on the line above it')
        unknown = found['needs'] - NEEDS
        if unknown:
            problems.append(f'{block.where}: needs {sorted(unknown)}; known: {sorted(NEEDS)}')
        for name in found['tested-by']:
            missing = _test_function_exists(name)
            if missing:
                problems.append(f'{block.where}: tested-by {missing}')
    assert not problems, '\n'.join(problems)


def test_markers_sit_directly_above_a_block():
    problems = []
    for path in DOC_FILES:
        lines = _read(path)
        for number, line in enumerate(lines, 1):
            match = MARKER.match(line)
            if not match or not DIRECTIVE.match(match.group(1)):
                continue
            after = number  # index of the next line
            while after < len(lines) and MARKER.match(lines[after]):
                after += 1
            if after >= len(lines) or not FENCE.match(lines[after]):
                problems.append(f'{path}:{number}: <!-- {match.group(1)} --> is not directly '
                                'above a fenced block')
    assert not problems, '\n'.join(problems)


def test_readme_is_one_page():
    lines = _read('README.md')
    assert len(lines) <= README_MAX_LINES, (
        f'README.md has {len(lines)} lines; at most {README_MAX_LINES}: move the rest into '
        'docs/')


def _run_blocks():
    result = []
    for block in command_blocks():
        try:
            if directives(block)['run']:
                result.append(pytest.param(block, id=block.where))
        except ValueError:
            pass  # reported by test_every_command_block_is_run_or_says_what_it_needs
    return result


def _config_tree(tmp_path) -> str:
    """A folder whose entries are links to the shipped configs' (so that a block's
    ``../repvgg-a0.py`` and ``repvgg_mm::...`` resolve as from ``configs/<folder>/``),
    plus an empty folder of its own for the block."""
    root = tmp_path / 'configs'
    root.mkdir()
    for name in os.listdir(osp.join(ROOT, 'configs')):
        os.symlink(osp.join(ROOT, 'configs', name), root / name)
    (root / 'docs_example').mkdir()
    return str(root / 'docs_example')


def _expected_prints(code: str) -> List[str]:
    """The text after '# ' on each ``print(...)`` line: what that line prints."""
    expected = []
    for line in code.splitlines():
        match = re.match(r'^print\(.*\)\s+#\s*(.*?)\s*$', line)
        if line.startswith('print('):
            assert match, f'a run block prints without saying what: {line!r}'
            expected.append(match.group(1))
    return expected


@pytest.mark.parametrize('block', _run_blocks())
def test_run_block(block, tmp_path, monkeypatch, capsys):
    if block.language != 'python':
        env = dict(os.environ, PATH=osp.dirname(sys.executable) + os.pathsep
                   + os.environ.get('PATH', ''))
        result = subprocess.run(['bash', '-euo', 'pipefail', '-c', block.code], cwd=ROOT,
                                env=env, capture_output=True, text=True,
                                timeout=RUN_TIMEOUT_S)
        assert result.returncode == 0, (f'{block.where} failed ({result.returncode}):\n'
                                        f'{result.stdout[-2000:]}\n{result.stderr[-2000:]}')
        return
    if re.search(r'^_base_\s*=', block.code, re.M):  # a config file
        from repvgg_mm.cli import load_config
        folder = _config_tree(tmp_path)
        path = osp.join(folder, 'example.py')
        with open(path, 'w') as f:
            f.write(block.code)
        monkeypatch.chdir(tmp_path)
        cfg = load_config(path)
        assert cfg.model.backbone.type and cfg.train_dataloader.dataset.data_root, block.where
        return
    expected = _expected_prints(block.code)
    monkeypatch.chdir(ROOT)
    namespace = {'__name__': '__doc_block__'}
    exec(compile(block.code, block.where, 'exec'), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed == expected, f'{block.where} printed {printed}, the comments say {expected}'
