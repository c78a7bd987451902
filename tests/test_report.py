import csv

import matplotlib.image
import numpy as np
import pytest
import torch

from contrastlab.report import read_metrics_csv, retrieval_from_features, retrieval_grid, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics_rows():
    rows = []
    for step in range(0, 200, 20):
        row = {"step": str(step), "loss": f"{5.0 - step / 100:.6g}", "lr": f"{0.1 * (1 - step / 200):.6g}",
               "img_per_s": "1234.5", "knn_top1": ""}
        if step % 60 == 0:
            row["knn_top1"] = f"{0.1 + step / 400:.4g}"
        rows.append(row)
    rows[-1]["loss"] = "3.14159"
    del rows[3]["lr"]  # a row may lack keys
    return rows


def _check_png(path):
    assert path.exists()
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 2000
    img = matplotlib.image.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 20 and img.shape[1] > 20
    assert img[..., :3].std() > 0.01  # not a blank image


def _images(n, gen, h=8, w=8):
    return torch.randint(0, 256, (n, 3, h, w), generator=gen, dtype=torch.uint8)


def test_write_report_full(tmp_path):
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 16, generator=gen) * 4
    labels = torch.arange(90) % 3
    feats = centers[labels] + torch.randn(90, 16, generator=gen)
    images = _images(90, gen)
    retrieval = retrieval_from_features(feats, labels, images, feats, labels, images, n_queries=4, k=5)
    summary = {"knn": {"top1": 0.875, "top5": 0.99}, "linear": {"top1": 0.9}, "note": "<b>bold</b>"}
    out = write_report(
        tmp_path / "run",
        _metrics_rows(),
        embeddings={"feats": feats, "labels": labels, "class_names": ["cat", "dog", "A&B"]},
        retrieval=retrieval,
        title="test <run>",
        summary=summary,
    )
    assert out == tmp_path / "run" / "report.html"
    text = out.read_text()
    for name in ("curves", "embedding", "retrieval"):
        assert f'<img src="report/{name}.png"' in text
        _check_png(tmp_path / "run" / "report" / f"{name}.png")
    assert "3.14159" in text  # final loss
    assert "0.55" in text  # last non-empty knn_top1 (step 180)
    assert "knn.top1" in text and "0.875" in text
    assert "test &lt;run&gt;" in text and "&lt;b&gt;bold&lt;/b&gt;" in text and "<b>bold" not in text


def test_write_report_pca_and_optional_parts(tmp_path):
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(50, 8, generator=gen)
    out = write_report(tmp_path, [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}],
                       embeddings={"feats": feats, "labels": torch.arange(50) % 4, "class_names": None},
                       embedding_method="pca")
    text = out.read_text()
    assert "report/curves.png" in text and "report/embedding.png" in text and "retrieval.png" not in text
    _check_png(tmp_path / "report" / "embedding.png")
    # nothing at all still gives a valid page
    out = write_report(tmp_path / "empty", [])
    assert "<html" in out.read_text()


def test_write_report_reads_metrics_csv(tmp_path):
    rows = _metrics_rows()
    fields = list(rows[0])
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    text = write_report(tmp_path).read_text()  # metrics=None -> run_dir/metrics.csv
    assert "3.14159" in text and "report/curves.png" in text


def test_read_metrics_csv_round_trip(tmp_path):
    rows = [
        {"step": 0, "loss": 4.5, "lr": 0.1},
        {"step": 10, "loss": 4.25, "lr": 0.05, "knn_top1": 0.3},
        {"step": 20, "loss": 3.5, "phase": "warmup"},
    ]
    fields = ["step", "loss", "lr", "knn_top1", "phase"]
    path = tmp_path / "metrics.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    back = read_metrics_csv(path)
    assert back == rows  # empty cells are dropped, numbers parsed
    assert isinstance(back[1]["step"], int) and isinstance(back[1]["loss"], float)


def test_retrieval_from_features_true_neighbours():
    # Bank: 40 unit vectors at known angles; a query at angle t has its nearest
    # neighbours at the closest angles.
    angles = torch.arange(40, dtype=torch.float32) * (2 * torch.pi / 40)
    bank = torch.stack([angles.cos(), angles.sin()], 1) * torch.linspace(1, 3, 40)[:, None]  # norms differ
    bank_labels = torch.arange(40) // 10
    bank_images = torch.arange(40, dtype=torch.uint8)[:, None, None, None].expand(40, 3, 4, 4).contiguous()
    q_angles = torch.tensor([0.01, 1.0, 3.0, 5.0])
    queries = torch.stack([q_angles.cos(), q_angles.sin()], 1)
    q_labels = torch.tensor([0, 0, 1, 3])
    q_images = torch.zeros(4, 3, 4, 4, dtype=torch.uint8)

    res = retrieval_from_features(queries, q_labels, q_images, bank, bank_labels,
                                  lambda i: bank_images[i], n_queries=4, k=3, seed=0)
    assert res["query_images"].shape == (4, 3, 4, 4)
    assert res["neighbour_images"].shape == (4, 3, 3, 4, 4)
    assert res["neighbour_images"].dtype == torch.uint8
    for r, qi in enumerate(res["query_indices"].tolist()):
        diff = (angles - q_angles[qi]).abs()
        diff = torch.minimum(diff, 2 * torch.pi - diff)
        expected = diff.argsort()[:3]
        assert res["neighbour_indices"][r].tolist() == expected.tolist()
        assert res["neighbour_labels"][r].tolist() == bank_labels[expected].tolist()
        assert res["neighbour_images"][r, :, 0, 0, 0].tolist() == expected.tolist()  # image i has value i
        assert int(res["query_labels"][r]) == int(q_labels[qi])
    sims = res["similarities"]
    assert torch.all(sims[:, :-1] >= sims[:, 1:])


def test_retrieval_exclude_self_and_grid():
    gen = torch.Generator().manual_seed(2)
    feats = torch.randn(30, 6, generator=gen)
    labels = torch.arange(30) % 2
    images = _images(30, gen, 5, 7)
    res = retrieval_from_features(feats, labels, images, feats, labels, images, n_queries=5, k=4, seed=3)
    for r, qi in enumerate(res["query_indices"].tolist()):
        assert qi not in res["neighbour_indices"][r].tolist()
        sims = torch.nn.functional.normalize(feats, dim=1) @ torch.nn.functional.normalize(feats[qi], dim=0)
        sims[qi] = -2
        assert res["neighbour_indices"][r].tolist() == sims.topk(4).indices.tolist()
    grid = retrieval_grid(res)
    assert grid.dtype == np.uint8 and grid.shape[2] == 3
    assert grid.shape[0] > 5 * 5 * 9 and grid.shape[1] > 5 * 7 * 9  # upscaled small images
    # frames: the query's blue, then per neighbour green for the same label, red for another; read
    # off the grid itself: each query row's top frame line, left to right, as runs of one colour
    blue, green, red = (40, 90, 220), (20, 170, 60), (220, 30, 30)
    x0 = int(np.nonzero((grid == blue).all(2).any(0))[0][0])
    col = [tuple(int(v) for v in p) for p in grid[:, x0]]  # a column through the queries' left frames
    tops = [y for y in range(len(col)) if col[y] == blue and (y == 0 or col[y - 1] != blue)]
    assert len(tops) == 5
    seen = set()
    for r, y in enumerate(tops):
        runs = []
        for x in range(grid.shape[1]):
            c = tuple(int(v) for v in grid[y, x])
            if c != (255, 255, 255) and (not runs or runs[-1] != c or grid[y, x - 1].tolist() == [255] * 3):
                runs.append(c)
        same = [int(labels[j]) == int(res["query_labels"][r]) for j in res["neighbour_indices"][r].tolist()]
        assert runs == [blue] + [green if s else red for s in same], (r, runs)
        seen |= set(same)
    assert seen == {True, False}  # both frame colours are checked


def test_embedding_method_validation(tmp_path):
    with pytest.raises(ValueError, match="unknown embedding method 'umap'"):
        write_report(tmp_path, [], embeddings={"feats": torch.randn(10, 3), "labels": torch.zeros(10)},
                     embedding_method="umap")


def test_evaluations_table_has_one_row_per_evaluation(tmp_path):
    """eval.json entries (keyed protocol/label/features) become one row each: protocol, label,
    features, step and the measurements (nested per-direction scores prefixed, lists left out)."""
    from contrastlab.report import evaluation_rows

    evals = {
        "knn/digit/model": {"protocol": "knn", "checkpoint": "r", "step": 200, "label": "digit", "features": "model",
                            "n_train": 10, "n_test": 5, "k": 20, "temperature": 0.1, "top1": 0.9, "top5": 1.0},
        "linear/color/pixels": {"protocol": "linear", "step": 200, "label": "color", "features": "pixels",
                                "top1": 0.25, "per_class_acc": [0.1, 0.2]},
        "translation/translation/random": {"protocol": "translation", "step": 50, "label": "translation",
                                           "features": "random", "extractor": "random",
                                           "AtoB": {"fid": 12.5, "kid_mean": 0.01, "n_inputs": 3}},
    }  # fmt: skip
    rows = evaluation_rows(evals)
    assert [r[:4] for r in rows] == [("knn", "digit", "model", "200"), ("linear", "color", "pixels", "200"),
                                     ("translation", "translation", "random", "50")]  # fmt: skip
    assert rows[0][4] == "k 20, temperature 0.1, top1 0.9, top5 1"
    assert rows[1][4] == "top1 0.25"
    assert rows[2][4] == "AtoB.fid 12.5, AtoB.kid_mean 0.01"
    out = write_report(tmp_path, metrics=[], evaluations=evals, title="t")
    page = out.read_text()
    assert page.count("<tr><td>") == 3 and "<th>protocol</th>" in page and "AtoB.fid 12.5" in page
