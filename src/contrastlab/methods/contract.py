"""What a method is (no base class): the contract the trainer, the evaluation protocols and the
report rely on, written as typing Protocols and checked with ``isinstance``.

Every method (:class:`Method`)
    an ``nn.Module`` built as ``Method(cfg)`` from a resolved recipe, with
    ``Config``: the dataclass of its ``method:`` section (typed options with their ranges,
    ``fields.option``; an optional classmethod ``check(cfg)`` for checks across sections), and
    ``forward(batch) -> dict``: one training step's outputs, ``{"loss": scalar tensor, ...}``
    (the other entries are logged). ``batch`` holds ``images`` (uint8 (B, 3, H, W) on the
    device) or ``views`` (per-image path), ``index``, ``step``, ``epoch`` and ``generator``
    (the step's seeded random generator on the device).

Optional parts, each a Protocol of its own:
    :class:`Encodes`: ``encoder``, the network whose frozen features the kNN / linear protocols
    and the report evaluate (``encoder(x) -> (B, d)`` for float images in [0, 1]).
    :class:`OptimizesItself`: ``manual_optimization = True`` and
    ``configure_optimizers(optim_cfg) -> {name: optimizer}``; ``forward`` then steps them with
    ``batch["optim"].step(name, loss)`` (GANs, inner adversarial loops).
    :class:`Translates`: ``translators() -> {"AtoB": generator, ...}`` (``contrastlab translate``).
    :class:`Monitors`: ``monitor(train_set, test_set, run_dir, step, device) -> dict``, the
    method's own periodic check; without it the trainer runs the ``monitor`` of the evaluation
    protocol named by the method's ``monitor_protocol`` (default ``"knn"``).
    :class:`UsesTrainingSet`: ``setup_data(train_set)``, called once by the set-up with the
    training set, after the method is built and before a checkpoint's weights are loaded (a
    memory-bank method sizes its bank, one row per image, from it; ``batch["index"]`` is then
    the row of each image). A method built from a config alone (evaluation) is not given it.
    Report pictures (``contrastlab report``), each optional:
    :class:`ShowsPositives`: ``discovered_positives(index)`` -> for each training image of
    ``index``, the other training images the method takes as its positives, as ``(image, hard)``
    pairs (InvP), or None while it has found none; the report frames them by label.
    :class:`HasSpaces`: ``embedding_spaces(x) -> {name: (B, d)}``, one embedding per space
    (LooC's heads); the report shows each space's nearest neighbours side by side.
    :class:`Classifies`: ``classify(x) -> logits (B, C)`` for float images in [0, 1] (the
    normalisation inside), a method that is itself a classifier (adversarial fine-tuning);
    ``contrastlab eval robust`` attacks it directly instead of fitting a linear probe.
    :class:`SegmentsEpisodes`: ``segment_episode(support_images, support_masks, query_image) ->
    logits (B, 2, H, W)``, a few-shot segmenter of 1-way K-shot episodes (``eval fewshot``).

Check a method with :func:`encodes`, :func:`translates`, :func:`monitors`,
:func:`optimizes_itself`, :func:`shows_positives`, :func:`has_spaces`, :func:`classifies` and
:func:`segments_episodes`, not with
``isinstance(method, Encodes)``: from Python 3.12 on, a runtime Protocol looks attributes up
statically (``inspect.getattr_static``), which does not see an ``nn.Module``'s submodules (they
live in ``_modules`` and are found by ``__getattr__``), so ``isinstance(method, Encodes)`` is False
for every method there.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Method(Protocol):
    Config: type

    def forward(self, batch: dict) -> dict: ...

    def state_dict(self, *args, **kwargs) -> dict: ...


@runtime_checkable
class Encodes(Protocol):
    encoder: torch.nn.Module


@runtime_checkable
class OptimizesItself(Protocol):
    manual_optimization: bool

    def configure_optimizers(self, optim_cfg: Any) -> dict: ...


@runtime_checkable
class Translates(Protocol):
    def translators(self) -> dict: ...


@runtime_checkable
class Monitors(Protocol):
    def monitor(self, train_set, test_set, run_dir, step, device) -> dict: ...


@runtime_checkable
class UsesTrainingSet(Protocol):
    def setup_data(self, train_set) -> None: ...


@runtime_checkable
class ShowsPositives(Protocol):
    def discovered_positives(self, index) -> list | None: ...


@runtime_checkable
class HasSpaces(Protocol):
    def embedding_spaces(self, x) -> dict: ...


@runtime_checkable
class Classifies(Protocol):
    def classify(self, x) -> torch.Tensor: ...


def optimizes_itself(method_or_class) -> bool:
    """Whether a method (or its class) makes its own optimisation steps."""
    return bool(getattr(method_or_class, "manual_optimization", False))


def encodes(method) -> bool:
    """Whether a method has an ``encoder`` network to evaluate (:class:`Encodes`)."""
    return isinstance(getattr(method, "encoder", None), torch.nn.Module)


def translates(method) -> bool:
    """Whether a method translates images (:class:`Translates`)."""
    return callable(getattr(method, "translators", None))


def uses_training_set(method) -> bool:
    """Whether a method is given the training set before training (:class:`UsesTrainingSet`)."""
    return callable(getattr(method, "setup_data", None))


def monitors(method) -> bool:
    """Whether a method has its own periodic check (:class:`Monitors`)."""
    return callable(getattr(method, "monitor", None))


def shows_positives(method) -> bool:
    """Whether a method discovers positives among other images for the report (:class:`ShowsPositives`)."""
    return callable(getattr(method, "discovered_positives", None))


def has_spaces(method) -> bool:
    """Whether a method embeds into several named spaces (:class:`HasSpaces`)."""
    return callable(getattr(method, "embedding_spaces", None))


def classifies(method) -> bool:
    """Whether a method is itself a classifier of images in [0, 1] (:class:`Classifies`)."""
    return callable(getattr(method, "classify", None))


@runtime_checkable
class SegmentsEpisodes(Protocol):
    """A few-shot segmenter (``contrastlab eval fewshot``): ``segment_episode(support_images,
    support_masks, query_image) -> logits (B, 2, H, W)`` for the batch layout of
    :mod:`contrastlab.data.episodes`: support_images float (B, K, 3, H, W) in [0, 1], support_masks
    long (B, K, H, W) with 1 = the episode's class, 0 = other, 255 = ignore, query_image float
    (B, 3, H, W) in [0, 1], all on the method's device; channel 0 of the logits is background,
    channel 1 the episode's class, at the query's size (H, W). Called in eval mode under
    ``torch.no_grad``; the prediction is the argmax over the two channels."""

    def segment_episode(self, support_images, support_masks, query_image) -> torch.Tensor: ...


def segments_episodes(method) -> bool:
    """Whether a method segments few-shot episodes (:class:`SegmentsEpisodes`)."""
    return callable(getattr(method, "segment_episode", None))
