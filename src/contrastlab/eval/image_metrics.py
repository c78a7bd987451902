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

- :class:`FIDInceptionFeatures`: the FID Inception, the TF-Inception (2015-12-05 graph) that the FID
  papers, pytorch-fid, torch-fidelity and torchmetrics use, 2048-d pool features, through torch-fidelity
  from a local weights file only (nothing is downloaded). The only extractor whose numbers are comparable
  with published FIDs (e.g. the 43.2 of DCLGAN on Horse->Zebra).
- :class:`InceptionFeatures`: torchvision's ImageNet Inception-v3 (2048-d pool features), loaded from a
  local weights file only. These weights are close to, but not identical with, the TF-Inception weights
  (and torchvision's blocks differ from the TF graph's), so its numbers are *not* comparable with
  published FIDs; compare methods with each other instead.
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
EXTRACTORS = ("auto", "fid_inception", "inception", "random")
# The FID Inception weights: torch-fidelity's file (what torch-fidelity and torchmetrics download into the
# torch hub cache), and pytorch-fid's file of the same TF graph with the same keys (accepted as well).
FID_WEIGHTS_FILES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
FID_WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + FID_WEIGHTS_FILES[0]
FID_INCEPTION = "fid_inception_v3"  # the extractor's name in reports; the only one comparable with papers


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


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_inception_weights() -> Path | None:
    """The torchvision Inception-v3 ImageNet weights file (``inception_v3_google-*.pth``) in torch's hub
    cache, ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``), or None."""
    folder = _hub_checkpoints()
    found = sorted(folder.glob(INCEPTION_GLOB)) if folder.is_dir() else []
    return found[0] if found else None


def find_fid_inception_weights() -> Path | None:
    """The FID Inception weights file in torch's hub cache (``$TORCH_HOME/hub/checkpoints``): torch-fidelity's
    ``weights-inception-2015-12-05-6726825d.pth``, else pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``;
    None when neither is there."""
    for name in FID_WEIGHTS_FILES:
        if (_hub_checkpoints() / name).is_file():
            return _hub_checkpoints() / name
    return None


def _read_state(path: Path, what: str, how_to_get: str) -> dict:
    """A weights file read as tensors only (``weights_only=True``: no code in a pickle runs), on the CPU."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line message
        raise UserError(f"cannot read {what} weights {path} ({type(e).__name__}); {how_to_get}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a state dict (a mapping of names to tensors); {how_to_get}")
    return state


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
        state = _read_state(path, "Inception", _HOW_TO_GET)
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


_HOW_TO_GET_FID = (
    f"get {FID_WEIGHTS_FILES[0]} (the FID Inception, TF graph 2015-12-05) from {FID_WEIGHTS_URL} and put it in "
    "$TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints) or pass weights=PATH; nothing is "
    "downloaded here (docs/translation.md, Metrics)"
)
_FIDELITY_MISSING = (
    "the FID Inception extractor needs the torch-fidelity package: pip install 'contrastlab[fid]' "
    "(torch-fidelity>=0.4.0), or use extractor=inception / random (not comparable with published FIDs)"
)


def fid_inception_layout() -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in the FID Inception weights file: the TF graph's Inception-v3 in
    torchvision's module names (the layout pytorch-fid defined and torch-fidelity kept), without the
    auxiliary classifier, with the 1008-class ``fc``. BatchNorm's ``num_batches_tracked`` counters are not
    listed: the official file has none, and they do not change eval-mode outputs. Built on the meta device
    (shapes only, no memory, no weights)."""
    import torchvision

    with torch.device("meta"):
        net = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    return {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith(".num_batches_tracked")}


def check_fid_inception_state(state: dict, path) -> None:
    """One-line UserError unless ``state`` has exactly the FID Inception's tensors
    (:func:`fid_inception_layout`; ``num_batches_tracked`` counters of its BatchNorms may be present or
    absent): names the first missing key, unexpected key or wrong shape."""
    layout = fid_inception_layout()
    optional = {k.rsplit(".", 1)[0] + ".num_batches_tracked" for k in layout if k.endswith(".running_mean")}
    missing = [k for k in layout if k not in state]
    unexpected = [k for k in state if k not in layout and k not in optional]
    wrong = [k for k in layout if k in state and tuple(state[k].shape) != layout[k]]
    more = lambda items: f" (and {len(items) - 1} more)" if len(items) > 1 else ""  # noqa: E731
    if missing:
        problem = f"missing key {missing[0]}{more(missing)}"
    elif unexpected:
        problem = f"unexpected key {unexpected[0]}{more(unexpected)}"
    elif wrong:
        k = wrong[0]
        problem = f"{k} has shape {tuple(state[k].shape)}, expected {layout[k]}{more(wrong)}"
    else:
        return
    raise UserError(f"{path} is not the FID Inception weights file: {problem}; {_HOW_TO_GET_FID}")


def _fidelity_inception():
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise UserError(_FIDELITY_MISSING) from None
    return FeatureExtractorInceptionV3


class FIDInceptionFeatures(_FrozenExtractor):
    """2048-d pool features of the FID Inception: the TF-Inception graph (2015-12-05) of the FID papers, as
    ported by pytorch-fid and kept by torch-fidelity (``FeatureExtractorInceptionV3``; torchmetrics' FID uses
    the same), loaded from a local weights file (``weights-inception-2015-12-05-6726825d.pth`` or pytorch-fid's
    ``pt_inception-2015-12-05-6726825d.pth``; never downloaded here).

    Why torch-fidelity: it installs beside torch without touching it (pure Python; numpy, pillow, torch,
    torchvision, tqdm), takes a local weights path, and matches the TF reference (its TF1-style bilinear
    resize, the TF blocks: average pools without the padding, a max pool in the last block, the 1008-class
    fc), which is what makes the numbers comparable with published FIDs.

    Preprocessing: images in [0, 1] are rounded to 8 bits, ``round(255 x)`` (as saving the translations as
    PNGs, the papers' protocol, does), then torch-fidelity resizes them to 299 x 299 with TF1's bilinear
    resize (source coordinate ``i * in / out``, no half-pixel offset) and maps them to ``(x - 128) / 128``.

    The file is read once with ``weights_only=True`` and its keys and shapes are checked
    (:func:`check_fid_inception_state`: a missing, unexpected or misshapen tensor is a one-line UserError
    naming it) before torch-fidelity loads it (strictly) from the same path.
    """

    out_dim = 2048

    def __init__(self, weights_path):
        super().__init__()
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise UserError(f"FID Inception weights file {path} not found; {_HOW_TO_GET_FID}")
        check_fid_inception_state(_read_state(path, "FID Inception", _HOW_TO_GET_FID), path)
        extractor_class = _fidelity_inception()
        try:  # the file passed the tensors-only load above, so torch-fidelity's full unpickling runs no code
            net = extractor_class("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
        except Exception as e:  # noqa: BLE001 - one line whatever torch-fidelity raises
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"torch-fidelity could not load {path} ({first}); {_HOW_TO_GET_FID}") from None
        self.net = net.requires_grad_(False)
        self.path = path
        self.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(0, 1).mul(255).round().to(torch.uint8)  # torch-fidelity takes 8-bit images
        (features,) = self.net(x)
        return features


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


def _is_fid_inception_file(path: Path) -> bool:
    """Whether a weights file holds the FID Inception (its 1008-class ``fc``) rather than torchvision's
    Inception-v3 (1000 classes): how ``auto`` with an explicit ``weights_path`` picks the extractor."""
    state = _read_state(path, "Inception", f"{_HOW_TO_GET}; or for the FID Inception, {_HOW_TO_GET_FID}")
    fc = state.get("fc.weight")
    return fc is not None and tuple(fc.shape) == fid_inception_layout()["fc.weight"]


def build_extractor(name: str = "auto", weights_path=None) -> tuple[nn.Module, str]:
    """A feature extractor and its short name for reports.

    'fid_inception': :class:`FIDInceptionFeatures` (short name ``fid_inception_v3``, the only one comparable
    with published FIDs) from ``weights_path`` or :func:`find_fid_inception_weights`; 'inception':
    torchvision's :class:`InceptionFeatures` from ``weights_path`` or :func:`find_inception_weights` (either:
    UserError if no file); 'random': :class:`RandomConvFeatures` (seed 0, width 64).
    'auto': with ``weights_path``, the FID Inception if the file holds it (a 1008-class fc), else
    torchvision's; without, the FID Inception if its file is in the hub cache, else torchvision's Inception if
    its file is, else random. Whether the numbers are comparable with papers: :func:`comparable_with_papers`.
    """
    name = str(name).lower()
    if name not in EXTRACTORS:
        raise ConfigError(f"unknown feature extractor {name!r}; expected one of {', '.join(EXTRACTORS)}")
    if name == "random" and weights_path is not None:
        raise ConfigError("weights_path is only used by the Inception extractors; drop it or use "
                          "extractor=fid_inception / inception")  # fmt: skip
    if name == "auto" and weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise UserError(f"weights file {path} not found; {_HOW_TO_GET_FID}")
        name = "fid_inception" if _is_fid_inception_file(path) else "inception"
    elif name == "auto":
        name = ("fid_inception" if find_fid_inception_weights() is not None else
                "inception" if find_inception_weights() is not None else "random")  # fmt: skip
    if name == "fid_inception":
        path = weights_path if weights_path is not None else find_fid_inception_weights()
        if path is None:
            files = " or ".join(FID_WEIGHTS_FILES)
            raise UserError(f"no FID Inception weights ({files}) in {_hub_checkpoints()} and no weights "
                            f"given; {_HOW_TO_GET_FID}")  # fmt: skip
        return FIDInceptionFeatures(path), FID_INCEPTION
    if name == "inception":
        path = weights_path if weights_path is not None else find_inception_weights()
        if path is None:
            raise UserError(f"no Inception weights ({INCEPTION_GLOB}) in {_hub_checkpoints()} and no weights_path "
                            f"given; {_HOW_TO_GET}")  # fmt: skip
        return InceptionFeatures(path), "inception_v3_torchvision"
    extractor = RandomConvFeatures()
    return extractor, f"random_conv_seed{extractor.seed}_w{extractor.width}"


def comparable_with_papers(extractor_name: str) -> bool:
    """Whether FID / KID on this extractor (a short name from :func:`build_extractor`) can be compared with
    published numbers: only on the FID Inception."""
    return extractor_name == FID_INCEPTION


def not_comparable_warning(extractor_name: str) -> str | None:
    """The one-line warning for numbers on an extractor other than the FID Inception (None for it)."""
    if comparable_with_papers(extractor_name):
        return None
    return (f"FID / KID on extractor {extractor_name} are not comparable with published FIDs (those use the FID "
            f"Inception: extractor=fid_inception, with {FID_WEIGHTS_FILES[0]} in {_hub_checkpoints()} or "
            "weights=PATH; see docs/translation.md, Metrics)")  # fmt: skip


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
