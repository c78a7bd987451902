"""Invariance Propagation (methods/invp.py): positive discovery against a plain breadth-first
search, the losses, hard positives and the bank update against float64 loops, the graph kept from
the previous visit, memory that stays O(n d), and a run that trains, resumes and evaluates."""
import math
import os
import signal
from collections import deque
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from contrastlab.checkpoint import load_checkpoint
from contrastlab.config import ConfigError, load_config
from contrastlab.losses.bank import background_instance_loss, invariance_loss
from contrastlab.methods import build_method
from contrastlab.methods.invp import discover_positives, hard_positives
from contrastlab.nn.bank import MemoryBank
from contrastlab.nn.graph import neighbours_without_self, reachable


# ----------------------------------------------------------------------------- positive discovery
def bfs(neighbors: list[list[int]], start: int, depth: int) -> set[int]:
    """Plain breadth-first search: the images within `depth` hops of `start`, itself excluded."""
    dist = {start: 0}
    todo = deque([start])
    while todo:
        u = todo.popleft()
        if dist[u] == depth:
            continue
        for v in neighbors[u]:
            if v >= 0 and v not in dist:
                dist[v] = dist[u] + 1
                todo.append(v)
    return set(dist) - {start}


def random_graph(n, k, g, self_loops=True, holes=True):
    nb = torch.randint(0, n, (n, k), generator=g)
    if self_loops:  # some rows point at themselves
        rows = torch.randperm(n, generator=g)[: max(1, n // 4)]
        nb[rows, 0] = rows
    if holes:  # unknown neighbours (-1) as in a graph not yet filled
        nb[torch.rand(n, k, generator=g) < 0.1] = -1
    return nb


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_discover_positives_is_breadth_first_search(depth):
    g = torch.Generator().manual_seed(depth)
    for trial in range(30):
        n, k = int(torch.randint(2, 40, (1,), generator=g)), int(torch.randint(1, 6, (1,), generator=g))
        nb = random_graph(n, k, g)
        index = torch.randint(0, n, (7,), generator=g)
        got = discover_positives(nb, index, depth)
        ref = [bfs(nb.tolist(), i, depth) for i in index.tolist()]
        assert got == ref, (trial, n, k)
        # the tensor form the method uses holds the same sets, sorted, padded with -1
        ids, mask = reachable(nb, index, depth)
        for row, m, r in zip(ids, mask, ref):
            assert row[m].tolist() == sorted(r) and (row[~m] == -1).all()


def test_discover_positives_depth_one_is_the_direct_neighbours_without_self():
    nb = torch.tensor([[1, 2], [0, 0], [2, 3], [3, 3]])  # 2 and 3 have self-loops; 0 <-> 1 is a cycle
    assert discover_positives(nb, [0, 1, 2, 3], 1) == [{1, 2}, {0}, {3}, set()]
    assert discover_positives(nb, torch.tensor([0, 1, 2, 3]), 2) == [{1, 2, 3}, {0, 2}, {3}, set()]
    # a cycle back to the anchor never adds the anchor
    ring = torch.tensor([[1], [2], [0]])
    assert discover_positives(ring, [0], 3) == [{1, 2}] and discover_positives(ring, [0], 9) == [{1, 2}]


def test_discover_positives_refuses_bad_input():
    nb = torch.tensor([[1], [0]])
    with pytest.raises(ValueError, match="depth must be an integer >= 1"):
        discover_positives(nb, [0], 0)
    with pytest.raises(ValueError, match="integer tensor"):
        discover_positives(nb.float(), [0], 1)
    with pytest.raises(ValueError, match="index entries must be images 0..1"):
        discover_positives(nb, [2], 1)
    with pytest.raises(ValueError, match="neighbors holds an image >= n = 2"):
        discover_positives(torch.tensor([[5], [0]]), [0], 1)


# ----------------------------------------------------------------------------- losses (float64 loops)
def _rand_sims(b, m, g):
    return (torch.rand(b, m, generator=g, dtype=torch.float64) * 2 - 1)


@pytest.mark.parametrize("t", [0.07, 0.2, 1.0])
def test_instance_loss_is_the_loop(t):
    g = torch.Generator().manual_seed(0)
    s_b = _rand_sims(5, 9, g).requires_grad_()
    s_self = s_b[:, 0].detach().clone().requires_grad_()
    loss = background_instance_loss(s_self, s_b, t)
    ref = 0.0
    for i in range(5):
        total = sum(math.exp(float(s_b[i, j].detach()) / t) for j in range(9))
        ref += -math.log(math.exp(float(s_self[i].detach()) / t) / total)
    assert abs(loss.item() - ref / 5) < 1e-10
    # gradient: d/ds_self = -1/(B t); d/ds_bj = softmax_j / (B t)
    loss.backward()
    soft = torch.softmax(s_b.detach() / t, dim=1)
    assert torch.allclose(s_self.grad, torch.full((5,), -1 / (5 * t), dtype=torch.float64))
    assert torch.allclose(s_b.grad, soft / (5 * t))


@pytest.mark.parametrize("t", [0.1, 0.2])
def test_invariance_loss_is_the_loop(t):
    g = torch.Generator().manual_seed(1)
    b, m, kb = 6, 8, 10
    s_p = _rand_sims(b, m, g).requires_grad_()
    s_b = _rand_sims(b, kb, g).requires_grad_()
    pos = torch.rand(b, m, generator=g) < 0.5
    pos[2] = False  # an anchor without positives is left out of the mean
    is_self = torch.zeros(b, kb, dtype=torch.bool)
    for i in range(b):
        is_self[i, (3 * i) % kb] = True  # the anchor's own row somewhere in its background
    is_self[4] = False  # ... or not there
    loss, has = invariance_loss(s_p, pos, s_b, is_self, t)
    terms = []
    for i in range(b):
        ps = [math.exp(float(s_p[i, j].detach()) / t) for j in range(m) if pos[i, j]]
        if not ps:
            continue
        background = sum(math.exp(float(s_b[i, j].detach()) / t) for j in range(kb))
        self_s = sum(math.exp(float(s_b[i, j].detach()) / t) for j in range(kb) if is_self[i, j])
        terms.append(-math.log(sum(ps) / (background - self_s)))
    assert has.tolist() == [bool(pos[i].any()) for i in range(b)]
    assert abs(loss.item() - sum(terms) / len(terms)) < 1e-10
    loss.backward()
    assert torch.isfinite(s_p.grad).all() and torch.isfinite(s_b.grad).all()
    assert (s_p.grad[~pos] == 0).all() and (s_b.grad[is_self] == 0).all() and (s_b.grad[2] == 0).all()
    # no anchor with a positive: 0, with a (zero) gradient
    none, has = invariance_loss(s_p, torch.zeros_like(pos), s_b, is_self, t)
    assert none.item() == 0 and not has.any() and none.requires_grad


def test_hard_positives_are_the_least_similar_discovered_ones():
    g = torch.Generator().manual_seed(2)
    sim = _rand_sims(8, 12, g)
    mask = torch.rand(8, 12, generator=g) < 0.6
    for n_pos in (1, 3, 5, 20):
        for hardest in (True, False):
            chosen = hard_positives(sim, mask, n_pos, hardest=hardest)
            for i in range(8):
                cands = sorted((float(sim[i, j]), j) for j in range(12) if mask[i, j])
                if not hardest:
                    cands = cands[::-1]
                assert {j for j in range(12) if chosen[i, j]} == {j for _, j in cands[:n_pos]}


def test_bank_update_is_the_moving_average_of_normalised_rows():
    g = torch.Generator().manual_seed(3)
    bank = MemoryBank(5, momentum=0.5)
    bank.allocate(10, generator=g)
    bank.vectors = bank.vectors.double()
    before = bank.vectors.clone()
    assert torch.allclose(before.norm(dim=1), torch.ones(10, dtype=torch.float64))
    index = torch.tensor([7, 2, 4])
    f = torch.randn(3, 5, generator=g, dtype=torch.float64) * 3
    bank.update(index, f)
    for r, i in enumerate(index.tolist()):
        fn = [x / math.sqrt(sum(y * y for y in f[r].tolist())) for x in f[r].tolist()]
        mix = [0.5 * v + 0.5 * x for v, x in zip(before[i].tolist(), fn)]
        norm = math.sqrt(sum(x * x for x in mix))
        assert torch.allclose(bank.vectors[i], torch.tensor([x / norm for x in mix], dtype=torch.float64), atol=1e-12)
    others = [i for i in range(10) if i not in index.tolist()]
    assert torch.equal(bank.vectors[others], before[others])


def test_graph_rows_are_the_top_k_plus_one_minus_self():
    ranked = torch.tensor([[3, 0, 5, 9, 1], [4, 8, 2, 7, 6], [5, 6, 7, 8, 1]])
    index = torch.tensor([0, 7, 1])  # self ranked 2nd / 4th / not in the top k+1 = 4
    assert neighbours_without_self(ranked, index, 3).tolist() == [[3, 5, 9], [4, 8, 2], [5, 6, 7]]


# ----------------------------------------------------------------------------- the method's step
class _Set:
    """What setup_data reads from a training set: its size and labels."""

    def __init__(self, n, labels=None):
        self.n = n
        self.labels = {} if labels is None else {"digit": labels}
        self.default_label = "digit"

    def __len__(self):
        return self.n


SMALL = ["model.width=4", "model.proj_hidden=16", "model.proj_dim=8", "method.n_background=16", "method.n_pos=3",
         "optim.batch_size=8"]  # fmt: skip


def _method(extra=(), n=40, labels=None):
    torch.manual_seed(0)
    m = build_method(load_config("invp", SMALL + list(extra)))
    m.setup_data(_Set(n, labels))
    return m


def _batch(index, step=0, spe=5):
    g = torch.Generator().manual_seed(int(index.sum()) + step)
    images = (torch.rand(len(index), 3, 32, 32, generator=g) * 255).to(torch.uint8)
    return {"images": images, "index": index, "generator": g, "step": step, "steps_per_epoch": spe,
            "epoch": step // spe}  # fmt: skip


def _features(m, batch):
    """Runs the step, returning its outputs and the normalised embeddings f it computed."""
    seen = []
    h = m.projector.register_forward_hook(lambda mod, i, o: seen.append(o.detach().double()))
    out = m(batch)
    h.remove()
    return out, F.normalize(seen[0], dim=1)


def test_step_builds_the_graph_from_this_visit_and_updates_the_bank():
    m = _method()
    bank0, graph0 = m.bank.vectors.clone(), m.graph.neighbours.clone()
    assert (graph0 == -1).all()  # no edges before the first visit
    index = torch.tensor([3, 17, 25, 0, 9, 11, 30, 38])
    out, f = _features(m, _batch(index))
    sims = f @ bank0.double().T  # with the bank as it was before this step (the previous visits')
    for r, i in enumerate(index.tolist()):
        top = sims[r].argsort(descending=True)[: m.cfg.k + 1].tolist()
        expected = [j for j in top if j != i][: m.cfg.k]
        assert m.graph.neighbours[i].tolist() == expected
        v = F.normalize(0.5 * bank0[i].double() + 0.5 * f[r], dim=0)
        assert torch.allclose(m.bank.vectors[i].double(), v, atol=1e-6)
    untouched = [i for i in range(40) if i not in index.tolist()]
    assert torch.equal(m.graph.neighbours[untouched], graph0[untouched])
    assert torch.equal(m.bank.vectors[untouched], bank0[untouched])
    assert out["pos_found"] == 0 and "loss_inv" not in out  # nothing to walk yet


def test_step_losses_use_the_previous_graph_and_are_the_paper_s():
    """With a graph left by earlier visits, the step's loss is L_ins + lambda L_inv over the hard
    positives discovered in that graph, computed here with float64 loops from the step's f."""
    labels = torch.arange(40) % 3
    m = _method(["method.inv_start_steps=5", "method.inv_start_epochs=null"], labels=labels)
    g = torch.Generator().manual_seed(5)
    m.graph.neighbours.copy_(torch.randint(0, 40, (40, m.cfg.k), generator=g))
    graph = m.graph.neighbours.clone()
    bank = m.bank.vectors.double().clone()
    index = torch.tensor([1, 5, 8, 13, 21, 22, 34, 39])
    t, K, n_pos, lam = m.cfg.temperature, m.cfg.n_background, m.cfg.n_pos, m.cfg.inv_weight
    before = _features(_method(["method.inv_start_steps=5", "method.inv_start_epochs=null"]), _batch(index, step=4))[0]
    assert before["inv_on"] == 0.0
    out, f = _features(m, _batch(index, step=5))
    assert out["inv_on"] == 1.0
    l_ins, l_inv, found, same, hard_same, hard_n = 0.0, 0.0, 0, 0, 0, 0
    for r, i in enumerate(index.tolist()):
        s = [float(f[r] @ bank[j]) for j in range(40)]
        background = sorted(range(40), key=lambda j: -s[j])[:K]
        total = sum(math.exp(s[j] / t) for j in background)
        l_ins += -math.log(math.exp(s[i] / t) / total)
        pos = bfs(graph.tolist(), i, m.cfg.depth)
        hard = sorted(pos, key=lambda j: s[j])[:n_pos]
        den = total - (math.exp(s[i] / t) if i in background else 0.0)
        l_inv += -math.log(sum(math.exp(s[j] / t) for j in hard) / den)
        found += len(pos)
        same += sum(labels[j] == labels[i] for j in pos)
        hard_same += sum(labels[j] == labels[i] for j in hard)
        hard_n += len(hard)
    l_ins, l_inv = l_ins / len(index), l_inv / len(index)
    assert abs(out["loss_ins"].item() - l_ins) < 1e-4 and abs(out["loss_inv"].item() - l_inv) < 1e-4
    assert abs(out["loss"].item() - (l_ins + lam * l_inv)) < 1e-4
    assert abs(out["pos_found"].item() - found / len(index)) < 1e-6
    assert abs(out["pos_precision"].item() - same / found) < 1e-6
    assert abs(out["hard_pos_precision"].item() - hard_same / hard_n) < 1e-6
    out["loss"].backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads) and any(gr.abs().sum() > 0 for gr in grads)


def test_t_counts_whole_epochs_as_the_paper_s_epoch_greater_than_t():
    m = _method(["method.inv_start_epochs=2"])
    assert [m.inv_active({"step": s, "steps_per_epoch": 5}) for s in (0, 9, 10, 11)] == [False, False, True, True]
    m = _method(["method.inv_start_epochs=null", "method.inv_start_steps=7"])
    assert [m.inv_active({"step": s, "steps_per_epoch": 5}) for s in (6, 7)] == [False, True]


class _Biggest(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest tensor any operation produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.numel, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in torch.utils._pytree.tree_flatten(out)[0]:
            if isinstance(x, torch.Tensor) and x.numel() > self.numel:
                self.numel, self.op = x.numel(), func
        return out


def test_a_step_on_a_large_bank_never_forms_an_n_by_n_tensor():
    """n = 200,000 images, d = 8: a step (forward and backward, with L_inv on and a full graph)
    produces no tensor larger than the bank itself (n x n would be 4e10 elements)."""
    n, d = 200_000, 8
    m = _method(["method.inv_start_steps=0", "method.inv_start_epochs=null", "method.chunk_size=4096"], n=n)
    assert m.bank.vectors.shape == (n, d) and m.graph.neighbours.shape == (n, m.cfg.k)
    m.graph.neighbours.copy_(torch.randint(0, n, (n, m.cfg.k), generator=torch.Generator().manual_seed(0)))
    batch = _batch(torch.randperm(n)[:16])  # 16 x n similarities (unchunked) would exceed n x d too
    mode = _Biggest()
    with mode:
        out = m(batch)
        out["loss"].backward()
    assert "loss_inv" in out and out["pos_found"] > 0
    assert 0 < mode.numel <= n * d, f"{mode.op} produced {mode.numel} elements"


@pytest.mark.slow
def test_an_imagenet_sized_bank_trains_a_step_within_its_own_memory():
    """n = 1,281,167 (ImageNet-1K's training set), d = 128 (invp/imagenet's embedding), K 4096: the bank
    (656 MB) and graph are allocated from the training set's size, and a step with L_inv on over a full
    graph (forward and backward, 128 anchors) produces no tensor larger than the bank."""
    n, d = 1_281_167, 128
    m = _method(["model.proj_dim=128", "method.n_background=4096", "method.n_pos=20", "optim.batch_size=128",
                 "method.inv_start_steps=0", "method.inv_start_epochs=null"], n=n)  # fmt: skip
    assert m.bank.vectors.shape == (n, d) and m.graph.neighbours.shape == (n, m.cfg.k)
    m.graph.neighbours.copy_(torch.randint(0, n, (n, m.cfg.k), generator=torch.Generator().manual_seed(0)))
    mode = _Biggest()
    with mode:
        out = m(_batch(torch.randperm(n, generator=torch.Generator().manual_seed(1))[:128]))
        out["loss"].backward()
    assert torch.isfinite(out["loss"]) and "loss_inv" in out and out["pos_found"] > 0
    assert 0 < mode.numel <= n * d, f"{mode.op} produced {mode.numel} elements"


def test_bad_options_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"method.depth=0: must be >= 1"):
        load_config("invp", ["method.depth=0"])
    with pytest.raises(ConfigError, match=r"method.n_pos=0: must be >= 1"):
        load_config("invp", ["method.n_pos=0"])
    with pytest.raises(ConfigError, match=r"method.n_background=4: .* at least method.k \+ 1 = 5"):
        load_config("invp", ["method.n_background=4"])
    with pytest.raises(ConfigError, match="give T once"):
        load_config("invp", ["method.inv_start_steps=10"])
    with pytest.raises(ConfigError, match=r"method.n_background=1024: more than the 256 images"):
        build_method(load_config("invp", ["model.width=4", "method.n_background=1024"])).setup_data(_Set(256))


def test_a_checkpoint_loads_into_a_method_built_from_its_config():
    """Evaluation builds the method without data: the bank and the graph take the stored sizes."""
    m = _method()
    m.graph.neighbours[3] = torch.tensor([1, 2, 4, 5])
    fresh = build_method(load_config("invp", SMALL))
    assert fresh.bank.vectors.shape[0] == 0
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.bank.vectors, m.bank.vectors) and torch.equal(fresh.graph.neighbours, m.graph.neighbours)
    assert "labels" not in m.state_dict()  # the monitor's labels are never stored


# ----------------------------------------------------------------------------- end to end
def test_trains_resumes_with_bank_and_graph_and_evaluates(tmp_path, tiny, monkeypatch, capsys):
    from contrastlab.cli import main
    from contrastlab.engine import trainer

    steps = 24  # 3 epochs of 256 images; L_inv from epoch 2
    common = tiny + [f"trainer.max_steps={steps}", "trainer.ckpt_every=100", "method.n_background=64",
                     "method.inv_start_epochs=1", "trainer.threads=1", "trainer.log_every=4"]  # fmt: skip
    full = trainer.fit(load_config("invp", common + [f"trainer.out_dir={tmp_path / 'full'}"]))
    assert full.step == steps and full.metrics["status"] == "complete" and 0 <= full.metrics["knn_top1"] <= 1
    rows = (tmp_path / "full" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    for key in ("loss", "loss_ins", "loss_inv", "pos_precision", "hard_pos_precision", "pos_found"):
        assert key in header
    last = dict(zip(header, rows[-2].split(",")))  # the last training row
    assert math.isfinite(float(last["loss"])) and float(last["loss_inv"]) > 0 and 0 <= float(last["pos_precision"]) <= 1

    # the same run stopped after step 12 (SIGTERM: checkpoint, stop), then resumed in its folder
    real_step = trainer.train_step

    def stop_after_12(model, optimizer, scheduler, fabric, batch, step=0):
        out = real_step(model, optimizer, scheduler, fabric, batch, step)
        if step == 11:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    out_dir = tmp_path / "stopped"
    cfg = load_config("invp", common + [f"trainer.out_dir={out_dir}"])
    monkeypatch.setattr(trainer, "train_step", stop_after_12)
    assert trainer.fit(cfg).step == 12
    monkeypatch.setattr(trainer, "train_step", real_step)
    mid = load_checkpoint(out_dir / "last.ckpt")
    assert mid["step"] == 12
    assert mid["model"]["bank.vectors"].shape == (256, 16) and mid["model"]["graph.neighbours"].shape == (256, 4)
    assert (mid["model"]["graph.neighbours"] >= 0).all()  # every image visited once: every row has its neighbours
    assert trainer.fit(cfg).step == steps
    a, b = load_checkpoint(tmp_path / "full" / "last.ckpt")["model"], load_checkpoint(out_dir / "last.ckpt")["model"]
    assert a.keys() == b.keys() and "bank.vectors" in a and "graph.neighbours" in a
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"

    capsys.readouterr()
    assert main(["eval", "knn", str(out_dir), "k=5"]) == 0
    import json

    r = json.loads([line for line in capsys.readouterr().out.splitlines() if line.strip()][-1])
    assert r["protocol"] == "knn" and 0 <= r["top1"] <= 1 and r["n_train"] == 256


def test_trains_on_the_per_image_views_path(tmp_path, tiny):
    """views.backend=torchvision: the loader makes two views per image; InvP uses the first."""
    from contrastlab.engine.trainer import fit

    res = fit(load_config("invp", tiny + ["views.backend=torchvision", "trainer.max_steps=10", "method.n_background=64",
                                          "method.inv_start_steps=8", "method.inv_start_epochs=null", "trainer.threads=1",
                                          "trainer.log_every=10", f"trainer.out_dir={tmp_path}"]))  # fmt: skip
    header, row = (tmp_path / "metrics.csv").read_text().splitlines()[:2]
    row = dict(zip(header.split(","), row.split(",")))
    assert res.step == 10 and math.isfinite(float(row["loss"])) and float(row["inv_on"]) == 1 and float(row["pos_found"]) > 0


# ----------------------------------------------------------------------------- two processes
def _bank_worker(rank, world, port, bank0, graph0, index, f, rows, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        b = index.shape[0] // world
        mine = slice(rank * b, (rank + 1) * b)
        bank = MemoryBank(bank0.shape[1])
        bank.vectors = bank0.clone()
        from contrastlab.nn.graph import KNNGraph

        graph = KNNGraph(graph0.shape[1])
        graph.neighbours = graph0.clone()
        bank.update(index[mine], f[mine])
        graph.set_rows(index[mine], rows[mine])
        out[rank] = (bank.vectors.clone(), graph.neighbours.clone())
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_processes_keep_the_same_bank_and_graph_as_one():
    """Each process updates the rows of its half of the batch; both end with the bank and graph
    that one process gets from the whole batch (the rows are gathered in rank order)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    g = torch.Generator().manual_seed(7)
    one = MemoryBank(6)
    one.allocate(30, generator=g)
    from contrastlab.nn.graph import KNNGraph

    graph = KNNGraph(3)
    graph.allocate(30)
    bank0, graph0 = one.vectors.clone(), graph.neighbours.clone()
    index, f = torch.randperm(30, generator=g)[:8], torch.randn(8, 6, generator=g)
    rows = torch.randint(0, 30, (8, 3), generator=g)
    one.update(index, f)
    graph.set_rows(index, rows)
    out = mp.Manager().dict()
    mp.spawn(_bank_worker, args=(2, port, bank0, graph0, index, f, rows, out), nprocs=2, join=True)
    for rank in range(2):
        assert torch.allclose(out[rank][0], one.vectors, atol=1e-6) and torch.equal(out[rank][1], graph.neighbours)
