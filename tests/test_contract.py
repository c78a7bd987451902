"""The method contract (methods/contract.py) holds for every registered method, and the trainer's
monitor is chosen by it: the method's own, else its protocol's (kNN by default)."""
import pytest

from contrastlab.config import load_config
from contrastlab.eval import monitor_for, protocol
from contrastlab.methods import REGISTRY, build_method, method_class
import inspect
import typing

from contrastlab.methods.contract import (Encodes, Method, Monitors, OptimizesItself, Translates, encodes, monitors,
                                          optimizes_itself, segments_episodes, translates)

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
    "protoseg": ("protoseg", ["model.width=4", "model.depth=1"]),
    "cwt_stage1": ("cwt_stage1", ["model.width=4", "method.bottleneck_dim=8"]),
    "cwt": ("cwt", ["model.width=4", "method.bottleneck_dim=8", "method.heads=1"]),
    "rpnet": ("rpnet", ["method.widths=[4,4,8,8,8]", "method.cre_channels=8"]),
}
FEWSHOT = ("protoseg", "cwt_stage1", "cwt", "rpnet")
NO_ENCODER = ("cwt_stage1", "cwt", "rpnet")  # segmentation networks, no pooled encoder for kNN / linear probes  # methods that segment few-shot episodes (and are monitored by eval fewshot)


def test_every_registered_method_is_covered_here():
    assert set(TINY) == set(REGISTRY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_each_method_meets_the_contract(name):
    recipe, overrides = TINY[name]
    method = build_method(load_config(recipe, overrides))
    assert isinstance(method, Method) and method_class(name).Config is type(method).Config
    is_gan = name in ("cut", "dclgan", "simdcl")
    assert translates(method) == is_gan
    assert encodes(method) == (not is_gan and name not in NO_ENCODER)
    assert isinstance(method, OptimizesItself) == optimizes_itself(method) == is_gan
    if is_gan:
        assert set(method.translators()) <= {"AtoB", "BtoA"} and "AtoB" in method.translators()
    assert not monitors(method)  # none has its own monitor today: each uses a protocol's
    assert segments_episodes(method) == (name in FEWSHOT)
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
    recipe, overrides = TINY[name]
    method = build_method(load_config(recipe, overrides))
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
