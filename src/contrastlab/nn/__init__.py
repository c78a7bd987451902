from .alpha_network import AlphaNetwork
from .bank import MemoryBank, bank_dots
from .backbones import Encoder, InputNorm, SmallCNN, TimmBackbone, TorchvisionResNet, build_backbone
from .graph import KNNGraph, reachable
from .heads import ConvMLPHead, MLPHead
from .momentum import cosine_momentum, frozen_copy, momentum_update, set_requires_grad
from .propagation import PixelPropagation, propagation_weights
from .prototypes import PrototypeSegmenter, cosine_logits, episode_prototypes, masked_average_pool
from .neighbours import topk_neighbours
from .pruning import PrunedBranch, magnitude_masks
from .queue import Queue
from .relation import ContextRelationEncoder, local_correlation
from .segmentation import PSPNet, PyramidPooling, UNetFeatures
from .stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator, load_stylegan2, save_stylegan2
from .weight_transformer import ClassifierWeightTransformer

__all__ = ["Encoder", "InputNorm", "SmallCNN", "TimmBackbone", "TorchvisionResNet", "build_backbone", "MLPHead", "ConvMLPHead", "magnitude_masks",
           "PrunedBranch", "Queue", "frozen_copy", "momentum_update", "set_requires_grad", "topk_neighbours",
           "MemoryBank", "bank_dots", "KNNGraph", "reachable", "cosine_momentum",
           "PixelPropagation", "propagation_weights",
           "AlphaNetwork", "StyleGAN2Generator", "StyleGAN2Discriminator", "load_stylegan2", "save_stylegan2",
           "PrototypeSegmenter", "cosine_logits", "episode_prototypes", "masked_average_pool", "ContextRelationEncoder",
           "local_correlation", "PSPNet", "PyramidPooling", "UNetFeatures", "ClassifierWeightTransformer"]
