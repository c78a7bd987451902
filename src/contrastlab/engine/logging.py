"""Run logs: a CSV file (flushed on every row, so a crash loses nothing) and TensorBoard."""
from __future__ import annotations

import csv
from pathlib import Path


class CSVLog:
    """Append-only metrics.csv; new columns extend the header (the file is rewritten then)."""

    def __init__(self, path: Path, resume_step: int = 0):
        self.path = Path(path)
        self.rows: list[dict] = []
        self.fields: list[str] = []
        if self.path.exists() and resume_step > 0:
            with open(self.path, newline="") as f:
                for row in csv.DictReader(f):
                    try:
                        if int(float(row.get("step") or 0)) <= resume_step:
                            self.rows.append(row)
                    except ValueError:
                        continue
            for r in self.rows:
                for k in r:
                    if k not in self.fields:
                        self.fields.append(k)
        self._rewrite()

    def _rewrite(self):
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields)
            w.writeheader()
            w.writerows(self.rows)

    def log(self, row: dict):
        row = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
        self.rows.append(row)
        new = [k for k in row if k not in self.fields]
        if new:
            self.fields.extend(new)
            self._rewrite()
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(row)


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
