"""End-to-end training throughput: batched views in the training step vs per-image torchvision
views in DataLoader workers (data + views + SimCLR step, the trainer's own code paths).

views.py measures the augmentation alone (calls per second of the two implementations in one
process); this measures what a user gets from each back-end while training. Contenders, all on the
SimCLR digits preset (SmallCNN 16x2, batch 128, 32 px; `--models small_cnn,resnet18` adds a
ResNet-18 with the CIFAR stem at 32 px and otherwise the same recipe):

- batched: ``views.backend=batched``, the uint8 images in memory, the two views made by
  `BatchedViews` inside the method's step on the device;
- loader_1w / loader_2w: ``views.backend=torchvision`` with ``data.num_workers=1`` / ``2``: a
  DataLoader whose workers apply `torchvision_views` image by image (`engine/batches.py`), the
  step then trains on the views it delivers.

Each contender is built from a config (`load_config("simclr", [...])`) by the trainer's own
set-up (`engine.setup.build_setup`: the method, channels_last as the preset says, optimiser and
schedule on Fabric); its batches come from the set-up's `batches()` (the trainer's data path over
a `StepBatches` sampler), and a step is the trainer loop's body (per-step seeds, `train_step`). The generators
live through the whole run, so loader workers start once (that start-up, to the first batch, is
reported separately as ``first_batch_s``) and persist across rounds.

A round runs ``--steps`` steps of each contender (order rotated every round); the ratios are
medians of per-round ratios. Loader workers prefetch (2 batches each) in the background, which
would give a loader contender a head start and slow whichever contender runs next, so before a
loader's timed window its ready batches are drained untimed (its workers start on fresh batches
as the clock starts: no head start) and after it the run waits, untimed, for its workers to
finish their prefetching (``settle_s``). images/s counts training images (each gives 2 views), as
the trainer's log does. The last line of output is the JSON (written to --out).

Usage: python benchmarks/end_to_end.py [--models small_cnn[,resnet18]] [--rounds 9] [--steps 20]
       [--device cpu|cuda] [--out results/bench_end_to_end.json]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import emit, environment, interleaved, median_ratio, ratio_quartiles  # noqa: E402

PREFETCH = 2  # torch DataLoader's default prefetch_factor (the trainer's _loader keeps it)
MODELS = {"small_cnn": [], "resnet18": ["model.backbone=resnet18", "model.cifar_stem=true"]}


class Contender:
    """One back-end's training loop, stepped one step per call, as in the trainer's `_fit`."""

    def __init__(self, overrides, device: str, train_set=None):
        from contrastlab.config import load_config
        from contrastlab.data import build_datasets
        from contrastlab.engine.setup import build_setup, make_fabric
        from contrastlab.engine.trainer import step_seed, train_step

        self.cfg = cfg = load_config("simclr", [f"trainer.accelerator={device}", "trainer.max_steps=1000000",
                                                "trainer.devices=1", "trainer.threads=null", *overrides])  # fmt: skip
        self.fabric = fabric = make_fabric(cfg)
        self.train_set = train_set if train_set is not None else build_datasets(cfg.data)[0]
        s = build_setup(cfg, fabric, datasets=(self.train_set, None))  # the trainer's own set-up
        self.total, self.per_epoch = s.total, s.per_epoch
        self.model, self.opt, self.sched = s.model, s.optimizer, s.scheduler
        self.model.train()
        self.batches = s.batches()  # the trainer's data path (batched views or DataLoader workers)
        self.gen = torch.Generator(device=fabric.device)
        self.step_no = 0
        self._seed, self._train_step = step_seed, train_step
        self.workers = cfg.data.num_workers if cfg.views.backend == "torchvision" else 0
        t0 = time.perf_counter()
        self.pending = next(self.batches)  # worker start-up and the first batch
        self.first_batch_s = time.perf_counter() - t0

    def __call__(self):
        batch = self.pending if self.pending is not None else next(self.batches)
        self.pending = None
        s = self._seed(self.cfg.seed, 0, self.step_no)
        torch.manual_seed(s)
        self.gen.manual_seed(s)
        batch.update(generator=self.gen, step=self.step_no, total_steps=self.total, epoch=self.step_no // self.per_epoch)
        self._train_step(self.model, self.opt, self.sched, self.fabric, batch, self.step_no)
        self.step_no += 1

    def drain(self):
        """Takes (untimed, unused) the batches the workers prefetched while other contenders ran."""
        self.pending = None
        for _ in range(PREFETCH * self.workers):
            next(self.batches)


def run_model(model: str, a, res: dict, train_set):
    base = [*MODELS[model], f"optim.batch_size={a.batch}", "data.persistent_workers=true"]
    if a.precision:
        base.append(f"trainer.precision={a.precision}")
    specs = {"batched": ["views.backend=batched"]}
    for w in a.workers:
        specs[f"loader_{w}w"] = ["views.backend=torchvision", f"data.num_workers={w}"]
    steps = a.steps if model == "small_cnn" else a.steps_resnet18
    contenders = {n: Contender(base + o, a.device, train_set) for n, o in specs.items()}
    sync = torch.cuda.synchronize if a.device == "cuda" else None
    # How long a loader's workers need to finish their prefetching after its window: each has up to
    # PREFETCH batches to make, and one worker makes a batch in at most `workers` x the step time
    # (exactly that when the data is the bottleneck); steps timed after a drain (no head start).
    warm = {}
    for n, c in contenders.items():
        for _ in range(2):
            c()
        if c.workers:
            c.drain()
        if sync:
            sync()
        t0 = time.perf_counter()
        for _ in range(3):
            c()
        if sync:
            sync()
        warm[n] = (time.perf_counter() - t0) / 3
    settle = {n: min(a.settle_max, max(0.2, 1.5 * PREFETCH * c.workers * warm[n])) for n, c in contenders.items() if c.workers}
    before = {n: c.drain for n, c in contenders.items() if c.workers}
    after = {n: (lambda s=s: time.sleep(s)) for n, s in settle.items()}
    print(f"{model}: {len(contenders)} contenders, {a.rounds} rounds of {steps} steps each "
          f"(warm-up s/step: {', '.join(f'{n} {v:.3f}' for n, v in warm.items())})", flush=True)  # fmt: skip
    times = interleaved(contenders, a.rounds, steps, warmup=0, sync=sync, before=before, after=after)
    med = {n: statistics.median(t) for n, t in times.items()}
    r = {"batch": a.batch, "steps_per_round": steps,
         "recipe": "simclr (digits preset)" + (" + " + " ".join(MODELS[model]) if MODELS[model] else ""),
         "img_per_s": {n: round(a.batch / m, 1) for n, m in med.items()},
         "median_ms_per_step": {n: round(1000 * m, 2) for n, m in med.items()},
         "speedup_batched_vs": {n: round(median_ratio(times, n, "batched"), 3) for n in times if n != "batched"},
         "speedup_quartiles_over_rounds": {n: ratio_quartiles(times, n, "batched") for n in times if n != "batched"},
         "first_batch_s": {n: round(c.first_batch_s, 3) for n, c in contenders.items()},
         "settle_s": {n: round(s, 2) for n, s in settle.items()},
         "per_round_s_per_step": {n: [round(x, 5) for x in t] for n, t in times.items()}}  # fmt: skip
    if "loader_1w" in times and "loader_2w" in times:
        r["speedup_loader_2w_vs_1w"] = round(median_ratio(times, "loader_1w", "loader_2w"), 3)
    res["models"][model] = r
    for n in times:
        extra = "" if n == "batched" else f"  batched x{r['speedup_batched_vs'][n]:.2f} faster (median of per-round ratios)"
        print(f"  {n:10s} {r['img_per_s'][n]:8.1f} img/s  first batch {r['first_batch_s'][n]:.2f} s{extra}", flush=True)
    del contenders  # ends the loader workers


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="small_cnn", help="comma-separated: small_cnn, resnet18")
    ap.add_argument("--batch", type=int, default=128, help="the digits preset's batch")
    ap.add_argument("--workers", default="1,2", help="loader contenders' worker counts")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--steps", type=int, default=20, help="steps per contender per round (small_cnn)")
    ap.add_argument("--steps-resnet18", type=int, default=4, help="steps per contender per round (resnet18)")
    ap.add_argument("--settle-max", type=float, default=10.0, help="longest untimed wait for a loader's prefetching")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", default=None, help="trainer.precision (default: the preset's, 32-true)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads of the training process (0: torch's default)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    a.workers = [int(w) for w in a.workers.split(",") if w]
    if a.threads:
        torch.set_num_threads(a.threads)
    from contrastlab.config import load_config
    from contrastlab.data import build_datasets

    cfg = load_config("simclr")
    train_set = build_datasets(cfg.data)[0]  # one copy of the images for every contender
    res = {"benchmark": "end_to_end", "device": a.device, "rounds": a.rounds, "workers": a.workers,
           **environment(seeds={"config": cfg.seed, "data_order": "StepBatches(seed)",
                                "step": "step_seed(seed, 0, step) as in the trainer", "weights": cfg.seed}),
           "models": {}}  # fmt: skip
    for model in [m for m in a.models.split(",") if m]:
        if model not in MODELS:
            sys.exit(f"end_to_end: unknown model {model!r}; expected one of {', '.join(MODELS)}")
        run_model(model, a, res, train_set)
    emit(res, a.out)


if __name__ == "__main__":
    main()
