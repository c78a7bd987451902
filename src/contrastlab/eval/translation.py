"""Evaluation and inference of translation runs: ``contrastlab eval translation`` and ``contrastlab translate``."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import ConfigError, UserError

DIRECTIONS = {"AtoB": ("A", "B"), "BtoA": ("B", "A")}


def _translators(method) -> dict:
    if not hasattr(method, "translators"):
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
        from ..methods.translation import translate

        fake = translate(net.to(device), x_src, device=device)
        out[name] = {"digit_acc_real_target": _accuracy(judge, img(test_set, dst).float() / 255, lab(test_set, dst), device),
                     "digit_acc_translated": _accuracy(judge, fake, y_src, device),
                     "digit_acc_untranslated": _accuracy(judge, x_src, y_src, device)}  # fmt: skip
    return out


def evaluate_translation(method, test_set, extractor: str = "auto", weights: str | None = None, direction: str = "both",
                         device="cpu", batch_size: int = 64, max_images: int = 0, train_set=None) -> dict:  # fmt: skip
    """FID and KID of translated test images against the real test images of the output domain,
    and of the untranslated inputs against the same images (the baseline a translation must beat);
    with labelled domains (``train_set`` given and labelled), the content scores too."""
    from ..eval.translation_metrics import build_extractor, extract, translation_scores
    from ..methods.translation import translate

    nets = _directions(method, direction)
    if test_set is None:
        raise UserError("the run's data has no test split (testA / testB) to evaluate on")
    feat_net, feat_name = build_extractor(extractor, weights or None)
    feat_net = feat_net.to(device)
    result = {"extractor": feat_name}
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
                     device="cpu", progress: bool = True) -> dict:  # fmt: skip
    """Translate every image below ``input_dir`` into a PNG of the same relative path in ``out_dir``.
    ``size``: resize to size x size first (0: keep the size, rounded down to what the generator
    accepts: a multiple of 2**n_down)."""
    from PIL import Image

    import numpy as np

    from ..data.real import _scan_images, open_rgb
    from ..methods.translation import to_signed, to_unit

    if direction == "both":
        raise ConfigError("translate takes one direction: AtoB or BtoA")
    net = _directions(method, direction)[direction].to(device).eval()
    src = Path(input_dir)
    if not src.is_dir():
        raise UserError(f"input folder {src} does not exist or is not a folder")
    files = _scan_images(str(src))
    if not files:
        raise UserError(f"no image files in {src} (looked for .jpg, .png, ... recursively)")
    mult = 2 ** getattr(net, "n_down", 2)
    out = Path(out_dir)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(files), desc="translate", unit="img")
    for path in files:
        im = open_rgb(path)
        w, h = (size, size) if size else (max(mult, im.width // mult * mult), max(mult, im.height // mult * mult))
        if (w, h) != im.size:
            im = im.resize((w, h), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)[None]
        with torch.no_grad():
            y = to_unit(net(to_signed(x.to(device)))).cpu()[0]
        target = out / Path(os.path.relpath(path, src)).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((y.permute(1, 2, 0) * 255).round().byte().numpy()).save(target)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return {"translated": len(files), "direction": direction, "out_dir": str(out)}
