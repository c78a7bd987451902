"""PatchNCE (CUT: Park et al., ECCV 2020; DCLGAN / SimDCL: Han et al., CVPRW 2021): a pure function
of tensors."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def patch_nce(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Patchwise InfoNCE of CUT (Park et al., ECCV 2020), as used by DCLGAN (Han et al., CVPRW 2021).

    q, k: (B, P, d) query and key embeddings of P patches per image, taken at the same
    locations (row i of q and row i of k come from the same position). Both are L2-normalised
    here; the keys are detached (no gradient reaches k). For query patch i of image b the
    positive is k[b, i] and the negatives are the other P - 1 keys of the SAME image b (CUT's
    default; patches of the other images of the batch are not negatives):

        s_ij = cos(q[b, i], k[b, j])
        l(b, i) = -log( exp(s_ii / t) / sum_j exp(s_ij / t) ),   j over all P keys of image b

    which is the cross entropy of the logits ``[s_ii, s_ij (j != i)] / t`` to the positive.
    The loss is the mean of l over the B * P queries (a scalar); P = 1 gives 0.
    """
    if q.dim() != 3 or q.shape != k.shape:
        raise ValueError(f"patch_nce expects q and k of the same shape (B, P, d), "
                         f"got {tuple(q.shape)} and {tuple(k.shape)}")  # fmt: skip
    if temperature <= 0:
        raise ValueError(f"patch_nce needs a positive temperature, got {temperature}")
    b, p, _ = q.shape
    q = F.normalize(q.float(), dim=2)
    k = F.normalize(k.detach().float(), dim=2)
    logits = torch.bmm(q, k.transpose(1, 2)) / temperature  # (B, P, P); the positive is the diagonal
    target = torch.arange(p, device=q.device).repeat(b)
    return F.cross_entropy(logits.reshape(b * p, p), target)
