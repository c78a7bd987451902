"""Few-shot metrics against values computed by hand on small masks: per-class IoU accumulated over
the episodes of each class (not a mean of episode IoUs), a class drawn in only some episodes and one
never drawn, the 255 ignore label, FB-IoU accumulated over all episodes, Dice per volume; and the
same numbers from plain loops over random episodes."""
import math
import random

import pytest
import torch

from contrastlab.eval.fewshot_metrics import FewShotScores, episode_counts

I = 255


def t(rows):
    return torch.tensor(rows, dtype=torch.long)


# Three 2x3 episodes. Episode 0 (class 1): truth has 3 fg pixels, one 255; prediction hits 2, one false positive.
P0, G0 = t([[1, 1, 0], [1, 0, 0]]), t([[1, 1, 1], [I, 0, 0]])
# pixels (row, col): (0,0) P1 G1 | (0,1) P1 G1 | (0,2) P0 G1 | (1,0) P1 G255 ignored | (1,1) P0 G0 | (1,2) P0 G0
# fg: I = 2, U = 3 (ignored pixel out); bg: P=0 & G=0 = 2, P=0 | G=0 = {(0,2),(1,1),(1,2)} = 3
# Episode 1 (class 1): truth 1 fg pixel, prediction 2 fg pixels, one right.
P1, G1 = t([[1, 1, 0], [0, 0, 0]]), t([[1, 0, 0], [0, 0, 0]])
# fg: I = 1, U = 2; bg: I = 4, U = 5
# Episode 2 (class 2): perfect prediction of 2 fg pixels with two ignored pixels predicted 1.
P2, G2 = t([[1, 1, 1], [1, 0, 0]]), t([[1, 1, I], [I, 0, 0]])
# fg: I = 2, U = 2; bg: I = 2, U = 2


def test_episode_counts_by_hand():
    c = episode_counts(torch.stack([P0, P1, P2]), torch.stack([G0, G1, G2]))
    assert c["inter"].tolist() == [2, 1, 2]
    assert c["union"].tolist() == [3, 2, 2]
    assert c["pred_fg"].tolist() == [2, 2, 2]
    assert c["true_fg"].tolist() == [3, 1, 2]
    assert c["inter_bg"].tolist() == [2, 4, 2]
    assert c["union_bg"].tolist() == [3, 5, 2]


def test_scores_by_hand_with_absent_class():
    s = FewShotScores()
    s.add(torch.stack([P0, P1]), torch.stack([G0, G1]), t([1, 1]))
    s.add(P2[None], G2[None], t([2]))
    r = s.result(classes=[1, 2, 3], names={1: "a", 2: "b", 3: "c"})
    # class 1 accumulated: (2 + 1) / (3 + 2) = 0.6, not the mean of 2/3 and 1/2 (0.5833)
    assert r["per_class_iou"] == {"a": pytest.approx(0.6), "b": pytest.approx(1.0), "c": None}
    assert r["miou"] == pytest.approx((0.6 + 1.0) / 2)  # class 3 (never drawn) left out
    assert r["episodes_per_class"] == {"a": 2, "b": 1, "c": 0}
    fg = (2 + 1 + 2) / (3 + 2 + 2)
    bg = (2 + 4 + 2) / (3 + 5 + 2)
    assert r["fg_iou"] == pytest.approx(fg) and r["bg_iou"] == pytest.approx(bg)
    assert r["fb_iou"] == pytest.approx((fg + bg) / 2)
    assert "dice" not in r


def test_dice_per_volume_by_hand():
    s = FewShotScores()
    # volume 0, class 1: episodes 0 and 1 -> 2 (2 + 1) / ((2 + 3) + (2 + 1)) = 6 / 8
    # volume 1, class 1: episode 2's masks -> 2 * 2 / (2 + 2) = 1
    # volume 1, class 2: episode 1's masks -> 2 * 1 / (2 + 1) = 2 / 3
    s.add(torch.stack([P0, P1, P2, P1]), torch.stack([G0, G1, G2, G1]), t([1, 1, 1, 2]), volume=t([0, 0, 1, 1]))
    r = s.result()
    assert r["per_volume_dice"] == {"0/1": pytest.approx(0.75), "1/1": pytest.approx(1.0), "1/2": pytest.approx(2 / 3)}
    assert r["per_class_dice"] == {"1": pytest.approx(0.875), "2": pytest.approx(2 / 3)}
    assert r["dice"] == pytest.approx((0.875 + 2 / 3) / 2)


def test_all_ignored_class_has_no_iou():
    s = FewShotScores()
    s.add(t([[1, 0]])[None], t([[I, I]])[None], t([4]))
    s.add(P1[None], G1[None], t([1]))
    r = s.result()
    assert r["per_class_iou"] == {"1": pytest.approx(0.5), "4": None} and r["miou"] == pytest.approx(0.5)


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="truth values"):
        episode_counts(t([[2, 0]]), t([[3, 0]]))
    with pytest.raises(ValueError, match="predictions"):
        episode_counts(t([[2, 0]]), t([[1, 0]]))
    with pytest.raises(ValueError, match="shape"):
        episode_counts(t([[1, 0]]), t([[1, 0, 0]]))


def _loop_scores(episodes):
    """Plain Python over (pred rows, truth rows, class, volume) episodes, float64 by construction."""
    inter, union, fgi, fgu, bgi, bgu = {}, {}, 0, 0, 0, 0
    dice = {}
    for p, g, k, v in episodes:
        for pr, gr in zip(p, g):
            for a, b in zip(pr, gr):
                if b == I:
                    continue
                inter[k] = inter.get(k, 0) + (a == 1 and b == 1)
                union[k] = union.get(k, 0) + (a == 1 or b == 1)
                fgi += a == 1 and b == 1
                fgu += a == 1 or b == 1
                bgi += a == 0 and b == 0
                bgu += a == 0 or b == 0
                d = dice.setdefault((v, k), [0, 0])
                d[0] += 2 * (a == 1 and b == 1)
                d[1] += (a == 1) + (b == 1)
    ious = {k: inter[k] / union[k] for k in union if union[k]}
    per_class_dice = {}
    for (v, k), (num, den) in dice.items():
        if den:
            per_class_dice.setdefault(k, []).append(num / den)
    mean_dice = [sum(x) / len(x) for x in per_class_dice.values()]
    return (sum(ious.values()) / len(ious), ((fgi / fgu) + (bgi / bgu)) / 2, sum(mean_dice) / len(mean_dice))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_loops_on_random_episodes(seed):
    rng = random.Random(seed)
    episodes = []
    for _ in range(12):
        h, w = 4, 5
        g = [[rng.choice([0, 0, 1, I]) for _ in range(w)] for _ in range(h)]
        g[0][0] = 1
        p = [[rng.choice([0, 1]) for _ in range(w)] for _ in range(h)]
        episodes.append((p, g, rng.choice([1, 2, 3]), rng.choice([0, 1])))
    s = FewShotScores()
    for p, g, k, v in episodes:
        s.add(t(p)[None], t(g)[None], t([k]), volume=t([v]))
    r = s.result()
    miou, fb, dice = _loop_scores(episodes)
    assert r["miou"] == pytest.approx(miou, abs=1e-12)
    assert r["fb_iou"] == pytest.approx(fb, abs=1e-12)
    assert r["dice"] == pytest.approx(dice, abs=1e-12)
    assert not math.isnan(r["miou"])
