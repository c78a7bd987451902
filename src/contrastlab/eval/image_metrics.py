"""FID and KID for image translation (DCLGAN / SimDCL, CUT, CycleGAN), on a chosen feature extractor.

Both metrics compare the feature distribution of real target-domain images with that of translated
(fake) images; lower is better.

- FID (Heusel et al., NeurIPS 2017): the Frechet distance between Gaussians fitted to the two feature
  sets, ``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})``.
- KID (Binkowski et al., ICLR 2018): the unbiased squared MMD with the cubic polynomial kernel
  ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets. Unbiased, so it can be slightly negative
  for equal distributions. Reports customarily print ``KID x 1000``; the functions here return the raw
  value.

Feature extractors map float images in [0, 1], (B, 3, H, W), to (B, D) features:

- :class:`InceptionFeatures`: torchvision's ImageNet Inception-v3 (2048-d pool features), loaded from a
  local weights file only (nothing is downloaded). These weights are close to, but not identical with,
  the TF-Inception weights that papers' FIDs use, so its numbers are *not* directly comparable with
  published FIDs (e.g. the 43.2 of DCLGAN on Horse->Zebra); compare methods with each other instead.
- :class:`RandomConvFeatures`: the fallback when no Inception weights exist, a fixed-seed random conv net.
  Its values are only comparable with values from the same extractor, width and seed, never with
  published FIDs.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, UserError
from ..nn.backbones import IMAGENET_MEAN, IMAGENET_STD

INCEPTION_GLOB = "inception_v3_google-*.pth"
EXTRACTORS = ("auto", "inception", "random")


# ----------------------------------------------------------------------------------------------- math
def _as_f64(x, what: str) -> torch.Tensor:
    x = torch.as_tensor(x).detach().to(dtype=torch.float64)
    if not torch.isfinite(x).all():
        raise UserError(f"{what} contains NaN or inf values; check the images and the feature extractor")
    return x


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric PSD matrix by its eigendecomposition (tiny negative eigenvalues -> 0)."""
    w, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, S1) and N(mu2, S2), the FID of Heusel et al. (NeurIPS 2017):

        d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})

    Computed in float64. ``tr((S1 S2)^{1/2})`` equals ``tr((R S2 R)^{1/2})`` with ``R = S1^{1/2}``, and
    ``R S2 R`` is symmetric PSD, so it is the sum of the square roots of its eigenvalues (``eigh``; tiny
    negative eigenvalues from rounding are clamped to 0). Stable for singular covariances (fewer samples
    than dimensions), unlike a general matrix square root. mu: (d,), sigma: (d, d); tensors or arrays.
    """
    mu1, mu2 = _as_f64(mu1, "mu1"), _as_f64(mu2, "mu2")
    s1, s2 = _as_f64(sigma1, "sigma1"), _as_f64(sigma2, "sigma2")
    d = mu1.shape[0] if mu1.dim() == 1 else -1
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"frechet_distance expects mu (d,) and sigma (d, d) for both sets, got {tuple(mu1.shape)}, "
            f"{tuple(s1.shape)}, {tuple(mu2.shape)}, {tuple(s2.shape)}"
        )
    r = _psd_sqrt(s1)
    m = r @ s2 @ r
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * tr_sqrt
    return max(float(value), 0.0)  # a squared distance; only rounding can make it negative


def _check_features(f1, f2, min_rows: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    f1, f2 = _as_f64(f1, f"{what}: first feature set"), _as_f64(f2, f"{what}: second feature set")
    if f1.dim() != 2 or f2.dim() != 2 or f1.shape[1] != f2.shape[1]:
        shapes = f"{tuple(f1.shape)} and {tuple(f2.shape)}"
        raise ValueError(f"{what} expects two (N, D) feature tensors with the same D, got {shapes}")
    if min(f1.shape[0], f2.shape[0]) < min_rows:
        got = f"{f1.shape[0]} and {f2.shape[0]}"
        raise UserError(f"{what} needs at least {min_rows} images per set, got {got}; evaluate more images")
    return f1, f2


def _mean_cov(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu = f.mean(dim=0)
    c = f - mu
    return mu, c.T @ c / (f.shape[0] - 1)


def fid_from_features(f1, f2) -> float:
    """FID between two feature sets (rows are samples): the Frechet distance of their means and unbiased
    (n - 1) covariances, all in float64. See :func:`frechet_distance`."""
    f1, f2 = _check_features(f1, f2, 2, "fid_from_features")
    return frechet_distance(*_mean_cov(f1), *_mean_cov(f2))


def _poly_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x @ y.T / x.shape[1] + 1) ** 3


def _mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2: within-set kernel means over i != j, minus twice the mean cross kernel."""
    m, n = x.shape[0], y.shape[0]
    kxx, kyy = _poly_kernel(x, x), _poly_kernel(y, y)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return within_x + within_y - 2 * _poly_kernel(x, y).mean()


def kid_from_features(f1, f2, n_subsets: int = 100, subset_size: int = 1000,
                      generator: torch.Generator | None = None) -> tuple[float, float]:  # fmt: skip
    """KID of Binkowski et al. (ICLR 2018): the unbiased MMD^2 between two feature sets (rows are samples)
    with the polynomial kernel ``k(x, y) = (x.y / d + 1)^3``,

        MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (m (m-1))
                  - 2 sum_{i, j} k(x_i, y_j) / m^2,

    on ``n_subsets`` random subsets of m = min(subset_size, n1, n2) rows drawn without replacement from
    each set. Returns (mean, std) over the subsets (population std, 0 for one subset), raw values (reports
    usually print x 1000). Deterministic given ``generator`` (default: a fresh one seeded with 0).
    """
    f1, f2 = _check_features(f1, f2, 2, "kid_from_features")
    if n_subsets < 1 or subset_size < 2:
        got = f"{n_subsets} and {subset_size}"
        raise ValueError(f"kid_from_features needs n_subsets >= 1 and subset_size >= 2, got {got}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    m = min(subset_size, f1.shape[0], f2.shape[0])
    values = []
    for _ in range(n_subsets):
        i1 = torch.randperm(f1.shape[0], generator=g, device=g.device)[:m].to(f1.device)
        i2 = torch.randperm(f2.shape[0], generator=g, device=g.device)[:m].to(f2.device)
        values.append(_mmd2_unbiased(f1[i1], f2[i2]))
    v = torch.stack(values)
    return float(v.mean()), float(v.std(correction=0))


def translation_scores(real_features, fake_features, n_subsets: int = 100, subset_size: int = 1000,
                       generator: torch.Generator | None = None) -> dict:  # fmt: skip
    """FID and KID of translated images against real target-domain images, from their features:
    ``{"fid": float, "kid_mean": float, "kid_std": float}``. KID values are raw (multiply by 1000 for the
    customary report scale); see :func:`kid_from_features` for the subset arguments."""
    fid = fid_from_features(real_features, fake_features)
    kid_mean, kid_std = kid_from_features(real_features, fake_features, n_subsets, subset_size, generator)
    return {"fid": fid, "kid_mean": kid_mean, "kid_std": kid_std}


# ----------------------------------------------------------------------------------- feature extractors
def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class _FrozenExtractor(nn.Module):
    """A feature extractor that always stays in eval mode and never records gradients."""

    def train(self, mode: bool = True):
        return super().train(False)


def find_inception_weights() -> Path | None:
    """The torchvision Inception-v3 ImageNet weights file (``inception_v3_google-*.pth``) in torch's hub
    cache, ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``), or None."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(folder.glob(INCEPTION_GLOB)) if folder.is_dir() else []
    return found[0] if found else None


_HOW_TO_GET = (
    "download it once with "
    "`python -c \"import torchvision; torchvision.models.inception_v3(weights='IMAGENET1K_V1')\"` "
    "(saved to ~/.cache/torch/hub/checkpoints) or use the 'random' extractor"
)


class InceptionFeatures(_FrozenExtractor):
    """2048-d pool features of torchvision's ImageNet Inception-v3, loaded from a local weights file
    (``inception_v3_google-*.pth``; never downloaded here).

    Images in [0, 1] are resized to 299 px (bilinear, antialiased) and normalised with the ImageNet
    mean/std; as torchvision does for these weights, ``transform_input=True`` then maps them to the
    (x - 0.5) / 0.5 input the ported Google weights expect. These are torchvision's weights, close to but
    not identical with the TF-Inception weights of the FID papers: values are not directly comparable
    with published FIDs.
    """

    out_dim = 2048

    def __init__(self, weights_path):
        super().__init__()
        import torchvision

        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise UserError(f"Inception weights file {path} not found; {_HOW_TO_GET}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line message
            raise UserError(f"cannot read Inception weights {path} ({type(e).__name__}); {_HOW_TO_GET}") from None
        net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True)
        try:
            net.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"{path} is not a torchvision Inception-v3 state dict ({first}); {_HOW_TO_GET}") from None
        net.fc = nn.Identity()
        net.AuxLogits = None  # only used in training mode; dropped to save memory
        net.aux_logits = False
        self.net = net.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.path = path
        self.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (_resize(x.to(self.mean.dtype), 299) - self.mean) / self.std
        return self.net(x)


class RandomConvFeatures(_FrozenExtractor):
    """The documented fallback when no Inception weights exist: a fixed random conv net.

    Images in [0, 1] are resized to 64 px (bilinear, antialiased) and mapped to [-1, 1]; four stages of
    conv3x3 stride 2 + ReLU (``width`` channels each, no normalisation layers, He-normal weights and zero
    biases drawn from a local ``torch.Generator`` seeded with ``seed``), at 32, 16, 8 and 4 px. Each
    stage's output is pooled to its per-channel spatial mean and std; the concatenation is the feature,
    ``out_dim = 8 * width``. Random conv features still separate image distributions (colour, texture,
    structure at several scales), but the values are only comparable with other values of the same
    extractor, width and seed, never with published FIDs. Identical across calls and processes, and
    independent of the global RNG.
    """

    def __init__(self, seed: int = 0, width: int = 64):
        super().__init__()
        if width < 1:
            raise ConfigError(f"RandomConvFeatures width must be >= 1, got {width}")
        g = torch.Generator().manual_seed(seed)
        convs, cin = [], 3
        for _ in range(4):
            conv = nn.Conv2d(cin, width, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / (cin * 9)) ** 0.5)
                conv.bias.zero_()
            convs.append(conv.requires_grad_(False))
            cin = width
        self.convs = nn.ModuleList(convs)
        self.out_dim = 8 * width
        self.seed, self.width = seed, width
        self.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _resize(x.to(self.convs[0].weight.dtype), 64) * 2 - 1
        pooled = []
        for conv in self.convs:
            x = F.relu(conv(x))
            pooled += [x.mean(dim=(2, 3)), x.std(dim=(2, 3), correction=0)]
        return torch.cat(pooled, dim=1)


def build_extractor(name: str = "auto", weights_path=None) -> tuple[nn.Module, str]:
    """A feature extractor and its short name for reports.

    'inception': :class:`InceptionFeatures` from ``weights_path`` or :func:`find_inception_weights`
    (UserError if neither exists); 'random': :class:`RandomConvFeatures` (seed 0, width 64);
    'auto': inception if ``weights_path`` is given or a weights file is found, else random.
    """
    name = str(name).lower()
    if name not in EXTRACTORS:
        raise ConfigError(f"unknown feature extractor {name!r}; expected one of {', '.join(EXTRACTORS)}")
    if name == "random" and weights_path is not None:
        raise ConfigError("weights_path is only used by the 'inception' extractor; drop it or use extractor=inception")
    path = weights_path if weights_path is not None else (find_inception_weights() if name != "random" else None)
    if name == "inception" and path is None:
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        raise UserError(f"no Inception weights ({INCEPTION_GLOB}) in {hub} and no weights_path given; {_HOW_TO_GET}")
    if path is not None:
        return InceptionFeatures(path), "inception_v3_torchvision"
    extractor = RandomConvFeatures()
    return extractor, f"random_conv_seed{extractor.seed}_w{extractor.width}"


# ------------------------------------------------------------------------------------------- extraction
def _as_batch(batch) -> torch.Tensor:
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    x = torch.as_tensor(x)
    if x.dim() != 4 or x.shape[1] != 3:
        raise UserError(f"expected images of shape (N, 3, H, W), got {tuple(x.shape)}; convert grey images to RGB")
    if x.dtype == torch.uint8:
        return x.float().div_(255)
    if not x.is_floating_point():
        raise UserError(f"expected uint8 or float images, got {x.dtype}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        got = f"[{lo:.3g}, {hi:.3g}]"
        raise UserError(f"expected float images in [0, 1], got values in {got}; map tanh outputs with (x + 1) / 2")
    return x


def _chunks(images, batch_size: int):
    if isinstance(images, torch.Tensor):
        for s in range(0, images.shape[0], batch_size):
            yield images[s : s + batch_size]
    else:
        yield from images


def extract(extractor: nn.Module, images: torch.Tensor | Iterable, batch_size: int = 64) -> torch.Tensor:
    """Features (N, D), float32 on the CPU, of images given as one uint8 or float [0, 1] tensor (N, 3, H, W)
    (processed in chunks of ``batch_size``) or an iterable of such batches (or of (images, ...) tuples, as a
    DataLoader yields). Runs on the extractor's device, without gradients; prints nothing."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(iter(extractor.parameters()), torch.empty(0)).device
    out = []
    with torch.no_grad():
        for batch in _chunks(images, batch_size):
            x = _as_batch(batch)
            if x.shape[0]:
                out.append(extractor(x.to(device)).float().cpu())
    if not out:
        raise UserError("no images to extract features from; check the image folder or the generator's outputs")
    return torch.cat(out)
