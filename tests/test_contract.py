"""The method contract (methods/contract.py) holds for every registered method, and the trainer's
monitor is chosen by it: the method's own, else its protocol's (kNN by default)."""
import pytest

from contrastlab.config import load_config
from contrastlab.eval import monitor_for, protocol
from contrastlab.methods import REGISTRY, build_method, method_class
import inspect
import typing

import torch

from contrastlab.methods.contract import (Classifies, Encodes, Method, Monitors, OptimizesItself, Translates, classifies,
                                          encodes, monitors, optimizes_itself, segments_episodes, translates)

TINY = {
    "simclr": ("simclr", ["model.width=4", "model.depth=1"]),
    "moco": ("moco", ["model.width=4", "model.depth=1", "method.queue_size=64"]),
    "looc": ("looc", ["model.width=4", "model.depth=1", "method.queue_size=64"]),
    "looc_pp": ("looc_pp", ["model.width=4", "model.depth=1", "method.queue_size=64"]),
    "cut": ("cut", ["method.ngf=4", "method.n_blocks=1", "method.ndf=4", "method.nce_layers=[0,4]"]),
    "dclgan": ("dclgan", ["method.ngf=4", "method.n_blocks=1", "method.ndf=4", "method.nce_layers=[0,4]"]),
    "simdcl": ("simdcl", ["method.ngf=4", "method.n_blocks=1", "method.ndf=4", "method.nce_layers=[0,4]"]),
    "invp": ("invp", ["model.width=4", "model.depth=1"]),
    "pixpro": ("pixpro", ["model.width=4", "model.depth=1"]),
    "pixcontrast": ("pixcontrast", ["model.width=4", "model.depth=1"]),
    "detco": ("detco", ["model.width=4", "model.depth=1", "method.queue_size=64"]),
    "rocl": ("rocl", ["model.width=4", "model.depth=1"]),
    "stylegan2": ("stylegan2", ["method.style_dim=8", "method.n_mlp=1", "method.max_channels=4"]),
    "labels4free": ("labels4free", ["method.style_dim=8", "method.n_mlp=1", "method.max_channels=4",
                                    "method.truncation_samples=8"]),  # + a generator checkpoint (_generator_file)
    "adv_rotation": ("adv_rotation", ["model.width=4", "model.depth=1"]),
    "adv_jigsaw": ("adv_jigsaw", ["model.width=4", "model.depth=1"]),
    "adv_ensemble": ("adv_ensemble", ["model.width=4", "model.depth=1"]),
    "adv_finetune": ("adv_finetune", ["model.width=4", "model.depth=1"]),
    "protoseg": ("protoseg", ["model.width=4", "model.depth=1"]),
    "cwt_stage1": ("cwt_stage1", ["model.width=4", "method.bottleneck_dim=8"]),
    "cwt": ("cwt", ["model.width=4", "method.bottleneck_dim=8", "method.heads=1"]),
    "rpnet": ("rpnet", ["method.widths=[4,4,8,8,8]", "method.cre_channels=8"]),
}
FEWSHOT = ("protoseg", "cwt_stage1", "cwt", "rpnet")
NO_ENCODER = ("cwt_stage1", "cwt", "rpnet")  # segmentation networks, no pooled encoder for kNN / linear probes  # methods that segment few-shot episodes (and are monitored by eval fewshot)
OWN_MONITOR = {"adv_finetune"}  # its clean / PGD accuracy check
GENERATORS = ("stylegan2", "labels4free")  # own optimisers and monitor, no encoder, no translator


def _generator_file():
    """A public-format checkpoint of the tiny stylegan2 generator above (labels4free's generator_checkpoint)."""
    import tempfile
    from pathlib import Path

    from contrastlab.methods.stylegan2 import StyleGAN2Config, build_discriminator, build_generator
    from contrastlab.nn.stylegan2 import save_stylegan2

    path = Path(tempfile.mkdtemp(prefix="contract-")) / "g.pt"
    c = StyleGAN2Config(**load_config("stylegan2", TINY["stylegan2"][1]).method)
    g = build_generator(c)
    save_stylegan2(path, g, g, build_discriminator(c), g.mean_latent(8))
    return str(path)


def _build(name):
    recipe, overrides = TINY[name]
    if name == "labels4free":
        overrides = [*overrides, f"method.generator_checkpoint={_generator_file()}"]
    return build_method(load_config(recipe, overrides))


def test_every_registered_method_is_covered_here():
    assert set(TINY) == set(REGISTRY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_each_method_meets_the_contract(name):
    method = _build(name)
    assert isinstance(method, Method) and method_class(name).Config is type(method).Config
    is_gan = name in ("cut", "dclgan", "simdcl")
    generator = name in GENERATORS
    assert translates(method) == is_gan
    assert encodes(method) == (not is_gan and not generator and name not in NO_ENCODER)
    assert isinstance(method, OptimizesItself) == optimizes_itself(method) == (is_gan or generator)
    if is_gan:
        assert set(method.translators()) <= {"AtoB", "BtoA"} and "AtoB" in method.translators()
    assert segments_episodes(method) == (name in FEWSHOT)
    if generator:  # sample grids (and the public checkpoint) from their own monitor
        assert monitors(method)
        return
    assert monitors(method) == (name in OWN_MONITOR)  # the others use a protocol's
    assert classifies(method) == (name == "adv_finetune")  # the one classifier (attacked directly by eval robust)
    if name not in OWN_MONITOR:
        expected = protocol("translation" if is_gan else "fewshot" if name in FEWSHOT else "knn").monitor
        assert monitor_for(method) is expected


_MISSING = object()


def _static_hasattr(obj, name):
    return inspect.getattr_static(obj, name, _MISSING) is not _MISSING


@pytest.mark.parametrize("name", sorted(TINY))
def test_the_checks_hold_under_static_attribute_lookup(name, monkeypatch):
    """Python >= 3.12 checks runtime Protocols with inspect.getattr_static, which does not see an
    nn.Module's submodules: ``isinstance(method, Encodes)`` is then False for every method, and
    ``eval knn`` refused every run as "image translation" (seen on the GPU machine's Python 3.12).
    Here typing's attribute test is made static as in 3.12; the contract's checks must not change."""
    method = _build(name)
    before = (encodes(method), translates(method), monitors(method), optimizes_itself(method), segments_episodes(method))
    monkeypatch.setattr(typing, "hasattr", _static_hasattr, raising=False)  # 3.11's check calls hasattr
    if "encoder" in method._modules:  # a submodule (LooC's encoder is a property, which static lookup sees)
        assert not isinstance(method, Encodes)  # what 3.12 does (and why the checks are functions)
    assert (encodes(method), translates(method), monitors(method), optimizes_itself(method),
            segments_episodes(method)) == before


def test_a_method_with_its_own_monitor_gets_it():
    class WithMonitor:
        def monitor(self, train_set, test_set, run_dir, step, device):
            return {"mine": step}

    m = WithMonitor()
    assert isinstance(m, Monitors) and monitors(m)
    assert monitor_for(m)(m, None, None, None, "cpu", None, 7) == {"mine": 7}


def test_an_unknown_monitor_protocol_is_one_line():
    from contrastlab.errors import ConfigError

    class Odd:
        monitor_protocol = "nope"

    with pytest.raises(ConfigError, match="unknown evaluation protocol 'nope'"):
        monitor_for(Odd())


@pytest.mark.parametrize("recipe,overrides,loss,extra", [
    ("simclr", [], "nt_xent", {}),
    ("simclr", ["method.tau_plus=0.1"], "debiased_nt_xent", {"tau_plus": 0.1, "beta": 0.0}),
    ("simclr", ["method.tau_plus=0.1", "method.beta=1.0"], "debiased_nt_xent", {"tau_plus": 0.1, "beta": 1.0}),
    ("moco", ["method.queue_size=64"], "info_nce", {}),
    ("moco", ["method.queue_size=64", "method.beta=0.5"], "debiased_info_nce", {"tau_plus": 0.0, "beta": 0.5}),
])  # fmt: skip
def test_the_loss_axis_is_chosen_once_from_the_config(recipe, overrides, loss, extra):
    """Issue 13 point 4: the loss is one callable built at construction from the typed config."""
    import contrastlab.losses as L

    method = build_method(load_config(recipe, ["model.width=4", "method.temperature=0.3", *overrides]))
    assert method.cfg.temperature == 0.3 and type(method.cfg) is type(method).Config
    assert method.criterion.func is getattr(L, loss)
    assert method.criterion.keywords == {"temperature": 0.3, **extra}


def test_a_method_that_classifies_is_seen_as_one():
    class Classifier(torch.nn.Module):
        Config = object

        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(3, 2)

        def classify(self, x):
            return self.head(x)

    m = Classifier()
    assert classifies(m) and isinstance(m, Classifies)
    assert not classifies(torch.nn.Linear(2, 2))
