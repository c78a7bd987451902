"""SDCLR (Jiang et al., ICML 2021): global unstructured magnitude pruning masks, a pruned twin of a
network that shares its weights, and the self-damaging branch of an encoder + projector."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..errors import ConfigError


def _ceil_count(fraction: float, total: int) -> int:
    """ceil(fraction * total), robust to float noise (0.3 * 10 = 3.0000000000000004 counts as 3)."""
    return min(total, math.ceil(round(fraction * total, 9)))


@torch.no_grad()
def magnitude_masks(
    model: nn.Module,
    prune_fraction: float,
    random_fraction: float = 0.0,
    generator: torch.Generator | None = None,
    random_of: str = "survivors",
) -> dict[str, torch.Tensor]:
    """SDCLR's pruning masks: global magnitude pruning over the weights of every ``nn.Conv2d``.

    All conv weights' |w| are pooled (N values, across layers; Linear layers and biases are
    left out, and the caller passes the backbone, so no head). With k = ceil(p * N):

        threshold = sort(|w|)[k],   mask = |w| >= threshold

    (k = 0 keeps everything; k = N prunes everything). Ties at the threshold are kept, so
    slightly fewer than k weights may be pruned. A random part r = ``random_fraction`` > 0 is
    chosen uniformly at random without replacement (from ``generator`` if given) among the
    weights the magnitude part keeps; ``random_of`` says what r is a share of:

    - ``"survivors"``: magnitude pruning at p as above, then ceil(r * M) of the M weights still
      kept, so about p + r (1 - p) of all are pruned;
    - ``"total"`` (the official SDCLR code, prune/mask.py and prune/prune_simCLR.py): p is the
      total, r <= p: ceil((p - r) * N) by magnitude, then ceil(r * N) of the survivors at
      random, so about p of all are pruned. (The official code draws each weight with
      probability ceil(r N) / (N - ceil((p - r) N)), that count in expectation; here it is exact.)

    Returns {name in ``model.named_parameters()``: 0/1 mask of the weight's shape and dtype},
    on the weight's device.
    """
    if not 0.0 <= prune_fraction < 1.0:
        raise ValueError(f"prune_fraction must be in [0, 1), got {prune_fraction}")
    if not 0.0 <= random_fraction < 1.0:
        raise ValueError(f"random_fraction must be in [0, 1), got {random_fraction}")
    if random_of not in ("survivors", "total"):
        raise ValueError(f"random_of must be 'survivors' or 'total', got {random_of!r}")
    if random_of == "total" and random_fraction > prune_fraction:
        raise ValueError(f"random_fraction={random_fraction} is a share of the total prune_fraction={prune_fraction} "
                         "(random_of='total'), so it cannot exceed it")
    names = {id(p): name for name, p in model.named_parameters()}
    weights = {}
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and id(module.weight) in names:
            weights[names[id(module.weight)]] = module.weight
    if not weights:
        raise ValueError("magnitude_masks found no nn.Conv2d weights in the model")
    device = next(iter(weights.values())).device
    flat = torch.cat([w.detach().abs().flatten().to(device) for w in weights.values()])
    total = flat.numel()
    magnitude_share = prune_fraction - random_fraction if random_of == "total" else prune_fraction
    k = _ceil_count(magnitude_share, total)
    if k == 0:
        keep = torch.ones(total, dtype=torch.bool, device=device)
    elif k >= total:
        keep = torch.zeros(total, dtype=torch.bool, device=device)
    else:
        threshold = flat.kthvalue(k + 1).values  # sort(|w|)[k], 0-based
        keep = flat >= threshold
    if random_fraction > 0:
        kept = keep.nonzero().flatten()
        drop = min(kept.numel(), _ceil_count(random_fraction, total if random_of == "total" else kept.numel()))
        gen_device = generator.device if generator is not None else device
        order = torch.randperm(kept.numel(), generator=generator, device=gen_device).to(device)
        keep[kept[order[:drop]]] = False
    masks, start = {}, 0
    for name, w in weights.items():
        masks[name] = keep[start : start + w.numel()].view_as(w).to(device=w.device, dtype=w.dtype)
        start += w.numel()
    return masks


def mask_sparsity(masks: dict[str, torch.Tensor]) -> float:
    """The pruned share of all masked weights: 1 - sum(masks) / numel(masks); 0.0 for no masks."""
    total = sum(m.numel() for m in masks.values())
    return 0.0 if total == 0 else 1.0 - float(sum(m.sum().item() for m in masks.values())) / total


class PrunedTwin(nn.Module):
    """SDCLR's pruned branch of a network: the same weights with the conv weights masked, and
    BatchNorm layers of its own (dual BN), run through ``torch.func.functional_call``.

    ``twin(net, x)`` evaluates ``net`` on ``x`` with every conv weight ``w`` replaced by
    ``w * mask`` and every BatchNorm's affine parameters and running statistics replaced by the
    twin's copies. Gradients reach the shared weights through the product (zero at pruned
    positions) and the twin's BatchNorm parameters; the dense network's BatchNorm statistics
    are left untouched. Masks are buffers (checkpointed); all ones until :meth:`set_masks`.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        from torch.nn.modules.batchnorm import _BatchNorm

        self._bn_names = [n for n, m in net.named_modules() if isinstance(m, _BatchNorm)]
        self.norms = nn.ModuleList([copy.deepcopy(net.get_submodule(n)) for n in self._bn_names])
        self._conv_names = [f"{n}.weight" for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
        for i, name in enumerate(self._conv_names):
            self.register_buffer(f"mask{i}", torch.ones_like(net.get_parameter(name), requires_grad=False))

    def masks(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, f"mask{i}") for i, name in enumerate(self._conv_names)}

    @torch.no_grad()
    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        if set(masks) != set(self._conv_names):
            raise ValueError(f"masks must cover exactly the conv weights {self._conv_names}, got {sorted(masks)}")
        for i, name in enumerate(self._conv_names):
            getattr(self, f"mask{i}").copy_(masks[name])

    def forward(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        tensors = {name: net.get_parameter(name) * mask for name, mask in self.masks().items()}
        for name, bn in zip(self._bn_names, self.norms):
            for key, t in list(bn.named_parameters()) + list(bn.named_buffers()):
                tensors[f"{name}.{key}"] = t
        return torch.func.functional_call(net, tensors, (x,), strict=False)


class PrunedBranch(nn.Module):
    """SDCLR's self-damaging branch (Jiang et al., ICML 2021) of an encoder + projector: the
    same weights with the encoder's conv weights masked by global magnitude pruning, renewed at
    the start of every epoch, and BatchNorm layers of its own in both encoder and projector.
    The masks and the epoch they belong to are buffers, so a resumed run continues exactly."""

    def __init__(self, encoder: nn.Module, projector: nn.Module, prune_fraction: float, random_fraction: float = 0.0,
                 random_of: str = "survivors"):
        super().__init__()
        self.prune_fraction, self.random_fraction, self.random_of = prune_fraction, random_fraction, random_of
        self.encoder_twin = PrunedTwin(encoder)
        self.projector_twin = PrunedTwin(projector)  # linear layers are never pruned: own BN only
        self.register_buffer("mask_epoch", torch.tensor(-1, dtype=torch.long))

    @torch.no_grad()
    def refresh(self, encoder: nn.Module, epoch: int) -> None:
        """New masks from the current weights when a new epoch starts (identical on every rank:
        the weights are, and the random part is seeded by the epoch)."""
        if int(self.mask_epoch) == epoch:
            return
        dev = next(encoder.parameters()).device
        g = torch.Generator(device=dev).manual_seed(1_000_003 + epoch)
        masks = magnitude_masks(encoder, self.prune_fraction, self.random_fraction, generator=g, random_of=self.random_of)
        dead = [name for name, mk in masks.items() if not mk.any()]
        if dead:
            # a fully pruned layer without a skip connection makes the branch output constant
            msg = (f"method.prune_fraction={self.prune_fraction} prunes every weight of {', '.join(dead)} "
                   f"(global magnitude pruning favours small-fan-in layers); lower method.prune_fraction")
            if int(self.mask_epoch) < 0:
                raise ConfigError(msg)
            import warnings

            warnings.warn(msg, stacklevel=2)
        self.encoder_twin.set_masks(masks)
        self.mask_epoch.fill_(epoch)

    def forward(self, encoder: nn.Module, projector: nn.Module, x: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        self.refresh(encoder, epoch)
        return self.projector_twin(projector, self.encoder_twin(encoder, x))
