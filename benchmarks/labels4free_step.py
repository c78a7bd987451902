"""CPU cost of one Labels4Free step at the embedded size, beside one StyleGAN2 step (digits presets).

Each contender is the real training step (`train_step` through Fabric) of its recipe on the same
uint8 batches of 32 px digit scenes (random pixels: the cost does not depend on them):
- ``stylegan2`` (stylegan2/digits: a D step on G(z) vs real, lazy R1 every 16 steps, a G step, the
  EMA of G; style mixing as the recipe: probability 0.9);
- ``labels4free`` (labels4free/digits: per step four passes of the frozen generator (foreground
  with its features and background, twice), the alpha network twice, a D step on the composite vs
  real with lazy R1 every 16 steps, an alpha-network step, its EMA), on a generator checkpoint of the
  stylegan2/digits architecture written here with fresh weights (same cost as a trained one).
The step counter advances, so lazy R1 runs one step in 16 as in training. Rounds are interleaved
(the order rotated each round); medians of step times, and the median (with quartiles) of the
per-round ratio labels4free / stylegan2.

    OMP_NUM_THREADS=1 python benchmarks/labels4free_step.py --threads 1 --rounds 5 \
        --out results/bench_labels4free_step.json
    python benchmarks/labels4free_step.py --tiny    # checks the script in seconds, measures nothing
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _steps import make_step  # noqa: E402
from _timing import emit, environment, interleaved, median_ratio, ratio_quartiles  # noqa: E402


def write_generator(path, recipe_overrides=()):
    """A public-format checkpoint of the stylegan2/digits generator (fresh weights, seed 0)."""
    from contrastlab.config import load_config
    from contrastlab.methods.stylegan2 import StyleGAN2Config, build_discriminator, build_generator
    from contrastlab.nn.stylegan2 import save_stylegan2

    torch.manual_seed(0)
    c = StyleGAN2Config(**load_config("stylegan2", list(recipe_overrides)).method)
    g = build_generator(c)
    save_stylegan2(path, g, g, build_discriminator(c), g.mean_latent(256))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16, help="the presets' batch")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=8, help="steps per contender per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tiny", action="store_true", help="batch 4, 1 round of 2 steps: checks the script")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.tiny:
        a.batch, a.rounds, a.reps = 4, 1, 2
    torch.set_num_threads(a.threads)
    gx = torch.Generator().manual_seed(0)
    pool = [torch.randint(0, 256, (a.batch, 3, 32, 32), dtype=torch.uint8, generator=gx) for _ in range(4)]
    k = [0]

    def images():
        k[0] += 1
        return pool[k[0] % 4]

    counter = {"stylegan2": [0], "labels4free": [0]}

    def advancing(name):  # the step number each call (lazy R1 one step in 16, as in training)
        def extra():
            counter[name][0] += 1
            return {"step": counter[name][0]}

        return extra

    common = [f"optim.batch_size={a.batch}", "trainer.threads=null"]
    with tempfile.TemporaryDirectory() as d:
        ckpt = Path(d) / "stylegan2.pt"
        write_generator(ckpt)
        steps = {"stylegan2": make_step("stylegan2/digits", images, common, channels_last=False, extra=advancing("stylegan2")),
                 "labels4free": make_step("labels4free/digits", images, [*common, f"method.generator_checkpoint={ckpt}"],
                                          channels_last=False, extra=advancing("labels4free"))}  # fmt: skip
        times = interleaved(steps, a.rounds, a.reps, warmup=1)
    med = {n: statistics.median(t) for n, t in times.items()}
    res = {"benchmark": "labels4free_step", "batch": a.batch, "image_px": 32, "rounds": a.rounds, "reps": a.reps,
           "tiny": a.tiny, **environment(seeds={"images": 0, "generator_weights": 0, "steps": "step k: generator seed k"}),
           "median_step_s": {n: round(v, 4) for n, v in med.items()},
           "img_per_s": {n: round(a.batch / v, 1) for n, v in med.items()},
           "ratio_labels4free_vs_stylegan2_time": round(median_ratio(times, "labels4free", "stylegan2"), 4),
           "quartiles_labels4free_vs_stylegan2": ratio_quartiles(times, "labels4free", "stylegan2"),
           "per_round_s": {n: [round(x, 5) for x in t] for n, t in times.items()}}  # fmt: skip
    print(f"batch {a.batch}, 32 px, {a.threads} thread(s): StyleGAN2 step {1000 * med['stylegan2']:.0f} ms, Labels4Free "
          f"step {1000 * med['labels4free']:.0f} ms ({res['ratio_labels4free_vs_stylegan2_time']:.2f}x)", flush=True)  # fmt: skip
    emit(res, a.out)


if __name__ == "__main__":
    main()
