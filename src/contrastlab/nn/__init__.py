from .backbones import Encoder, InputNorm, SmallCNN, TorchvisionResNet, build_backbone
from .heads import MLPHead

__all__ = ["Encoder", "InputNorm", "SmallCNN", "TorchvisionResNet", "build_backbone", "MLPHead"]
