"""`fundus evaluate`: is the synthetic data realistic, and is it useful?

Realism: features of the real holdout, the synthetic set and (as the baseline a perfect
generator would reach) the real training set, all inside one common field-of-view mask and
at one image size; FID, KID and PRDC with bootstrap CIs for synthetic-vs-holdout and for
train-vs-holdout at the same sample size; the same per class when labelled; fundus
statistics (colour, vessels, sharpness, optic disc) and their distances.

Usefulness (labels on all three sets): the small-CNN recipe of `metrics.usefulness`.

Feature networks (`features`): `fundus` (the default: a 29-number descriptor of colour,
detail by scale, vessels and pixel-grid texture, see metrics/fundus_features.py; chosen by
benchmarks/features.py, where it alone called vessel-free and textured photographs
distinguishable at ~100 holdout images), `random` (a fixed random CNN, offline),
`inception` (the standard FID Inception-v3 from a local weights file: numbers comparable
with other FID tools) and `classifier` (the usefulness classifier trained on the labelled
real training set).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fundus_cli.data import h5
from fundus_cli.data.dataset import resize_batch
from fundus_cli.errors import FundusError
from fundus_cli.metrics.bootstrap import bootstrap_cis, cis_overlap
from fundus_cli.metrics.features import RandomCNN
from fundus_cli.metrics.fundus_stats import SCALAR_STATS, fundus_stats, stat_distances
from fundus_cli.metrics.registry import resolve_metrics
from fundus_cli.metrics.usefulness import Recipe
from fundus_cli.schemas.evaluate_report import EVALUATE_REPORT
from fundus_cli.progress import line, track

FEATURES = ("random", "fundus", "inception", "classifier")
# Lower is better for these; higher for the rest (precision, recall, density, coverage).
LOWER_IS_BETTER = {"fid", "kid"}
MIN_PER_CLASS = 10
# Fewest images on each side for a metric with its resampling interval: the intervals
# recompute it on half-samples, and PRDC with k = 5 needs 6 images in each half.
MIN_IMAGES = {"prdc": 12}
MIN_IMAGES_DEFAULT = 4
BOUNDS = {"fid": (0.0, np.inf), "precision": (0.0, 1.0), "recall": (0.0, 1.0), "coverage": (0.0, 1.0),
          "density": (0.0, np.inf)}  # fewer images of a class than this: no per-class realism numbers


@dataclass(frozen=True)
class EvaluateConfig:
    real: Path = Path("data/holdout.h5")  # real images the generator never saw
    synthetic: Path = Path("data/synthetic.h5")  # from `fundus sample`
    train: Path | None = Path("data/train.h5")  # real training images: the real-vs-real baseline
    out: Path = Path("reports/evaluate")  # report folder
    features: str = "fundus"  # feature space: fundus (descriptor), random (fixed random CNN), inception, classifier
    weights: Path | None = None  # inception: pt_inception-2015-12-05-6726825d.pth ($FUNDUS_INCEPTION_WEIGHTS)
    metrics: str = "fid,kid,prdc"  # realism metrics
    size: int | None = None  # compare at this size (default: the smallest of the inputs)
    n_boot: int = 100  # bootstrap replicates for the CIs
    seed: int = 0
    usefulness: bool = True  # train-on-synthetic/test-on-real classifiers when labels exist
    usefulness_steps: int = 300  # classifier training steps per scenario
    usefulness_seeds: int = 3  # training seeds per scenario (the paired gains average over them)
    usefulness_fractions: tuple[float, ...] = (0.25,)  # shares of the real images (with 1.0): (0.1, 0.25, 0.5) = learning curve
    usefulness_size: int = 128  # classifier input side at most (smaller inputs stay at their size)
    force: bool = False  # overwrite an existing report


@dataclass
class EvaluateResult:
    out: Path
    report: Path
    realism: dict[str, dict[str, Any]]
    usefulness: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)


@dataclass
class _Set:
    name: str
    path: Path
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    fingerprint: str
    masks: np.ndarray


def _load(name: str, path: Path, size: int | None, notes: list[str]) -> _Set:
    with h5.open_dataset(path) as r:
        info = r.info
        if info.count == 0:
            raise FundusError(f"{path}: holds no images; evaluate needs images on every side.")
        images, masks = r.images(), r.fov_masks()
        labels = r.labels()
    if size is not None and size != info.image_size:
        notes.append(f"{name}: {path} resized from {info.image_size} to {size} px for the comparison")
        images = resize_batch(images, size)
        masks = resize_batch(np.repeat(masks[..., None].astype(np.uint8) * 255, 3, axis=3), size)[..., 0] > 127
    return _Set(name, path, images, labels, info.class_names, info.fingerprint, masks)


def _sizes(cfg: EvaluateConfig) -> dict[str, int]:
    out = {}
    for p in (cfg.real, cfg.synthetic, cfg.train):
        if p is not None:
            with h5.open_dataset(p) as r:
                out[str(p)] = r.info.image_size
    return out


def evaluate(cfg: EvaluateConfig) -> EvaluateResult:
    started = time.perf_counter()
    metrics = _check_options(cfg)
    out = Path(cfg.out)
    report_path = out / "report.json"
    if report_path.exists() and not cfg.force:
        raise FundusError(f"{report_path} already exists. Use --force to overwrite it, or --out for another folder.")
    notes: list[str] = []
    real, synth, train, size = _load_inputs(cfg, notes)
    # One mask for every image: the disc that most real holdout images cover. Differences
    # in the surround (black in both) must not count, nor must a cut-off disc.
    mask = (real.masks.mean(0) > 0.5) & (synth.masks.mean(0) > 0.5)

    def stage(text: str) -> None:
        line(f"evaluate: {text} ({time.perf_counter() - started:.0f} s)")

    recipe = Recipe(min_steps=cfg.usefulness_steps, size=min(cfg.usefulness_size, size))
    stage(f"loaded {len(real.images)} real, {len(synth.images)} synthetic"
          + (f", {len(train.images)} training images" if train is not None else "") + f" at {size} px")
    extractor, features_record = _extractor(cfg, train, recipe, notes)
    feats = _features(cfg, extractor, mask, real, synth, train)
    stage(f"{cfg.features} features extracted")
    realism = _realism(real, synth, train, feats, metrics, cfg, notes, mask)
    stage("realism metrics and their intervals done")
    stats = _fundus_statistics(real, synth, train, mask)
    stage("fundus statistics done")
    useful = _usefulness(cfg, real, synth, train, recipe, extractor, stage, notes)
    out.mkdir(parents=True, exist_ok=True)
    figures = _figures(out, real, synth, realism, stats, useful)
    report = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()} | {"size": size},
        "inputs": {s.name: {"path": str(s.path), "fingerprint": s.fingerprint, "images": int(len(s.images))}
                   for s in (real, synth, train) if s is not None},
        "features": features_record,
        "realism": realism,
        "fundus_statistics": stats["distances"],
        "usefulness": useful,
        "notes": notes,
        "figures": [str(f) for f in figures],
    }
    EVALUATE_REPORT.write(report_path, report)
    return EvaluateResult(out=out, report=report_path, realism=realism, usefulness=useful, notes=notes,
                          figures=figures)


def _check_options(cfg: EvaluateConfig) -> dict:
    """The options that can be refused before any image is read; returns the realism metrics."""
    if cfg.features not in FEATURES:
        raise FundusError(f"--features {cfg.features!r}: choose from {', '.join(FEATURES)} (fundus: a descriptor of "
                          "colour, detail, vessels and texture; random: a fixed random CNN, offline; inception: "
                          "the standard FID network from a local weights file, --weights; "
                          "classifier: the usefulness classifier trained on the labelled training set).")
    if cfg.weights is not None and cfg.features != "inception":
        raise FundusError(f"--weights {cfg.weights} is the Inception weights file, used only with --features "
                          f"inception (not {cfg.features}); add --features inception or leave --weights out.")
    if cfg.features == "inception":
        from fundus_cli.metrics.inception import resolve_weights

        resolve_weights(cfg.weights)  # a missing file fails before any work
    return resolve_metrics(cfg.metrics)


def _load_inputs(cfg: EvaluateConfig, notes: list[str]) -> tuple[_Set, _Set, _Set | None, int]:
    """The real, synthetic and (when present) training sets at one comparison size, and that size."""
    train_path = cfg.train if cfg.train is not None and Path(cfg.train).exists() else None
    if cfg.train is not None and train_path is None:
        notes.append(f"no {cfg.train}: no real-vs-real baseline and no usefulness test")
    sizes = _sizes(EvaluateConfig(real=cfg.real, synthetic=cfg.synthetic, train=train_path))
    size = cfg.size or min(sizes.values())
    if len(set(sizes.values())) > 1 and cfg.size is None:
        notes.append(f"inputs differ in size ({', '.join(f'{p}: {s} px' for p, s in sizes.items())}); "
                     f"all compared at {size} px (--size to choose)")
    real = _load("real", cfg.real, size, notes)
    synth = _load("synthetic", cfg.synthetic, size, notes)
    train = _load("train", train_path, size, notes) if train_path is not None else None
    if train is not None and real.class_names != train.class_names:
        raise FundusError(f"{cfg.real} and {train_path} have different classes ({list(real.class_names)} vs "
                          f"{list(train.class_names)}); they must come from one ingest.")
    return real, synth, train, size


def _features(cfg: EvaluateConfig, extractor: Any, mask: np.ndarray, real: _Set, synth: _Set,
              train: _Set | None) -> dict[str, np.ndarray]:
    """Each set's features (the fundus descriptor standardised on the real set)."""
    with track("features", 3 if train is not None else 2, unit="set") as advance:
        feats = {}
        for s in (real, synth, train):
            if s is None:
                continue
            feats[s.name] = np.concatenate([extractor(s.images[i : i + 128], mask)
                                            for i in range(0, len(s.images), 128)])
            advance()
    if cfg.features == "fundus":
        names = list(feats)
        feats = dict(zip(names, standardise(feats["real"], [feats[k] for k in names])))
    return feats


def _usefulness(cfg: EvaluateConfig, real: _Set, synth: _Set, train: _Set | None, recipe: Recipe, extractor: Any,
                stage: Callable[[str], None], notes: list[str]) -> dict[str, Any] | None:
    """Train-on-synthetic, test-on-real classifiers, when every set is labelled with the same classes."""
    labelled = (len(real.class_names) >= 2 and (real.labels >= 0).all() and (synth.labels >= 0).all()
                and train is not None and (train.labels >= 0).all())
    if not (cfg.usefulness and labelled and synth.class_names == real.class_names):
        if cfg.usefulness:
            why = ("the synthetic set has other classes than the real data" if labelled else
                   "it needs labels on the training, holdout and synthetic sets (a conditional model)")
            notes.append(f"usefulness test skipped: {why}")
        return None
    from fundus_cli.metrics.usefulness import summarise, usefulness

    assert train is not None
    result = usefulness(train.images, train.labels, real.images, real.labels, synth.images, synth.labels,
                        n_classes=len(real.class_names), seed=cfg.seed, recipe=recipe,
                        seeds=cfg.usefulness_seeds, fractions=cfg.usefulness_fractions,
                        trained={"real": extractor.model} if cfg.features == "classifier" else None,
                        on_stage=stage)
    summary = summarise(result, len(real.class_names))
    for row in result["label_fidelity"]:
        row["class"] = real.class_names[row["class_index"]]
    useful = {"scenarios": result["scenarios"], "gains": None if summary["withheld_reason"] else result["gains"],
              "label_fidelity": result["label_fidelity"], "summary": summary,
              "withheld_reason": summary["withheld_reason"], "recipe": recipe.__dict__,
              "seeds": cfg.usefulness_seeds, "fractions": list(cfg.usefulness_fractions)}
    stage("usefulness done")
    if summary["withheld_reason"]:
        notes.append(f"usefulness: {summary['withheld_reason']}")
    return useful


def _figures(out: Path, real: _Set, synth: _Set, realism: dict[str, Any], stats: dict[str, Any],
             useful: dict[str, Any] | None) -> list[Path]:
    from fundus_cli.metrics.figures import learning_curve, metric_bars, side_by_side_grids, stat_histograms

    figures = [side_by_side_grids(real, synth, out / "grids.png")]
    if realism["overall"]["synthetic"]:  # empty when every metric was skipped for want of images
        figures.append(metric_bars(realism["overall"], out / "metrics.png"))
    figures.append(stat_histograms(stats["per_image"], out / "fundus-stats.png"))
    if useful is not None:
        figures.append(learning_curve(useful, out / "learning-curve.png"))
    return figures


def _extractor(cfg: EvaluateConfig, train: _Set | None, recipe: Recipe,
               notes: list[str]) -> tuple[Any, dict[str, Any]]:
    """The feature network of `cfg.features` and what the report records to identify it."""
    if cfg.features == "inception":
        from fundus_cli.metrics.inception import INPUT_SIZE, InceptionFeatures

        inc = InceptionFeatures(cfg.weights, device="cuda" if torch.cuda.is_available() else "cpu")
        return inc, {"name": inc.name, "fingerprint": inc.fingerprint, "dim": inc.dim, "weights": str(inc.weights),
                     "weights_sha256": inc.sha256,
                     "input": f"black outside the common field of view, bilinear resize to {INPUT_SIZE} px, [-1, 1]"}
    if cfg.features == "classifier":
        from fundus_cli.metrics.classifier_features import ClassifierFeatures

        other = "use --features random (offline) or --features inception (--weights) instead"
        if train is None:
            raise FundusError(f"--features classifier trains the usefulness classifier on the real training set, and "
                              f"there is none ({cfg.train} does not exist): pass --train PATH, or {other}.")
        unlabelled = int((train.labels < 0).sum())
        if len(train.class_names) < 2 or unlabelled:
            why = (f"{unlabelled} of its {len(train.labels)} images have no label" if len(train.class_names) >= 2
                   else f"it has {len(train.class_names)} classes")
            raise FundusError(f"{train.path}: --features classifier needs a labelled training set (two or more "
                              f"classes, every image labelled) to train its classifier, but {why}; ingest with "
                              f"labels, or {other}.")
        clf = ClassifierFeatures(train.images, train.labels, n_classes=len(train.class_names), seed=cfg.seed,
                                 recipe=recipe, data_fingerprint=train.fingerprint)
        notes.append("classifier features were learnt on the training images, which sit closer to their class "
                     "centres than unseen ones: the train-vs-holdout baseline is pessimistic, so a synthetic set "
                     "that scores like it may still be told apart from real data")
        return clf, {"name": clf.name, "fingerprint": clf.fingerprint, "dim": clf.dim, **clf.definition,
                     "class_names": list(train.class_names), "weights_sha256": clf.weights_sha256}
    if cfg.features == "fundus":
        from fundus_cli.metrics.fundus_features import FundusFeatures

        fun = FundusFeatures()
        return fun, {"name": fun.name, "fingerprint": fun.fingerprint, "dim": fun.dim, "dimensions": list(fun.names),
                     "standardised": "every dimension by the real holdout's mean and standard deviation"}
    rnd = RandomCNN()
    return rnd, {"name": rnd.name, "fingerprint": rnd.fingerprint, "dim": rnd.dim}


def standardise(reference: np.ndarray, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Each array with every dimension shifted and scaled by the reference's mean and spread.

    One linear map for all sets, so distances between sets keep their meaning; it puts the
    fundus descriptor's dimensions (shares, log energies, grey levels) on one scale, as the
    kernels of KID and the balls of PRDC assume."""
    mean = reference.mean(0)
    sd = reference.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)  # a constant dimension stays constant, not nan
    return [(a - mean) / sd for a in arrays]


def _subset(n: int, size: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False)) if size < n else np.arange(n)


def _compare(metrics: dict, real: np.ndarray, other: np.ndarray, cfg: EvaluateConfig) -> dict[str, dict[str, float]]:
    from fundus_cli.metrics.registry import compute_metrics

    point = compute_metrics(metrics, real, other, seed=cfg.seed)
    cis: dict[str, tuple[float, float]] = {}
    for fn in metrics.values():
        cis.update(bootstrap_cis(fn, real, other, n_boot=cfg.n_boot, seed=cfg.seed))
    out = {}
    for k, v in point.items():
        lo, hi = cis[k]
        # The bias-shifted bootstrap interval can step outside a metric's range; clip it there.
        lo_b, hi_b = BOUNDS.get(k, (-np.inf, np.inf))
        out[k] = {"value": float(v), "ci_low": float(np.clip(lo, lo_b, hi_b)), "ci_high": float(np.clip(hi, lo_b, hi_b))}
    return out


def _realism(real: _Set, synth: _Set, train: _Set | None, feats: dict[str, np.ndarray], metrics: dict,
             cfg: EvaluateConfig, notes: list[str], mask: np.ndarray) -> dict[str, Any]:
    def block(r_idx: np.ndarray, s_idx: np.ndarray, t_idx: np.ndarray | None, where: str) -> dict[str, Any]:
        # The baseline sees as many training images as there are synthetic ones: every metric
        # here depends on the sample size, so only equal sizes compare.
        n = len(s_idx) if t_idx is None else min(len(s_idx), len(t_idx))
        usable, skipped = {}, {}
        for name, fn in metrics.items():
            need = MIN_IMAGES.get(name, MIN_IMAGES_DEFAULT)
            if min(n, len(r_idx)) < need:
                skipped[name] = (f"needs {need} or more images on each side, got {len(r_idx)} real and {n} "
                                 "compared")
            else:
                usable[name] = fn
        res: dict[str, Any] = {"n_real": int(len(r_idx)), "n_compared": int(n)}
        if skipped:
            res["skipped_metrics"] = skipped
            notes.append(f"{where}: {', '.join(skipped)} skipped ({next(iter(skipped.values()))})")
        s_sel = s_idx[_subset(len(s_idx), n, cfg.seed)]
        res["synthetic"] = _compare(usable, feats["real"][r_idx], feats["synthetic"][s_sel], cfg) if usable else {}
        if t_idx is not None:
            t_sel = t_idx[_subset(len(t_idx), n, cfg.seed + 1)]
            res["baseline_train"] = (_compare(usable, feats["real"][r_idx], feats["train"][t_sel], cfg)
                                     if usable else {})
            res["distinguishable"] = {
                k: not cis_overlap((v["ci_low"], v["ci_high"]),
                                   (res["baseline_train"][k]["ci_low"], res["baseline_train"][k]["ci_high"]))
                for k, v in res["synthetic"].items()}
        return res

    out: dict[str, Any] = {"overall": block(np.arange(len(real.images)), np.arange(len(synth.images)),
                                            None if train is None else np.arange(len(train.images)), "all images")}
    small = [k for k, v in out["overall"].get("distinguishable", {}).items() if not v]
    if small:
        notes.append(f"sample sizes too small to tell the generator from real data with {', '.join(small)} "
                     "(CIs overlap the real-vs-real baseline); prefer KID and the usefulness test at small n")
    if len(real.images) < 100:
        notes.append(f"only {len(real.images)} real holdout images: FID is biased at this size (it grows as n "
                     "shrinks); KID is unbiased and the better guide")
    per_class: dict[str, Any] = {}
    if real.class_names and synth.class_names == real.class_names:
        for c, name in enumerate(real.class_names):
            r_idx, s_idx = np.flatnonzero(real.labels == c), np.flatnonzero(synth.labels == c)
            t_idx = None if train is None else np.flatnonzero(train.labels == c)
            if min(len(r_idx), len(s_idx), *([len(t_idx)] if t_idx is not None else [])) < MIN_PER_CLASS:
                per_class[name] = {"skipped": f"fewer than {MIN_PER_CLASS} images of this class on one side"}
                continue
            per_class[name] = block(r_idx, s_idx, t_idx, f"class {name}")
    out["per_class"] = per_class
    return out


def _fundus_statistics(real: _Set, synth: _Set, train: _Set | None, mask: np.ndarray) -> dict[str, Any]:
    per = {s.name: fundus_stats(s.images, np.broadcast_to(mask, s.images.shape[:3]))
           for s in (real, synth, train) if s is not None}
    dist: dict[str, Any] = {"synthetic_vs_real": stat_distances(per["real"], per["synthetic"])}
    if "train" in per:
        dist["train_vs_real"] = stat_distances(per["real"], per["train"])
    dist["means"] = {name: {k: float(np.mean(v[k])) for k in SCALAR_STATS} for name, v in per.items()}
    return {"per_image": per, "distances": dist}
