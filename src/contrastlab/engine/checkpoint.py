"""Checkpoints: written atomically, read without executing code.

A checkpoint is a plain ``torch.save`` file of tensors and Python containers: the model's
state dict (every network, queue and bank of the method), the optimisers' and schedulers'
states, the step, and the resolved config as a dict. Writing goes to a temporary file in the
same folder that is then renamed over the target, so a crash mid-write never leaves a
truncated checkpoint. Reading uses ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import UserError


def save_atomic(obj, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "last.ckpt"
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or unsafe content
        raise UserError(f"checkpoint {path} could not be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise UserError(f"{path} is not a contrastlab checkpoint (no model/config entries)")
    return ckpt
