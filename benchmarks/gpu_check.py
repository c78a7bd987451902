"""GPU check: real training steps through the library's own code paths, against a bare loop
doing the same work.

On a machine with a CUDA GPU (a few minutes; writes results/gpu_check_<gpu>.json, e.g.
results/gpu_check_h100_80gb_hbm3.json):

    python benchmarks/gpu_check.py

and a tiny smoke run of the script itself on the CPU (batch 8, fp32, seconds):

    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpu_check_cpu.json

Measures, on synthetic 32 px uint8 data on the device (no download):
- SimCLR, ResNet-18 with the CIFAR stem, batch 512, bf16 (Fabric's bf16-mixed): the library's
  step (`contrastlab.engine.trainer.train_step` of the `simclr/cifar10` recipe, SGD) against a
  bare PyTorch loop doing the same work (`_steps.bare_simclr_step`: the same batched views made
  from uint8 on the device by `BatchedViews`, the same two forward passes of B, input
  standardisation, head, NT-Xent, SGD with momentum and weight decay, bf16 autocast), and the
  views alone (two `BatchedViews` calls under the same autocast). The three are interleaved
  round by round (rotated order, CUDA synchronised around each timed window); the ratios are
  medians of per-round ratios: library / bare step time, and the views' share of the step
  (views alone / whole step). Peak GPU memory of each, from its own warm-up steps.
- MoCo v2 through the library (queue 4096, shuffle-BN path), and the issue-15 family's steps at the
  same batch: LooC (the `looc/imagenet100` step, colour and rotation left out: 3 keys, 3 heads and
  3 queues of 16,384, at 32 px with the SimCLR row's network and optimiser) and InvP (the
  `invp/cifar10` step as the recipe sets it, bank and graph sized by its `setup_data` from a
  stand-in training set of --bank-rows rows, default 50,000 as CIFAR-10, L_inv on): images/s and
  peak memory of each, the three interleaved (medians; ratios vs MoCo are medians of per-round
  ratios). InvP has no per-epoch graph rebuild (each step rewrites the batch's graph rows from the
  background it searches anyway), so every epoch's graph work is inside its steps; measured besides,
  on their own: the bank and graph parts of an InvP step (`_steps.invp_step_parts`: bank search,
  positive search, graph rows, bank update) and their share of the step, and a whole-bank kNN
  rebuild (what a per-epoch rebuild would cost; it also gives the graph its edges before timing);
- the issue-16 dense family at the same batch and 32 px, with the SimCLR row's network and optimiser
  (as LooC's row), interleaved with the same MoCo step: PixPro (the `pixpro/imagenet` step, no
  warm-up; ResNet-18 with the CIFAR stem keeps 32 px at stride 8, so the final map is 4 x 4, 16
  pixels per view, where the recipe's ResNet-50 would leave 1 x 1 at 32 px and 7 x 7 at 224; with
  the recipe's crops of 8-100% about 80% of view-1 pixels have a positive pair) and DetCo (the
  `detco/imagenet` step: res2..res5, 8 queues of 65,536, its 3 x 3 jigsaw of 10 px patches each
  drawn at 9 px, the recipe's 64 px draws of 74 px patches scaled from 224 to 32 px): images/s,
  peak memory, and time vs MoCo (medians of per-round ratios, with quartiles);
- RoCL (issue 17): the `rocl/cifar10` step (7-step l_inf PGD on view 1, BatchNorm in eval mode for the
  attack, three views in one pass) at the same batch with the SimCLR row's network and optimiser,
  interleaved with the SimCLR row's library step: images/s, peak memory, time vs SimCLR (median of
  per-round ratios, quartiles);
- the issue-19 generator at the same batch and 32 px: a StyleGAN2 step (the `stylegan2/digits` step at
  config-F widths: style_dim 512, an 8-layer mapping, 512 channels; lazy R1 one step in 16, style mixing
  0.9) and a Labels4Free step on that generator (`labels4free/digits` at the same widths, on a
  checkpoint written with fresh weights: four frozen-generator passes, the alpha network, D and R1),
  interleaved: images/s, peak memory, Labels4Free time vs the StyleGAN2 step; --tiny keeps the
  presets' small widths;
- the issue-17 adversarial family at the same batch and 32 px, with the SimCLR row's network and optimiser,
  interleaved with the same MoCo step: adversarial rotation pre-training (the `adv_rotation/cifar10` step: PGD-10
  on the rotation loss with BatchNorm in eval mode, then 0.5 / 0.5 clean and adversarial CE) and adversarial
  fine-tuning (the `adv_finetune/cifar10` step: PGD-10 on the labels of a stand-in labelled set, CE of the
  adversarial images): images/s, peak memory, time vs MoCo (medians of per-round ratios, with quartiles);
- issue 18's few-shot family through ``fit`` at the same precision: CWT meta-training (the cwt/digits step
  on a stage-1 network fitted for 100 steps) and RP-Net training (rpnet/digits), --fewshot-steps steps of 8
  episodes each (default 40: 320 episodes), episodes/s and the closing 100-episode mIoU;
- an end-to-end ``fit`` of the SimCLR digits preset on the device (trainer, kNN monitor,
  checkpoint), its time and kNN accuracy.
images/s counts training images (a batch of B images is 2B views), as the trainer's log does.
The last line of output is the JSON written to --out.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _steps import (  # noqa: E402
    EpochOrder, SizedRows, bare_simclr_step, invp_of, invp_step_parts, make_step, resnet18_cifar, whole_bank_graph,
)
from _timing import emit, environment, interleaved, median_ratio, ratio_quartiles  # noqa: E402

LR, MOMENTUM, WD, T = 0.3, 0.9, 1e-6, 0.5
DETCO_LOCAL = 9  # detco/imagenet draws its 74 px patches (224 / 3) at 64 px; at 32 px: 9 px draws of 10 px patches
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def device_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100_80gb_hbm3' (the results file's name)."""
    s = re.sub(r"[^a-z0-9]+", "_", name.lower().replace("nvidia", "")).strip("_")
    return s or "unknown"


def peak_memory(step, dev, n=2):
    """Peak GPU memory (GiB) over ``n`` calls of ``step`` (None on the CPU); the other contenders'
    weights and optimiser states, resident meanwhile, are included (tens of MiB each)."""
    for _ in range(n):
        step()
    if dev != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(n):
        step()
    torch.cuda.synchronize()
    return round(torch.cuda.max_memory_allocated() / 2**30, 3)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="batch 8, 2 rounds, 3-step fit: checks the script, measures nothing")
    ap.add_argument("--dry-run", action="store_true", help="the same as --device cpu --tiny")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=31)
    ap.add_argument("--reps", type=int, default=20, help="steps per contender per round")
    ap.add_argument("--precision", default=None, help="Fabric precision (default bf16-mixed on cuda, 32-true on cpu)")
    ap.add_argument("--fit-steps", type=int, default=800)
    ap.add_argument("--bank-rows", type=int, default=50_000, help="InvP's training set (bank and graph rows)")
    ap.add_argument("--out", default=None, help="default results/gpu_check_<device name>.json")
    ap.add_argument("--fewshot-steps", type=int, default=40, help="steps of the few-shot rows (8 episodes each)")
    a = ap.parse_args(argv)
    if a.dry_run:
        a.device, a.tiny = "cpu", True
    if a.tiny:
        a.batch, a.rounds, a.reps, a.fit_steps, a.bank_rows = 8, 2, 2, 3, 512
        a.fewshot_steps = 2
    dev = a.device
    if dev == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device (use --device cpu --tiny to check the script on the CPU)")
    precision = a.precision or ("bf16-mixed" if dev == "cuda" else "32-true")
    bf16 = precision.startswith("bf16")
    name = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"
    out = a.out or f"results/gpu_check_{device_slug(name)}.json"
    sync = torch.cuda.synchronize if dev == "cuda" else None
    torch.backends.cudnn.benchmark = True

    res = {"benchmark": "gpu_check", "device": name, "precision": precision, "batch": a.batch, "rounds": a.rounds,
           "reps": a.reps, "tiny": a.tiny,
           **environment(seeds={"weights": 0, "data": 0, "views": "step k of each contender: generator seed k",
                                "fit": "the simclr preset's seed 0", "invp_batch_order": "epoch e: torch.randperm at seed e",
                                "invp_stand_in_labels": 0, "invp_parts": "anchors and noise at seed 0"})}  # fmt: skip
    if dev == "cuda":
        res["cuda"] = torch.version.cuda
    print(f"gpu_check on {name} ({precision}), batch {a.batch}", flush=True)

    gx = torch.Generator().manual_seed(0)
    pool = [torch.randint(0, 256, (a.batch, 3, 32, 32), dtype=torch.uint8, generator=gx).to(dev) for _ in range(4)]
    k = [0]

    def images():  # the same uint8 batches for every contender, cycling
        k[0] += 1
        return pool[k[0] % 4]

    common = ["model.backbone=resnet18", "model.cifar_stem=true", "model.norm=cifar", "model.proj_hidden=2048",
              "model.proj_dim=128", "model.proj_layers=2", f"trainer.accelerator={dev}", "views.blur_p=0.0",
              "optim.name=sgd", f"optim.lr={LR}", "optim.scale_lr=false", f"optim.momentum={MOMENTUM}",
              f"optim.weight_decay={WD}", "optim.warmup_steps=0", f"optim.batch_size={a.batch}"]  # fmt: skip
    lib, model = make_step("simclr/cifar10", images, common + [f"method.temperature={T}"], accelerator=dev,
                           precision=precision, return_model=True)  # fmt: skip
    views = model.module.views if hasattr(model, "module") else model.views
    bare = bare_simclr_step(resnet18_cifar(), 512, images, views, CIFAR_MEAN, CIFAR_STD, lr=LR, momentum=MOMENTUM,
                            weight_decay=WD, temperature=T, device=dev, bf16=bf16)  # fmt: skip
    gv = torch.Generator(device=dev)

    def views_only():  # the library step's two views, alone, under the same autocast
        gv.manual_seed(k[0])
        x = images()
        with torch.autocast(torch.device(dev).type, dtype=torch.bfloat16, enabled=bf16):
            views(x, gv), views(x, gv)

    contenders = {"library": lib, "bare": bare, "views": views_only}
    for n, f in contenders.items():
        res[f"{n}_peak_mem_gib"] = peak_memory(f, dev)
    times = interleaved(contenders, a.rounds, a.reps, warmup=2, sync=sync)
    med = {n: statistics.median(t) for n, t in times.items()}
    res["img_per_s"] = {n: round(a.batch / med[n], 1) for n in ("library", "bare")}
    res["views_img_per_s"] = round(a.batch / med["views"], 1)
    res["median_ms"] = {n: round(1000 * m, 3) for n, m in med.items()}
    res["ratio_library_vs_bare_time"] = round(median_ratio(times, "library", "bare"), 4)
    res["views_share_of_library_step"] = round(median_ratio(times, "views", "library"), 4)
    res["views_share_of_bare_step"] = round(median_ratio(times, "views", "bare"), 4)
    res["quartiles_over_rounds"] = {"library_vs_bare_time": ratio_quartiles(times, "library", "bare"),
                                    "views_share_of_library_step": ratio_quartiles(times, "views", "library")}  # fmt: skip
    res["per_round_s"] = {n: [round(x, 6) for x in t] for n, t in times.items()}
    print(f"SimCLR ResNet-18: library {res['img_per_s']['library']:.0f} img/s, bare {res['img_per_s']['bare']:.0f} img/s, "
          f"library / bare time = {res['ratio_library_vs_bare_time']:.3f}; views {res['views_share_of_library_step']:.1%} "
          f"of the library step ({a.rounds} interleaved rounds of {a.reps} steps)", flush=True)  # fmt: skip

    mo = ["method.queue_size=4096", "method.momentum=0.99"]
    moco = make_step("moco/cifar10", images, common + mo, accelerator=dev, precision=precision)
    # LooC: the looc/imagenet100 step at 32 px, with the SimCLR row's network and optimiser (as MoCo's row)
    looc = make_step("looc/imagenet100", images, common + ["data.image_size=32"], accelerator=dev,
                     precision=precision)  # fmt: skip
    # InvP: the invp/cifar10 step as the recipe sets it (its network, SGD, K 4096), at this script's batch, its bank and
    # graph sized from a stand-in training set of --bank-rows rows; batches of distinct rows in epoch order, L_inv on
    order = EpochOrder(a.bank_rows, a.batch, lambda index: images(), device=dev)
    io = [f"trainer.accelerator={dev}", f"optim.batch_size={a.batch}"]
    if a.tiny:  # K must not exceed the tiny bank
        io.append("method.n_background=64")
    invp, invp_model = make_step("invp/cifar10", order.images, io, accelerator=dev, precision=precision,
                                 train_set=SizedRows(a.bank_rows), extra=order.extra, return_model=True)  # fmt: skip
    m = invp_of(invp_model)
    whole_bank_graph(m)  # the graph's edges before timing (timed below, warm, as what a per-epoch rebuild would cost)
    res["invp_bank_rows"] = a.bank_rows
    family = {"moco": moco, "looc": looc, "invp": invp}
    for n, f in family.items():
        res[f"{n}_peak_mem_gib"] = peak_memory(f, dev)
    tf = interleaved(family, max(3, a.rounds // 4), a.reps, warmup=1, sync=sync)
    fmed = {n: statistics.median(t) for n, t in tf.items()}
    res["moco_v2_img_per_s"] = round(a.batch / fmed["moco"], 1)
    res["looc_img_per_s"] = round(a.batch / fmed["looc"], 1)
    res["invp_img_per_s"] = round(a.batch / fmed["invp"], 1)
    res["family_median_ms"] = {n: round(1000 * v, 3) for n, v in fmed.items()}
    res["family_ratio_vs_moco_time"] = {n: round(median_ratio(tf, n, "moco"), 4) for n in ("looc", "invp")}
    res["family_per_round_s"] = {n: [round(x, 6) for x in t] for n, t in tf.items()}
    print(f"MoCo v2 ResNet-18: {res['moco_v2_img_per_s']:.0f} img/s; LooC (3 spaces): {res['looc_img_per_s']:.0f} "
          f"img/s; "
          f"InvP ({a.bank_rows} rows): {res['invp_img_per_s']:.0f} img/s; time vs MoCo: LooC "
          f"{res['family_ratio_vs_moco_time']['looc']:.3f}, InvP {res['family_ratio_vs_moco_time']['invp']:.3f}", flush=True)

    # the dense family (issue 16) at the same batch, 32 px, with the SimCLR row's network and optimiser (as LooC's row):
    # ResNet-18 with the CIFAR stem keeps 32 px images at stride 8, so PixPro's final map is 4 x 4 (16 pixels per view;
    # the recipe's ResNet-50 at 224 px gives 7 x 7; at 32 px it would give 1 x 1, no pixels to match)
    dense_common = common + ["data.image_size=32", "optim.warmup_epochs=null"]
    pixpro, pixpro_model = make_step("pixpro/imagenet", images, dense_common, accelerator=dev, precision=precision,
                                     return_model=True)  # fmt: skip
    enc = invp_of(pixpro_model).encoder
    with torch.no_grad():
        enc.eval()
        res["pixpro_map_px"] = list(enc.forward_features(torch.zeros(1, 3, 32, 32, device=dev)).shape[-2:])
        enc.train()
    # DetCo: its 3 x 3 jigsaw of a 32 px image is of 10 px patches, each drawn at DETCO_LOCAL px (the recipe's 64 px
    # draws of 74 px patches of 224 px images, scaled to 32 px); the recipe's 4 levels, 8 queues of 65,536
    detco = make_step("detco/imagenet", images, dense_common + [f"method.local_size={DETCO_LOCAL}"], accelerator=dev,
                      precision=precision)  # fmt: skip
    res["image_px"] = 32
    res["detco_local_px"] = DETCO_LOCAL
    dense = {"moco": moco, "pixpro": pixpro, "detco": detco}
    for n in ("pixpro", "detco"):
        res[f"{n}_peak_mem_gib"] = peak_memory(dense[n], dev)
    td = interleaved(dense, max(3, a.rounds // 4), a.reps, warmup=1, sync=sync)
    dmed = {n: statistics.median(t) for n, t in td.items()}
    res["pixpro_img_per_s"] = round(a.batch / dmed["pixpro"], 1)
    res["detco_img_per_s"] = round(a.batch / dmed["detco"], 1)
    res["dense_moco_img_per_s"] = round(a.batch / dmed["moco"], 1)
    res["dense_median_ms"] = {n: round(1000 * v, 3) for n, v in dmed.items()}
    res["dense_ratio_vs_moco_time"] = {n: round(median_ratio(td, n, "moco"), 4) for n in ("pixpro", "detco")}
    res["dense_quartiles_vs_moco"] = {n: ratio_quartiles(td, n, "moco") for n in ("pixpro", "detco")}
    res["dense_per_round_s"] = {n: [round(x, 6) for x in t] for n, t in td.items()}
    print(f"dense, 32 px, ResNet-18 (CIFAR stem): MoCo v2 {res['dense_moco_img_per_s']:.0f} img/s; PixPro (final map "
          f"{res['pixpro_map_px'][0]} x {res['pixpro_map_px'][1]}) {res['pixpro_img_per_s']:.0f} img/s; DetCo (4 levels, "
          f"3 x 3 patches drawn at {DETCO_LOCAL} px) {res['detco_img_per_s']:.0f} img/s; time vs MoCo: PixPro "
          f"{res['dense_ratio_vs_moco_time']['pixpro']:.3f}, DetCo {res['dense_ratio_vs_moco_time']['detco']:.3f}",
          flush=True)  # fmt: skip

    # RoCL (issue 17): the rocl/cifar10 step (7-step l_inf PGD on view 1 against NT-Xent to view 2, BatchNorm in eval
    # mode for the attack, the three views in one pass) at the same batch with the SimCLR row's network and optimiser
    # (its own head: 512-2048-128 without BatchNorm), interleaved with the SimCLR row's library step
    rocl = make_step("rocl/cifar10", images, common + ["optim.warmup_epochs=null"], accelerator=dev, precision=precision)
    res["rocl_peak_mem_gib"] = peak_memory(rocl, dev)
    tr = interleaved({"simclr": lib, "rocl": rocl}, max(3, a.rounds // 4), a.reps, warmup=1, sync=sync)
    rmed = {n: statistics.median(t) for n, t in tr.items()}
    res["rocl_img_per_s"] = round(a.batch / rmed["rocl"], 1)
    res["rocl_simclr_img_per_s"] = round(a.batch / rmed["simclr"], 1)
    res["rocl_ratio_vs_simclr_time"] = round(median_ratio(tr, "rocl", "simclr"), 4)
    res["rocl_quartiles_vs_simclr"] = ratio_quartiles(tr, "rocl", "simclr")
    res["rocl_per_round_s"] = {n: [round(x, 6) for x in t] for n, t in tr.items()}
    print(f"RoCL (7 attack steps), ResNet-18: {res['rocl_img_per_s']:.0f} img/s vs SimCLR {res['rocl_simclr_img_per_s']:.0f}; "
          f"time vs SimCLR {res['rocl_ratio_vs_simclr_time']:.3f}", flush=True)  # fmt: skip
    # the issue-19 generator: a StyleGAN2 step and a Labels4Free step on it, at config-F widths (--tiny: the presets')
    widths = [] if a.tiny else ["method.style_dim=512", "method.n_mlp=8", "method.channel_multiplier=2",
                                "method.max_channels=512", "method.channel_base=16384"]  # fmt: skip
    gan_common = [f"trainer.accelerator={dev}", f"optim.batch_size={a.batch}", "data.image_size=32", *widths]
    count = {"stylegan2": [0], "labels4free": [0]}

    def advancing(name):  # the step number advances: lazy R1 one step in 16, as in training
        def extra():
            count[name][0] += 1
            return {"step": count[name][0]}

        return extra

    from contrastlab.config import load_config as _load
    from contrastlab.methods.stylegan2 import StyleGAN2Config, build_discriminator, build_generator
    from contrastlab.nn.stylegan2 import save_stylegan2

    with tempfile.TemporaryDirectory() as gd:
        torch.manual_seed(0)
        gcfg = StyleGAN2Config(**_load("stylegan2", widths).method)
        gen = build_generator(gcfg)
        save_stylegan2(Path(gd) / "g.pt", gen, gen, build_discriminator(gcfg), gen.mean_latent(256))
        del gen
        sg = make_step("stylegan2/digits", images, gan_common, channels_last=False, accelerator=dev, precision=precision,
                       extra=advancing("stylegan2"))  # fmt: skip
        l4f = make_step("labels4free/digits", images, [*gan_common, f"method.generator_checkpoint={Path(gd) / 'g.pt'}"],
                        channels_last=False, accelerator=dev, precision=precision, extra=advancing("labels4free"))  # fmt: skip
    gan = {"stylegan2": sg, "labels4free": l4f}
    for n, f in gan.items():
        res[f"{n}_peak_mem_gib"] = peak_memory(f, dev)
    tg = interleaved(gan, max(3, a.rounds // 4), a.reps, warmup=1, sync=sync)
    gmed = {n: statistics.median(t) for n, t in tg.items()}
    res["stylegan2_img_per_s"] = round(a.batch / gmed["stylegan2"], 1)
    res["labels4free_img_per_s"] = round(a.batch / gmed["labels4free"], 1)
    res["gan_median_ms"] = {n: round(1000 * v, 3) for n, v in gmed.items()}
    res["labels4free_ratio_vs_stylegan2_time"] = round(median_ratio(tg, "labels4free", "stylegan2"), 4)
    res["gan_per_round_s"] = {n: [round(x, 6) for x in t] for n, t in tg.items()}
    print(f"StyleGAN2 32 px ({'preset' if a.tiny else 'config-F'} widths): {res['stylegan2_img_per_s']:.0f} img/s; "
          f"Labels4Free on it: {res['labels4free_img_per_s']:.0f} img/s "
          f"({res['labels4free_ratio_vs_stylegan2_time']:.3f}x the StyleGAN2 step)", flush=True)  # fmt: skip
    # adversarial self-supervised pre-training and fine-tuning (issue 17, Chen et al. CVPR 2020) at the same batch and
    # 32 px with the SimCLR row's network and optimiser: the adv_rotation/cifar10 step (10-step PGD on the rotation
    # loss, then clean + adversarial CE) and the adv_finetune/cifar10 step (10-step PGD on the labels, CE of the
    # adversarial images; labels of a stand-in training set, batches of distinct rows), interleaved with MoCo
    adv_common = common + ["data.image_size=32"]
    adv_rot = make_step("adv_rotation/cifar10", images, adv_common, accelerator=dev, precision=precision)
    ft_order = EpochOrder(a.bank_rows, a.batch, lambda index: images(), device=dev)
    adv_ft = make_step("adv_finetune/cifar10", ft_order.images, adv_common, accelerator=dev, precision=precision,
                       train_set=SizedRows(a.bank_rows), extra=ft_order.extra)  # fmt: skip
    advf = {"moco": moco, "adv_rotation": adv_rot, "adv_finetune": adv_ft}
    for n in ("adv_rotation", "adv_finetune"):
        res[f"{n}_peak_mem_gib"] = peak_memory(advf[n], dev)
    ta = interleaved(advf, max(3, a.rounds // 4), a.reps, warmup=1, sync=sync)
    amed = {n: statistics.median(t) for n, t in ta.items()}
    for n in ("adv_rotation", "adv_finetune"):
        res[f"{n}_img_per_s"] = round(a.batch / amed[n], 1)
    res["adv_moco_img_per_s"] = round(a.batch / amed["moco"], 1)
    res["adv_median_ms"] = {n: round(1000 * v, 3) for n, v in amed.items()}
    res["adv_ratio_vs_moco_time"] = {n: round(median_ratio(ta, n, "moco"), 4) for n in ("adv_rotation", "adv_finetune")}
    res["adv_quartiles_vs_moco"] = {n: ratio_quartiles(ta, n, "moco") for n in ("adv_rotation", "adv_finetune")}
    res["adv_per_round_s"] = {n: [round(x, 6) for x in t] for n, t in ta.items()}
    print(f"adversarial, 32 px, ResNet-18 (CIFAR stem), PGD-10: MoCo v2 {res['adv_moco_img_per_s']:.0f} img/s; adv "
          f"rotation pre-training {res['adv_rotation_img_per_s']:.0f} img/s; adv fine-tuning "
          f"{res['adv_finetune_img_per_s']:.0f} img/s; time vs MoCo: {res['adv_ratio_vs_moco_time']['adv_rotation']:.3f}, "
          f"{res['adv_ratio_vs_moco_time']['adv_finetune']:.3f}", flush=True)  # fmt: skip

    sync = sync or (lambda: None)
    rebuild = []
    for _ in range(3):
        sync()
        t = time.perf_counter()
        whole_bank_graph(m)
        sync()
        rebuild.append(time.perf_counter() - t)
    res["invp_whole_bank_rebuild_s"] = rebuild = round(statistics.median(rebuild), 4)
    parts = invp_step_parts(m, a.batch, device=dev)
    tp = interleaved(parts, max(3, a.rounds // 4), a.reps, warmup=1, sync=sync)
    pmed = {n: statistics.median(t) for n, t in tp.items()}
    graph_step = pmed["positive_search"] + pmed["graph_rows"]
    per_epoch = a.bank_rows // a.batch
    res["invp_parts_ms"] = {n: round(1000 * v, 4) for n, v in pmed.items()}
    res["invp_parts_share_of_step"] = {n: round(v / fmed["invp"], 4) for n, v in pmed.items()}
    res["invp_steps_per_epoch"] = per_epoch
    res["invp_graph_update_s_per_epoch"] = round(per_epoch * graph_step, 4)
    res["invp_graph_update_share_of_epoch"] = round(graph_step / fmed["invp"], 4)
    res["invp_whole_bank_rebuild_share_of_epoch"] = round(rebuild / (rebuild + per_epoch * fmed["invp"]), 4)
    print("InvP bank and graph per step: " + ", ".join(f"{n} {1000 * v:.3f} ms" for n, v in pmed.items())
          + f"; graph update {res['invp_graph_update_share_of_epoch']:.1%} of an epoch; a whole-bank rebuild "
          f"{res['invp_whole_bank_rebuild_s']:.3f} s ({res['invp_whole_bank_rebuild_share_of_epoch']:.1%} of an epoch "
          "with it)", flush=True)  # fmt: skip

    from contrastlab.config import load_config
    from contrastlab.engine.trainer import fit

    fewshot_episodes(res, dev, precision, a.fewshot_steps, a.tiny)

    with tempfile.TemporaryDirectory() as d:
        t = time.time()
        # --tiny: no warm-up (the preset's 20 warm-up steps are refused in a 3-step run)
        warm = ["optim.warmup_steps=0"] if a.fit_steps <= 20 else []
        r = fit(load_config("simclr", [f"trainer.accelerator={dev}", f"trainer.precision={precision}", "trainer.progress=false",
                                       f"trainer.max_steps={a.fit_steps}", "trainer.knn_every=100", f"trainer.out_dir={d}",
                                       *warm]))  # fmt: skip
        res["digits_simclr_fit_steps"] = a.fit_steps
        res["digits_simclr_fit_s"] = round(time.time() - t, 1)
        res["digits_simclr_fit_knn_top1"] = r.metrics.get("knn_top1")
    emit(res, out)


def fewshot_episodes(res, dev, precision, steps, tiny):
    """Issue 18's rows: CWT meta-training (stage 2 of the cwt/digits recipe on a stage-1 network fitted for a
    few steps first, 100 classifier steps per episode) and RP-Net training (rpnet/digits: T = 4 in training),
    each ``steps`` trainer steps of 8 base-class episodes through ``fit`` at the given precision, then the
    trainer's closing few-shot check (100 novel-class episodes, T = 10): episodes/s of training and mIoU."""
    from contrastlab.config import load_config
    from contrastlab.engine.trainer import fit

    base = [f"trainer.accelerator={dev}", f"trainer.precision={precision}", "trainer.progress=false", "trainer.knn_every=0"]
    small = ["data.n_train=500", "data.n_test=200"] if tiny else []
    with tempfile.TemporaryDirectory() as d:
        s1 = f"{d}/cwt_stage1"
        fit(load_config("cwt_stage1", [*base, *small, f"trainer.max_steps={2 if tiny else 100}", f"trainer.out_dir={s1}"]))
        for name, recipe, extra in (("cwt", "cwt", [f"method.stage1={s1}"]), ("rpnet", "rpnet", [])):
            cfg = load_config(recipe, [*base, *small, *extra, f"trainer.max_steps={steps}", f"trainer.out_dir={d}/{name}"])
            t = time.time()
            r = fit(cfg)
            secs = time.time() - t
            res[f"{name}_episodes"] = steps * cfg.optim.batch_size
            res[f"{name}_train_s"] = r.metrics.get("train_seconds")
            res[f"{name}_episodes_per_s"] = round(res[f"{name}_episodes"] / max(r.metrics.get("train_seconds") or secs, 1e-9), 1)
            res[f"{name}_fit_wall_s"] = round(secs, 1)
            res[f"{name}_fewshot_miou_100_episodes"] = r.metrics.get("fewshot_miou")
            print(f"{name}: {res[f'{name}_episodes']} episodes, {res[f'{name}_episodes_per_s']} episodes/s of training "
                  f"({res[f'{name}_fit_wall_s']} s with set-up and the closing 100-episode check: mIoU "
                  f"{res[f'{name}_fewshot_miou_100_episodes']})", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
