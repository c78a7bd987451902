"""Backbone export for transfer (detection, segmentation): a run's encoder written as a plain state
dict in torchvision's ``resnet*`` key format (``contrastlab export RUN OUT.pth``), so that
``torchvision.models.resnet50(weights=None).load_state_dict(sd)`` loads it with ``strict=True``, and
detection libraries take it as a backbone without renaming.

A self-supervised run has no classifier, so by default (``fc="zeros"``) the file holds torchvision's
``fc.weight`` (1000, feature dim) and ``fc.bias`` (1000,) as zeros: strict loading works, and the
head's output (all zeros) cannot be mistaken for a trained classifier. ``fc="none"`` leaves them out
(load with ``strict=False``, or into a model whose ``fc`` is ``nn.Identity()``).

The exported encoder is the run's online encoder (``method.encoder``: MoCo's query encoder,
PixPro's online encoder), without its input standardisation (``model.norm``), which the file cannot
hold: the result says which one the run used, so the consumer normalises inputs the same way."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError


FC_CHOICES = ("zeros", "none")
TORCHVISION_CLASSES = 1000  # the size of torchvision's ImageNet head, which strict loading expects


def export_torchvision(checkpoint: str, out: str, fc: str = "zeros") -> dict:
    """Write the run's backbone to ``out`` (``torch.save`` of a dict of tensors, atomically);
    returns what was written: path, backbone, number of keys, the run's input norm and stem, and
    what ``fc`` holds (``zeros``: an untrained all-zero head for strict loading; ``none``: absent)."""
    if fc not in FC_CHOICES:
        raise UserError(f"fc={fc!r}: expected one of {'|'.join(FC_CHOICES)}")
    from ..files import atomic_save
    from ..nn.backbones import torchvision_state_dict
    from .run import load_run, require_encoder

    out_path = Path(out)
    if out_path.is_dir():
        raise UserError(f"{out} is a folder; give the file to write, e.g. {out_path / 'backbone.pth'}")
    if out_path.suffix == ".ckpt":
        raise UserError(f"{out}: name the export .pth (a .ckpt is a contrastlab checkpoint)")
    cfg, method, ckpt = load_run(checkpoint, [])
    require_encoder(cfg, method, checkpoint)
    try:
        sd = torchvision_state_dict(method.encoder)
    except UserError as e:
        raise UserError(f"{checkpoint}: {e}") from None
    if fc == "zeros":
        dim = int(method.encoder.feature_dim)
        sd["fc.weight"] = torch.zeros(TORCHVISION_CLASSES, dim)
        sd["fc.bias"] = torch.zeros(TORCHVISION_CLASSES)
    atomic_save(out_path, lambda tmp: torch.save(sd, tmp))
    result = {"export": str(out_path), "checkpoint": str(checkpoint), "step": int(ckpt["step"]),
              "backbone": cfg.model.backbone, "keys": len(sd), "input_norm": cfg.model.norm,
              "cifar_stem": bool(cfg.model.cifar_stem), "deep_stem": bool(cfg.model.deep_stem),
              "output_stride": cfg.model.output_stride or 32,
              "fc": "zeros: untrained, replace it" if fc == "zeros" else "none"}  # fmt: skip
    if cfg.model.cifar_stem:
        result["note"] = ("CIFAR stem: conv1 is 3x3 stride 1 and there is no max-pool; set model.conv1 = "
                          "Conv2d(3, 64, 3, 1, 1, bias=False) and model.maxpool = Identity() before loading")  # fmt: skip
    if cfg.model.deep_stem:
        result["note"] = ("deep stem: conv1 / conv2 / conv3 (3x3; 64, 64, 128 channels) with bn1 / bn2 / bn3 and layer1 reading "
                          "128 channels, the key names of PSPNet's deep-base ResNet (semseg / RePRI / CWT resnet.py); a stock "
                          "torchvision ResNet does not take them, model.deep_stem=true with model.weights=FILE does")  # fmt: skip
    return result
