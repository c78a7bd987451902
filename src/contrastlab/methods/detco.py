"""DetCo: global and local contrast at several levels (Xie, Ding, Wang, Zhan, Xie, Li, Luo, ICCV 2021,
"DetCo: Unsupervised Contrastive Learning for Object Detection"), on the MoCo v2 core. The pretraining
code was never released; this follows the paper as shared/METHODS.md section 5 describes it.

Per step: draw a global view pair (two augmented images: query, key) and a local view pair (the image
cut into a ``grid`` x ``grid`` jigsaw, every patch augmented on its own, twice:
:class:`contrastlab.data.views.JigsawViews`); momentum-update the key branch (backbone and every head);
encode each view with the backbone and read the last ``n_levels`` stages (ResNet res2..res5 when 4);
at each level l, average-pool every map; a global view is embedded by level l's global head, a local
view by level l's local head on the concatenation of its patches' pooled features (patch order); keys
come from the momentum copies, with shuffle-BN as MoCo. Then, per level, three InfoNCE losses:

    L_gg: global query vs global key, against level l's global queue
    L_ll: local query vs local key, against level l's local queue
    L_lg: local query vs global key, against level l's global queue

and loss = sum_l w_l (L_gg + L_ll + L_lg). Each level's global queue takes its global keys, its local
queue its local keys. Evaluation sees the backbone's pooled final feature (``encoder``), as MoCo.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Optional

import torch
import torch.nn as nn

from ..data.views import BatchedViews, JigsawViews
from ..errors import ConfigError
from ..fields import option
from ..losses import info_nce
from ..nn.momentum import frozen_copy, momentum_update
from ..nn.queue import Queue
from .common import build_encoder, build_projector, require_batched_views
from .moco import shuffled_keys

# METHODS.md section 5: w increasing with depth, e.g. 0.1, 0.4, 0.7, 1.0 for res2..res5 (unverified)
DEFAULT_LEVEL_WEIGHTS = (0.1, 0.4, 0.7, 1.0)


def _weights_allowed(w) -> str | None:
    """None when ``w`` is null or a non-empty list of weights >= 0, else what is allowed."""
    if w is None or (len(w) and all(v >= 0 for v in w)):
        return None
    return "null or a non-empty list of numbers >= 0, one per level"


@dataclass
class DetCoConfig:
    name: Literal["detco"] = "detco"
    n_levels: int = option(4, ge=1, doc="the backbone's last stages that are contrasted (4: res2..res5)")
    # one weight per level, shallow to deep; null: the last n_levels of (0.1, 0.4, 0.7, 1.0) (METHODS.md, unverified)
    level_weights: Optional[tuple[float, ...]] = option(None, check=_weights_allowed)
    grid: int = option(3, ge=1, doc="the local view's jigsaw is grid x grid patches")
    local_size: int = option(64, ge=1, doc="the side in pixels of each augmented patch")
    # the random resized crop of each patch, as a share of the patch's area (the global view: views.crop_scale)
    local_crop_scale: tuple[float, float] = option((0.6, 1.0), gt=0, le=1)
    temperature: float = option(0.2, gt=0)
    queue_size: int = option(65536, ge=1, doc="the length of each queue (two per level)")
    momentum: float = option(0.999, ge=0, lt=1, doc="the key branch's EMA momentum")
    bn: Literal["shuffle", "none"] = "shuffle"  # how the key encoder avoids BN leakage (as MoCo)
    shuffle_groups: int = option(8, ge=1)  # shuffle-BN in one process: keys encoded in this many sub-batches

    @classmethod
    def check(cls, cfg) -> None:
        """The views are drawn from whole batches on the device; one weight per level."""
        m = cfg.method
        require_batched_views(cfg, "detco cuts its jigsaw views from batched images")
        if m["level_weights"] is not None and len(m["level_weights"]) != m["n_levels"]:
            raise ConfigError(f"method.level_weights={list(m['level_weights'])}: {len(m['level_weights'])} weights for "
                              f"method.n_levels={m['n_levels']} levels; give one weight per level")  # fmt: skip
        if m["level_weights"] is None and m["n_levels"] > len(DEFAULT_LEVEL_WEIGHTS):
            raise ConfigError(f"method.n_levels={m['n_levels']}: the default weights cover {len(DEFAULT_LEVEL_WEIGHTS)} "
                              "levels; give method.level_weights, one per level")  # fmt: skip


class DetCo(nn.Module):
    Config = DetCoConfig

    def __init__(self, cfg):
        super().__init__()
        self.cfg = c = self.Config(**cfg.method)
        mc = cfg.model
        self.encoder = build_encoder(mc)  # the backbone: pooled final feature for evaluation, stages for training
        dims = self.encoder.stage_dims
        if c.n_levels > len(dims):
            raise ConfigError(f"method.n_levels={c.n_levels}: backbone {mc.backbone} has {len(dims)} stages; "
                              f"lower n_levels")  # fmt: skip
        self.stages = list(range(len(dims) - c.n_levels, len(dims)))
        self.level_weights = tuple(c.level_weights or DEFAULT_LEVEL_WEIGHTS[-c.n_levels:])
        n_patches = c.grid * c.grid
        self.global_heads = nn.ModuleList([build_projector(dims[s], mc) for s in self.stages])
        self.local_heads = nn.ModuleList([build_projector(n_patches * dims[s], mc) for s in self.stages])
        self.key_encoder = frozen_copy(self.encoder)
        self.key_global_heads = frozen_copy(self.global_heads)
        self.key_local_heads = frozen_copy(self.local_heads)
        self.global_queues = nn.ModuleList([Queue(c.queue_size, mc.proj_dim) for _ in self.stages])
        self.local_queues = nn.ModuleList([Queue(c.queue_size, mc.proj_dim) for _ in self.stages])
        self.views = BatchedViews(cfg.views, cfg.views.size or cfg.data.image_size)
        local_cfg = replace(cfg.views, crop_scale=c.local_crop_scale, size=c.local_size)
        self.local_views = JigsawViews(local_cfg, c.local_size, c.grid)
        self._check_patches_fit()

    @torch.no_grad()
    def _check_patches_fit(self) -> None:
        """A patch of ``local_size`` px must pass through every stage (a small CNN's pooling stops at 1 px)."""
        s, was_training = self.cfg.local_size, self.encoder.training
        try:
            self.encoder.eval().forward_stages(torch.zeros(1, 3, s, s), self.cfg.n_levels)
        except RuntimeError as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"method.local_size={s}: a patch this small does not pass the backbone's stages "
                              f"({msg}); raise local_size") from None  # fmt: skip
        finally:
            self.encoder.train(was_training)

    @property
    def level_names(self) -> tuple[str, ...]:
        """The levels' names in the logs: the backbone's stage index (ResNet: 0..3 = res2..res5)."""
        return tuple(f"stage{s}" for s in self.stages)

    def embed(self, encoder, heads, x, local: bool) -> torch.Tensor:
        """A global view (N, 3, S, S) or a local one (N, P, 3, s, s) -> its embedding at every level (N, L, d):
        each selected stage's map average-pooled (a local view's P patches concatenated, in order), then
        that level's head."""
        n = x.shape[0]
        maps = encoder.forward_stages(x.flatten(0, 1) if local else x, self.cfg.n_levels)
        out = []
        for f, head in zip(maps, heads):
            v = f.mean(dim=(2, 3))
            out.append(head(v.reshape(n, -1) if local else v))
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def keys(self, x, local: bool, generator=None) -> torch.Tensor:
        """The key branch's embeddings (N, L, d) of a global or local view, with shuffle-BN (whole images
        are shuffled: a local view's patches stay together)."""
        heads = self.key_local_heads if local else self.key_global_heads
        net = lambda v: self.embed(self.key_encoder, heads, v, local)  # noqa: E731
        return shuffled_keys(net, x, generator, self.cfg.shuffle_groups) if self.cfg.bn == "shuffle" else net(x)

    def level_losses(self, qg, ql, kg, kl, global_queues, local_queues) -> torch.Tensor:
        """Per level l: (L_gg, L_ll, L_lg), InfoNCE with level l's queues as negatives -> (L, 3)."""
        t = self.cfg.temperature
        rows = []
        for lv in range(qg.shape[1]):
            gg = info_nce(qg[:, lv], kg[:, lv], global_queues[lv], t)
            ll = info_nce(ql[:, lv], kl[:, lv], local_queues[lv], t)
            lg = info_nce(ql[:, lv], kg[:, lv], global_queues[lv], t)
            rows.append(torch.stack([gg, ll, lg]))
        return torch.stack(rows)

    def forward(self, batch: dict) -> dict:
        if "images" not in batch:
            raise ConfigError("detco cuts its jigsaw views from the batch's images on the device: set "
                              "views.backend=batched")  # fmt: skip
        images, g = batch["images"], batch.get("generator")
        xg_q, xg_k = self.views(images, g), self.views(images, g)  # global views
        xl_q, xl_k = self.local_views(images, g), self.local_views(images, g)  # local (jigsaw) views
        with torch.no_grad():
            m = self.cfg.momentum
            momentum_update(self.encoder, self.key_encoder, m)
            momentum_update(self.global_heads, self.key_global_heads, m)
            momentum_update(self.local_heads, self.key_local_heads, m)
            kg = self.keys(xg_k, False, g)
            kl = self.keys(xl_k, True, g)
        qg = self.embed(self.encoder, self.global_heads, xg_q, False)
        ql = self.embed(self.encoder, self.local_heads, xl_q, True)
        # copies: the losses see the queues as they were before this step's push
        global_queues = [q.keys.clone() for q in self.global_queues]
        local_queues = [q.keys.clone() for q in self.local_queues]
        losses = self.level_losses(qg, ql, kg, kl, global_queues, local_queues)  # (L, 3)
        w = torch.tensor(self.level_weights, dtype=losses.dtype, device=losses.device)
        for lv in range(len(self.stages)):
            self.global_queues[lv].push(kg[:, lv])
            self.local_queues[lv].push(kl[:, lv])
        out = {"loss": (w * losses.sum(dim=1)).sum()}
        for name, row in zip(self.level_names, losses.detach()):
            out.update({f"loss_gg_{name}": row[0], f"loss_ll_{name}": row[1], f"loss_lg_{name}": row[2]})
        return out
