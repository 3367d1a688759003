"""The tools without a clone: ``repvgg-mm TOOL [ARGS]`` or ``python -m repvgg_mm TOOL
[ARGS]`` runs ``tools/TOOL.py`` (``tools/analysis/TOOL.py``, ``tools/dataset/TOOL.py``,
``tools/TOOL.sh``) of this installation -- the very file a clone runs as
``python tools/TOOL.py`` -- with the same arguments and exit status::

    repvgg-mm train repvgg_mm::repvgg-a0.py --amp
    repvgg-mm reparam my_config.py work_dirs/my_config/epoch_120.pth fused.pth
    repvgg-mm dist_train repvgg_mm::repvgg-a0.py 8
    torchrun --nproc_per_node 8 -m repvgg_mm train repvgg_mm::repvgg-a0.py --launcher pytorch

Without arguments, or with a name that is no tool, it lists the tools (exit status 2).
"""
import glob
import os
import os.path as osp
import runpy
import subprocess
import sys
from typing import Dict, List, Optional

# They set up and write into the checkout they live in (data/, work_dirs/).
CLONE_ONLY = {'demo': 'make demo', 'int8_demo': 'make int8-demo',
              'gpu_speed_check': 'tools/analysis/gpu_speed_check.sh'}


def available_tools() -> Dict[str, str]:
    """Tool name -> script, from this installation's tools folder."""
    from repvgg_mm.resources import tools_root
    root = tools_root()
    found: Dict[str, str] = {}
    for pattern in ('*.py', '*.sh', '*/*.py', '*/*.sh'):
        for path in sorted(glob.glob(osp.join(root, pattern))):
            name = osp.splitext(osp.basename(path))[0]
            if not name.startswith('_') and name not in CLONE_ONLY:
                found.setdefault(name, path)
    return found


def _usage(tools: Dict[str, str]) -> str:
    from repvgg_mm.resources import tools_root
    root = tools_root()
    rows = [f'  {name:<24}{osp.relpath(path, root)}' for name, path in sorted(tools.items())]
    return ('usage: repvgg-mm TOOL [ARGS]   (python -m repvgg_mm TOOL [ARGS])\n'
            'runs tools/TOOL.py with ARGS; TOOL --help for its options. Tools:\n'
            + '\n'.join(rows) + '\n'
            + ''.join(f'({name} runs in a clone: {how})\n' for name, how in CLONE_ONLY.items()))


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    tools = available_tools()
    # the command line's own output (as repvgg_mm.cli.run_cli writes its errors)
    if argv and argv[0] in ('-h', '--help'):
        sys.stdout.write(_usage(tools))
        return 0
    if not argv or argv[0] not in tools:
        if argv:
            sys.stderr.write(f'repvgg-mm: error: unknown tool {argv[0]!r}\n')
        sys.stderr.write(_usage(tools))
        return 2
    script = tools[argv[0]]
    if script.endswith('.sh'):
        env = dict(os.environ)
        env.setdefault('PYTHON', sys.executable)  # the scripts start Python as $PYTHON
        return subprocess.call(['bash', script, *argv[1:]], env=env)
    sys.argv = [script, *argv[1:]]
    try:
        runpy.run_path(script, run_name='__main__')
    except SystemExit as exc:  # the tools exit through run_cli
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0
        sys.stderr.write(f'{code}\n')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
