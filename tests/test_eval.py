import math

import pytest
import torch

from contrastlab.eval import (
    knn_accuracy,
    knn_eval,
    knn_predict,
    linear_probe,
    long_tail_groups,
    per_class_accuracy,
    topk_neighbours,
)


def _reference_knn(train_feats, train_labels, test_feats, n_classes, k, temperature):
    """Plain-Python weighted kNN (Wu et al. 2018), one test point at a time, float64."""
    tr = [row for row in train_feats.double().tolist()]
    labels = train_labels.tolist()
    bank = [(v, y) for v, y in zip(tr, labels) if y >= 0]
    preds = []
    for q in test_feats.double().tolist():
        qn = math.sqrt(sum(a * a for a in q))
        sims = []
        for v, y in bank:
            vn = math.sqrt(sum(a * a for a in v))
            sims.append((sum(a * b for a, b in zip(q, v)) / (qn * vn), y))
        sims.sort(key=lambda t: -t[0])
        votes = [0.0] * n_classes
        for s, y in sims[:k]:
            votes[y] += math.exp(s / temperature)
        preds.append(max(range(n_classes), key=lambda c: votes[c]))
    return torch.tensor(preds)


def _clustered(n, d, n_classes, gen, spread=1.0):
    centers = torch.randn(n_classes, d, generator=gen)
    y = torch.randint(0, n_classes, (n,), generator=gen)
    return centers[y] + spread * torch.randn(n, d, generator=gen), y


@pytest.mark.parametrize(
    "k,temperature,chunk_size,bank_chunk_size",
    [(1, 0.1, 7, None), (5, 0.07, 16, None), (10, 0.5, 33, 13), (20, 0.1, 1000, 29), (60, 1.0, 50, 1)],
)
def test_knn_predict_matches_reference(k, temperature, chunk_size, bank_chunk_size):
    gen = torch.Generator().manual_seed(k)
    n_classes = 4
    train, ytr = _clustered(60, 8, n_classes, gen, spread=2.0)
    test, _ = _clustered(25, 8, n_classes, gen, spread=2.0)
    train = train * torch.rand(60, 1, generator=gen).add(0.5)  # not normalised
    pred = knn_predict(train, ytr, test, n_classes, k=k, temperature=temperature,
                       chunk_size=chunk_size, bank_chunk_size=bank_chunk_size)
    ref = _reference_knn(train, ytr, test, n_classes, k, temperature)
    assert pred.dtype == torch.long and pred.shape == (25,)
    assert torch.equal(pred, ref)


def test_knn_small_temperature_no_overflow():
    gen = torch.Generator().manual_seed(0)
    train, ytr = _clustered(40, 6, 3, gen)
    test, _ = _clustered(10, 6, 3, gen)
    pred = knn_predict(train, ytr, test, 3, k=7, temperature=0.005)
    assert torch.equal(pred, _reference_knn(train, ytr, test, 3, 7, 0.005))


def test_knn_ignores_unknown_labels():
    # The test point sits on top of unlabelled train points; they must not vote.
    train = torch.tensor([[1.0, 0.0], [1.0, 0.01], [1.0, -0.01], [0.0, 1.0], [0.1, 1.0]])
    labels = torch.tensor([-1, -1, -1, 1, 1])
    test = torch.tensor([[1.0, 0.0]])
    assert knn_predict(train, labels, test, n_classes=2, k=3).tolist() == [1]
    # -1 rows are excluded even where a -1 index would otherwise wrap to the last class
    labels2 = torch.tensor([-1, -1, -1, 0, 0])
    assert knn_predict(train, labels2, test, n_classes=2, k=5).tolist() == [0]
    # and test rows labelled -1 do not count in the accuracy
    res = knn_eval(train, labels, torch.cat([test, test]), torch.tensor([1, -1]), 2, k=2)
    assert res == {"top1": 1.0, "top5": None}


def test_knn_fp16_and_bf16_features():
    gen = torch.Generator().manual_seed(1)
    train, ytr = _clustered(200, 16, 5, gen)
    test, yte = _clustered(50, 16, 5, gen)
    ref = knn_predict(train, ytr, test, 5)
    for dt in (torch.float16, torch.bfloat16):
        pred = knn_predict(train.to(dt), ytr, test.to(dt), 5)
        assert (pred == ref).float().mean() > 0.9


def test_knn_eval_and_accuracy():
    gen = torch.Generator().manual_seed(2)
    train, ytr = _clustered(300, 16, 6, gen, spread=0.1)
    test, yte = _clustered(60, 16, 6, gen, spread=0.1)
    # same centers are not guaranteed between the two calls: use train points as test
    res = knn_eval(train, ytr, train[:60] + 0.01, ytr[:60], 6, k=5)
    assert res["top1"] == 1.0 and res["top5"] == 1.0
    acc = knn_accuracy(train, ytr, train[:60], 6, k=5, test_labels=ytr[:60])
    assert acc == 1.0
    # top-5 >= top-1 in general
    res = knn_eval(train, ytr, test, yte, 6)
    assert 0.0 <= res["top1"] <= res["top5"] <= 1.0


def _reference_ranks(train_feats, train_labels, test_feats, test_labels, n_classes, k, temperature):
    """Float64 plain loops, one test point at a time, the rule of knn_eval's docstring: cosine
    similarity, the k most similar training points, each voting exp(sim / t) for its class. For
    each point, the range of ranks (1 = highest score) its true class can take: classes whose
    score is within 1e-4 (relative) of the true class's, e.g. two classes without votes, are ties
    whose order float32 may decide either way."""
    bank = [(v, y) for v, y in zip(train_feats.double().tolist(), train_labels.tolist())]
    out = []
    for q, yq in zip(test_feats.double().tolist(), test_labels.tolist()):
        qn = math.sqrt(sum(a * a for a in q))
        cos = [(sum(a * b for a, b in zip(q, v)) / (qn * math.sqrt(sum(a * a for a in v))), y) for v, y in bank]
        sims = sorted(cos, key=lambda t: -t[0])
        scores = [0.0] * n_classes
        for sim, y in sims[:k]:
            scores[y] += math.exp(sim / temperature)
        mine, others = scores[yq], [sc for c, sc in enumerate(scores) if c != yq]
        tied = sum(abs(sc - mine) <= 1e-4 * max(sc, mine) for sc in others)
        above = sum(sc > mine and sc - mine > 1e-4 * sc for sc in others)
        out.append((above + 1, above + 1 + tied))
    return out


@pytest.mark.parametrize("k,temperature,n_classes", [(20, 0.1, 10), (30, 0.07, 8), (60, 0.5, 12), (400, 1.0, 10)])
def test_knn_eval_top1_and_top5_match_a_loop_on_overlapping_classes(k, temperature, n_classes):
    """Overlapping classes (class means well inside the noise), so that the true class is often
    2nd..5th or below 5th: knn_eval's top-1 and top-5, point by point and in aggregate, are those
    of the float64 loop. The data are checked to hold points ranked exactly 1st, 5th and 6th or
    lower, and to have no ties where they would decide (1st vs 2nd, 5th vs 6th score)."""
    gen = torch.Generator().manual_seed(k)
    centers = torch.randn(n_classes, 8, generator=gen)  # the same centers for train and test
    ytr = torch.randint(0, n_classes, (300,), generator=gen)
    train = 0.6 * centers[ytr] + torch.randn(300, 8, generator=gen)
    yte = torch.randint(0, n_classes, (150,), generator=gen)
    test = 0.6 * centers[yte] + torch.randn(150, 8, generator=gen)
    ref = _reference_ranks(train, ytr, test, yte, n_classes, k, temperature)
    for lo, hi in ref:  # every decision is clear: no near-tie across the 1st or the 5th place
        assert (lo == hi or lo > 5 or (lo > 1 and hi <= 5)), (lo, hi)
    ranks = [lo for lo, _ in ref]
    assert 1 in ranks and 5 in ranks and max(ranks) > 5  # top-1, top-4 and top-5 all differ here
    top1 = [r == 1 for r in ranks]
    top5 = [r <= 5 for r in ranks]
    res = knn_eval(train, ytr, test, yte, n_classes, k=k, temperature=temperature, chunk_size=37)
    assert res["top1"] == pytest.approx(sum(top1) / len(ref), abs=1e-12)
    assert res["top5"] == pytest.approx(sum(top5) / len(ref), abs=1e-12)
    assert res["top1"] < res["top5"] < 1.0
    for i in range(len(ref)):
        one = knn_eval(train, ytr, test[i : i + 1], yte[i : i + 1], n_classes, k=k, temperature=temperature)
        assert (one["top1"], one["top5"]) == (float(top1[i]), float(top5[i])), (i, ranks[i])


@pytest.mark.parametrize("chunk_size", [1, 3, 10, 17, 64, 1000])
def test_topk_neighbours_matches_full_topk(chunk_size):
    gen = torch.Generator().manual_seed(chunk_size)
    q = torch.nn.functional.normalize(torch.randn(13, 5, generator=gen), dim=1)
    bank = torch.nn.functional.normalize(torch.randn(64, 5, generator=gen), dim=1)
    for k in (1, 4, 10):
        v, i = topk_neighbours(q, bank, k, chunk_size=chunk_size)
        rv, ri = (q @ bank.T).topk(k, dim=1)
        assert torch.allclose(v, rv, atol=1e-6)
        assert torch.equal(i, ri)
    v, i = topk_neighbours(q, bank, 100, chunk_size=chunk_size)  # k clamped to the bank size
    assert v.shape == (13, 64) and torch.equal(i.sort(1).values, torch.arange(64).expand(13, 64))


def test_knn_moderate_size_chunked_equals_unchunked():
    gen = torch.Generator().manual_seed(3)
    n_classes = 10
    train, ytr = _clustered(2000, 64, n_classes, gen, spread=3.0)
    test, _ = _clustered(20000, 64, n_classes, gen, spread=3.0)
    train = train.half()
    # unchunked: the full 20000 x 2000 similarity matrix at once
    tr = torch.nn.functional.normalize(train.float(), dim=1)
    te = torch.nn.functional.normalize(test, dim=1)
    sims, idx = (te @ tr.T).topk(20, dim=1)
    votes = torch.zeros(20000, n_classes).scatter_add_(1, ytr[idx], (sims / 0.1).exp())
    ref = votes.argmax(1)
    pred = knn_predict(train, ytr, test, n_classes, k=20, temperature=0.1, chunk_size=1024, bank_chunk_size=300)
    assert (pred == ref).float().mean() > 0.999  # fp rounding may flip exact near-ties only
    pred = knn_predict(train, ytr, test, n_classes, k=20, temperature=0.1, chunk_size=3000)
    assert (pred == ref).float().mean() > 0.999


# ----------------------------------------------------------------------------- linear


def _blobs(n, d, n_classes, gen, sep):
    centers = sep * torch.nn.functional.normalize(torch.randn(n_classes, d, generator=gen), dim=1)
    y = torch.arange(n) % n_classes
    return centers[y] + torch.randn(n, d, generator=gen), y


def test_linear_probe_separable_blobs():
    gen = torch.Generator().manual_seed(0)
    x, y = _blobs(700, 16, 7, gen, sep=12.0)
    x = x * 5 + 3  # standardisation must cope with scale and offset
    res = linear_probe(x[:500], y[:500], x[500:], y[500:], 7, epochs=50)
    assert res["top1"] >= 0.99 and res["train_top1"] >= 0.99
    assert res["top5"] == 1.0
    assert len(res["per_class_acc"]) == 7
    assert res["pred"].shape == (200,) and res["pred"].dtype == torch.long
    assert torch.equal(res["classifier"].predict(x[500:]).cpu(), res["pred"])


def test_linear_probe_adam_minibatch():
    gen = torch.Generator().manual_seed(1)
    x, y = _blobs(400, 8, 3, gen, sep=10.0)
    res = linear_probe(x[:300], y[:300], x[300:], y[300:], 3, epochs=20, batch_size=64, lr=1e-2)
    assert res["top1"] >= 0.97 and res["top5"] is None
    res2 = linear_probe(x[:300], y[:300], x[300:], y[300:], 3, epochs=20, batch_size=64, lr=1e-2)
    assert torch.equal(res["classifier"].weight, res2["classifier"].weight)  # deterministic


def test_linear_probe_random_labels_is_chance():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2000, 16, generator=gen)
    y = torch.randint(0, 4, (2000,), generator=gen)
    res = linear_probe(x[:1000], y[:1000], x[1000:], y[1000:], 4, epochs=30)
    assert abs(res["top1"] - 0.25) < 0.06


def test_linear_probe_per_class_acc_and_unknown_labels():
    gen = torch.Generator().manual_seed(3)
    x, y = _blobs(600, 8, 5, gen, sep=2.5)  # overlapping: imperfect accuracy
    ytr = y[:400].clone()
    ytr[::7] = -1  # unlabelled rows are dropped from training
    yte = y[400:].clone()
    yte[::7] = -1  # and from the metrics
    res = linear_probe(x[:400], ytr, x[400:], yte, 5, epochs=40, seed=0)
    pred = res["pred"]
    assert pred.shape == (200,)
    manual = []
    for c in range(5):
        rows = [i for i in range(200) if int(yte[i]) == c]
        manual.append(sum(int(pred[i]) == c for i in rows) / len(rows))
    assert res["per_class_acc"] == pytest.approx(manual)
    valid = yte >= 0
    assert res["top1"] == pytest.approx(float((pred[valid] == yte[valid]).float().mean()))
    assert 0.3 < res["top1"] < 1.0
    again = linear_probe(x[:400], ytr, x[400:], yte, 5, epochs=40, seed=0)
    assert torch.equal(again["pred"], pred)


def test_per_class_accuracy_missing_class_is_nan():
    acc = per_class_accuracy(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, -1]), 3)
    assert acc[:2] == [0.5, 1.0] and math.isnan(acc[2])


def test_long_tail_groups_thirds():
    acc = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
    counts = [5, 500, 50, 400, 10, 300, 20, 200, 1, 100]
    # sorted by count desc: classes 1(500) 3(400) 5(300) 7(200) | 9(100) 2(50) 6(20) | 4(10) 0(5) 8(1)
    out = long_tail_groups(acc, counts, scheme="thirds")
    assert out["many"] == pytest.approx((0.8 + 0.6 + 0.4 + 0.2) / 4)
    assert out["medium"] == pytest.approx((0.0 + 0.7 + 0.3) / 3)
    assert out["few"] == pytest.approx((0.5 + 0.9 + 0.1) / 3)
    assert (out["n_many"], out["n_medium"], out["n_few"]) == (4, 3, 3)
    assert out["mean"] == pytest.approx(0.45)
    assert out["std"] == pytest.approx(math.sqrt(sum((a - 0.45) ** 2 for a in acc) / 10))


def test_long_tail_groups_imagenet():
    acc = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
    counts = torch.tensor([5, 500, 50, 400, 10, 300, 20, 200, 1, 100])
    out = long_tail_groups(acc, counts, scheme="imagenet")
    # many (>100): 1,3,5,7   medium (20..100): 2,6,9   few (<20): 0,4,8
    assert out["many"] == pytest.approx(0.5)
    assert out["medium"] == pytest.approx((0.7 + 0.3 + 0.0) / 3)
    assert out["few"] == pytest.approx((0.9 + 0.5 + 0.1) / 3)
    assert (out["n_many"], out["n_medium"], out["n_few"]) == (4, 3, 3)
    none_few = long_tail_groups([1.0, 0.5], [200, 150], scheme="imagenet")
    assert math.isnan(none_few["few"]) and none_few["many"] == 0.75
    with pytest.raises(ValueError, match="unknown scheme 'bogus'"):
        long_tail_groups(acc, counts, scheme="bogus")


def test_feature_bank_is_one_fixed_subset_and_drops_unlabelled_rows():
    """eval.features.feature_bank: all rows in order, or the same random subset on every call; rows
    without the label are left out; the features are extract_features' at those rows."""
    from contrastlab.data import TensorImageSet
    from contrastlab.eval.features import bank_indices, extract_features, feature_bank

    assert torch.equal(bank_indices(7), torch.arange(7))
    a, b = bank_indices(50, 20, seed=3), bank_indices(50, 20, seed=3)
    assert torch.equal(a, b) and len(a) == 20 and len(set(a.tolist())) == 20
    assert not torch.equal(a, bank_indices(50, 20, seed=4)) and len(bank_indices(5, 20, seed=3)) == 5
    labels = torch.tensor([0, -1, 1, 2, -1, 0, 1, 1, 2, 0])
    ds = TensorImageSet(torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8), {"y": labels}, {"y": ["a", "b", "c"]})
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 5))
    feats, idx = feature_bank(enc, ds, n_max=8, seed=1, label="y")
    assert (labels[idx] >= 0).all() and set(idx.tolist()) == {i for i in bank_indices(10, 8, 1).tolist() if labels[i] >= 0}
    torch.testing.assert_close(feats, extract_features(enc, ds, indices=idx))
