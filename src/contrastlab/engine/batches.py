"""The batches of a run: which images each step of each process sees (a pure function of seed,
epoch and rank, so a resumed run continues exactly) and how they reach the device (the batched
views path, or per-image views in DataLoader workers)."""
from __future__ import annotations

import copy

import torch

from ..config import Config, UserError
from ..data.base import TensorImageSet
from ..data.files import worker_error_line


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of one step on one process: distinct per rank (augmentations differ across
    processes) and per step, and a pure function of its arguments (exact resume)."""
    return (seed * 1_000_003 + rank * 7_919 + step * 104_729) % (2**63 - 1)


class StepBatches:
    """Indices of the batch of each step: epoch e uses randperm(n) seeded by (seed, e); the
    global batch of a step is split across ranks; incomplete batches are dropped."""

    def __init__(self, n: int, batch: int, world: int, rank: int, seed: int, start: int, total: int):
        self.n, self.batch, self.world, self.rank, self.seed = n, batch, world, rank, seed
        self.start, self.total = start, total
        self.per_epoch = n // (batch * world)

    def indices(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.per_epoch)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7_777 + epoch))
        gb = self.batch * self.world
        glob = perm[i * gb : (i + 1) * gb]
        return glob[self.rank * self.batch : (self.rank + 1) * self.batch]

    def __iter__(self):
        for s in range(self.start, self.total):
            yield self.indices(s).tolist()

    def __len__(self):
        return self.total - self.start


class _TwoViewSet(torch.utils.data.Dataset):
    """Per-image augmentation path: each item is two torchvision views of the raw image. Image
    files are decoded at full size and augmented there (set_transform, on a shallow copy of the
    data set: the training set itself keeps serving plain images to the kNN monitor), not after
    resizing."""

    def __init__(self, ds, transform):
        self.ds, self.transform = ds, transform
        if hasattr(ds, "set_transform"):
            self.ds = copy.copy(ds)
            self.ds.set_transform(_PairTransform(transform))
            self.transform = None

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        img, _ = self.ds[i]
        v1, v2 = img if self.transform is None else (self.transform(img), self.transform(img))
        return v1, v2, i


class _PairTransform:
    """Two independent draws of one per-image transform (picklable for loader workers)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img):
        return self.transform(img), self.transform(img)


def batches(train_set, sampler: StepBatches, cfg: Config, device):
    """Yields batch dicts for the steps of ``sampler``; a data error raised in a loader worker
    (a corrupt file) comes out as the worker's one-line message."""
    try:
        yield from _batches_of(train_set, sampler, cfg, device)
    except Exception as e:  # a worker's UserError comes back as a UserError holding its traceback
        line = worker_error_line(e)
        if line is None:
            raise
        raise UserError(line) from None


def _batches_of(train_set, sampler: StepBatches, cfg: Config, device):
    """Yields batch dicts for the steps of ``sampler`` (images or views on the device)."""
    d = cfg.data
    pin = d.pin_memory and device.type == "cuda"
    if cfg.views.backend == "torchvision":
        from ..data.views import torchvision_views

        tf = torchvision_views(cfg.views, cfg.views.size or d.image_size)
        loader = _loader(_TwoViewSet(train_set, tf), sampler, d, pin)
        for v1, v2, idx in loader:
            yield {"views": [v1.to(device, non_blocking=pin), v2.to(device, non_blocking=pin)], "index": idx}
    elif hasattr(train_set, "get_batch"):
        # data sets that assemble whole batches themselves (e.g. unpaired domains: {"a", "b"});
        # their random picks use the step's seed, so a resumed run sees the same batches
        for step, idx in zip(range(sampler.start, sampler.total), sampler):
            g = torch.Generator().manual_seed(step_seed(cfg.seed, sampler.rank, step) + 1)
            out = train_set.get_batch(torch.tensor(idx), generator=g)
            yield {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in out.items()} | {"index": torch.tensor(idx)}
    elif isinstance(train_set, TensorImageSet):
        for idx in sampler:
            idx = torch.tensor(idx)
            x = train_set.images[idx]
            if pin:
                x = x.pin_memory()
            yield {"images": x.to(device, non_blocking=pin), "index": idx}
    else:
        for x, idx in _loader(train_set, sampler, d, pin):
            yield {"images": x.to(device, non_blocking=pin), "index": idx}


def _loader(ds, sampler, d, pin):
    return torch.utils.data.DataLoader(
        ds,
        batch_sampler=sampler,
        num_workers=d.num_workers,
        pin_memory=pin,
        persistent_workers=d.persistent_workers and d.num_workers > 0,
    )


# the trainer's earlier name
_batches = batches
