"""Every recipe's schedule as it would train: the global batch split over 1, 2 and 8 processes,
a warm-up shorter than the run, a decaying schedule that ends below its peak, and the same steps
whatever the device count (issue 14, scale semantics). Pure computation: no data is read."""
import math
from pathlib import Path

import pytest

from contrastlab.config import ConfigError, load_config
from contrastlab.engine.optim import lr_factor
from contrastlab.engine.setup import plan_schedule
from contrastlab.errors import UserError
from contrastlab.methods import method_class
from contrastlab.methods.contract import optimizes_itself

CONFIGS = Path(__file__).resolve().parent.parent / "src" / "contrastlab" / "configs"
if not CONFIGS.exists():
    CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RECIPES = sorted(str(p.relative_to(CONFIGS))[:-5] for p in CONFIGS.glob("*/*.yaml"))


def _cifar_lt(n_max: int, classes: int, ratio: float) -> int:
    """Images of the exponential long-tail profile: class i keeps floor(n_max * ratio^(-i/(C-1)))."""
    return sum(math.floor(n_max * (1 / ratio) ** (i / (classes - 1))) for i in range(classes))


# Training-set sizes of the full-scale data sets (the digit sets read theirs from the recipe).
SIZES = {
    "cifar10": 50_000, "cifar100": 50_000,  # torchvision's train splits
    "stl10": 105_000,  # train (5,000) + unlabeled (100,000)
    "pascal5i": 10_582,  # VOC 2012 train with SBD's masks (trainaug; a fold trains on its base-class share of it)
    "coco20i": 82_081,  # COCO 2014 train images with annotations (a fold trains on its base-class share of it)
    "organs": 20 * 16,  # the synthetic organ set: 20 training volumes of 16 slices
}
FOLDERS = {  # image folders, by recipe: the data set the recipe is written for
    "simclr/imagefolder": 1_281_167, "moco/imagefolder": 1_281_167,  # ImageNet-1K train
    "mochi/imagenet100": 126_689,  # ImageNet-100 (CMC's 100 classes) train
    "sdclr/imagenet100": 12_205,  # ImageNet-100-LT (the recipe's comment; SDCLR's split list)
    "simclr/imagefolder_cpu": 10_000, "moco/imagefolder_cpu": 10_000,  # a user's folder of small images
    "invp/imagenet": 1_281_167,  # ImageNet-1K train
    "looc/imagenet100": 126_689, "looc_pp/imagenet100": 126_689,  # ImageNet-100 (CMC's 100 classes) train
    "pixpro/imagenet": 1_281_167,  # ImageNet-1K train
    "detco/imagenet": 1_281_167,  # ImageNet-1K train
    "stylegan2/ffhq256": 70_000, "labels4free/ffhq": 70_000,  # FFHQ
    # LSUN object classes (about; only the epoch length depends on it)
    "labels4free/lsun_car": 5_520_756, "labels4free/lsun_cat": 1_657_266, "labels4free/lsun_horse": 2_000_340,
}
SLICES = {  # 2-D slices of medical volumes, by recipe (about; only the epoch length depends on it)
    "rpnet/abdominal_ct": 3_779,  # Synapse multi-organ CT: 30 volumes, 3,779 axial slices
    "rpnet/abdominal_mri": 623,  # CHAOS T2-SPIR MRI: 20 volumes
}
PAIRS = {"horse2zebra": 1_334}  # an unpaired epoch is max(|A|, |B|) = max(1,067 horses, 1,334 zebras)


def train_size(recipe: str, cfg) -> int:
    d = cfg.data
    if d.name in ("digits", "digit_domains"):
        n = d.n_train - (d.val_per_class or 0) * 10
        if d.long_tail_ratio:
            n = _cifar_lt(n // 10, 10, d.long_tail_ratio)  # the scenes are balanced over 10 digits
        return n
    if d.name == "imagefolder":
        return FOLDERS[recipe]
    if d.name == "slices":
        return SLICES[recipe]
    if d.name == "unpaired":
        return PAIRS[recipe.split("/")[1]]
    n = SIZES[d.name]
    classes = 100 if d.name == "cifar100" else 10
    if d.val_per_class:  # a balanced hold-out (SDCLR's 45k/5k split of CIFAR's train set)
        n -= d.val_per_class * classes
    if d.long_tail_ratio:
        n = _cifar_lt(n // classes, classes, d.long_tail_ratio)
    return n


def test_the_sdclr_cifar_recipes_train_on_the_official_long_tailed_sizes():
    """The official subsets (VITA-Group/SDCLR split/*_D_i.npy) hold 11,165 (CIFAR-10) and 9,754
    (CIFAR-100) images: the profile from 4,500 / 450 per class, what the 45k/5k split leaves."""
    assert train_size("sdclr/cifar10", load_config("sdclr/cifar10")) == 11_165
    assert train_size("sdclr/cifar100", load_config("sdclr/cifar100")) == 9_754


def test_the_sizes_cover_every_recipe():
    assert len(RECIPES) >= 25
    for r in RECIPES:
        train_size(r, load_config(r))  # a KeyError names a recipe without a known training-set size


@pytest.mark.parametrize("recipe", RECIPES)
def test_each_recipe_trains_its_schedule_on_1_2_and_8_processes(recipe):
    cfg = load_config(recipe)
    n = train_size(recipe, cfg)
    worlds = (1,) if optimizes_itself(method_class(cfg.method["name"])) else (1, 2, 8)
    plans = {w: plan_schedule(cfg, n, w) for w in worlds if cfg.optim.batch_size % w == 0}
    assert 1 in plans
    for w, p in plans.items():
        assert p.global_batch == cfg.optim.batch_size and p.per_process * w == p.global_batch, (recipe, w)
        assert (p.per_epoch, p.total, p.warmup) == plans[1][2:], (recipe, w)  # steps do not move with processes
    p = plans[1]
    assert p.total >= 1 and p.warmup < p.total, recipe
    o = cfg.optim
    last = lr_factor(p.total - 1, p.total, p.warmup, o.schedule, o.min_lr_frac, o.decay_start_frac)
    peak = max(lr_factor(s, p.total, p.warmup, o.schedule, o.min_lr_frac, o.decay_start_frac)
               for s in {0, p.warmup, max(0, p.warmup - 1), p.total // 2})  # fmt: skip
    assert peak == pytest.approx(1.0), recipe
    if o.schedule != "constant":
        assert last < 0.05, (recipe, last)  # decayed by the end
    if o.warmup_epochs is not None:
        assert p.warmup == round(o.warmup_epochs * p.per_epoch), recipe


@pytest.mark.parametrize("recipe,epochs", [("simclr/cifar10", 10), ("sdclr/cifar10", 10), ("simclr/imagefolder", 10),
                                           ("sdclr/imagenet100", 10)])  # fmt: skip
def test_the_papers_warm_ups_are_written_in_epochs(recipe, epochs):
    cfg = load_config(recipe)
    assert cfg.optim.warmup_epochs == epochs and cfg.optim.warmup_steps == 0
    p = plan_schedule(cfg, train_size(recipe, cfg), 1)
    assert p.warmup == epochs * p.per_epoch


def test_a_warm_up_as_long_as_the_run_is_refused_in_one_line():
    # what sdclr/imagenet100 did before: 50,000 warm-up steps of a 23,500-step run
    cfg = load_config("sdclr/imagenet100", ["optim.warmup_epochs=null", "optim.warmup_steps=50000"])
    with pytest.raises(UserError, match=r"optim.warmup_steps=50000 is not shorter than the run \(23500 steps\).*"
                                        r"never leave its warm-up nor follow its cosine decay") as e:  # fmt: skip
        plan_schedule(cfg, 12_205, 1)
    assert "\n" not in str(e.value)
    cfg = load_config("simclr", ["optim.warmup_steps=0", "optim.warmup_epochs=2000"])
    with pytest.raises(UserError, match=r"optim.warmup_epochs=2000.0 \(\d+ steps\) is not shorter"):
        plan_schedule(cfg, cfg.data.n_train, 1)


def test_a_global_batch_that_does_not_split_is_refused():
    cfg = load_config("simclr", ["optim.batch_size=100"])
    assert plan_schedule(cfg, 4000, 4).per_process == 25
    with pytest.raises(UserError, match=r"optim.batch_size=100 is the global batch .* among the 8 processes"):
        plan_schedule(cfg, 4000, 8)
    with pytest.raises(UserError, match="batch larger than the data set: 100 images per step"):
        plan_schedule(cfg, 99, 1)


def test_warm_up_given_twice_is_refused_at_load():
    with pytest.raises(ConfigError, match="give the warm-up once"):
        load_config("simclr", ["optim.warmup_steps=5", "optim.warmup_epochs=1"])
    with pytest.raises(ConfigError, match="give MoCHi's warm-up once"):
        load_config("mochi", ["method.mochi_warmup_steps=5", "method.mochi_warmup_epochs=1"])


def test_warmup_epochs_reach_the_scheduler(tiny):
    """Through the real set-up: a warm-up of 1.5 epochs is round(1.5 x steps per epoch) steps of
    linear warm-up in the optimiser's learning rate."""
    from contrastlab.engine.setup import build_setup, make_fabric

    cfg = load_config("simclr", tiny + ["trainer.devices=1", "optim.warmup_steps=0", "optim.warmup_epochs=1.5",
                                        "optim.batch_size=32", "trainer.max_steps=null", "trainer.max_epochs=4"])  # fmt: skip
    s = build_setup(cfg, make_fabric(cfg))
    assert s.warmup == round(1.5 * s.per_epoch) and s.per_process_batch == 32
    peak = s.optimizer.param_groups[0]["initial_lr"]
    lrs = []
    for _ in range(s.warmup + 1):
        lrs.append(s.optimizer.param_groups[0]["lr"])
        s.optimizer.step()  # no gradients: changes nothing, keeps the scheduler's order check quiet
        s.scheduler.step()
    assert lrs[: s.warmup] == pytest.approx([peak * (k + 1) / s.warmup for k in range(s.warmup)])
    assert lrs[s.warmup] == pytest.approx(peak, rel=1e-3)


def _learning_tables():
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / "learning_results.py"
    spec = importlib.util.spec_from_file_location("learning_results", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("table", ["sdclr_official", "sdclr_cifar10", "sdclr_cifar100"])
def test_the_sdclr_tables_load_for_each_seed(table):
    """scripts/learning_results.py: each run of the SDCLR tables is a valid config; in the CIFAR
    tables run k trains the long-tailed subset k on the official sizes, SimCLR with the official
    two-layer head (BN after both layers) and SDCLR with the three-layer one."""
    mod = _learning_tables()
    _, rows, _, seeds = mod.TABLES[table]
    for name, recipe, overrides in rows:
        for seed in seeds:
            cfg = load_config(recipe, mod.with_seed(overrides, seed))
            m = cfg.model
            assert m.proj_bn_last and m.proj_layers == (3 if cfg.method["pruned_branch"] else 2), (name, seed)
            if table != "sdclr_official":
                assert cfg.data.long_tail_split == seed and seeds == [1, 2, 3, 4, 5]
                assert train_size(recipe, cfg) == (11_165 if recipe.endswith("cifar10") else 9_754)
            else:
                assert m.proj_hidden == 64 and seeds == [0, 1, 2]
    assert mod.with_seed(["a={seed}", "b=split{seed}_D_i.npy", "c=1"], 4) == ["a=4", "b=split4_D_i.npy", "c=1"]
