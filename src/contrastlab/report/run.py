"""``contrastlab report RUN_DIR``: plots and an HTML page for a finished (or running) run."""
from __future__ import annotations

import json
from pathlib import Path

import torch


def build_run_report(run_dir: Path, device=None, n_embed: int = 2000) -> Path:
    """Loss / kNN curves from metrics.csv, a 2-D map of test embeddings coloured by class,
    a nearest-neighbour retrieval grid (test queries, training neighbours), and the eval
    results the run folder holds (summary.json, eval.json)."""
    from ..errors import UserError
    from ..data import build_datasets
    from ..eval.features import feature_bank
    from ..eval.run import load_run
    from ..methods.contract import translates
    from . import read_metrics_csv, retrieval_from_features, write_report

    run_dir = Path(run_dir)
    if not (run_dir / "last.ckpt").exists():
        raise UserError(f"{run_dir} is not a run folder (no last.ckpt); pass the folder given as trainer.out_dir")
    cfg, method, ckpt = load_run(str(run_dir), [])
    if translates(method):
        return _translation_report(run_dir, cfg, ckpt)
    device = device or torch.device("cpu")
    encoder = method.encoder.to(device)
    train, test = build_datasets(cfg.data)
    evalset = test if test is not None else train
    label = evalset.default_label
    fte, sub = feature_bank(encoder, evalset, n_max=n_embed, seed=0, device=device)
    ftr, bank = feature_bank(encoder, train, n_max=20000, seed=1, device=device)
    names = evalset.classes.get(label)
    yte = evalset.labels[label][sub]
    ytr = train.labels[label][bank]

    class _Images:  # lazy access to images by position in a subset
        def __init__(self, ds, idx):
            self.ds, self.idx = ds, idx

        def __getitem__(self, i):
            return self.ds[int(self.idx[i])][0]

    retrieval = retrieval_from_features(fte, yte, _Images(evalset, sub), ftr, ytr, _Images(train, bank), n_queries=8, k=8)
    summary, evals = _read_results(run_dir)
    metrics = read_metrics_csv(run_dir / "metrics.csv") if (run_dir / "metrics.csv").exists() else []
    title = f"contrastlab: {cfg.method['name']} on {cfg.data.name} (step {ckpt['step']})"
    return write_report(run_dir, metrics, embeddings={"feats": fte, "labels": yte, "class_names": names},
                        retrieval=retrieval, title=title, summary=summary, evaluations=evals)  # fmt: skip


def _read_results(run_dir: Path) -> tuple[dict, dict]:
    """(the training summary, the evaluations) of a run folder: summary.json and eval.json."""
    out = []
    for name in ("summary.json", "eval.json"):
        p = run_dir / name
        try:
            out.append(json.loads(p.read_text()) if p.exists() else {})
        except (json.JSONDecodeError, OSError):
            out.append({})
    summary = {k: v for k, v in out[0].items() if not isinstance(v, (list, dict))}
    return summary, out[1]


def _translation_report(run_dir: Path, cfg, ckpt) -> Path:
    """Curves (losses, FID / KID of the monitor) and the sample grids of a translation run."""
    from PIL import Image

    from ..files import atomic_save
    from . import read_metrics_csv, write_report

    img_dir = run_dir / "report"
    img_dir.mkdir(parents=True, exist_ok=True)
    figures = []
    grids = sorted((run_dir / "samples").glob("step_*.png"))
    two_way = cfg.method["name"] != "cut"
    rows = ("input A, its translation to B, a real B image, the generator applied to it (identity)"
            + ("; then the same for B -> A" if two_way else ""))  # fmt: skip
    for label, path in (("first", grids[0] if grids else None), ("latest", grids[-1] if grids else None)):
        if path is None or (label == "first" and len(grids) < 2):
            continue
        im = Image.open(path)
        scale = max(1, round(800 / im.width))  # small images: enlarge without smoothing
        big = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
        atomic_save(img_dir / f"samples_{label}.png", lambda tmp: big.save(tmp, format="PNG"))
        step = int(path.stem.split("_")[1])
        figures.append((f"Samples at step {step}", f"samples_{label}.png", f"Rows: {rows}."))
    metrics = read_metrics_csv(run_dir / "metrics.csv") if (run_dir / "metrics.csv").exists() else []
    title = f"contrastlab: {cfg.method['name']} on {cfg.data.name} (step {ckpt['step']})"
    summary, evals = _read_results(run_dir)
    return write_report(run_dir, metrics, title=title, summary=summary, evaluations=evals, figures=figures)
