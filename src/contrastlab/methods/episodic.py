"""What the episodic methods share: the episodes of a training step."""
from __future__ import annotations


def episode_batch(sampler, batch: dict, name: str) -> dict:
    """The episodes of a training step on the batch's device: those of ``batch`` when it holds them,
    else episodes ``step * B .. step * B + B - 1`` of ``sampler`` (B: the batch's images)."""
    if "support_images" in batch:
        return batch
    if sampler is None:
        raise RuntimeError(f"{name} trains on episodes of its training set: call setup_data(train_set) first")
    b, dev = batch["images"].shape[0], batch["images"].device
    step = int(batch.get("step", 0))
    return {k: v.to(dev) for k, v in sampler.batch(range(step * b, (step + 1) * b)).items()}
