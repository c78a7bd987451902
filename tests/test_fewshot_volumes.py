"""The whole-volume Dice of the medical few-shot protocol (eval/fewshot_volumes.py, VolumeDice in
eval/fewshot_metrics.py): the 3-D Dice against hand-computed values (an organ absent in some slices,
an empty prediction, ignored pixels) and a float64 loop over voxels; the chunk -> support-slice
assignment against a hand-worked example (query extent of 7 slices, support extent of 5, 3 chunks);
evaluate_volumes end to end with a segmenter that copies its support slice's mask (the expected Dice
recomputed by loops from the hand-written assignment); the support choices; a support volume without
the class as a one-line error naming the file; ``contrastlab eval fewshot`` on a slices folder."""
import json
import random

import numpy as np
import pytest
import torch

from contrastlab.data.episodes import EpisodeSource
from contrastlab.errors import UserError
from contrastlab.eval.fewshot_metrics import VolumeDice, volume_dice
from contrastlab.eval.fewshot_volumes import (chunk_assignment, evaluate_volumes, query_chunk, support_chunk_slices,
                                              support_runs)  # fmt: skip


def _t(rows):
    return torch.tensor(rows, dtype=torch.long)


# ----------------------------------------------------------------------------- 3-D Dice by hand
def test_volume_dice_by_hand_with_an_organ_absent_in_a_slice():
    # 3 slices of 2 x 2; the organ is absent in slice 1, where the prediction has one false positive
    truth = _t([[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[1, 0], [0, 0]]])
    pred = _t([[[1, 0], [0, 0]], [[0, 1], [0, 0]], [[1, 1], [0, 0]]])
    # |P n G| = 1 + 0 + 1 = 2, |P| = 1 + 1 + 2 = 4, |G| = 2 + 0 + 1 = 3: Dice = 4 / 7
    assert volume_dice(pred, truth) == pytest.approx(4 / 7)
    # not the mean of the slices' Dice (2/3, 0, 2/3)
    assert volume_dice(pred, truth) != pytest.approx((2 / 3 + 0 + 2 / 3) / 3)
    # an empty prediction: 0; an empty prediction of an empty truth: None (0 / 0)
    assert volume_dice(torch.zeros_like(truth), truth) == 0.0
    assert volume_dice(torch.zeros_like(truth), torch.zeros_like(truth)) is None
    # a perfect one: 1; pixels whose truth is 255 count nowhere
    assert volume_dice(truth, truth) == 1.0
    ign = truth.clone()
    ign[1, 0, 1] = 255  # the false positive of slice 1 now falls on an ignored pixel
    assert volume_dice(pred, ign) == pytest.approx(4 / 6)


def test_volume_dice_accumulates_slices_runs_and_classes_by_hand():
    truth = _t([[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[1, 0], [0, 0]]])
    pred = _t([[[1, 0], [0, 0]], [[0, 1], [0, 0]], [[1, 1], [0, 0]]])
    s = VolumeDice()
    s.add(7, 1, pred[:2], truth[:2], run=(3,))  # one volume in two calls: the slices add up
    s.add(7, 1, pred[2:], truth[2:], run=(3,))
    s.add(7, 1, torch.zeros_like(pred), truth, run=(4,))  # another support: an empty prediction, Dice 0
    s.add(8, 1, truth, truth, run=(3,))  # Dice 1
    s.add(8, 2, torch.zeros_like(pred), torch.zeros_like(truth), run=(3,))  # 0 / 0: left out
    s.add(9, 2, pred, truth, run=(3,))  # 4 / 7
    r = s.result({1: "liver", 2: "spleen"})
    assert r["per_volume_dice"] == {"7/liver": pytest.approx((4 / 7 + 0) / 2), "8/liver": pytest.approx(1.0),
                                    "9/spleen": pytest.approx(4 / 7)}  # fmt: skip
    assert r["per_class_dice"] == {"liver": pytest.approx((4 / 7 + 0 + 1) / 3), "spleen": pytest.approx(4 / 7)}
    assert r["dice"] == pytest.approx(((4 / 7 + 1) / 3 + 4 / 7) / 2) and r["volume_pairs"] == 4


def _loop_dice(pred, truth):
    """float64 loop over every voxel: 2 sum p g / (sum p + sum g) with truth 255 ignored."""
    inter = p_sum = g_sum = 0.0
    d, h, w = truth.shape
    for z in range(d):
        for y in range(h):
            for x in range(w):
                g = int(truth[z, y, x])
                if g == 255:
                    continue
                p = float(int(pred[z, y, x]) == 1)
                inter += p * (g == 1)
                p_sum += p
                g_sum += float(g == 1)
    return None if p_sum + g_sum == 0 else 2 * inter / (p_sum + g_sum)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_volume_dice_against_a_voxel_loop(seed):
    g = torch.Generator().manual_seed(seed)
    truth = (torch.rand(5, 6, 7, generator=g) < 0.3).long()
    truth[torch.rand(5, 6, 7, generator=g) < 0.1] = 255
    truth[2] = 0  # the organ absent in a slice
    pred = (torch.rand(5, 6, 7, generator=g) < 0.4).long()
    assert volume_dice(pred, truth) == pytest.approx(_loop_dice(pred, truth), abs=1e-12)


# ----------------------------------------------------------------------------- chunks by hand
def test_chunk_assignment_hand_worked_7_query_slices_5_support_slices_3_chunks():
    # support extent: slices 10..14 (5 slices); chunk centres p = 1/6, 1/2, 5/6 -> positions int(5p) = 0, 2, 4
    assert support_chunk_slices([10, 11, 12, 13, 14], 3) == [10, 12, 14]
    # query extent: slices 3..9 (7 slices), chunk width (9 - 3) / 3 = 2: (z - 3) // 2 = 0 0 1 1 2 2 3 -> clamped to 2
    assert [query_chunk(z, 3, 9, 3) for z in range(3, 10)] == [0, 0, 1, 1, 2, 2, 2]
    assert chunk_assignment([3, 4, 5, 6, 7, 8, 9], [10, 11, 12, 13, 14], 3) == {
        3: 10, 4: 10, 5: 12, 6: 12, 7: 14, 8: 14, 9: 14}  # fmt: skip
    # the support's class slices need not be contiguous: the centres index the list of slices with the class
    assert support_chunk_slices([2, 3, 7, 8, 9, 11], 3) == [3, 8, 11]  # int(6 p) = 1, 3, 5
    # a margin scores slices beyond the extent (in the volume only), in the first / last chunk
    assert chunk_assignment([3, 9], [10, 11, 12, 13, 14], 3, depth=11, z_margin=2) == {
        1: 10, 2: 10, 3: 10, 4: 10, 5: 12, 6: 12, 7: 14, 8: 14, 9: 14, 10: 14}  # fmt: skip
    # a one-slice extent is chunk 0 (SSL-ALPNet's division by zero caught)
    assert chunk_assignment([5], [1, 2, 3], 3) == {5: 1}
    # one chunk: the middle support slice; 12 chunks of 12 slices: each slice its own
    assert support_chunk_slices([4, 5, 6, 7], 1) == [6]
    assert support_chunk_slices(list(range(12)), 12) == list(range(12))
    assert support_chunk_slices(list(range(6)), 3) == [1, 3, 5]


def test_support_runs():
    assert support_runs(5, 1, -1, False) == [[4]]
    assert support_runs(5, 2, -1, False) == [[4, 3]]  # the last K, as SSL-ALPNet's val_ids[-nsup:]
    assert support_runs(5, 2, 0, False) == [[0, 4]]
    assert support_runs(3, 1, -1, True) == [[0], [1], [2]]
    with pytest.raises(UserError, match="support=5: the split has volumes at positions 0..4"):
        support_runs(5, 1, 5, False)
    with pytest.raises(UserError, match="shots=3: the split has 3 volume"):
        support_runs(3, 3, -1, False)


# ----------------------------------------------------------------------------- end to end, by loops
class CopySupport(torch.nn.Module):
    """Predicts the query's mask to be its (first) support slice's mask."""

    def segment_episode(self, support_images, support_masks, query):
        fg = (support_masks[:, 0] == 1).float()
        return torch.stack([1 - fg, fg], 1)


class Bright(torch.nn.Module):
    """Predicts foreground where the query is brighter than 0.5 (the test volumes draw the organ bright)."""

    def segment_episode(self, support_images, support_masks, query):
        fg = (query[:, 0] > 0.5).float()
        return torch.stack([1 - fg, fg], 1)


def _volumes_source(extents, depth=8, size=5, seed=0, files=None):
    """Volumes whose class-1 organ covers random pixels of the slices listed in ``extents[v]``; class 2 in
    every slice of every volume; images bright where the organ is."""
    rng = random.Random(seed)
    masks = torch.zeros(len(extents) * depth, size, size, dtype=torch.uint8)
    for v, zs in enumerate(extents):
        for z in range(depth):
            masks[v * depth + z, 0, 0] = 2
            if z in zs:
                for _ in range(1 + rng.randrange(size * size // 2)):
                    masks[v * depth + z, rng.randrange(1, size), rng.randrange(size)] = 1
    images = ((masks == 1).to(torch.uint8) * 200 + 20)[:, None].expand(-1, 3, -1, -1).contiguous()
    vols = torch.arange(len(extents)).repeat_interleave(depth)
    return EpisodeSource(images, masks, ["bg", "organ", "other"], [[1], [2]], name="vols", volumes=vols,
                         files=files, where="vols")  # fmt: skip


def test_evaluate_volumes_matches_loops_over_the_hand_worked_assignment():
    depth = 8
    # volume 2 (the last) is the support: organ in slices 2..6; volume 0: organ in 1..7 (7 slices);
    # volume 1: organ in slices 3 and 5 but absent in 4, which lies inside its extent and is scored
    extents = [[1, 2, 3, 4, 5, 6, 7], [3, 5], [2, 3, 4, 5, 6]]
    src = _volumes_source(extents, depth)
    r = evaluate_volumes(CopySupport(), src, [1], shots=1, n_part=3, batch_size=3)
    # support centres: 5 slices -> positions 0, 2, 4 -> slices 2, 4, 6; volume 0: z 1..7 in chunks 0 0 1 1 2 2 2;
    # volume 1: extent 3..5, width 2/3: z 3 -> 0, z 4 -> 1, z 5 -> 2
    hand = {0: {1: 2, 2: 2, 3: 4, 4: 4, 5: 6, 6: 6, 7: 6}, 1: {3: 2, 4: 4, 5: 6}}
    m = src.masks.long()
    want = {}
    for q, plan in hand.items():
        pred = torch.stack([(m[2 * depth + s] == 1).long() for s in plan.values()])
        truth = torch.stack([(m[q * depth + z] == 1).long() for z in plan])
        want[q] = _loop_dice(pred, truth)
    assert r["per_volume_dice"] == {"0/organ": pytest.approx(want[0], abs=1e-12), "1/organ": pytest.approx(want[1], abs=1e-12)}
    assert r["dice"] == pytest.approx((want[0] + want[1]) / 2, abs=1e-12)
    assert r["support_volumes"] == [[2]] and r["scored_slices"] == 7 + 3 and r["skipped"] == [] and r["volume_pairs"] == 2
    # an oracle gets 1 on every volume, an empty prediction 0
    assert evaluate_volumes(Bright(), src, [1])["dice"] == 1.0
    assert evaluate_volumes(Bright(), src, [2], n_part=1)["dice"] == 0.0  # class 2 is drawn dark


def test_rotating_supports_and_skipped_volumes():
    extents = [[1, 2, 3], [], [2, 3, 4, 5], [0, 1]]
    src = _volumes_source(extents, depth=6, seed=3)
    r = evaluate_volumes(CopySupport(), src, [1], support=2)
    assert r["support_volumes"] == [[2]] and r["skipped"] == [1] and set(r["per_volume_dice"]) == {"0/organ", "3/organ"}
    # every volume with the organ the support in turn: 3 supports x 2 queries; volume 1 has no organ
    with pytest.raises(UserError) as e:
        evaluate_volumes(CopySupport(), src, [1], rotate=True)
    assert "vols volume 1" in str(e.value) and "[0, 2, 3]" in str(e.value)
    r = evaluate_volumes(CopySupport(), _volumes_source([[1, 2], [2, 3, 4], [0, 1, 2]], depth=5), [1], rotate=True)
    assert r["support_volumes"] == [[0], [1], [2]] and r["volume_pairs"] == 6
    runs = [evaluate_volumes(CopySupport(), _volumes_source([[1, 2], [2, 3, 4], [0, 1, 2]], depth=5), [1], support=s)
            for s in range(3)]  # fmt: skip
    assert r["dice"] == pytest.approx(sum(x["dice"] for x in runs) / 3, abs=1e-12)


def test_a_support_volume_without_the_class_is_one_line_naming_the_file():
    files = [f"/data/image_{v}.nii.gz (slice {z})" for v in range(3) for z in range(4)]
    src = _volumes_source([[1, 2], [0, 1], []], depth=4, files=files)
    with pytest.raises(UserError) as e:
        evaluate_volumes(CopySupport(), src, [1])
    msg = str(e.value)
    assert msg.startswith("/data/image_2.nii.gz: the support volume (support=-1) has no slice of class 1 (organ)")
    assert "positions [0, 1]" in msg and len(msg.splitlines()) == 1
    no_volumes = EpisodeSource(src.images, src.masks, src.class_names, src.folds, name="flat")
    with pytest.raises(UserError, match="flat: the set has no volumes"):
        evaluate_volumes(CopySupport(), no_volumes, [1])


# ----------------------------------------------------------------------------- through the command line
def _slices_folder(root, last_without_liver=False):
    """6 volumes (ids 1..6; the test split: ids 1 and 6) of 12 x 12 x 6 with a bright liver (class 1)."""
    rng = np.random.default_rng(0)
    for vid in range(1, 7):
        img = rng.uniform(0, 50, (12, 12, 6))
        lab = np.zeros((12, 12, 6))
        if not (last_without_liver and vid == 6):
            lab[3:8, 2:9, 1:5] = 1
            img[lab == 1] += 150
        lab[9:11, 9:11, :] = 4
        np.save(root / f"image_{vid}.npy", img)
        np.save(root / f"label_{vid}.npy", lab)


def _last_json(capsys):
    return json.loads([line for line in capsys.readouterr().out.splitlines() if line.strip()][-1])


def test_eval_fewshot_reports_the_whole_volume_dice(tiny, tmp_path, capsys):
    from contrastlab.cli import main

    run = tmp_path / "simclr"
    assert main(["train", "simclr", *tiny, "trainer.max_steps=1", "trainer.threads=1", f"trainer.out_dir={run}"]) == 0
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir(), bad.mkdir()
    _slices_folder(good), _slices_folder(bad, last_without_liver=True)
    capsys.readouterr()
    base = ["eval", "fewshot", str(run), "data=slices", f"data.root={good}", "data.image_size=12", "features=random",
            "episodes=6", "n_examples=0"]  # fmt: skip
    assert main(base) == 0
    r = _last_json(capsys)
    assert r["dice_protocol"] == "volume" and r["n_part"] == 3 and r["support_volumes"] == [[1]]
    assert 0 <= r["dice"] <= 1 and list(r["per_volume_dice"]) == ["0/liver"] and r["scored_slices"] == 4
    assert 0 <= r["miou"] <= 1 and r["episodes"] == 6  # the 2-D episodes stay
    assert main(base) == 0 and _last_json(capsys)["dice"] == r["dice"]  # deterministic
    assert main([*base, "protocol=volume", "rotate_support=true"]) == 0
    rv = _last_json(capsys)
    assert "miou" not in rv and rv["support_volumes"] == [[0], [1]] and rv["variant"].endswith("/volume/npart3-supportall-margin0")
    assert main([*base, "protocol=episodes"]) == 0
    assert "dice" not in _last_json(capsys)
    bad_args = [a if not a.startswith("data.root=") else f"data.root={bad}" for a in base]
    assert main(bad_args) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}/image_6.npy: the support volume (support=-1) has no slice of class 1 (liver)" in err
    assert main([*base, "support=2"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "support=2: the split has volumes at positions 0..1" in err
