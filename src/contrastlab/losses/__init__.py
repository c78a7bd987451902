"""Loss functions: pure functions of tensors, each with its formula and paper in the docstring."""
from .bank import background_instance_loss, invariance_loss
from .contrastive import info_nce, leave_one_out_info_nce, nt_xent
from .dense import pixel_consistency_loss, pixel_info_nce, pooled_cosine_loss, positive_pixel_mask
from .negatives import debiased_info_nce, debiased_nt_xent, mochi_negatives
from .gan import gan_loss, r1_penalty
from .masks import background_coverage_loss, binarization_loss, min_coverage_loss
from .patch_nce import patch_nce
from .multi_view import debiased_multi_view_nt_xent, multi_view_nt_xent
from .segmentation import dice_ce_loss, episode_weighted_ce, smoothed_cross_entropy, soft_dice_loss

__all__ = ["nt_xent", "info_nce", "leave_one_out_info_nce", "debiased_nt_xent", "debiased_info_nce", "mochi_negatives",
           "patch_nce", "gan_loss", "background_instance_loss", "invariance_loss", "positive_pixel_mask",
           "pixel_consistency_loss", "pixel_info_nce", "pooled_cosine_loss", "multi_view_nt_xent",
           "r1_penalty", "binarization_loss", "min_coverage_loss", "background_coverage_loss",
           "soft_dice_loss", "dice_ce_loss", "episode_weighted_ce", "debiased_multi_view_nt_xent", "smoothed_cross_entropy"]
