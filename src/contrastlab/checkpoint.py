"""Checkpoints: written atomically, read without executing code.

A checkpoint is a plain ``torch.save`` file of tensors and Python containers: the model's
state dict (every network, queue and bank of the method), the optimisers' and schedulers'
states, the step, and the resolved config as a dict. Writing goes to a temporary file in the
same folder that is then renamed over the target (:mod:`contrastlab.files`), so a crash or a
full disk mid-write never leaves a truncated checkpoint: the last good one is kept. Reading
uses ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .errors import UserError
from .files import atomic_save


def save_atomic(obj, path: str | Path) -> None:
    atomic_save(path, lambda tmp: torch.save(obj, tmp), kept="the last good checkpoint is kept")


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "last.ckpt"
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    ckpt = _torch_load(path, map_location, f"checkpoint {path}", "use another checkpoint or train again")
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise UserError(f"{path} is not a contrastlab checkpoint (no model/config entries)")
    return ckpt


def _torch_load(path: Path, map_location, what: str, fix: str):
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or unsafe content
        first = " ".join(str(e).split(". ")[0].split()) if str(e).strip() else type(e).__name__
        raise UserError(f"{what} is truncated, corrupt or not a checkpoint ({first}); {fix}") from None


def read_state_dict(path: str | Path, where: str) -> dict:
    """A weights file (``torch.save`` of a state dict: name -> tensor), read with ``weights_only=True``.
    A file that holds the state dict under ``"state_dict"`` (semseg / PFENet training checkpoints)
    gives that entry. ``where`` names the option (e.g.
    ``model.weights=PATH``) in the one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{where}: the file does not exist; give the path of a weights file (a saved state dict)")
    obj = _torch_load(path, "cpu", where, "give a state dict saved with torch.save")
    if isinstance(obj, dict):
        if isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj):
        raise UserError(f"{where}: not a state dict (a mapping of weight names to tensors); give a file saved with "
                        "torch.save(model.state_dict(), PATH)")  # fmt: skip
    return obj


def load_weights(module: torch.nn.Module, state: dict, where: str | Path) -> None:
    """``module.load_state_dict(state)`` (strict); a mismatch is one line naming a few keys,
    not PyTorch's list of every weight. (Modules whose buffers change shape, such as image
    pools, load them through their own ``_load_from_state_dict``.)"""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        own = module.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        shape = str(e).count("size mismatch for ")
        parts = [f"{len(keys)} {what} (e.g. {', '.join(keys[:2])})"
                 for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]  # fmt: skip
        if shape:
            parts.append(f"{shape} of another shape")
        raise UserError(f"the weights in {where} do not fit the model built from its config: "
                        f"{'; '.join(parts) or 'they cannot be loaded'}; it was written by another version "
                        "or for another model") from None  # fmt: skip
