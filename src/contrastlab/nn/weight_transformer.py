"""CWT's classifier weight transformer (Lu et al., ICCV 2021, "Simpler is Better: Few-shot Semantic
Segmentation with Classifier Weight Transformer", section 3.3, eq. 4-6).

The classifier weights W (B, P, d) (P = 2: background, foreground) attend over the pixels of the
query's feature map F (B, d, h, w), flattened to (B, hw, d):

    Q = W P_h,  K = V = F P_h                 one shared projection P_h (d x d, no bias) per head h
    A_h = Dropout_a(softmax(Q K^T / sqrt(d)))  (B, P, hw)
    W'  = LayerNorm(W + Dropout(FC([A_1 V_1, ..., A_n V_n])))   FC: n d -> d, with bias

Values of the official code (zhiheLu/CWT-for-FSS src/model/transformer.py MultiHeadAttentionOne):
one projection shared by q, k and v, initialised N(0, sqrt(2 / (d + d_k))); FC xavier-normal;
attention dropout 0.1 (ScaledDotProductAttention's default); output dropout 0.5 and d_k = d_v = d
(src/train.py: ``MultiHeadAttentionOne(args.heads, trans_dim, trans_dim, trans_dim, dropout=0.5)``).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


class ClassifierWeightTransformer(nn.Module):
    def __init__(self, dim: int, heads: int = 1, dropout: float = 0.5, attn_dropout: float = 0.1):
        super().__init__()
        self.dim, self.heads = dim, heads
        self.proj = nn.Linear(dim, heads * dim, bias=False)
        nn.init.normal_(self.proj.weight, mean=0.0, std=math.sqrt(2.0 / (dim + dim)))
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.fc = nn.Linear(heads * dim, dim)
        nn.init.xavier_normal_(self.fc.weight)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def attention(self, weights: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """(B, P, d) weights, (B, N, d) pixels -> the heads' outputs concatenated, (B, P, n d)."""
        b, p, d = weights.shape
        n, h = pixels.shape[1], self.heads
        q = self.proj(weights).view(b, p, h, d).transpose(1, 2)  # (B, h, P, d)
        k = self.proj(pixels).view(b, n, h, d).transpose(1, 2)  # (B, h, N, d); v = k (shared projection)
        attn = self.attn_dropout(torch.softmax(q @ k.transpose(2, 3) / math.sqrt(d), dim=-1))
        return (attn @ k).transpose(1, 2).reshape(b, p, h * d)

    def forward(self, weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """(B, P, d) classifier weights and (B, d, h, w) query features -> updated weights (B, P, d)."""
        pixels = features.flatten(2).transpose(1, 2)
        return self.norm(weights + self.dropout(self.fc(self.attention(weights, pixels))))
