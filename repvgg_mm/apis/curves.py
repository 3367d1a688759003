"""Training curves from MMEngine's JSON scalar logs (the habit of MMPretrain's
``analyze_logs.py plot_curve``)."""
import glob
import json
import os.path as osp
from typing import Dict, List, Sequence, Tuple

from repvgg_mm.fileio import atomic_write


def find_json_log(log_or_dir: str) -> str:
    """The JSON scalar log of a work dir (its newest run), or ``log_or_dir`` itself.

    MMEngine's LocalVisBackend writes ``<work_dir>/<timestamp>/vis_data/scalars.json``.
    """
    if osp.isfile(log_or_dir):
        return log_or_dir
    if not osp.isdir(log_or_dir):
        raise FileNotFoundError(f'{log_or_dir!r} is neither a JSON log nor a work dir')
    logs = sorted(glob.glob(osp.join(log_or_dir, '*', 'vis_data', 'scalars.json')))
    if not logs:
        raise FileNotFoundError(f'no <timestamp>/vis_data/scalars.json under {log_or_dir!r}: '
                                'not a training work dir (or logging was off)')
    return logs[-1]


def read_scalars(json_log: str) -> Tuple[List[dict], List[dict]]:
    """Split a JSON scalar log into training records (they carry ``iter``) and
    validation records (``step`` is the epoch)."""
    train, val = [], []
    with open(json_log) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f'{json_log}:{number}: not a JSON line ({exc})') from exc
            (train if 'iter' in record else val).append(record)
    return train, val


def plot_training_curves(log_or_dir: str, keys: Sequence[str] = ('loss', 'accuracy/top1'),
                         out: str = 'curves.png') -> Dict[str, object]:
    """Plot logged scalars, one panel per key, and write a PNG atomically.

    Training scalars (``loss``, ``lr``, ...) are drawn against the iteration,
    validation scalars (``accuracy/top1``, ...) against the epoch.

    Args:
        log_or_dir (str): A work dir (its newest run is used) or a ``scalars.json``.
        keys (Sequence[str]): Logged scalars to plot. Defaults to
            ``('loss', 'accuracy/top1')``.
        out (str): The PNG to write. Defaults to ``'curves.png'``.

    Returns:
        dict: ``out``, ``log`` (the JSON log read) and ``points`` (per key, the number
        of points drawn).

    Raises:
        KeyError: a key that the log does not hold, listing the keys it has.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not keys:
        raise ValueError('no keys to plot')
    json_log = find_json_log(log_or_dir)
    train, val = read_scalars(json_log)
    series = {}
    for key in keys:
        source, axis = (train, 'iteration') if any(key in r for r in train) else \
            (val, 'epoch')
        points = [(r['step'], r[key]) for r in source if key in r]
        if not points:
            known = sorted({k for r in train + val for k in r} - {'step', 'iter', 'epoch'})
            raise KeyError(f'{json_log!r} logs no {key!r}; it has {", ".join(known)}')
        series[key] = (axis, points)

    figure = Figure(figsize=(5 * len(keys), 3.6), layout='constrained')
    FigureCanvasAgg(figure)
    for panel, (key, (axis, points)) in zip(figure.subplots(1, len(keys), squeeze=False)[0],
                                            series.items()):
        xs, ys = zip(*points)
        panel.plot(xs, ys, marker='o' if len(xs) <= 30 else None, markersize=3)
        panel.set_xlabel(axis)
        panel.set_title(key)
        panel.grid(alpha=0.3)
    atomic_write(out, lambda f: figure.savefig(f, format='png', dpi=100))
    return dict(out=out, log=json_log, points={k: len(p) for k, (_, p) in series.items()})
