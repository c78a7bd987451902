"""Small helpers of the report: a value as a tensor, as a float, and as table text."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def as_tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


def to_float(v) -> float | None:
    """A finite-or-nan float from a number or numeric string; None for empty / non-numeric."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, Tensor):
        if v.numel() != 1:
            return None
        v = v.item()
    if isinstance(v, str):
        v = v.strip()
        if not v:
            return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def fmt(v) -> str:
    if isinstance(v, Tensor):
        v = v.item() if v.numel() == 1 else v
    if isinstance(v, Tensor):
        return f"tensor of shape {tuple(v.shape)}"
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, str):
        f = to_float(v)
        return f"{f:.6g}" if f is not None and not v.strip().lstrip("-").isdigit() else v
    if isinstance(v, (list, tuple, np.ndarray)):
        seq = list(v)
        head = ", ".join(fmt(x) for x in seq[:8])
        return f"[{head}{', ...' if len(seq) > 8 else ''}] (n={len(seq)})" if len(seq) > 8 else f"[{head}]"
    s = repr(v)
    return s if len(s) <= 200 else s[:197] + "..."
