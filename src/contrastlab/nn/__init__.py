from .backbones import Encoder, InputNorm, SmallCNN, TorchvisionResNet, build_backbone
from .heads import MLPHead
from .pruning import magnitude_masks

__all__ = ["Encoder", "InputNorm", "SmallCNN", "TorchvisionResNet", "build_backbone", "MLPHead", "magnitude_masks"]
