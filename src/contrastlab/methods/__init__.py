"""Methods: one file each; a method is an nn.Module whose forward(batch) returns {"loss", ...}.

A method class has a ``Config`` dataclass (its section ``method:`` of a recipe), an ``encoder``
(the network whose features are evaluated) and a ``forward(batch) -> dict`` training step.
``batch`` holds ``images`` (uint8 (B, 3, H, W) on the device) or ``views`` (per-image path),
``index`` and ``generator`` (the step's seeded random generator on the device).
"""
from __future__ import annotations

import importlib

from ..errors import ConfigError

REGISTRY = {
    "simclr": "contrastlab.methods.simclr:SimCLR",
    "moco": "contrastlab.methods.moco:MoCo",
    "cut": "contrastlab.methods.cut:CUT",
    "dclgan": "contrastlab.methods.dclgan:DCLGAN",
    "simdcl": "contrastlab.methods.dclgan:SimDCL",
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
