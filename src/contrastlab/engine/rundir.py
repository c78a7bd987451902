"""The run folder: what a new ``train`` does with what is already there.

- ``trainer.resume=auto`` (default): a folder with a checkpoint is continued, but only when the
  checkpoint was trained with the same config (keys that do not change the weights' trajectory,
  such as ``trainer.out_dir`` or ``trainer.knn_every``, may differ); otherwise the command
  refuses with one line naming the differing keys.
- ``trainer.resume=never``: a folder that already holds a run is refused.
- ``trainer.resume=PATH``: that checkpoint is continued (same config check) into ``out_dir``.
- ``trainer.overwrite=true``: the run's files in the folder are deleted and training starts over
  (``resume=PATH`` still starts from PATH).

One process at a time trains into a folder (:class:`contrastlab.files.FolderLock`); the
temporaries of killed writes are removed once the lock is held.
"""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from ..config import Config, resume_differences
from ..errors import UserError
from ..files import FolderLock, remove_stale_temporaries
from ..checkpoint import load_checkpoint

CKPT_NAME = "last.ckpt"
# what a run writes into its folder (deleted by trainer.overwrite=true)
RUN_FILES = ("last.ckpt", "metrics.csv", "summary.json", "config.yaml", "eval.json", "report.html")
RUN_DIRS = ("tb", "report", "samples")


def holds_run(run_dir: Path) -> list[str]:
    """The run files in ``run_dir`` (a folder with none of them is free to use)."""
    return [n for n in RUN_FILES[:3] if (run_dir / n).exists()]


def resume_source(cfg: Config, run_dir: Path) -> Path | None:
    """The checkpoint this run continues from, or None for a fresh start; refuses (one line) to
    start into a folder that holds another run unless ``trainer.overwrite=true``."""
    t = cfg.trainer
    own = run_dir / CKPT_NAME
    explicit = Path(t.resume) if t.resume not in ("auto", "never") else None
    if explicit is not None and explicit.is_dir():
        explicit = explicit / CKPT_NAME
    found = holds_run(run_dir)
    if found and not t.overwrite:
        continues_own = t.resume == "auto" or (explicit is not None and _same_file(explicit, own))
        if not continues_own:
            how = "trainer.resume=never" if t.resume == "never" else f"trainer.resume={t.resume}"
            raise UserError(f"{run_dir} already holds a run ({', '.join(found)}) and {how} would replace it; "
                            "use a new trainer.out_dir, trainer.resume=auto to continue it, or "
                            "trainer.overwrite=true to replace it")  # fmt: skip
    if explicit is not None:
        return explicit
    if t.resume == "auto" and not t.overwrite and own.exists():
        return own
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def load_resume(cfg: Config, source: Path, run_dir: Path) -> dict:
    """The checkpoint to resume from, after checking that it was trained with this config."""
    ckpt = load_checkpoint(source)
    diffs = resume_differences(ckpt["config"], cfg)
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        if source.parent == run_dir or _same_file(source, run_dir / CKPT_NAME):
            fix = f"use a new trainer.out_dir, or trainer.overwrite=true to start over in {run_dir}"
            where = str(run_dir)
        else:
            fix = "a resumed run keeps the config it was trained with: drop the differing overrides"
            where = str(source)
        raise UserError(f"{where} was trained with another config ({shown}); {fix}")
    return ckpt


def clear_run(run_dir: Path) -> list[str]:
    """Delete the files a run wrote in ``run_dir`` (``trainer.overwrite=true``); other files stay."""
    gone = []
    for n in RUN_FILES:
        p = run_dir / n
        if p.exists():
            p.unlink()
            gone.append(n)
    for n in RUN_DIRS:
        p = run_dir / n
        if p.is_dir():
            shutil.rmtree(p)
            gone.append(n + "/")
    return gone


@contextlib.contextmanager
def claimed(run_dir: Path, enabled: bool):
    """Hold the folder's lock (rank 0) and remove stale temporaries of killed writes."""
    if not enabled:
        yield
        return
    with FolderLock(run_dir):
        remove_stale_temporaries(run_dir)
        yield
