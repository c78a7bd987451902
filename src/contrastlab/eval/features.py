"""Frozen features of an encoder over an image set, in batches, and the feature banks built from them
(the kNN monitor's, the protocols' and the report's: one function, :func:`feature_bank`)."""
from __future__ import annotations

import torch

from ..data.base import TensorImageSet
from ..data.files import worker_error_line
from ..errors import UserError


@torch.no_grad()
def extract_features(encoder, dataset, device=None, indices=None, batch_size: int = 512, num_workers: int = 0,
                     dtype=torch.float32) -> torch.Tensor:  # fmt: skip
    """Features (N, d) on the CPU of ``encoder`` (eval mode, restored afterwards) for the images
    of ``dataset`` (all, or ``indices``). Images are uint8, scaled to [0, 1] here."""
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    idx = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices)
    out = []
    try:
        if isinstance(dataset, TensorImageSet):
            for s in range(0, len(idx), batch_size):
                x = dataset.images[idx[s : s + batch_size]].to(device).float().div_(255)
                out.append(encoder(x).to(dtype).cpu())
        else:
            sub = torch.utils.data.Subset(dataset, idx.tolist())
            loader = torch.utils.data.DataLoader(sub, batch_size=batch_size, num_workers=num_workers)
            try:
                for x, _ in loader:
                    out.append(encoder(x.to(device).float().div_(255)).to(dtype).cpu())
            except Exception as e:  # a data error in a loader worker: its one line, not its traceback
                line = worker_error_line(e)
                if line is None:
                    raise
                raise UserError(line) from None
    finally:
        encoder.train(was_training)
    if not out:
        return torch.empty(0, getattr(encoder, "out_dim", 0))
    return torch.cat(out)


def bank_indices(n: int, n_max: int | None = None, seed: int = 0) -> torch.Tensor:
    """The rows of an n-image set that form a bank: all of them in order (``n_max`` None), or a
    fixed random subset of ``min(n, n_max)`` rows drawn with ``seed`` (the same on every call)."""
    if n_max is None:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(n, n_max)]


def feature_bank(encoder, dataset, n_max: int | None = None, seed: int = 0, label: str | None = None, device=None,
                 batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(features, row indices) of a bank of ``dataset``: the rows of :func:`bank_indices`, less
    those without ``label`` (-1) when a label is given."""
    idx = bank_indices(len(dataset), n_max, seed)
    if label is not None:
        idx = idx[dataset.labels[label][idx] >= 0]
    return extract_features(encoder, dataset, device=device, indices=idx, batch_size=batch_size), idx
