"""The contenders shared by the benchmarks: a recipe's real training step through the library, and
a bare PyTorch SimCLR step that does the same work by hand."""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F


def make_step(recipe: str, images, overrides=(), channels_last: bool = True, accelerator: str = "cpu",
              precision: str = "32-true", return_model: bool = False, train_set=None, extra=None):  # fmt: skip
    """The real training step (`train_step` through Fabric) of a recipe on ``images()`` batches,
    views included; ``step`` is past every warm-up in steps (``epoch`` is 0 unless ``extra`` says
    otherwise). ``images()`` must return uint8 images on the accelerator. With ``return_model``
    also returns the Fabric-wrapped method.

    ``train_set``: handed to the set-up as the training set (only its length and labels are read
    here: a method's ``setup_data``, e.g. a memory bank of one row per image, and the schedule's
    batch check); the batches are still ``images()``. ``extra()``, when given, is called after
    ``images()`` at each step and its dict is merged into the batch (e.g. the ``index`` of the
    images in ``train_set``, an ``epoch`` past a method's switch-on epoch)."""
    from contrastlab.config import load_config
    from contrastlab.engine.setup import build_setup, make_fabric
    from contrastlab.engine.step import train_step

    cfg = load_config(recipe, ["trainer.max_steps=1000000", "data.long_tail_ratio=null", "seed=0", "trainer.threads=null",
                               f"trainer.accelerator={accelerator}", "trainer.devices=1", f"trainer.precision={precision}",
                               f"trainer.channels_last={str(channels_last).lower()}", *overrides])  # fmt: skip
    fabric = make_fabric(cfg)
    s = build_setup(cfg, fabric, datasets=(train_set, None))  # the trainer's set-up; the images are the caller's
    model, opt, sched = s.model, s.optimizer, s.scheduler
    model.train()
    g = torch.Generator(device=fabric.device)
    k = [0]

    def step():
        k[0] += 1
        g.manual_seed(k[0])
        batch = {"images": images(), "generator": g, "step": 10_000, "epoch": 0}
        if extra is not None:
            batch.update(extra())
        train_step(model, opt, sched, fabric, batch)

    return (step, model) if return_model else step


def resnet18_cifar() -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem (3x3/1 conv, no max-pool), no classifier."""
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


def bare_simclr_step(backbone: nn.Module, feat_dim: int, images, views, mean, std, *, lr: float, momentum: float = 0.9,
                     weight_decay: float = 1e-6, temperature: float = 0.5, proj_hidden: int = 2048, proj_dim: int = 128,
                     device="cpu", bf16: bool = False, channels_last: bool = True, seed: int = 0):  # fmt: skip
    """A SimCLR step written by hand, doing the work of the library's step: two views of the
    uint8 batch ``images()`` by ``views(x, generator)`` (the augmentation both share), input
    standardisation ``(x - mean) / std``, one forward pass of B per view through ``backbone`` and
    a Linear-BN-ReLU-Linear head, NT-Xent over the 2B views in float32, SGD with momentum and
    weight decay on the weights (not on biases and norm parameters, as the library's default
    ``optim.exclude_bias_bn``); under bf16 autocast when ``bf16`` (views, passes and loss, as
    Fabric's ``bf16-mixed`` wraps the method's forward). Left out, and so counted as the library's
    overhead: the learning-rate schedule's step, the finite-loss check, Fabric's wrappers."""
    torch.manual_seed(seed)
    head = nn.Sequential(nn.Linear(feat_dim, proj_hidden, bias=False), nn.BatchNorm1d(proj_hidden), nn.ReLU(inplace=True),
                         nn.Linear(proj_hidden, proj_dim))  # fmt: skip
    backbone, head = backbone.to(device), head.to(device)
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    params = [p for m in (backbone, head) for p in m.parameters()]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]  # fmt: skip
    opt = torch.optim.SGD(groups, lr=lr, momentum=momentum)
    mean = torch.as_tensor(mean, device=device).view(1, 3, 1, 1)
    std = torch.as_tensor(std, device=device).view(1, 3, 1, 1)
    backbone.train(), head.train()
    dev_type = torch.device(device).type
    g = torch.Generator(device=device)
    k = [0]

    def encode(v):
        v = (v - mean) / std
        if channels_last:
            v = v.contiguous(memory_format=torch.channels_last)
        return head(backbone(v))

    def step():
        k[0] += 1
        g.manual_seed(k[0])
        x = images()
        ctx = torch.autocast(dev_type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            v1, v2 = views(x, g), views(x, g)
            z1, z2 = encode(v1), encode(v2)  # one pass of B per view, as the library's SimCLR
            z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
            n = x.shape[0]
            sim = z @ z.t() / temperature
            sim.fill_diagonal_(float("-inf"))
            target = torch.cat([torch.arange(n, 2 * n, device=z.device), torch.arange(n, device=z.device)])
            loss = F.cross_entropy(sim, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


class SizedRows:
    """A stand-in training set for a method's ``setup_data`` (e.g. a memory bank of one row per
    image) and the set-up's batch check: ``n`` rows and no images, with one label ``label`` of
    ``classes`` classes drawn at ``seed``, so a method's label monitor runs as on a labelled set."""

    def __init__(self, n: int, classes: int = 10, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.n = n
        self.labels = {"label": torch.randint(classes, (n,), generator=g)}
        self.default_label = "label"

    def __len__(self) -> int:
        return self.n


class EpochOrder:
    """The batches of a drop-last loader over an ``n``-row training set: a permutation per epoch
    (drawn at ``seed`` + epoch), ``n // batch`` batches of distinct rows. ``images()`` moves on one
    batch and returns ``images_of(index)`` (uint8 images on ``device``); ``extra()`` returns that
    batch's ``index`` (on ``device``) and ``epoch`` (the constant ``epoch``: by default past any
    switch-on epoch), for :func:`make_step`. Two orders made alike give the same batches."""

    def __init__(self, n: int, batch: int, images_of, device="cpu", seed: int = 0, epoch: int = 10_000):
        if n < batch:
            raise ValueError(f"{n} rows hold no batch of {batch}")
        self.n, self.batch, self.images_of, self.device = n, batch, images_of, device
        self.seed, self.epoch = seed, epoch
        self.per_epoch = n // batch
        self.k = -1
        self.perm = None
        self.index = None

    def images(self):
        self.k += 1
        e, j = divmod(self.k, self.per_epoch)
        if j == 0:
            self.perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + e))
        self.index = self.perm[j * self.batch : (j + 1) * self.batch].to(self.device)
        return self.images_of(self.index)

    def extra(self) -> dict:
        return {"index": self.index, "epoch": self.epoch}


def invp_of(model):
    """The InvP method inside a Fabric-wrapped model."""
    return model.module if hasattr(model, "module") else model


@torch.no_grad()
def whole_bank_graph(method, query_chunk: int = 1024) -> None:
    """A kNN graph of the whole bank, written into the method's graph: for every bank row, the
    top-(k+1) rows of the bank minus itself (queries ``query_chunk`` rows at a time, the bank in
    the method's ``chunk_size`` chunks; never n x n). InvP does not do this (it rewrites the
    visited rows at each step, from the background it searches anyway): the benchmarks time it as
    the cost a per-epoch rebuild would have, and use it to give the graph realistic edges."""
    from contrastlab.nn.graph import neighbours_without_self
    from contrastlab.nn.neighbours import topk_neighbours

    bank, k = method.bank.vectors, method.graph.k
    out = torch.empty(bank.shape[0], k, dtype=torch.long, device=bank.device)
    for s in range(0, bank.shape[0], query_chunk):
        index = torch.arange(s, min(s + query_chunk, bank.shape[0]), device=bank.device)
        ranked = topk_neighbours(bank[index], bank, k + 1, method.cfg.chunk_size)[1]
        out[index] = neighbours_without_self(ranked, index, k)
    method.graph.neighbours.copy_(out)


def invp_step_parts(method, batch: int, device="cpu", seed: int = 0, n_batches: int = 4) -> dict:
    """The bank and graph work of one InvP step, each part on its own (no grad, as in the step),
    for a batch of ``batch`` distinct anchors with embeddings near their bank rows (``n_batches``
    such batches, cycled): ``bank_search`` (the top-K background over the whole bank, chunked;
    the instance loss needs it too), ``positive_search`` (breadth-first search of the graph to
    ``depth``), ``graph_rows`` (the anchors' graph rows: top-(k+1) of the background minus self,
    written) and ``bank_update`` (the moving average of the anchors' rows). Returns name -> callable;
    ``graph_rows`` and ``bank_update`` change the graph and bank as a step would."""
    import torch.nn.functional as F

    from contrastlab.nn.graph import neighbours_without_self, reachable
    from contrastlab.nn.neighbours import topk_neighbours

    c, bank, graph = method.cfg, method.bank, method.graph
    n = bank.vectors.shape[0]
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        index = torch.randperm(n, generator=g)[:batch].to(device)
        noise = torch.randn(batch, bank.dim, generator=g).to(device)
        f = F.normalize(bank.vectors[index] + 0.5 * noise / bank.dim**0.5, dim=1)
        background = topk_neighbours(f, bank.vectors, c.n_background, c.chunk_size)[1]
        batches.append((index, f, background))
    k = [0]

    def nxt():
        k[0] += 1
        return batches[k[0] % n_batches]

    def bank_search():
        _, f, _ = nxt()
        topk_neighbours(f, bank.vectors, c.n_background, c.chunk_size)

    def positive_search():
        index, _, _ = nxt()
        reachable(graph.neighbours, index, c.depth)

    def graph_rows():
        index, _, background = nxt()
        graph.set_rows(index, neighbours_without_self(background, index, c.k))

    def bank_update():
        index, f, _ = nxt()
        bank.update(index, f)

    return {"bank_search": torch.no_grad()(bank_search), "positive_search": positive_search, "graph_rows": graph_rows,
            "bank_update": bank_update}  # fmt: skip
