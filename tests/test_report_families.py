"""The report's pictures of what InvP and LooC take as alike, on tiny trained runs: the positives
InvP shows for a query are a plain breadth-first search over the run's saved graph (hard ones
first), the LooC rows are a brute-force cosine top-k in each head's space, and every frame's
colour, read off the drawn grid, is the label agreement."""
import shutil
from collections import deque

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrastlab.checkpoint import load_checkpoint, save_atomic
from contrastlab.config import load_config
from contrastlab.data import build_datasets
from contrastlab.errors import UserError
from contrastlab.eval.features import bank_indices
from contrastlab.eval.run import load_run
from contrastlab.report.pictures import positives_picture, spaces_retrieval
from contrastlab.report.run import build_run_report, positives_figure, spaces_figure

from conftest import TINY

BLUE, GREEN, RED, WHITE = (40, 90, 220), (20, 170, 60), (220, 30, 30), (255, 255, 255)


def frame_colours(grid: np.ndarray) -> list[list[tuple]]:
    """Per row of the grid, the frame colours of its tiles, left to right: the rows start where a
    query's blue frame starts (a column through the queries' left frames), and each row's top frame
    line is a run of one colour per tile, tiles separated by white."""
    x0 = int(np.nonzero((grid == BLUE).all(2).any(0))[0][0])
    col = [tuple(int(v) for v in p) for p in grid[:, x0]]
    tops = [y for y in range(len(col)) if col[y] == BLUE and (y == 0 or col[y - 1] != BLUE)]
    rows = []
    for y in tops:
        runs, prev = [], WHITE
        for x in range(grid.shape[1]):
            c = tuple(int(v) for v in grid[y, x])
            if c != WHITE and (prev == WHITE or c != runs[-1]):
                runs.append(c)
            prev = c
        rows.append(runs)
    return rows


def bfs(neighbours: list[list[int]], start: int, depth: int) -> set[int]:
    """The images within `depth` hops of `start` (entries < 0: no edge), itself excluded."""
    dist, todo = {start: 0}, deque([start])
    while todo:
        u = todo.popleft()
        if dist[u] < depth:
            for v in neighbours[u]:
                if v >= 0 and v not in dist:
                    dist[v] = dist[u] + 1
                    todo.append(v)
    return set(dist) - {start}


# ----------------------------------------------------------------------------- InvP
@pytest.fixture(scope="module")
def invp_run(tmp_path_factory):
    from contrastlab.engine.trainer import fit

    out = tmp_path_factory.mktemp("invp") / "run"
    fit(load_config("invp", TINY + ["trainer.max_steps=16", "method.n_background=64", "method.n_pos=5",
                                    "method.depth=2", "method.inv_start_steps=0", "method.inv_start_epochs=null",
                                    "trainer.threads=1", "trainer.log_every=8", f"trainer.out_dir={out}"]))  # fmt: skip
    return out


def test_invp_positives_are_the_bfs_of_the_saved_graph_hard_first_framed_by_label(invp_run, tmp_path):
    cfg, method, _ = load_run(str(invp_run), [])
    train, _ = build_datasets(cfg.data)
    saved = load_checkpoint(invp_run / "last.ckpt")["model"]
    graph, bank = saved["graph.neighbours"].tolist(), saved["bank.vectors"].double()
    labels = train.labels["digit"]
    _, pic = positives_figure(method, train, "digit", tmp_path, depth=2, n_queries=6, max_shown=1000)
    assert len(pic["query_indices"]) == 6 and (tmp_path / "positives.png").stat().st_size > 2000
    colours = frame_colours(pic["grid"])
    assert len(colours) == 6
    n_same = n_all = 0
    for r, q in enumerate(pic["query_indices"]):
        want = bfs(graph, q, 2)
        shown = pic["shown"][r]
        assert len(shown) == len(want) == pic["n_found"][r] and set(shown) == want, q
        # the hard positives first: the n_pos least similar to the query's bank row; the rest after
        # them, also from the least similar (so the whole row is in increasing similarity)
        sims = {j: float(bank[q] @ bank[j]) for j in want}
        hardest = sorted(want, key=lambda j: sims[j])[:5]
        assert set(shown[: len(hardest)]) == set(hardest), q
        assert shown == sorted(want, key=lambda j: sims[j]), q
        same = [int(labels[j]) == int(labels[q]) for j in shown]
        assert colours[r] == [BLUE] + [GREEN if s else RED for s in same], q
        n_same, n_all = n_same + sum(same), n_all + len(same)
    assert pic["precision"] == pytest.approx(n_same / n_all)
    assert {GREEN, RED} <= {c for row in colours for c in row}  # both colours are checked


def test_invp_positives_cap_keeps_the_hard_ones_and_the_report_has_the_section(invp_run):
    cfg, method, _ = load_run(str(invp_run), [])
    train, _ = build_datasets(cfg.data)
    figure, pic = positives_figure(method, train, "digit", invp_run / "report", depth=2, max_shown=3)
    assert all(len(s) <= 3 for s in pic["shown"]) and max(pic["n_found"]) > 3
    assert all(len(row) == len(s) + 1 for row, s in zip(frame_colours(pic["grid"]), pic["shown"]))
    page = build_run_report(invp_run, embedding_method="pca").read_text()
    assert "<h2>Discovered positives</h2>" in page and '<img src="report/positives.png"' in page
    assert "within 2 hops" in page and "Neighbours in each space" not in page


def test_invp_report_of_a_run_without_a_graph_says_so_in_one_line(invp_run, tmp_path):
    run = tmp_path / "stopped"
    run.mkdir()
    ckpt = load_checkpoint(invp_run / "last.ckpt")
    ckpt["model"]["graph.neighbours"].fill_(-1)  # as before the first step built it
    save_atomic(ckpt, run / "last.ckpt")
    shutil.copy(invp_run / "metrics.csv", run / "metrics.csv")
    page = build_run_report(run, embedding_method="pca").read_text()
    section = page.split("<h2>Discovered positives</h2>")[1].split("<h2>")[0].split("</body>")[0]
    assert "<img" not in section and "no edge yet" in section and section.strip().count("\n") == 0
    assert not (run / "report" / "positives.png").exists()


def test_bad_input_is_one_line(invp_run):
    _, method, _ = load_run(str(invp_run), [])
    with pytest.raises(UserError, match="outside 0..255"):
        method.discovered_positives([3, 256])
    with pytest.raises(ValueError, match="2 queries but 1 lists"):
        positives_picture([0, 1], [[2]], torch.zeros(3), torch.zeros(3, 3, 4, 4))
    with pytest.raises(ValueError, match="query spaces \\['a'\\] but bank spaces \\['b'\\]"):
        spaces_retrieval({"a": torch.randn(2, 3)}, torch.zeros(2), torch.zeros(2, 3, 4, 4),
                         {"b": torch.randn(5, 3)}, torch.zeros(5), torch.zeros(5, 3, 4, 4))


# ----------------------------------------------------------------------------- LooC
def _settle_batch_norm(method, x):
    """After 4 steps the running BN statistics are still near their start (variance 1), so in eval
    mode every image embeds to nearly the same vector (cosines all ~1, neighbours decided by
    rounding). Recompute them over the training images (every space's head) to get spread out
    spaces; the report and the test then read the same weights."""
    for m in method.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches
    method.train()
    with torch.no_grad():
        method.embedding_spaces(x)


@pytest.mark.parametrize("recipe,augs", [("looc_pp", ["rotation", "color"]), ("looc", ["rotation", "color", "crop"])])
def test_looc_rows_are_a_brute_force_top_k_in_each_head_space(recipe, augs, tmp_path):
    from contrastlab.engine.trainer import fit

    run = tmp_path / "run"
    fit(load_config(recipe, TINY + ["trainer.max_steps=4", "method.queue_size=64", "trainer.threads=1",
                                    f"method.augmentations=[{','.join(augs)}]", f"trainer.out_dir={run}"]))  # fmt: skip
    cfg, method, _ = load_run(str(run), [])
    train, test = build_datasets(cfg.data)
    _settle_batch_norm(method, train.images.float() / 255)
    k, nq = 5, 3
    _, pic = spaces_figure(method, train, test, "digit", tmp_path / "img", n_queries=nq, k=k)
    names = ["invariant", *(f"{a}-sensitive" for a in augs)]
    assert pic["spaces"]["spaces"] == names
    colours = frame_colours(pic["grid"])
    assert len(colours) == len(pic["row_names"]) == nq * len(names)  # one row per space and query

    # the test's own embeddings: backbone, then each online head, eval mode; cosine top-k over the bank
    method.eval()
    q_idx, b_idx = bank_indices(len(test), nq, 0), bank_indices(len(train), 20000, 1)
    with torch.no_grad():
        fq = method.backbone(test.images[q_idx].float() / 255)
        fb = method.backbone(train.images[b_idx].float() / 255)
    ytr, yte = train.labels["digit"][b_idx], test.labels["digit"][q_idx]
    distinct = set()
    for s, (name, head) in enumerate(zip(names, method.heads)):
        ret = pic["spaces"]["retrievals"][name]
        with torch.no_grad():
            sims = F.normalize(head(fq), dim=1) @ F.normalize(head(fb), dim=1).T
        for r, qpos in enumerate(ret["query_indices"].tolist()):
            want = sims[qpos].topk(k).indices
            assert float(sims[qpos].max() - sims[qpos].min()) > 0.5  # a spread-out space: no ties
            assert ret["neighbour_indices"][r].tolist() == want.tolist(), (name, r)
            same = [int(ytr[j]) == int(yte[qpos]) for j in want]
            assert colours[r * len(names) + s] == [BLUE] + [GREEN if x else RED for x in same], (name, r)
            distinct.add((r, tuple(want.tolist())))
    assert len(distinct) > nq  # the spaces do not all give the same neighbours
    assert {GREEN, RED} <= {c for row in colours for c in row}  # both colours are checked
    page = build_run_report(run, embedding_method="pca").read_text()
    assert "<h2>Neighbours in each space</h2>" in page and '<img src="report/spaces.png"' in page
    assert ", ".join(names) in page and "Discovered positives" not in page
