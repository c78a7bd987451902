"""Run logs: a CSV file (one row appended per log call, so a crash loses nothing) and TensorBoard.

``metrics.csv`` is only ever rewritten atomically (:func:`contrastlab.files.atomic_write`): at a
resume (the rows after the checkpoint's step are dropped; they are logged again) and when a
row brings new columns. A kill during a rewrite leaves the old file, never a shortened one; a
kill during an append leaves at most one partial last line, which the next resume drops.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ..files import atomic_write, write_error


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    """(header, rows) of a metrics.csv; a partial last line (a kill mid-append) is dropped."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


class CSVLog:
    """Append-only metrics.csv; new columns extend the header (the file is rewritten then)."""

    def __init__(self, path: Path, resume_step: int = 0):
        self.path = Path(path)
        self.rows: list[dict] = []
        self.fields: list[str] = []
        if self.path.exists() and resume_step > 0:
            header, rows = read_rows(self.path)
            for row in rows:
                try:
                    if int(float(row.get("step") or 0)) <= resume_step:
                        self.rows.append({k: v for k, v in row.items() if k is not None})
                except ValueError:
                    continue
            self.fields = [k for k in header if k]
        self._rewrite()

    def _rewrite(self):
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.fields, lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)
        atomic_write(self.path, buf.getvalue(), kept="the previous metrics.csv is kept")

    def log(self, row: dict):
        row = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
        self.rows.append(row)
        new = [k for k in row if k not in self.fields]
        if new:
            self.fields.extend(new)
            self._rewrite()
            return
        buf = io.StringIO()
        csv.DictWriter(buf, fieldnames=self.fields, lineterminator="\n").writerow(row)
        try:
            with open(self.path, "a", encoding="utf-8", newline="") as f:
                f.write(buf.getvalue())  # one write of one whole line
        except OSError as e:
            raise write_error(e, self.path, "the rows logged so far are kept") from None


class RunLogger:
    """CSV + TensorBoard, written by rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int = 0, tensorboard: bool = True):
        self.enabled = enabled
        self.csv = CSVLog(Path(run_dir) / "metrics.csv", resume_step) if enabled else None
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=resume_step + 1 if resume_step else None)
            except ImportError:  # tensorboard is optional at run time
                self.tb = None

    def log(self, step: int, metrics: dict):
        if not self.enabled:
            return
        self.csv.log({"step": step, **metrics})
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def close(self):
        if self.tb is not None:
            self.tb.close()
