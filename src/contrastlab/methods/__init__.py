"""Methods: one file each (or one file per family), registered by name below.

A method is an nn.Module whose ``forward(batch)`` returns ``{"loss", ...}``, with a ``Config``
dataclass (its ``method:`` section of a recipe); the whole contract, with its optional parts
(an ``encoder`` to evaluate, its own optimisers, translators, a monitor), is written down in
:mod:`contrastlab.methods.contract`. Adding a method is a new file plus one line in ``REGISTRY``.
"""
from __future__ import annotations

import importlib

from ..errors import ConfigError

REGISTRY = {
    "simclr": "contrastlab.methods.simclr:SimCLR",
    "moco": "contrastlab.methods.moco:MoCo",
    "looc": "contrastlab.methods.looc:LooC",
    "looc_pp": "contrastlab.methods.looc:LooC",
    "cut": "contrastlab.methods.cut:CUT",
    "dclgan": "contrastlab.methods.dclgan:DCLGAN",
    "simdcl": "contrastlab.methods.dclgan:SimDCL",
    "invp": "contrastlab.methods.invp:InvP",
    "pixpro": "contrastlab.methods.pixpro:PixPro",
    "pixcontrast": "contrastlab.methods.pixpro:PixPro",
    "detco": "contrastlab.methods.detco:DetCo",
    "rocl": "contrastlab.methods.rocl:RoCL",
    "stylegan2": "contrastlab.methods.stylegan2:StyleGAN2",
    "labels4free": "contrastlab.methods.labels4free:Labels4Free",
    "adv_rotation": "contrastlab.methods.adv_pretext:AdvPretext",
    "adv_jigsaw": "contrastlab.methods.adv_pretext:AdvPretext",
    "adv_ensemble": "contrastlab.methods.adv_pretext:AdvPretext",
    "adv_finetune": "contrastlab.methods.adv_pretext:AdvFinetune",
    "protoseg": "contrastlab.methods.protoseg:ProtoSeg",
    "cwt_stage1": "contrastlab.methods.cwt:CWTStage1",
    "cwt": "contrastlab.methods.cwt:CWT",
    "rpnet": "contrastlab.methods.rpnet:RPNet",
}


def method_class(name):
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(sorted(REGISTRY))}")
    mod, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(mod), cls)


def method_config_class(name):
    return method_class(name).Config


def build_method(cfg):
    return method_class(cfg.method["name"])(cfg)
