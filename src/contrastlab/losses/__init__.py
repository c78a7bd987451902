"""Loss functions: pure functions of tensors, each with its formula and paper in the docstring."""
from .contrastive import info_nce, nt_xent

__all__ = ["nt_xent", "info_nce"]
