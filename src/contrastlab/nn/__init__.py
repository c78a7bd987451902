from .bank import MemoryBank, bank_dots
from .backbones import Encoder, InputNorm, SmallCNN, TimmBackbone, TorchvisionResNet, build_backbone
from .graph import KNNGraph, reachable
from .heads import MLPHead
from .momentum import frozen_copy, momentum_update, set_requires_grad
from .neighbours import topk_neighbours
from .pruning import PrunedBranch, magnitude_masks
from .queue import Queue

__all__ = ["Encoder", "InputNorm", "SmallCNN", "TimmBackbone", "TorchvisionResNet", "build_backbone", "MLPHead", "magnitude_masks",
           "PrunedBranch", "Queue", "frozen_copy", "momentum_update", "set_requires_grad", "topk_neighbours",
           "MemoryBank", "bank_dots", "KNNGraph", "reachable"]
