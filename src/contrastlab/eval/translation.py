"""Translation: FID / KID and digit accuracy of a translation run's outputs (CUT, DCLGAN, SimDCL).

``contrastlab eval translation`` (:func:`run`), the monitor of those methods during training
(sample grids and scores), and ``contrastlab translate`` (a folder of images through a trained
generator)."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..errors import ConfigError, UserError
from ..fields import option
from ..files import atomic_save
from ..methods.contract import translates
from ..nn.generators import to_signed, to_unit, translate
from .image_metrics import (
    RandomConvFeatures,
    build_extractor,
    comparable_with_papers,
    extract,
    not_comparable_warning,
    translation_scores,
)

DIRECTIONS = {"AtoB": ("A", "B"), "BtoA": ("B", "A")}


@dataclass
class TranslationOptions:
    """The options of ``contrastlab eval translation RUN [key=value ...]`` (each with its range)."""

    # image_metrics.EXTRACTORS: fid_inception (the FID papers' TF-Inception, comparable with them), inception
    # (torchvision's), random; auto: the first of these whose weights file exists (random needs none)
    extractor: Literal["auto", "fid_inception", "inception", "random"] = "auto"
    weights: str = ""  # an Inception extractor's weights file ("": look in $TORCH_HOME/hub/checkpoints)
    direction: Literal["AtoB", "BtoA", "both"] = "both"
    device: str = "auto"
    batch_size: int = option(64, ge=1)
    max_images: int = option(0, ge=0, doc="test images per domain, 0: all")


@dataclass
class TranslateOptions:
    """The options of ``contrastlab translate RUN INPUT_DIR OUT_DIR [key=value ...]``."""

    direction: Literal["AtoB", "BtoA"] = "AtoB"
    size: int = option(0, ge=0, doc="side the images are resized to, 0: keep their size")
    device: str = "auto"
    overwrite: bool = False  # translate into an output folder that already holds files


def _translators(method) -> dict:
    if not translates(method):
        raise UserError(f"the checkpoint holds a {type(method).__name__} run, not an image translation method "
                        "(cut, dclgan, simdcl)")  # fmt: skip
    return method.translators()


def _directions(method, direction: str) -> dict:
    nets = _translators(method)
    if direction == "both":
        return nets
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction must be AtoB, BtoA or both, got {direction!r}")
    if direction not in nets:
        raise UserError(f"this {type(method).__name__} run learns {', '.join(nets)} only, not {direction}")
    return {direction: nets[direction]}


def domain_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int = 8, seed: int = 0, device="cpu"):
    """A small CNN trained (supervised) to recognise the labels of one domain's images: the
    judge of whether a translation into that domain kept its content (the digit)."""
    from ..nn import Encoder, SmallCNN

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    enc = Encoder(SmallCNN(16, 1), norm="per_image")
    net = torch.nn.Sequential(enc, torch.nn.Linear(enc.out_dim, int(labels.max()) + 1)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    x = images.float() / 255 if images.dtype == torch.uint8 else images
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            loss = torch.nn.functional.cross_entropy(net(x[idx].to(device)), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def _accuracy(net, images: torch.Tensor, labels: torch.Tensor, device) -> float:
    pred = torch.cat([net(x.to(device)).argmax(1).cpu() for x in images.split(256)])
    return float((pred == labels).float().mean())


def content_scores(train_set, test_set, nets: dict, device="cpu", max_images: int = 0) -> dict:
    """For labelled domains (the embedded digit domains): the accuracy of a classifier trained on
    the real training images of the output domain, on the real test images of that domain (the
    ceiling), on the translations of the test inputs (content kept and recognisable in the new
    style) and on the untranslated inputs (the baseline)."""
    out = {}
    for name, net in nets.items():
        src, dst = DIRECTIONS[name]
        lab = lambda ds, d: ds.labels_a if d == "A" else ds.labels_b  # noqa: E731
        img = lambda ds, d: ds.images_a if d == "A" else ds.images_b  # noqa: E731
        judge = domain_classifier(img(train_set, dst), lab(train_set, dst), device=device)
        n = len(img(test_set, src)) if not max_images else min(max_images, len(img(test_set, src)))
        x_src, y_src = img(test_set, src)[:n].float() / 255, lab(test_set, src)[:n]
        fake = translate(net.to(device), x_src, device=device)
        out[name] = {"digit_acc_real_target": _accuracy(judge, img(test_set, dst).float() / 255, lab(test_set, dst), device),
                     "digit_acc_translated": _accuracy(judge, fake, y_src, device),
                     "digit_acc_untranslated": _accuracy(judge, x_src, y_src, device)}  # fmt: skip
    return out


def evaluate_translation(method, test_set, extractor: str = "auto", weights: str | None = None, direction: str = "both",
                         device="cpu", batch_size: int = 64, max_images: int = 0, train_set=None) -> dict:  # fmt: skip
    """FID and KID of translated test images against the real test images of the output domain,
    and of the untranslated inputs against the same images (the baseline a translation must beat);
    with labelled domains (``train_set`` given and labelled), the content scores too.

    The result names the extractor (``extractor``) and says whether its numbers are
    ``comparable_with_papers`` (only on the FID Inception); on any other extractor a warning line
    saying so goes to stderr."""

    nets = _directions(method, direction)
    if test_set is None:
        raise UserError("the run's data has no test split (testA / testB) to evaluate on")
    feat_net, feat_name = build_extractor(extractor, weights or None)
    feat_net = feat_net.to(device)
    result = {"extractor": feat_name, "comparable_with_papers": comparable_with_papers(feat_name)}
    warning = not_comparable_warning(feat_name)
    if warning:
        print(f"contrastlab: warning: {warning}", file=sys.stderr)
    for name, net in nets.items():
        src, dst = DIRECTIONS[name]
        x_src, x_dst = test_set.domain_images(src, max_images), test_set.domain_images(dst, max_images)
        fake = translate(net.to(device), x_src, batch_size=batch_size, device=device)
        f_dst = extract(feat_net, x_dst, batch_size=batch_size)
        # KID over 100 random subsets of half the set (at most 1000): its mean is unbiased and its std is a spread
        sub = dict(n_subsets=100, subset_size=max(2, min(1000, min(len(fake), len(x_dst)) // 2)))
        ours = translation_scores(f_dst, extract(feat_net, fake, batch_size=batch_size), **sub)
        base = translation_scores(f_dst, extract(feat_net, x_src, batch_size=batch_size), **sub)
        result[name] = {"n_inputs": len(x_src), "n_real": len(x_dst), **ours,
                        **{f"{k}_untranslated": v for k, v in base.items()}}  # fmt: skip
    if train_set is not None and hasattr(train_set, "labels_a"):
        for name, scores in content_scores(train_set, test_set, nets, device, max_images).items():
            result[name].update(scores)
    return result


def translate_folder(method, input_dir: str, out_dir: str, direction: str = "AtoB", size: int = 0,
                     device="cpu", progress: bool = True, overwrite: bool = False) -> dict:  # fmt: skip
    """Translate every image below ``input_dir`` into a PNG of the same relative path in ``out_dir``.

    ``size``: resize to size x size first (0: keep the size, rounded down to what the generator
    accepts: a multiple of 2**n_down).

    Output names: an input's relative path with its suffix replaced by ``.png`` (``sub/b.jpg`` ->
    ``sub/b.png``). When several inputs in one folder would get the same output name (``a.jpg``
    and ``a.png``; names compared ignoring case, so ``A.png`` and ``a.jpg`` too), each of them keeps
    its whole name and gets ``.png`` appended (``a.jpg.png``, ``a.png.png``); this repeats until no
    two outputs (and no output and output folder) share a name, so no output ever replaces another
    (contrived names that still clash, such as ``a.jpg``, ``a.png``, ``a.jpg.png`` and a folder
    ``a.jpg.png`` side by side, are refused with a UserError naming two of them).

    Refused with a one-line UserError: ``out_dir`` equal to ``input_dir``, inside it or containing
    it (symbolic links resolved), and an ``out_dir`` that already holds anything unless
    ``overwrite=True`` (then existing files of the same names are replaced, others are left).
    Each PNG is written to a temporary file in its folder (``.NAME.tmp-PID-XXXXXX``) and renamed
    over its name, so a killed translate never leaves a half-written image.
    """
    from PIL import Image

    import numpy as np

    from ..data.files import open_rgb, scan_images

    if direction == "both":
        raise ConfigError("translate takes one direction: AtoB or BtoA")
    net = _directions(method, direction)[direction].to(device).eval()
    src = Path(input_dir)
    if not src.is_dir():
        raise UserError(f"input folder {src} does not exist or is not a folder")
    out = Path(out_dir)
    _check_out_dir(src, out, overwrite)
    files = scan_images(str(src))
    if not files:
        raise UserError(f"no image files in {src} (looked for .jpg, .png, ... recursively)")
    targets = _output_names([Path(os.path.relpath(p, src)) for p in files])
    mult = 2 ** getattr(net, "n_down", 2)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(files), desc="translate", unit="img")
    for path, rel in zip(files, targets):
        im = open_rgb(path)
        w, h = (size, size) if size else (max(mult, im.width // mult * mult), max(mult, im.height // mult * mult))
        if (w, h) != im.size:
            im = im.resize((w, h), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)[None]
        with torch.no_grad():
            y = to_unit(net(to_signed(x.to(device)))).cpu()[0]
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray((y.permute(1, 2, 0) * 255).round().byte().numpy())
        atomic_save(target, lambda tmp: image.save(tmp, format="PNG"))  # never a half-written PNG
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return {"translated": len(files), "direction": direction, "out_dir": str(out)}


Options = TranslationOptions


def run(checkpoint: str, opts: TranslationOptions, data_overrides=()) -> dict:
    """``contrastlab eval translation RUN``: FID / KID of the translated test images against the
    real test images of the output domain (and of the untranslated inputs: the baseline), with
    the extractor of ``opts``; on labelled domains, the digit accuracy of the translations."""
    from ..data import build_datasets
    from .run import device, load_run

    cfg, method, ckpt = load_run(checkpoint, list(data_overrides))
    train, test = build_datasets(cfg.data)
    r = evaluate_translation(method, test, extractor=opts.extractor, weights=opts.weights, direction=opts.direction,
                             device=device(opts.device), batch_size=opts.batch_size, max_images=opts.max_images,
                             train_set=train)  # fmt: skip
    return {"protocol": "translation", "checkpoint": str(checkpoint), "step": int(ckpt["step"]),
            "method": cfg.method["name"], "label": "translation", "features": r["extractor"], **r}  # fmt: skip


def monitor(method, train_set, test_set, cfg, device, run_dir, step) -> dict:
    """The trainer's periodic check of a translation run: a sample grid saved under
    ``RUN/samples/`` and FID / KID of the translations (``method.monitor_images`` test images,
    ``method.grid_images`` per grid row; see :func:`_monitor`)."""
    nets = method.translators()
    pairs = {"ab": nets.get("AtoB"), "ba": nets.get("BtoA")}
    return _monitor(pairs, test_set, run_dir, step, cfg.method["monitor_images"], cfg.method["grid_images"], device)


def _monitor(pairs: dict, test_set, run_dir: Path, step: int, n_images: int, n_grid: int, device) -> dict:
    """Save a sample grid and score the translations of test images with FID / KID.

    ``pairs``: {"ab": G translating A -> B, "ba": optional G translating B -> A}. The grid has one
    block per direction: inputs, translations, and the identity mapping (the generator applied
    to an image of its output domain). The scores compare the translations of the first
    ``n_images`` test inputs with the real test images of the output domain, on the features
    of the fallback extractor (``RandomConvFeatures``; fast and always available, comparable
    only with itself), and are returned as ``fid_ab``, ``kid_ab`` (and ``_ba``); ``contrastlab
    eval translation`` computes the final numbers with the extractor of the user's choice."""
    from torchvision.utils import save_image

    if test_set is None:
        return {}
    real = {"A": test_set.domain_images("A", n_images), "B": test_set.domain_images("B", n_images)}
    extractor = RandomConvFeatures(seed=0).to(device)
    rows, out = [], {}
    for direction, net in pairs.items():
        if net is None:
            continue
        src, dst = (("A", "B") if direction == "ab" else ("B", "A"))
        fake = translate(net, real[src], device=device)
        idt = translate(net, real[dst][:n_grid], device=device)
        rows += [real[src][:n_grid], fake[:n_grid], real[dst][:n_grid], idt]
        f_real = extract(extractor, real[dst])
        f_fake = extract(extractor, fake)
        s = translation_scores(f_real, f_fake, n_subsets=20, subset_size=min(200, len(fake)))
        out[f"fid_{direction}"], out[f"kid_{direction}"] = s["fid"], s["kid_mean"]
    grid = torch.cat(rows)
    samples = Path(run_dir) / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    for name in (f"step_{step:07d}.png", "latest.png"):
        atomic_save(samples / name, lambda tmp: save_image(grid, tmp, nrow=n_grid, padding=1, format="png"))
    return out


def _check_out_dir(src: Path, out: Path, overwrite: bool) -> None:
    """One-line UserErrors for an output folder that would overwrite or mix with the input
    folder, that is not a folder, or (unless ``overwrite``) that already holds anything."""
    src_r, out_r = src.resolve(), out.resolve()
    if out_r == src_r or out_r.is_relative_to(src_r) or src_r.is_relative_to(out_r):
        where = ("is the input folder" if out_r == src_r else
                 "is inside the input folder" if out_r.is_relative_to(src_r) else "contains the input folder")
        raise UserError(f"output folder {out} {where} {src}; choose an output folder outside the input folder")
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise UserError(f"output folder {out} exists and is not a folder; choose another output folder")
        if not overwrite:
            with os.scandir(out) as it:
                first = next(iter(sorted(e.name for e in it)), None)
            if first is not None:
                raise UserError(f"output folder {out} is not empty (it holds {first}, ...); choose a new or "
                                "empty folder, or pass overwrite=true to replace the images in it")


def _output_names(rel_paths: list[Path]) -> list[Path]:
    """Output paths (relative) for input paths (relative): see :func:`translate_folder`."""
    full = [0] * len(rel_paths)  # 0: stem + ".png"; k >= 1: whole name + ".png" * k

    def name(i: int) -> str:
        p = rel_paths[i]
        return p.stem + ".png" if full[i] == 0 else p.name + ".png" * full[i]

    # output folders: every ancestor of an input (inputs keep their folders)
    folders = {(str(q.parent), q.name.casefold()) for p in rel_paths for q in p.parents if str(q) != "."}
    while True:
        groups: dict[tuple[str, str], list[int]] = {}
        for i, p in enumerate(rel_paths):
            groups.setdefault((str(p.parent), name(i).casefold()), []).append(i)
        bumped = False
        for key, members in groups.items():
            if key in folders:  # a file output would take a folder's name
                for i in members:
                    full[i] += 1
                bumped = True
            elif len(members) > 1:
                shortened = [i for i in members if full[i] == 0]
                for i in shortened:
                    full[i] = 1
                bumped = bumped or bool(shortened)
                # members that already keep their whole names differ in case (distinct files
                # wherever such inputs can coexist) or are caught below
        if not bumped:
            break
    outs = [rel_paths[i].parent / name(i) for i in range(len(rel_paths))]
    seen: dict[Path, int] = {}
    for i, o in enumerate(outs):
        if o in seen:  # only contrived names get here (a.jpg, a.png, a.jpg.png and a folder a.jpg.png)
            raise UserError(f"inputs {rel_paths[seen[o]]} and {rel_paths[i]} would both be written to {o}; "
                            "rename one of them")
        seen[o] = i
    return outs
