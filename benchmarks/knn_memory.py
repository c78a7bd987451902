"""kNN evaluation and memory-bank top-k at scale: time and peak extra memory (CPU).

Two cases of issue 3:
- kNN evaluation (`contrastlab.eval.knn.knn_eval`) with 50,000 train and 10,000 test features
  of dimension 512 (CIFAR size at ResNet-18 width), 10 classes, k=20: seconds and peak extra
  memory. The inputs themselves take 117 MB; a naive 10,000 x 50,000 similarity matrix alone
  would take 1.9 GB.
- top-k neighbours (`topk_neighbours`) of a batch of 256 queries in a memory bank of
  1,281,167 x 128 (ImageNet size, 656 MB in fp32): seconds per batch (median) and peak extra
  memory. A 1.28M x 1.28M matrix would take 6.6 TB; even 256 x 1.28M is 1.3 GB.

Peak extra memory is the process's peak resident set size during the call minus its resident
size just before (Linux: the peak is reset through /proc/self/clear_refs before each call), so
it counts every temporary the call allocates, whoever allocates it. The last line is JSON.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import emit, environment  # noqa: E402

from contrastlab.eval.knn import knn_eval, topk_neighbours  # noqa: E402

MB = 1 << 20


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra(fn):
    """(result, seconds, peak extra resident bytes) of fn()."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        resettable = True
    except OSError:
        resettable = False
    before = _status_kb("VmRSS")
    hwm0 = _status_kb("VmHWM")
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    if not resettable and peak == hwm0:
        raise RuntimeError("cannot reset the peak RSS on this system; run each case in a fresh process")
    return out, dt, (peak - before) * 1024


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bank", type=int, default=1_281_167)
    ap.add_argument("--batches", type=int, default=5, help="query batches timed against the bank")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    res = {"benchmark": "knn_memory", **environment(seeds={"bank_and_queries": 0})}

    # 1. kNN evaluation, 50k x 10k x 512
    ftr = torch.randn(50_000, 512, generator=g)
    fte = torch.randn(10_000, 512, generator=g)
    ytr = torch.randint(0, 10, (50_000,), generator=g)
    yte = torch.randint(0, 10, (10_000,), generator=g)
    knn_eval(ftr[:2000], ytr[:2000], fte[:100], yte[:100], 10)  # warm-up (threads, allocator)
    r, dt, extra = peak_extra(lambda: knn_eval(ftr, ytr, fte, yte, 10, k=20, temperature=0.1))
    res["knn_50k_10k_512"] = {"seconds": round(dt, 2), "peak_extra_MiB": round(extra / MB, 1),
                              "inputs_MiB": round((ftr.numel() + fte.numel()) * 4 / MB, 1),
                              "naive_sim_matrix_MiB": round(50_000 * 10_000 * 4 / MB, 1), "top1": r["top1"]}  # fmt: skip
    print(f"kNN 50k x 10k x 512: {dt:.2f} s, peak extra {extra / MB:.1f} MiB "
          f"(inputs {res['knn_50k_10k_512']['inputs_MiB']} MiB; a full similarity matrix would be "
          f"{res['knn_50k_10k_512']['naive_sim_matrix_MiB']} MiB)")
    del ftr, fte

    # 2. memory bank top-k, 1.28M x 128, 256 queries
    bank = torch.randn(a.bank, 128, generator=g)
    bank.div_(bank.norm(dim=1, keepdim=True))
    times, extras = [], []
    for b in range(a.batches + 1):
        q = torch.nn.functional.normalize(torch.randn(256, 128, generator=g), dim=1)
        (v, i), dt, extra = peak_extra(lambda: topk_neighbours(q, bank, k=200))
        if b:  # the first batch warms up
            times.append(dt)
            extras.append(extra)
    # check against a direct computation for the last batch (a 256 x N matrix: fine once, here)
    ref_v, _ = (q @ bank.T).topk(200, dim=1)
    assert torch.allclose(v, ref_v, atol=1e-5)
    res["bank_topk_1.28M_128_q256"] = {"bank_rows": a.bank, "bank_MiB": round(bank.numel() * 4 / MB, 1), "k": 200,
                                       "median_seconds_per_batch": round(statistics.median(times), 3),
                                       "max_peak_extra_MiB": round(max(extras) / MB, 1)}  # fmt: skip
    print(f"bank top-k: {a.bank} x 128 bank ({bank.numel() * 4 / MB:.0f} MiB), 256 queries, k=200: "
          f"median {statistics.median(times):.3f} s per batch, peak extra {max(extras) / MB:.1f} MiB")
    emit(res, a.out)


if __name__ == "__main__":
    main()
