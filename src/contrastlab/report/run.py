"""``contrastlab report RUN_DIR``: plots and an HTML page for a finished (or running) run."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .values import fmt


def build_run_report(run_dir: Path, device=None, n_embed: int = 2000, embedding_method: str | None = None) -> Path:
    """Loss / kNN curves from metrics.csv, a 2-D map of test embeddings coloured by class,
    a nearest-neighbour retrieval grid (test queries, training neighbours), the method's own
    pictures (InvP's discovered positives, LooC's neighbours in each space) and the eval
    results the run folder holds (summary.json, eval.json). ``embedding_method``: "tsne"
    (default) or "pca" for the 2-D map."""
    from ..errors import UserError
    from ..data import build_datasets
    from ..eval.features import feature_bank
    from ..eval.run import load_run
    from ..methods.contract import has_spaces, shows_positives, translates
    from . import read_metrics_csv, retrieval_from_features, write_report

    run_dir = Path(run_dir)
    if not (run_dir / "last.ckpt").exists():
        raise UserError(f"{run_dir} is not a run folder (no last.ckpt); pass the folder given as trainer.out_dir")
    cfg, method, ckpt = load_run(str(run_dir), [])
    if translates(method):
        return _translation_report(run_dir, cfg, ckpt)
    if not hasattr(method, "encoder"):  # generators (StyleGAN2, Labels4Free): sample grids, mask overlays
        return _generator_report(run_dir, cfg, ckpt)
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

    retrieval = retrieval_from_features(fte, yte, _Images(evalset, sub), ftr, ytr, _Images(train, bank), n_queries=8, k=8)
    figures = []
    if shows_positives(method):
        figures.append(positives_figure(method, train, label, run_dir / "report", cfg.method.get("depth"))[0])
    if has_spaces(method):
        figures.append(spaces_figure(method, train, evalset, label, run_dir / "report", device)[0])
    summary, evals = _read_results(run_dir)
    seg = seg_figure(run_dir, evals, run_dir / "report")
    if seg is not None:
        figures.append(seg)
    figures.extend(robust_figures(run_dir, evals, run_dir / "report"))
    fewshot = fewshot_figure(run_dir, evals, run_dir / "report")
    if fewshot is not None:
        figures.append(fewshot)
    metrics = read_metrics_csv(run_dir / "metrics.csv") if (run_dir / "metrics.csv").exists() else []
    title = f"contrastlab: {cfg.method['name']} on {cfg.data.name} (step {ckpt['step']})"
    return write_report(run_dir, metrics, embeddings={"feats": fte, "labels": yte, "class_names": names},
                        retrieval=retrieval, title=title, summary=summary, evaluations=evals,
                        figures=figures, embedding_method=embedding_method)  # fmt: skip


def positives_figure(method, train, label: str, img_dir: Path, depth: int | None = None, n_queries: int = 6,
                     max_shown: int = 12, seed: int = 0) -> tuple[tuple[str, str, str], dict | None]:  # fmt: skip
    """The "Discovered positives" section of a method that finds positives among the training
    images (``discovered_positives``, :class:`contrastlab.methods.contract.ShowsPositives`): up to
    ``n_queries`` training images (seeded; those with positives first), each with the positives
    found for it, framed by ``label``; written to ``img_dir/positives.png``. Returns the figure
    entry for :func:`write_report` and the picture (None, and a one-line section, when the method
    has found none yet)."""
    from ..eval.features import bank_indices
    from .pictures import positives_picture, save_picture

    heading = "Discovered positives"
    if n_queries < 1:
        raise ValueError(f"n_queries must be >= 1, got {n_queries}")
    candidates = bank_indices(len(train), min(len(train), max(64, 8 * n_queries)), seed)
    found = method.discovered_positives(candidates)
    if found is None:
        return (heading, "", "No positives to show: the run's kNN graph has no edge yet (the run stopped before "
                             "its first training step built it)."), None  # fmt: skip
    order = sorted(range(len(found)), key=lambda r: not found[r])[:n_queries]  # those with positives first
    queries = [int(candidates[r]) for r in order]
    picture = positives_picture(queries, [found[r] for r in order], train.labels[label],
                                lambda i: train[int(i)][0], max_shown=max_shown,
                                class_names=train.classes.get(label), label_name=label)  # fmt: skip
    img_dir.mkdir(parents=True, exist_ok=True)
    save_picture(picture, img_dir / "positives.png")
    hops = f"within {depth} hops of the run's kNN graph" if depth else "in the run's kNN graph"
    caption = (f"Each row: a training scene (blue frame), then the positives the method discovers for it {hops} "
               f"(the hard positives its loss takes first, at most {max_shown} shown); green frame = same {label}, "
               f"red = different. Share of the discovered positives with the query's {label} over these "
               f"{len(queries)} queries: {fmt(picture['precision'])} ({sum(picture['n_found'])} positives); over "
               f"the hard positives: {fmt(picture['hard_precision'])}.")  # fmt: skip
    return (heading, "positives.png", caption), picture


def spaces_figure(method, train, evalset, label: str, img_dir: Path, device=None, n_queries: int = 3, k: int = 8,
                  n_bank: int | None = 20000, seed: int = 0) -> tuple[tuple[str, str, str], dict]:  # fmt: skip
    """The "Neighbours in each space" section of a method with several embedding spaces
    (``embedding_spaces``, :class:`contrastlab.methods.contract.HasSpaces`): ``n_queries`` images of
    ``evalset`` (seeded), each with its ``k`` cosine nearest training images (a seeded bank of at
    most ``n_bank``) in every space, one row per space; written to ``img_dir/spaces.png``. Returns
    the figure entry for :func:`write_report` and the picture with the per-space retrievals."""
    from ..eval.features import bank_indices, extract_features
    from .pictures import save_picture, spaces_grid, spaces_retrieval

    device = device or torch.device("cpu")
    q_idx = bank_indices(len(evalset), n_queries, seed)
    b_idx = bank_indices(len(train), n_bank, seed + 1)
    net = _AllSpaces(method).train(method.training)  # extract_features restores this mode
    qf = extract_features(net, evalset, device=device, indices=q_idx).split(net.dims, 1)
    bf = extract_features(net, train, device=device, indices=b_idx).split(net.dims, 1)
    names = net.names
    spaces = spaces_retrieval(dict(zip(names, qf)), evalset.labels[label][q_idx], _Images(evalset, q_idx),
                              dict(zip(names, bf)), train.labels[label][b_idx], _Images(train, b_idx),
                              n_queries=n_queries, k=k, seed=seed)  # fmt: skip
    picture = spaces_grid(spaces, class_names=evalset.classes.get(label), label_name=label, query_ids=q_idx)
    picture["spaces"], picture["query_indices"] = spaces, q_idx
    img_dir.mkdir(parents=True, exist_ok=True)
    save_picture(picture, img_dir / "spaces.png")
    precision = ", ".join(f"{n} {fmt(p)}" for n, p in picture["precision"].items())
    caption = (f"For each test query (blue frame), one row per embedding space ({', '.join(names)}): its "
               f"{len(spaces['retrievals'][names[0]]['neighbour_indices'][0])} nearest training images by cosine "
               f"similarity in that space; green frame = same {label}, red = different. Precision@k over these "
               f"{len(q_idx)} queries: {precision}.")  # fmt: skip
    return ("Neighbours in each space", "spaces.png", caption), picture


SEG_KEYS = ("seg/mask/model", "seg/mask/model/binary")  # eval.json entries whose masks the report draws


def seg_figure(run_dir: Path, evals: dict, img_dir: Path, n_shown: int = 6) -> tuple[str, str, str] | None:
    """The "Dense probe" section: when ``eval.json`` holds a ``seg`` result of the run's own
    features (``contrastlab eval seg RUN``; ``classes=all`` first, else ``binary``) and its masks
    file, the first ``n_shown`` test scenes beside their true and predicted masks, written to
    ``img_dir/seg_masks.png``. None when there is no such result (nothing is recomputed here)."""
    from ..data.voc import voc_palette
    from .pictures import mask_picture, save_picture

    for key in SEG_KEYS:
        r = evals.get(key)
        path = run_dir / str(r.get("examples")) if isinstance(r, dict) and r.get("examples") else None
        if path is not None and path.is_file():
            break
    else:
        return None
    try:
        ex = torch.load(path, weights_only=True)
        images, truth, pred = ex["images"][:n_shown], ex["truth"][:n_shown], ex["pred"][:n_shown]
    except Exception as e:  # an unreadable or older file: say so rather than fail the report
        return ("Dense probe: predicted masks", "", f"{path.name} could not be read ({type(e).__name__}); rerun "
                f"contrastlab eval seg {run_dir}.")  # fmt: skip
    names = []
    for i in range(len(pred)):
        keep = truth[i] != 255
        acc = float((pred[i][keep] == truth[i][keep]).float().mean()) if bool(keep.any()) else float("nan")
        names.append(f"#{int(ex['indices'][i])}: pixel acc {_pct(acc)}")
    img_dir.mkdir(parents=True, exist_ok=True)
    save_picture(mask_picture(images, truth, pred, voc_palette(), names), img_dir / "seg_masks.png")
    classes = ex["class_names"]
    legend = ", ".join(f"{c} = {n}" for c, n in enumerate(classes[:24]))
    caption = (f"The dense linear probe ({key}: mIoU {_pct(r.get('miou'))}, pixel accuracy {_pct(r.get('pixel_acc'))} "
               f"on the test split, {r.get('epochs')} epochs): each row a test scene, its true mask, the probe's "
               f"predicted mask; colours of the PASCAL VOC palette by class index ({legend}; 255, ignored: beige).")  # fmt: skip
    return ("Dense probe: predicted masks", "seg_masks.png", caption)


def robust_figures(run_dir: Path, evals: dict, img_dir: Path, n_shown: int = 8) -> list[tuple[str, str, str]]:
    """The "Robustness" sections, when ``eval.json`` holds an ``eval robust`` result of the run's own
    features: its attacked test images (clean | adversarial | perturbation magnified, from the
    examples file it kept) written to ``img_dir/adversarial.png``, and accuracy against eps
    (``img_dir/robust_curve.png``). Empty when there is no such result (nothing is recomputed)."""
    from .curves import plot_accuracy_vs_eps
    from .pictures import adversarial_picture, save_picture

    r = next((v for k, v in evals.items() if k.startswith("robust/") and k.endswith("/model") and isinstance(v, dict)),
             None)  # fmt: skip
    if r is None:
        return []
    out = []
    path = run_dir / str(r["examples"]) if r.get("examples") else None
    if path is not None and path.is_file():
        try:
            ex = torch.load(path, weights_only=True)
            clean, adv = ex["clean"][:n_shown], ex["adv"][:n_shown]
            names_of = ex.get("class_names") or []

            def name(c):
                c = int(c)
                return str(names_of[c]) if c < len(names_of) else str(c)

            rows = [f"{name(y)}: {name(p)} -> {name(q)}" for y, p, q in
                    zip(ex["labels"][:n_shown], ex["pred_clean"][:n_shown], ex["pred_adv"][:n_shown])]  # fmt: skip
            img_dir.mkdir(parents=True, exist_ok=True)
            save_picture(adversarial_picture(clean, adv, float(ex["eps"]), rows), img_dir / "adversarial.png")
            eps = float(ex["eps"])
            out.append(("Robustness: adversarial examples", "adversarial.png",
                        f"Test images attacked by PGD-{ex['steps']} ({ex['norm']}, eps {eps * 255:.3g}/255) against the "
                        f"{r.get('classifier', 'linear probe')}: the clean image, the adversarial one, and the perturbation "
                        f"magnified (grey = unchanged, black / white = -eps / +eps per channel). Each row: true label: "
                        f"prediction on the clean image -> on the adversarial one."))  # fmt: skip
        except Exception as e:  # an unreadable or older file: say so rather than fail the report
            out.append(("Robustness: adversarial examples", "", f"{path.name} could not be read ({type(e).__name__}); "
                        f"rerun contrastlab eval robust {run_dir}."))  # fmt: skip
    curves = {str(r.get("classifier", "linear probe")): r.get("curve") or []}
    if isinstance(r.get("robust_linear"), dict):
        curves["robust linear eval"] = r["robust_linear"].get("curve") or []
    img_dir.mkdir(parents=True, exist_ok=True)
    if plot_accuracy_vs_eps(curves, img_dir / "robust_curve.png", r.get("norm", "linf")):
        out.append(("Robustness: accuracy against eps", "robust_curve.png",
                    f"Test accuracy under PGD-{r.get('steps')} (solid) and FGSM (dashed) against the attack's radius "
                    f"({r.get('n_test')} test images; eps 0 is the clean accuracy): clean {_pct(r.get('top1'))}, PGD at "
                    f"the first eps {_pct(r.get('pgd_top1'))}."))  # fmt: skip
    return out


def fewshot_figure(run_dir: Path, evals: dict, img_dir: Path, n_shown: int = 6) -> tuple[str, str, str] | None:
    """The "Few-shot segmentation" section: for the first ``fewshot`` result of ``eval.json`` whose
    episodes file is there (``contrastlab eval fewshot RUN``), its first ``n_shown`` episodes: the
    supports with their masks, the query with its true and its predicted mask, written to
    ``img_dir/fewshot_episodes.png``. None when there is no such result (nothing is recomputed)."""
    from .pictures import episode_picture, save_picture

    for key, r in evals.items():
        path = run_dir / str(r.get("examples")) if key.startswith("fewshot/") and isinstance(r, dict) and r.get("examples") else None
        if path is not None and path.is_file():
            break
    else:
        return None
    title = "Few-shot segmentation: episodes"
    try:
        ex = torch.load(path, weights_only=True)
        sl = slice(0, n_shown)
        truth, pred = ex["query_mask"][sl].long(), ex["pred"][sl].long()
        picture_args = (ex["support_images"][sl], ex["support_masks"][sl], ex["query_image"][sl], truth, pred)
    except Exception as e:  # an unreadable or older file: say so rather than fail the report
        return (title, "", f"{path.name} could not be read ({type(e).__name__}); rerun contrastlab eval fewshot {run_dir}.")
    names = []
    for i in range(len(pred)):
        keep = truth[i] != 255
        inter = int(((pred[i] == 1) & (truth[i] == 1) & keep).sum())
        union = int((((pred[i] == 1) | (truth[i] == 1)) & keep).sum())
        names.append(f"{ex['class_names'][i]}: IoU {_pct(inter / union if union else float('nan'))}")
    img_dir.mkdir(parents=True, exist_ok=True)
    save_picture(episode_picture(*picture_args, row_names=names), img_dir / "fewshot_episodes.png")
    caption = (f"{r.get('shots')}-shot episodes of the novel classes of fold {r.get('fold')} ({key}: mIoU "
               f"{_pct(r.get('miou'))}, FB-IoU {_pct(r.get('fb_iou'))} over {r.get('episodes')} episodes, "
               f"{r.get('segmenter')}): each row the support images with their masks (red, the rest dimmed), the query "
               "with its true mask (green) and with the predicted mask (red); ignored pixels grey. The row's IoU is the "
               "episode's own.")  # fmt: skip
    return (title, "fewshot_episodes.png", caption)


def _pct(v) -> str:
    return f"{100 * v:.1f} %" if isinstance(v, (int, float)) and v == v else "n/a"


class _Images:  # lazy access to images by position in a subset
    def __init__(self, ds, idx):
        self.ds, self.idx = ds, idx

    def __getitem__(self, i):
        return self.ds[int(self.idx[i])][0]


class _AllSpaces(torch.nn.Module):
    """A method's embedding spaces concatenated ((B, sum of d)), to extract them in one pass; the
    spaces' names and widths are kept from the last call."""

    def __init__(self, method):
        super().__init__()
        self.method, self.names, self.dims = method, [], []

    def forward(self, x):
        z = self.method.embedding_spaces(x)
        self.names, self.dims = list(z), [int(v.shape[1]) for v in z.values()]
        return torch.cat(list(z.values()), dim=1)


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


GENERATOR_ROWS = {"stylegan2": "samples of the EMA generator on fixed z",
                  "labels4free": "rows: the foreground image (truncated), the background branch, the mask of the EMA alpha "
                                 "network, the composite"}  # fmt: skip


def _generator_report(run_dir: Path, cfg, ckpt) -> Path:
    """Curves, the first and latest sample grids of a generator run and, when ``contrastlab eval masks``
    has run, its mask overlays with the scores."""
    from PIL import Image

    from ..files import atomic_save
    from . import read_metrics_csv, write_report

    img_dir = run_dir / "report"
    img_dir.mkdir(parents=True, exist_ok=True)
    summary, evals = _read_results(run_dir)
    grids = sorted((run_dir / "samples").glob("step_*.png"))
    shown = [("first", grids[0])] if len(grids) > 1 else []
    shown += [("latest", grids[-1])] if grids else []
    r = evals.get("masks/mask/labels4free")
    if isinstance(r, dict) and r.get("examples") and (run_dir / str(r["examples"])).is_file():
        shown.append(("masks", run_dir / str(r["examples"])))
    figures = []
    for label, path in shown:
        im = Image.open(path)
        scale = max(1, round(800 / im.width))  # small images: enlarge without smoothing
        big = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
        atomic_save(img_dir / f"samples_{label}.png", lambda tmp, big=big: big.save(tmp, format="PNG"))
        if label == "masks":
            s = {k: r[k]["fg_iou"] for k in ("labels4free", "all_foreground", "centred_box", "supervised") if k in r}
            scores = ", ".join(f"{k} {fmt(v)}" for k, v in s.items())
            figures.append(("Masks on real test scenes", "samples_masks.png",
                            f"Rows: real test scenes; their true masks; the masks of the segmenter trained on Labels4Free's "
                            f"masks of generated images (red); generated images; their Labels4Free masks. Foreground IoU "
                            f"(eval masks): {scores}."))  # fmt: skip
        else:
            step = int(path.stem.split("_")[1])
            figures.append((f"Samples at step {step}", f"samples_{label}.png",
                            GENERATOR_ROWS.get(cfg.method["name"], "generated samples") + "."))  # fmt: skip
    metrics = read_metrics_csv(run_dir / "metrics.csv") if (run_dir / "metrics.csv").exists() else []
    title = f"contrastlab: {cfg.method['name']} on {cfg.data.name} (step {ckpt['step']})"
    return write_report(run_dir, metrics, title=title, summary=summary, evaluations=evals, figures=figures)
