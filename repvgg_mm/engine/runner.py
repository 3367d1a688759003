"""A Runner whose checkpoints survive being killed at any moment, and that never runs
code from a checkpoint nor trains silently on weights that do not fit."""
import fnmatch
import os
import os.path as osp
import re
import zipfile
from typing import List, Optional, Sequence, Tuple

import torch
from mmengine.dist import broadcast_object_list, get_rank, master_only
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

from repvgg_mm.checkpoints import (
    CheckpointError,
    extract_state_dict,
    load_checkpoint_file,
    load_weights_into,
    to_ours,
)
from repvgg_mm.checkpoints.fetch_gate import fetch_on_each_node
from repvgg_mm.datasets.class_count import resolve_auto_num_classes
from repvgg_mm.fileio import atomic_path, fsync_path, is_inside
from repvgg_mm.registry import RUNNERS

_CKPT_NAME = re.compile(r'^(epoch|iter)_(\d+)\.pth$')

# Strings that MMEngine (Runner.resume, BaseInferencer) would parse as Python config
# code: meta['config'], meta['cfg'] and the message hub's runtime_info['cfg'].
_CODE_FIELDS = (('meta', 'config'), ('meta', 'cfg'), ('message_hub', 'runtime_info', 'cfg'))


def _interruption_in(exc: BaseException) -> Optional[BaseException]:
    """The ``KeyboardInterrupt`` among the exceptions ``exc`` was raised from, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def is_complete_checkpoint(path: str) -> bool:
    """Whether ``path`` is a whole ``torch.save`` file (a zip archive whose central
    directory, written last, is intact). A file cut short by a kill fails this
    without being unpickled."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith('data.pkl') for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def resumable_checkpoints(work_dir: str) -> List[str]:
    """Candidates to resume from, newest first: the ``last_checkpoint`` pointer's
    target, then ``epoch_N.pth`` / ``iter_N.pth`` by decreasing N."""
    candidates = []
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer, encoding='utf-8', errors='replace') as f:
            target = f.read().strip()
        if target and not is_inside(target, work_dir):
            # e.g. a work dir copied from another run: never resume that run's weights
            print_log(f'{pointer} points outside the work dir, to {target!r}; ignoring it '
                      '(pass --resume PATH to resume from a checkpoint elsewhere)',
                      logger='current', level=30)
        elif target:
            candidates.append(target)
    numbered = []
    for name in os.listdir(work_dir) if osp.isdir(work_dir) else []:
        m = _CKPT_NAME.match(name)
        if m:
            numbered.append((int(m[2]), osp.join(work_dir, name)))
    for _, path in sorted(numbered, reverse=True):
        if all(osp.abspath(path) != osp.abspath(c) for c in candidates):
            candidates.append(path)
    return candidates


def find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    """The newest complete checkpoint in ``work_dir``; every missing or broken newer
    one is reported (with its path) and skipped."""
    for path in resumable_checkpoints(work_dir):
        if not osp.exists(path):
            print_log(f'checkpoint {path} named by {osp.join(work_dir, "last_checkpoint")} is '
                      'missing; trying the previous one', logger='current', level=30)
        elif is_complete_checkpoint(path):
            return path
        else:
            print_log(f'checkpoint {path} is truncated or unreadable (a run killed while '
                      'saving?); trying the previous one', logger='current', level=30)
    return None


def drop_code_strings(checkpoint: dict) -> List[str]:
    """Remove the config text a checkpoint carries, which MMEngine would execute.

    ``Runner.resume`` executes ``meta['config']`` with ``Config.fromstring`` (only to
    read the GPU count) and MMEngine's inferencer executes ``meta['cfg']`` or the
    message hub's ``runtime_info['cfg']``. A checkpoint is data: these fields are
    dropped on load, and the run's own config is what counts.

    Returns:
        list[str]: the dotted names of the fields removed.
    """
    removed = []
    for path in _CODE_FIELDS:
        node = checkpoint
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and path[-1] in node:
            del node[path[-1]]
            removed.append('.'.join(path))
    return removed


def load_partially(model: torch.nn.Module, state_dict: dict, source: str,
                   ignore_keys: Sequence[str]) -> List[str]:
    """Load ``state_dict`` strictly except for keys matching ``ignore_keys``
    (``fnmatch`` patterns, e.g. ``'head.fc.*'`` for a new classifier): those may be
    missing, extra or of another shape, and keep the model's initial values.

    Returns:
        list[str]: the model keys that were not loaded.

    Raises:
        CheckpointError: naming ``source`` and the first keys that do not fit outside
            ``ignore_keys`` -- or a pattern that matches no key at all (a typo would
            otherwise make the option do nothing).
    """
    own = model.state_dict()
    for pattern in ignore_keys:
        if not any(fnmatch.fnmatchcase(k, pattern) for k in [*own, *state_dict]):
            raise CheckpointError(f'load_ignore_keys pattern {pattern!r} matches no key of '
                                  f'the model nor of {source!r}')

    def ignored(key):
        return any(fnmatch.fnmatchcase(key, p) for p in ignore_keys)

    kept = {k: v for k, v in state_dict.items() if not ignored(k)}
    skipped = [k for k in own if ignored(k)]
    merged = {**{k: own[k] for k in skipped}, **kept}
    load_weights_into(model, merged, source)
    return skipped


def _option_entries(cfg, prefix: str) -> Tuple[List[str], list]:
    keys = sorted(k for k in cfg.keys() if k.startswith(prefix))
    entries = []
    for key in keys:
        extra = cfg.get(key) or []
        if not isinstance(extra, (list, tuple)):
            raise TypeError(f'config key {key!r} must be a list of configs, got '
                            f'{type(extra).__name__}')
        entries.extend(extra)
    return keys, entries


def merge_option_keys(cfg) -> List[str]:
    """Add what the option files (``configs/_base_/options/``) contribute: every
    ``custom_hooks_<name>`` list is appended to ``custom_hooks``, every
    ``vis_backends_<name>`` list to ``visualizer.vis_backends``.

    MMEngine refuses a key defined by two base files, so option files that each set
    ``custom_hooks`` (channels-last, EMA) or the visualizer (TensorBoard) could not be
    combined with each other or with an arch config; with a key of their own each, any
    combination works.

    Returns:
        list[str]: the option keys merged, sorted (their entries are appended in that
        order).
    """
    hook_keys, hooks = _option_entries(cfg, 'custom_hooks_')
    if hook_keys:
        cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + hooks
    backend_keys, backends = _option_entries(cfg, 'vis_backends_')
    if backend_keys:
        visualizer = cfg.get('visualizer')
        if not isinstance(visualizer, dict):
            raise KeyError(f'{backend_keys} add visualizer backends, but the config has no '
                           'visualizer dict')
        visualizer['vis_backends'] = list(visualizer.get('vis_backends') or []) + backends
    return hook_keys + backend_keys


@RUNNERS.register_module()
class RepVGGRunner(Runner):
    """MMEngine's Runner with atomic checkpoint writes and resilient auto-resume.

    - Every checkpoint is written to a temporary file in the same folder, flushed to
      disk and renamed into place, so a kill while saving never leaves a truncated
      ``epoch_N.pth``; the ``last_checkpoint`` pointer is replaced the same way.
    - ``--resume`` without a path takes the newest *complete* checkpoint of the work
      dir, reporting and skipping broken ones; the ``last_checkpoint`` pointer is only
      followed inside the work dir.
    - ``load_from`` and resume read checkpoints with ``torch.load(weights_only=True)``
      and drop the config text a checkpoint carries (:func:`drop_code_strings`): no
      code from a checkpoint runs.
    - The weights load strictly: a checkpoint that does not fit the model (another
      arch, another class count) or holds NaN/inf stops the run before its first
      iteration, naming the file, the first mismatching keys and the arch it looks
      like. For fine-tuning with a new head, the config key ``load_ignore_keys`` (a
      list of ``fnmatch`` patterns, e.g. ``['head.fc.*']``) names exactly the keys that
      ``load_from`` may skip; resuming is always strict.
    - A checkpoint that cannot be written (disk full) leaves no temporary file and
      fails with one error naming the file.
    """

    @classmethod
    def from_cfg(cls, cfg) -> 'RepVGGRunner':
        """MMEngine's ``from_cfg``, after ``num_classes='auto'`` (head and data
        preprocessor) is set from the training data's classes (a fine-tuning config on
        a user's folder of class sub-folders; :func:`resolve_auto_num_classes`) and the
        option files' hooks are added (:func:`merge_option_keys`)."""
        resolved = resolve_auto_num_classes(cfg)
        merge_option_keys(cfg)
        runner = super().from_cfg(cfg)
        if resolved:
            runner.logger.info(resolved)
        return runner

    def _maybe_compile(self, target: str) -> None:
        """``compile`` compiles the network's modules, not MMEngine's ``train_step``.

        MMEngine hands the whole ``train_step`` to ``torch.compile``: the optimizer
        wrapper's context managers, autocast set-up and parameter update are traced
        too, and Dynamo breaks on them (torch 2.11 on an H200 stopped in the first
        step at MMEngine's version assert inside ``autocast``). The speed comes from
        the convolutions, so the backbone, neck and head are compiled
        (``nn.Module.compile``, which DDP's wrapped module uses as well); a model
        without those submodules is compiled whole (``QATClassifier`` refuses).
        ``compile`` may be a dict of ``torch.compile`` arguments.
        """
        compile_cfg = self.cfg.get('compile', None)
        if not compile_cfg or target != 'train_step':
            return
        kwargs = {} if compile_cfg is True else dict(compile_cfg)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        children = dict(model.named_children())
        names = [name for name in ('backbone', 'neck', 'head') if name in children]
        for part in [children[name] for name in names] or [model]:
            part.compile(**kwargs)  # a model that cannot be compiled refuses here
        self.logger.info(f"compile: {', '.join(names) or 'the model'} compiled with "
                         'torch.compile; the first iterations are slow')

    def train(self):
        """MMEngine's ``train``; an interruption (SIGTERM/SIGINT, raised as
        ``KeyboardInterrupt`` by the tools' handlers) that a library turned into another
        error on its way out stays an interruption. (MMEngine formats the config for
        every checkpoint's meta with a bare ``except`` that re-raises anything as
        ``SyntaxError: Failed to format the config file``: a SIGTERM arriving then
        ended training as an error, without its resume hint.)"""
        try:
            return super().train()
        except Exception as exc:
            interrupt = _interruption_in(exc)
            if interrupt is not None:
                raise interrupt from None
            raise

    @master_only  # as MMEngine's: only rank 0 writes
    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs) -> None:
        if not osp.isdir(out_dir):  # remote storage: leave it to MMEngine
            return super().save_checkpoint(out_dir, filename, *args, **kwargs)
        final = osp.join(out_dir, filename)
        try:
            with atomic_path(final) as tmp:  # removed again if anything below fails
                super().save_checkpoint(out_dir, osp.basename(tmp), *args, **kwargs)
                fsync_path(tmp)
        except (OSError, RuntimeError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise OSError(f'could not write checkpoint {final!r} (work dir {out_dir!r}): '
                          f'{reason}; nothing partial was left, the previous checkpoints '
                          'are intact') from exc

    def load_or_resume(self) -> None:
        if self._has_loaded:
            return None
        if self._resume and self._load_from is None:
            # every rank resumes from rank 0's choice, even if it sees the disk differently
            choice = [find_resumable_checkpoint(self.work_dir) if get_rank() == 0 else None]
            broadcast_object_list(choice, src=0)
            found = choice[0]
            if found is None:
                self.logger.info(f'--resume: no complete checkpoint in {self.work_dir}; '
                                 'starting from scratch')
                self._resume = False
            else:
                self._load_from = found
                self.logger.info(f'Auto resumed from the latest complete checkpoint {found}.')
        return super().load_or_resume()

    def resume(self, filename: str, *args, **kwargs) -> None:
        self._resuming = True
        try:
            super().resume(filename, *args, **kwargs)
        finally:
            self._resuming = False

    def load_checkpoint(self, filename: str, map_location='cpu', strict: bool = False,
                        revise_keys: list = ()) -> dict:
        """Read ``filename`` safely and load its weights strictly (see the class doc).

        Any key format the project reads is accepted (ours, official, MMPretrain, timm);
        ``filename`` may also be a URL or a zoo name with published weights
        (``load_from = 'repvgg-a0'``), downloaded once per node into the torch.hub
        cache (:func:`~repvgg_mm.checkpoints.fetch_gate.fetch_on_each_node`).
        ``strict`` and ``revise_keys`` of MMEngine's signature are ignored: loading is
        always strict, except for the config's ``load_ignore_keys`` with ``load_from``.
        """
        resuming = getattr(self, '_resuming', False)
        # A URL or zoo name (load_from = 'repvgg-a0'): the local rank 0 of each node
        # downloads into its node's cache while the others wait, and every rank learns
        # every outcome before any goes on -- the same on every rank, decided from the
        # string, never from a per-rank look at the disk (a file on one rank's disk only
        # would leave the others in a collective); a local file passes straight through.
        fetch_on_each_node(filename)
        checkpoint = load_checkpoint_file(filename)
        if not isinstance(checkpoint, dict):
            raise CheckpointError(f'{filename!r} holds a {type(checkpoint).__name__}, '
                                  'expected a checkpoint dict')
        removed = drop_code_strings(checkpoint)
        if removed:
            self.logger.info(f'ignored the config text stored in {filename} '
                             f'({", ".join(removed)}): the run\'s own config is used')
        if resuming:
            meta = checkpoint.get('meta')
            if not isinstance(meta, dict) or not all(
                    isinstance(meta.get(k), int) for k in ('epoch', 'iter')):
                raise CheckpointError(
                    f'cannot resume from {filename!r}: it holds no training state (meta '
                    'epoch/iter); to start a new run from its weights, set load_from '
                    'instead of --resume')
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        state_dict, _ = to_ours(extract_state_dict(checkpoint, filename), None, filename)
        ignore = [] if resuming else list(self.cfg.get('load_ignore_keys') or [])
        if ignore:
            skipped = load_partially(model, state_dict, filename, ignore)
            self.logger.info(f'load_ignore_keys: kept the initial values of {len(skipped)} '
                             f'keys {skipped[:6]}')
        else:
            load_weights_into(model, state_dict, filename)  # refuses NaN/inf too
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint

    @staticmethod
    def build_dataloader(dataloader, seed: Optional[int] = None,
                         diff_rank_seed: bool = False):
        """A loader config with a ``type`` (e.g. ``GPUDecodeLoader``) builds that loader
        from ``repvgg_mm.registry.DATA_LOADERS``; anything else is MMEngine's."""
        if isinstance(dataloader, dict) and 'type' in dataloader:
            from repvgg_mm.datasets.gpu_loader import build_loader
            return build_loader(dataloader, seed=seed, diff_rank_seed=diff_rank_seed)
        return Runner.build_dataloader(dataloader, seed=seed, diff_rank_seed=diff_rank_seed)
