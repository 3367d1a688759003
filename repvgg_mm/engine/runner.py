"""A Runner whose checkpoints survive being killed at any moment."""
import os
import os.path as osp
import re
import zipfile
from typing import List, Optional

from mmengine.dist import broadcast_object_list, get_rank, master_only
from mmengine.logging import print_log
from mmengine.runner import Runner

from repvgg_mm.registry import RUNNERS

_CKPT_NAME = re.compile(r'^(epoch|iter)_(\d+)\.pth$')


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
        with open(pointer) as f:
            target = f.read().strip()
        if target:
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
    """The newest complete checkpoint in ``work_dir``; every broken newer one is
    reported (with its path) and skipped."""
    for path in resumable_checkpoints(work_dir):
        if is_complete_checkpoint(path):
            return path
        print_log(f'checkpoint {path} is truncated or unreadable (a run killed while '
                  'saving?); trying the previous one', logger='current', level=30)
    return None


@RUNNERS.register_module()
class RepVGGRunner(Runner):
    """MMEngine's Runner with atomic checkpoint writes and resilient auto-resume.

    - Every checkpoint is written to a temporary file in the same folder, flushed to
      disk and renamed into place, so a kill while saving never leaves a truncated
      ``epoch_N.pth``; the ``last_checkpoint`` pointer is replaced the same way.
    - ``--resume`` without a path takes the newest *complete* checkpoint of the work
      dir, reporting and skipping broken ones.
    """

    @master_only  # as MMEngine's: only rank 0 writes
    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs) -> None:
        if not osp.isdir(out_dir):  # remote storage: leave it to MMEngine
            return super().save_checkpoint(out_dir, filename, *args, **kwargs)
        tmp_name = f'.{filename}.tmp'
        super().save_checkpoint(out_dir, tmp_name, *args, **kwargs)
        tmp, final = osp.join(out_dir, tmp_name), osp.join(out_dir, filename)
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)

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

    @staticmethod
    def build_dataloader(dataloader, seed: Optional[int] = None,
                         diff_rank_seed: bool = False):
        """A loader config with a ``type`` (e.g. ``GPUDecodeLoader``) builds that loader
        from ``repvgg_mm.registry.DATA_LOADERS``; anything else is MMEngine's."""
        if isinstance(dataloader, dict) and 'type' in dataloader:
            from repvgg_mm.datasets.gpu_loader import build_loader
            return build_loader(dataloader, seed=seed, diff_rank_seed=diff_rank_seed)
        return Runner.build_dataloader(dataloader, seed=seed, diff_rank_seed=diff_rank_seed)
