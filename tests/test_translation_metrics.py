"""FID / KID for image translation against closed forms, scipy and plain loops; the feature extractors."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import torch

from contrastlab.errors import ConfigError, UserError
from contrastlab.eval.image_metrics import (
    FIDInceptionFeatures,
    InceptionFeatures,
    RandomConvFeatures,
    build_extractor,
    check_fid_inception_state,
    comparable_with_papers,
    extract,
    fid_from_features,
    find_fid_inception_weights,
    find_inception_weights,
    frechet_distance,
    kid_from_features,
    translation_scores,
)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def random_spd(d, g, ridge=0.1):
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + ridge * torch.eye(d, dtype=torch.float64)


def frechet_scipy(mu1, s1, mu2, s2):
    """Reference: the textbook formula with scipy's general matrix square root."""
    mu1, s1, mu2, s2 = (np.asarray(v, dtype=np.float64) for v in (mu1, s1, mu2, s2))
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def mmd2_unbiased_loop(x, y):
    """Binkowski et al.'s unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, written out."""
    x, y = x.double().tolist(), y.double().tolist()
    d = len(x[0])
    k = lambda a, b: (sum(p * q for p, q in zip(a, b)) / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(a, b) for a in x for b in y) / (m * n)
    return kxx + kyy - 2 * kxy


# ------------------------------------------------------------------------------------ Frechet distance
@pytest.mark.parametrize("d", [1, 3, 10])
def test_frechet_diagonal_closed_form(d):
    g = gen(d)
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64) * 2
    a, b = torch.rand(d, generator=g, dtype=torch.float64) * 3, torch.rand(d, generator=g, dtype=torch.float64) + 0.5
    a[0] = 0.0  # a singular covariance is allowed
    expected = ((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()
    got = frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b))
    assert isinstance(got, float)
    assert got == pytest.approx(expected.item(), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("d", [2, 7, 32])
def test_frechet_matches_scipy_sqrtm_on_full_spd(d):
    g = gen(100 + d)
    s1, s2 = random_spd(d, g), random_spd(d, g, ridge=0.5)
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    ref = frechet_scipy(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8, abs=1e-8)
    assert frechet_distance(mu1.numpy(), s1.numpy(), mu2.numpy(), s2.numpy()) == pytest.approx(ref, rel=1e-8)
    # symmetric, and only the means differ -> ||mu1 - mu2||^2
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(ref, rel=1e-8, abs=1e-8)
    assert frechet_distance(mu1, s1, mu2, s1) == pytest.approx(((mu1 - mu2) ** 2).sum().item(), rel=1e-8, abs=1e-8)


def test_fid_from_features_uses_mean_and_unbiased_covariance():
    g = gen(7)
    f1 = torch.randn(30, 6, generator=g)
    f2 = torch.randn(25, 6, generator=g) * 1.5 + 0.3
    a, b = f1.double().numpy(), f2.double().numpy()
    ref = frechet_scipy(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert fid_from_features(f1, f2) == pytest.approx(ref, rel=1e-8)
    biased = frechet_scipy(a.mean(0), np.cov(a, rowvar=False, bias=True), b.mean(0), np.cov(b, rowvar=False, bias=True))
    assert abs(fid_from_features(f1, f2) - biased) > 1e-4  # the test can tell the two covariances apart


def test_fid_of_sampled_gaussians_approaches_the_true_value():
    g, d, n = gen(0), 8, 20000
    s1, s2 = random_spd(d, g), random_spd(d, g)
    mu1, mu2 = torch.zeros(d, dtype=torch.float64), torch.full((d,), 0.3, dtype=torch.float64)
    true = frechet_distance(mu1, s1, mu2, s2)
    x = mu1 + torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s1).T
    y = mu2 + torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s2).T
    assert true > 2.0
    assert fid_from_features(x, y) == pytest.approx(true, abs=0.15)


@pytest.mark.parametrize("n,d", [(500, 16), (20, 64)])  # (20, 64): singular covariance
def test_fid_of_a_set_with_itself_is_zero(n, d):
    x = torch.randn(n, d, generator=gen(n))
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-6)
    assert fid_from_features(x, x + 1.0) == pytest.approx(float(d), rel=1e-6)


def test_fid_errors_are_clear():
    with pytest.raises(ValueError, match="same D"):
        fid_from_features(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(UserError, match="at least 2 images"):
        fid_from_features(torch.randn(1, 3), torch.randn(5, 3))
    with pytest.raises(UserError, match="NaN"):
        fid_from_features(torch.full((4, 3), float("nan")), torch.randn(5, 3))
    with pytest.raises(ValueError, match="mu"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(3), torch.eye(4))


# ---------------------------------------------------------------------------------------------- KID
@pytest.mark.parametrize("m,n,d", [(9, 9, 4), (6, 6, 2), (12, 12, 5)])
def test_kid_one_full_subset_equals_plain_loop(m, n, d):
    g = gen(m * 10 + d)
    x, y = torch.randn(m, d, generator=g), torch.randn(n, d, generator=g) * 0.7 + 0.4
    mean, std = kid_from_features(x, y, n_subsets=1, subset_size=1000)
    assert mean == pytest.approx(mmd2_unbiased_loop(x, y), rel=1e-9, abs=1e-12)
    assert std == 0.0


def test_kid_subsets_average_loop_values_on_the_sampled_rows():
    x, y = torch.randn(15, 3, generator=gen(1)), torch.randn(11, 3, generator=gen(2)) + 0.5
    g = gen(5)
    vals = []
    for _ in range(4):  # the same draws kid_from_features makes: a permutation of each set, first m rows
        i1, i2 = torch.randperm(15, generator=g)[:6], torch.randperm(11, generator=g)[:6]
        vals.append(mmd2_unbiased_loop(x[i1], y[i2]))
    mean, std = kid_from_features(x, y, n_subsets=4, subset_size=6, generator=gen(5))
    assert mean == pytest.approx(np.mean(vals), rel=1e-9)
    assert std == pytest.approx(np.std(vals), rel=1e-7)


def test_kid_near_zero_for_equal_distributions():
    g = gen(3)
    x, x2 = torch.randn(600, 16, generator=g), torch.randn(600, 16, generator=g)
    shifted, _ = kid_from_features(x, x + 0.5, n_subsets=20, subset_size=300)
    same, _ = kid_from_features(x, x, n_subsets=20, subset_size=300)
    indep, _ = kid_from_features(x, x2, n_subsets=20, subset_size=300)
    assert shifted > 0.5
    assert abs(same) < 0.1 * shifted
    assert abs(indep) < 0.02 * shifted


def test_kid_increases_with_mean_shift():
    g = gen(4)
    x, y = torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g)
    kids = [kid_from_features(x, y + s, n_subsets=10, subset_size=200)[0] for s in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(kids, kids[1:])), kids


def test_kid_is_deterministic_given_the_generator():
    x, y = torch.randn(300, 8, generator=gen(5)), torch.randn(250, 8, generator=gen(6)) + 0.2
    a = kid_from_features(x, y, n_subsets=8, subset_size=50, generator=gen(11))
    b = kid_from_features(x, y, n_subsets=8, subset_size=50, generator=gen(11))
    c = kid_from_features(x, y, n_subsets=8, subset_size=50, generator=gen(12))
    assert a == b and a != c
    torch.manual_seed(123)  # the default draws from its own fixed generator, not the global RNG
    d = kid_from_features(x, y, n_subsets=8, subset_size=50)
    torch.manual_seed(456)
    assert kid_from_features(x, y, n_subsets=8, subset_size=50) == d
    assert a[1] > 0  # several different subsets


def test_translation_scores_keys_and_values():
    x, y = torch.randn(200, 6, generator=gen(8)), torch.randn(200, 6, generator=gen(9)) + 0.3
    s = translation_scores(x, y, n_subsets=5, subset_size=100)
    assert set(s) == {"fid", "kid_mean", "kid_std"}
    assert s["fid"] == pytest.approx(fid_from_features(x, y))
    assert (s["kid_mean"], s["kid_std"]) == kid_from_features(x, y, n_subsets=5, subset_size=100)


# ------------------------------------------------------------------------------------- extractors
def test_random_conv_features_are_seeded_and_shaped():
    x = torch.rand(5, 3, 40, 40, generator=gen(0))
    torch.manual_seed(1)
    a = RandomConvFeatures(seed=0, width=8)
    torch.manual_seed(2)
    b = RandomConvFeatures(seed=0, width=8)
    c = RandomConvFeatures(seed=1, width=8)
    fa = a(x)
    assert fa.shape == (5, 64) and a.out_dim == 64
    assert torch.equal(fa, b(x)) and torch.equal(fa, a(x))
    assert not torch.allclose(fa, c(x))
    assert RandomConvFeatures()(x).shape == (5, 512)
    a.train()
    assert not a.training and not any(p.requires_grad for p in a.parameters())


def test_random_conv_features_identical_across_processes():
    code = (
        "import torch; from contrastlab.eval.image_metrics import RandomConvFeatures as R; "
        "x = torch.linspace(0, 1, 2 * 3 * 16 * 16).reshape(2, 3, 16, 16); "
        "print(repr(R(seed=3, width=4)(x).double().sum().item()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    x = torch.linspace(0, 1, 2 * 3 * 16 * 16).reshape(2, 3, 16, 16)
    assert float(out.stdout.strip()) == RandomConvFeatures(seed=3, width=4)(x).double().sum().item()


def test_random_conv_features_separate_image_distributions():
    g, f = gen(10), RandomConvFeatures(width=16)
    dark = extract(f, torch.rand(300, 3, 32, 32, generator=g) * 0.4)
    bright = extract(f, 0.6 + torch.rand(300, 3, 32, 32, generator=g) * 0.4)
    within = fid_from_features(dark[:150], dark[150:])
    assert fid_from_features(dark, bright) > 20 * within
    # same mean brightness, different structure: smooth (upsampled 4x4 noise) vs pixel noise
    smooth = torch.nn.functional.interpolate(torch.rand(300, 3, 4, 4, generator=g), size=32, mode="bilinear")
    noisy = extract(f, torch.rand(300, 3, 32, 32, generator=g))
    smooth = extract(f, smooth)
    assert fid_from_features(smooth, noisy) > 20 * fid_from_features(noisy[:150], noisy[150:])
    assert kid_from_features(smooth, noisy, 5, 150)[0] > 20 * abs(kid_from_features(noisy[:150], noisy[150:], 5, 75)[0])


def test_extract_inputs_batches_and_errors():
    f = RandomConvFeatures(width=4)
    u8 = torch.randint(0, 256, (10, 3, 24, 24), generator=gen(1), dtype=torch.uint8)
    ref = f(u8.float() / 255)
    assert torch.allclose(extract(f, u8, batch_size=3), ref, atol=1e-6)
    assert torch.allclose(extract(f, u8.float() / 255, batch_size=64), ref, atol=1e-6)
    loader = [(u8[:4], torch.zeros(4)), (u8[4:], torch.zeros(6))]  # DataLoader-style (images, labels)
    assert torch.allclose(extract(f, loader), ref, atol=1e-6)
    assert torch.allclose(extract(f, iter([u8[:7], u8[7:]])), ref, atol=1e-6)
    assert extract(f, u8).dtype == torch.float32
    with pytest.raises(UserError, match=r"\(x \+ 1\) / 2"):
        extract(f, torch.rand(2, 3, 8, 8) * 2 - 1)
    with pytest.raises(UserError, match=r"\(N, 3, H, W\)"):
        extract(f, torch.rand(2, 1, 8, 8))
    with pytest.raises(UserError, match="no images"):
        extract(f, [])


def test_inception_missing_weights_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "inception_v3_google-0cc3c7bd.pth"
    with pytest.raises(UserError) as e:
        InceptionFeatures(missing)
    msg = str(e.value)
    assert str(missing) in msg and "weights='IMAGENET1K_V1'" in msg and "\n" not in msg


def test_find_and_build_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert find_inception_weights() is None
    extractor, name = build_extractor("auto")
    assert isinstance(extractor, RandomConvFeatures) and name.startswith("random_conv")
    extractor, name = build_extractor("random")
    assert isinstance(extractor, RandomConvFeatures)
    with pytest.raises(UserError, match="no Inception weights"):
        build_extractor("inception")
    with pytest.raises(UserError, match="not found"):
        build_extractor("auto", weights_path=tmp_path / "nope.pth")
    with pytest.raises(ConfigError, match="expected one of auto, fid_inception, inception, random"):
        build_extractor("vgg")
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "inception_v3_google-0cc3c7bd.pth").write_bytes(b"not a checkpoint")
    assert find_inception_weights() == ckpt / "inception_v3_google-0cc3c7bd.pth"
    with pytest.raises(UserError, match="cannot read Inception weights"):
        build_extractor("auto")


def test_inception_loads_a_local_state_dict(tmp_path):
    """A torchvision Inception-v3 state dict (random, nothing downloaded) loads strictly; 2048-d features."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path / "inception_v3_google-test.pth"
    torch.save(net.state_dict(), path)
    f = InceptionFeatures(path)
    assert torch.equal(f.net.Conv2d_1a_3x3.conv.weight, net.Conv2d_1a_3x3.conv.weight)
    x = torch.rand(2, 3, 299, 299, generator=gen(0))
    x[0] = 0.75
    seen = {}
    f.net.Conv2d_1a_3x3.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].clone()))
    out = extract(f, x)
    assert out.shape == (2, 2048) and torch.isfinite(out).all()
    # the network sees (x - 0.5) / 0.5, the input the ported Google weights expect
    assert torch.allclose(seen["x"][0], torch.full((3, 299, 299), 0.5), atol=1e-5)
    # eval mode (BN running statistics, no dropout): an image's features do not depend on its batch
    assert torch.allclose(f(x[1:]), out[1:], atol=1e-4, rtol=1e-4)
    f.train()
    assert not f.training
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(UserError, match="not a torchvision Inception-v3 state dict"):
        InceptionFeatures(path)


# ------------------------------------------------------------------- the FID Inception (torch-fidelity)
FID_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's name; pytorch-fid's is pt_inception-...


def fid_layout_from_torchvision():
    """The official file's keys and shapes, written down independently of the code under test: the TF graph
    in torchvision's module names (pytorch-fid's FID Inception is torchvision's Inception3 with 1008 classes
    and no auxiliary head), and the converter writes no BatchNorm num_batches_tracked counters."""
    import torchvision

    with torch.device("meta"):
        net = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    return {k: v.shape for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


def random_fid_state(seed=0, counters=False):
    """Random weights in the official file's format (He-scaled convs, identity BatchNorms, so activations
    stay finite through the 94 layers)."""
    g, state = gen(seed), {}
    for k, shape in fid_layout_from_torchvision().items():
        if k.endswith("conv.weight"):
            state[k] = torch.randn(shape, generator=g) * (2.0 / (shape[1] * shape[2] * shape[3])) ** 0.5
        elif k.endswith(("bn.weight", "running_var")):
            state[k] = 0.5 + torch.rand(shape, generator=g)
        elif k == "fc.weight":
            state[k] = torch.randn(shape, generator=g) * 0.01
        else:  # bn.bias, running_mean, fc.bias
            state[k] = torch.randn(shape, generator=g) * 0.1
        if counters and k.endswith("running_mean"):
            state[k.replace("running_mean", "num_batches_tracked")] = torch.tensor(0)
    return state


@pytest.fixture(scope="module")
def fid_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("fid") / FID_FILE
    torch.save(random_fid_state(), path)
    return path


@pytest.fixture(scope="module")
def fid_extractor(fid_weights):
    return FIDInceptionFeatures(fid_weights)


def test_fid_inception_loads_the_official_format_and_gives_2048_pool_features(fid_weights, fid_extractor):
    f, state = fid_extractor, torch.load(fid_weights, weights_only=True)
    net_state = f.net.state_dict()
    # every tensor of the file, and nothing else but BatchNorm counters, is in torch-fidelity's network
    assert {k for k in net_state if not k.endswith("num_batches_tracked")} == set(state)
    for k in ("Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.bn.running_var", "fc.weight"):
        assert torch.equal(net_state[k], state[k]), k
    assert net_state["fc.weight"].shape == (1008, 2048)  # the TF graph's 1008-class head
    x = torch.rand(2, 3, 32, 32, generator=gen(1))
    out = extract(f, x)
    assert out.shape == (2, 2048) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out >= 0).all() and out.std() > 0  # means of ReLU outputs, not all equal
    assert torch.allclose(f(x[1:]), out[1:], atol=1e-5, rtol=1e-5)  # eval mode: no batch dependence
    f.train()
    assert not f.training and not f.net.training and not any(p.requires_grad for p in f.parameters())
    # FID of a feature set with itself is 0 on these 2048-d features too (the metric is tested above)
    assert fid_from_features(out, out) == pytest.approx(0.0, abs=1e-6)


def test_fid_inception_accepts_batchnorm_counters(tmp_path):
    path, state = tmp_path / "pt_inception-2015-12-05-6726825d.pth", random_fid_state(counters=True)
    torch.save(state, path)
    f = FIDInceptionFeatures(path)
    assert torch.equal(f.net.state_dict()["Mixed_6e.branch7x7dbl_4.bn.running_mean"],
                       state["Mixed_6e.branch7x7dbl_4.bn.running_mean"])  # fmt: skip


def tf1_bilinear_reference(img: np.ndarray, size: int) -> np.ndarray:
    """TF 1.x resize_bilinear (align_corners=False), written out: output pixel i reads the source at
    i * in / out (no half-pixel offset), interpolating between floor and floor + 1 (clamped to the edge)."""
    c, h, w = img.shape
    out = np.empty((c, size, size))
    for i in range(size):
        y = i * h / size
        y0 = int(np.floor(y))
        y1, dy = min(y0 + 1, h - 1), y - y0
        for j in range(size):
            x = j * w / size
            x0 = int(np.floor(x))
            x1, dx = min(x0 + 1, w - 1), x - x0
            top = img[:, y0, x0] * (1 - dx) + img[:, y0, x1] * dx
            bottom = img[:, y1, x0] * (1 - dx) + img[:, y1, x1] * dx
            out[:, i, j] = top * (1 - dy) + bottom * dy
    return out


class _Seen(Exception):
    """Raised by a hook to stop the network after its input is recorded (the rest is not needed)."""


def first_layer_input(f, x):
    seen = []

    def record(module, args):
        seen.append(args[0].clone())
        raise _Seen

    hook = f.net.Conv2d_1a_3x3.register_forward_pre_hook(record)
    try:
        with pytest.raises(_Seen):
            f(x)
    finally:
        hook.remove()
    return seen[0]


def test_fid_inception_preprocessing_matches_a_hand_computation(fid_extractor):
    """The network's first layer sees round(255 x), resized to 299 x 299 as TF 1.x does, mapped by
    (v - 128) / 128 to [-1, 1]; 8-bit images give the same input."""
    f = fid_extractor
    x = torch.rand(2, 3, 5, 7, generator=gen(3))  # not square: rows and columns resized separately
    x[1] = torch.linspace(0.01, 0.97, 5 * 7).reshape(1, 5, 7)  # a ramp; 255 x never ends in .5 (no ties)
    same = torch.rand(1, 3, 299, 299, generator=gen(4))
    seen = [first_layer_input(f, x), first_layer_input(f, same)]
    u8 = (x * 255).round().to(torch.uint8)
    assert torch.equal(first_layer_input(f, u8.float() / 255), seen[0])  # as extract() passes 8-bit images
    assert seen[0].shape == (2, 3, 299, 299)
    q = np.round(x.double().numpy() * 255)
    for b in range(2):
        expected = (tf1_bilinear_reference(q[b], 299) - 128) / 128
        np.testing.assert_allclose(seen[0][b].double().numpy(), expected, atol=2e-5)
    # the test can tell TF's resize from PyTorch's half-pixel bilinear resize
    torch_resized = (torch.nn.functional.interpolate(torch.from_numpy(q), size=299, mode="bilinear") - 128) / 128
    assert (torch_resized[0] - seen[0][0].double()).abs().max() > 0.05
    # a 299 px image is only quantised and scaled
    expected = (np.round(same.double().numpy() * 255) - 128) / 128
    np.testing.assert_allclose(seen[1].double().numpy(), expected, atol=1e-6)
    assert seen[1].min() >= -1 and seen[1].max() <= 127 / 128


@pytest.mark.parametrize("change,named", [
    ("drop", "Mixed_6c.branch7x7_2.bn.running_var"),
    ("extra", "AuxLogits.fc.weight"),
    ("shape", "fc.weight"),
])  # fmt: skip
def test_fid_inception_state_with_a_wrong_key_is_a_one_line_error(change, named):
    state = random_fid_state()
    check_fid_inception_state(state, "w.pth")  # the official format passes
    if change == "drop":
        del state[named]
        what = f"missing key {named}"
    elif change == "extra":
        state[named] = torch.zeros(1000, 768)
        what = f"unexpected key {named}"
    else:
        state[named] = torch.zeros(1000, 2048)  # torchvision's 1000-class head
        what = "fc.weight has shape (1000, 2048), expected (1008, 2048)"
    with pytest.raises(UserError) as e:
        check_fid_inception_state(state, "w.pth")
    msg = str(e.value)
    assert what in msg and "\n" not in msg and FID_FILE in msg and "github.com/toshas/torch-fidelity" in msg


def test_fid_inception_file_errors_are_one_line(tmp_path, monkeypatch):
    state = random_fid_state()
    del state["Mixed_5b.branch5x5_2.conv.weight"]
    state["Mixed_5b.extra.weight"] = torch.zeros(3)
    path = tmp_path / FID_FILE
    torch.save(state, path)
    with pytest.raises(UserError) as e:
        FIDInceptionFeatures(path)
    assert "missing key Mixed_5b.branch5x5_2.conv.weight" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="not found.*" + FID_FILE):
        FIDInceptionFeatures(tmp_path / "nope.pth")
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read FID Inception weights"):
        FIDInceptionFeatures(path)
    torch.save(random_fid_state(), path)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)  # not installed
    with pytest.raises(UserError, match=r"pip install 'contrastlab\[fid\]'"):
        FIDInceptionFeatures(path)


def test_auto_prefers_the_fid_inception_then_torchvision_then_random(tmp_path, monkeypatch, fid_weights):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    assert find_fid_inception_weights() is None
    with pytest.raises(UserError) as e:
        build_extractor("fid_inception")
    msg = str(e.value)
    assert FID_FILE in msg and "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + FID_FILE in msg
    assert "\n" not in msg
    assert not comparable_with_papers(build_extractor("auto")[1])  # random
    # a torchvision file (unreadable here: auto would read it) and the FID file: auto takes the FID Inception
    (hub / "inception_v3_google-0cc3c7bd.pth").write_bytes(b"not a checkpoint")
    os.symlink(fid_weights, hub / "pt_inception-2015-12-05-6726825d.pth")  # pytorch-fid's name is found too
    assert find_fid_inception_weights() == hub / "pt_inception-2015-12-05-6726825d.pth"
    os.symlink(fid_weights, hub / FID_FILE)
    assert find_fid_inception_weights() == hub / FID_FILE  # torch-fidelity's name first
    extractor, name = build_extractor("auto")
    assert isinstance(extractor, FIDInceptionFeatures) and name == "fid_inception_v3" and comparable_with_papers(name)
    assert isinstance(build_extractor("fid_inception")[0], FIDInceptionFeatures)
    with pytest.raises(UserError, match="cannot read Inception weights"):
        build_extractor("inception")  # the explicit torchvision choice still reads its own file
    # auto with an explicit file: the FID Inception when it holds the 1008-class fc, else torchvision's
    assert build_extractor("auto", weights_path=fid_weights)[1] == "fid_inception_v3"
    tv = tmp_path / "tv.pth"
    torch.save(torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), tv)
    extractor, name = build_extractor("auto", weights_path=tv)
    assert isinstance(extractor, InceptionFeatures) and name == "inception_v3_torchvision"
    assert not comparable_with_papers(name)
    with pytest.raises(UserError, match="not the FID Inception weights file: unexpected key AuxLogits"):
        build_extractor("fid_inception", weights_path=tv)


TINY_CUT = [
    "method.ngf=8", "method.n_blocks=1", "method.ndf=8", "method.n_layers_d=1", "method.nce_layers=[0,4,7,10]",
    "method.num_patches=16", "method.head_dim=16", "method.monitor_images=32", "method.grid_images=4",
    "data.n_train=64", "data.n_test=32", "data.image_size=16", "optim.batch_size=4",
    "trainer.progress=false", "trainer.knn_every=0", "trainer.accelerator=cpu", "trainer.max_steps=2",
]  # fmt: skip


def test_cli_eval_translation_names_the_extractor_and_warns_unless_fid_inception(tmp_path, fid_weights):
    from contrastlab.config import load_config
    from contrastlab.engine.trainer import fit

    run = tmp_path / "run"
    fit(load_config("cut", TINY_CUT + [f"trainer.out_dir={run}"]))
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "contrastlab.cli", "eval", "translation", str(run), "device=cpu", "max_images=4"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["extractor"] == r["features"] == "random_conv_seed0_w64" and r["comparable_with_papers"] is False
    assert {"protocol", "checkpoint", "step", "method", "label", "AtoB"} <= set(r)  # the keys it always had
    assert r["AtoB"]["n_inputs"] == 4 and r["AtoB"]["fid"] >= 0
    warnings = [line for line in out.stderr.splitlines() if "not comparable with published FIDs" in line]
    assert len(warnings) == 1 and "random_conv_seed0_w64" in warnings[0] and "extractor=fid_inception" in warnings[0]
    # the FID Inception's file in the hub cache: auto takes it, says so, and warns no more
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    shutil.copy(fid_weights, hub / FID_FILE)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["extractor"] == "fid_inception_v3" and r["comparable_with_papers"] is True
    assert "not comparable" not in out.stderr
    scores = r["AtoB"]
    assert scores["fid"] >= 0 and np.isfinite([scores["fid"], scores["kid_mean"], scores["fid_untranslated"]]).all()
