"""Usefulness: does synthetic data help a diagnostic classifier? (train on X, test on real holdout)

A small CNN with one fixed, seeded recipe (with the augmentation a practitioner would use:
flips, small rotations and zooms, brightness, contrast and colour jitter, so synthetic
images must add something beyond classical augmentation) is trained on each training set
and tested on the same real holdout images, once per training seed:
    real            real training images (the reference)
    synthetic       synthetic only (train-on-synthetic, test-on-real: TSTR)
    real+synthetic  both (augmentation)
    realNN, realNN+synthetic  a stratified NN % of the real images, without and with all
                    synthetic images (where data is scarce; the learning curve)
Each scenario's accuracy, balanced accuracy and macro one-vs-rest AUC is the mean over
seeds, with a bootstrap 95 % CI over the test images. The gain from adding the synthetic
images is a *paired* difference: the same seeds, the same real subset and the same test
images with and without them, so the CI holds only the variation that matters (which test
images, which seeds), not two independent intervals' worth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

FRACTIONS = (0.1, 0.25, 0.5, 1.0)


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU-pool stages and a linear head; `features` is the penultimate layer."""

    def __init__(self, n_classes: int, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for k in range(4):
            out = width * 2**k
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, n_classes)
        self.dim = c

    def features(self, x: Tensor) -> Tensor:
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class Recipe:
    epochs: int = 30  # passes over the training set (at least `min_steps` steps in all)
    min_steps: int = 300
    batch: int = 32
    lr: float = 2e-3
    width: int = 16
    size: int = 64  # images are resized to this side
    augment: bool = True  # flips, +-15 deg rotation, +-10 % zoom and shift, brightness/contrast/colour jitter


def _to_tensor(images: np.ndarray, size: int) -> Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return x


def train_classifier(images: np.ndarray, labels: np.ndarray, *, n_classes: int, seed: int,
                     recipe: Recipe = Recipe()) -> SmallCNN:
    """Fit the fixed recipe; deterministic for a seed (on one machine and thread count)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SmallCNN(n_classes, recipe.width)
    x = _to_tensor(images, recipe.size)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    n = len(x)
    steps = max(recipe.min_steps, recipe.epochs * max(1, n // recipe.batch))
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps)
    # Class-balanced sampling: rare classes are what the synthetic data is meant to help with.
    counts = torch.bincount(y, minlength=n_classes).float().clamp_min(1)
    weights = (1.0 / counts)[y]
    model.train()
    for _ in range(steps):
        idx = torch.multinomial(weights, min(recipe.batch, n), replacement=True, generator=gen)
        xb = x[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
        if recipe.augment:
            xb = _augment(xb, gen)
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model


def _augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random rotation (+-15 deg), zoom (0.9-1.1) and shift (+-5 %), then brightness, contrast and
    per-channel colour jitter; x in [-1, 1], black (-1) fills where the image moved away."""
    n = len(x)

    def u(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, *shape, generator=gen)

    angle = u(-15.0, 15.0) * torch.pi / 180
    scale = u(0.9, 1.1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, u(-0.05, 0.05)], 1), torch.stack([sin, cos, u(-0.05, 0.05)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    moved = F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1
    # Half the batch keeps its pixel grid: resampling smooths fine noise, and a network that only
    # ever saw resampled images meets sharper ones at test time (seen: accuracy at chance).
    keep = torch.rand(n, generator=gen) < 0.5
    x = torch.where(keep[:, None, None, None], x, moved)
    inside = (x > -1).float()  # jitter the disc, not the black surround
    mean = (x * inside).sum((1, 2, 3), keepdim=True) / inside.sum((1, 2, 3), keepdim=True).clamp_min(1)
    x = (x - mean) * u(0.9, 1.1, 1, 1, 1) + mean + u(-0.1, 0.1, 1, 1, 1) * 2
    x = (x + 1) * u(0.95, 1.05, 3, 1, 1) - 1
    return torch.where(inside > 0, x.clamp(-1, 1), -torch.ones_like(x))


@torch.no_grad()
def predict_proba(model: SmallCNN, images: np.ndarray, *, size: int = 64, batch: int = 256) -> np.ndarray:
    out = []
    for s in range(0, len(images), batch):
        out.append(F.softmax(model(_to_tensor(images[s : s + batch], size)), dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.head.out_features))


def auc_binary(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC via the Mann-Whitney statistic (ties count one half); nan if one class is absent."""
    from scipy.stats import rankdata

    pos = positive.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(proba: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    pred = proba.argmax(1)
    classes = np.unique(labels)
    recalls = [float((pred[labels == c] == c).mean()) for c in classes]
    aucs = [auc_binary(proba[:, c], labels == c) for c in range(proba.shape[1]) if (labels == c).any()]
    aucs = [a for a in aucs if not np.isnan(a)]
    return {"accuracy": float((pred == labels).mean()), "balanced_accuracy": float(np.mean(recalls)),
            "macro_auc": float(np.mean(aucs)) if aucs else float("nan")}


def with_ci(proba: np.ndarray, labels: np.ndarray, *, seed: int, n_boot: int = 500) -> dict[str, dict[str, float]]:
    """Each metric with a percentile-bootstrap 95 % CI over the test images."""
    point = classification_metrics(proba, labels)
    rng = np.random.default_rng(seed)
    boots: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(n_boot):
        idx = rng.integers(0, len(labels), len(labels))
        for k, v in classification_metrics(proba[idx], labels[idx]).items():
            if not np.isnan(v):
                boots[k].append(v)
    return {k: {"value": point[k],
                "ci_low": float(np.percentile(boots[k], 2.5)) if boots[k] else float("nan"),
                "ci_high": float(np.percentile(boots[k], 97.5)) if boots[k] else float("nan")} for k in point}


def stratified_subset(labels: np.ndarray, fraction: float, *, seed: int) -> np.ndarray:
    """Indices of a stratified share of the images (at least one per present class)."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.extend(rng.choice(idx, max(1, round(fraction * len(idx))), replace=False).tolist())
    return np.sort(np.array(keep, dtype=np.int64))


def scenario_name(fraction: float, with_synthetic: bool) -> str:
    base = "real" if fraction >= 1.0 else f"real{round(fraction * 100)}"
    return base + ("+synthetic" if with_synthetic else "")


def usefulness(real_images: np.ndarray, real_labels: np.ndarray, test_images: np.ndarray, test_labels: np.ndarray,
               synth_images: np.ndarray, synth_labels: np.ndarray, *, n_classes: int, seed: int = 0,
               recipe: Recipe = Recipe(), seeds: int = 3, fractions: tuple[float, ...] = FRACTIONS,
               tstr: bool = True, trained: dict[str, Any] | None = None, n_boot: int = 500,
               on_stage: Any = None) -> dict[str, Any]:
    """Train every scenario's classifier with `seeds` seeds (seed, seed + 1, ...), test on the holdout.

    Returns {"scenarios": {name: {train_images, seeds, accuracy, balanced_accuracy, macro_auc}},
    "gains": {realNN: paired gain in balanced accuracy from adding the synthetic images},
    "label_fidelity": per class, how often the real-trained classifiers give a synthetic image
    the class it was sampled for, beside their recall of that class on the real holdout}.
    `trained` maps a scenario to a classifier already trained on its set with `seed` and this
    recipe (e.g. `--features classifier`'s "real" one), used instead of training it again.
    `on_stage(text)` is called before each classifier is trained (progress lines).
    """
    fractions = tuple(sorted(set(fractions) | {1.0}))
    plan = [(f, False) for f in fractions] + [(f, True) for f in fractions]
    total = seeds * (len(plan) + int(tstr))
    probas: dict[str, list[np.ndarray]] = {}
    sizes: dict[str, int] = {}
    synth_on_real: list[np.ndarray] = []
    done = 0
    for k in range(seeds):
        s_k = seed + k
        for fraction, with_synth in plan:
            name = scenario_name(fraction, with_synth)
            sub = stratified_subset(real_labels, fraction, seed=s_k) if fraction < 1.0 else np.arange(len(real_labels))
            x, y = real_images[sub], real_labels[sub]
            if with_synth:
                x, y = np.concatenate([x, synth_images]), np.concatenate([y, synth_labels])
            done += 1
            if on_stage is not None:
                on_stage(f"usefulness classifier {done}/{total}: {name}, seed {s_k}, {len(x)} images")
            model = (trained or {}).get(name) if k == 0 else None
            model = model or train_classifier(x, y, n_classes=n_classes, seed=s_k, recipe=recipe)
            probas.setdefault(name, []).append(predict_proba(model, test_images, size=recipe.size))
            sizes[name] = int(len(x))
            if name == "real":
                synth_on_real.append(predict_proba(model, synth_images, size=recipe.size))
        if tstr:
            done += 1
            if on_stage is not None:
                on_stage(f"usefulness classifier {done}/{total}: synthetic, seed {s_k}, {len(synth_images)} images")
            model = train_classifier(synth_images, synth_labels, n_classes=n_classes, seed=s_k, recipe=recipe)
            probas.setdefault("synthetic", []).append(predict_proba(model, test_images, size=recipe.size))
            sizes["synthetic"] = int(len(synth_images))
    rng_seed = seed
    scen = {name: {"train_images": sizes[name], "seeds": seeds,
                   **seed_averaged_with_ci(p, test_labels, seed=rng_seed, n_boot=n_boot)}
            for name, p in probas.items()}
    gains = {scenario_name(f, False): paired_gain(probas[scenario_name(f, True)], probas[scenario_name(f, False)],
                                                  test_labels, seed=rng_seed, n_boot=n_boot) for f in fractions}
    return {"scenarios": scen, "gains": gains,
            "label_fidelity": label_fidelity(np.mean(synth_on_real, 0), synth_labels,
                                             np.mean(probas["real"], 0), test_labels, n_classes)}


def _finite_mean(values: list[float]) -> float:
    """Mean of the values that are not NaN; NaN when none is (e.g. AUC on a one-class resample),
    without numpy's "Mean of empty slice" warning reaching the user's terminal."""
    kept = [v for v in values if not np.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def seed_averaged_with_ci(probas: list[np.ndarray], labels: np.ndarray, *, seed: int,
                          n_boot: int = 500) -> dict[str, dict[str, float]]:
    """Each metric averaged over the seeds' predictions, with a percentile-bootstrap 95 % CI
    over the test images (one resample of the images for all seeds)."""
    def metrics(idx: np.ndarray) -> dict[str, float]:
        per = [classification_metrics(p[idx], labels[idx]) for p in probas]
        return {k: _finite_mean([m[k] for m in per]) for k in per[0]}

    point = metrics(np.arange(len(labels)))
    rng = np.random.default_rng(seed)
    boots: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(n_boot):
        for k, v in metrics(rng.integers(0, len(labels), len(labels))).items():
            if not np.isnan(v):
                boots[k].append(v)
    return {k: {"value": point[k],
                "ci_low": float(np.percentile(boots[k], 2.5)) if boots[k] else float("nan"),
                "ci_high": float(np.percentile(boots[k], 97.5)) if boots[k] else float("nan")} for k in point}


def paired_gain(with_synth: list[np.ndarray], without: list[np.ndarray], labels: np.ndarray, *, seed: int,
                n_boot: int = 500, metric: str = "balanced_accuracy") -> dict[str, Any]:
    """Mean over seeds of metric(with) - metric(without) on the same test images, with a bootstrap
    95 % CI that resamples the test images once for both sides; `verdict` is "gain" or "loss"
    when the CI excludes 0, else "no significant change"."""
    def diff(idx: np.ndarray) -> float:
        return float(np.mean([classification_metrics(a[idx], labels[idx])[metric]
                              - classification_metrics(b[idx], labels[idx])[metric]
                              for a, b in zip(with_synth, without)]))

    point = diff(np.arange(len(labels)))
    rng = np.random.default_rng(seed)
    reps = [diff(rng.integers(0, len(labels), len(labels))) for _ in range(n_boot)]
    reps = [r for r in reps if not np.isnan(r)]
    lo, hi = (float(np.percentile(reps, 2.5)), float(np.percentile(reps, 97.5))) if reps else (np.nan, np.nan)
    verdict = "gain" if lo > 0 else "loss" if hi < 0 else "no significant change"
    return {"metric": metric, "value": point, "ci_low": lo, "ci_high": hi, "verdict": verdict,
            "seeds": len(with_synth)}


def label_fidelity(synth_proba: np.ndarray, synth_labels: np.ndarray, holdout_proba: np.ndarray,
                   holdout_labels: np.ndarray, n_classes: int) -> list[dict[str, Any]]:
    """Per class: the share of synthetic images of that class that real-trained classifiers call
    that class, beside their recall of the class on real holdout images (what a perfect
    generator would reach with these classifiers)."""
    s_pred, h_pred = synth_proba.argmax(1), holdout_proba.argmax(1)
    out = []
    for c in range(n_classes):
        s, h = synth_labels == c, holdout_labels == c
        out.append({"class_index": c, "n_synthetic": int(s.sum()), "n_holdout": int(h.sum()),
                    "synthetic_agreement": float((s_pred[s] == c).mean()) if s.any() else None,
                    "holdout_recall": float((h_pred[h] == c).mean()) if h.any() else None})
    return out


def summarise(result: dict[str, Any], n_classes: int) -> dict[str, Any]:
    """Headline ratio and paired gains in balanced accuracy, or None with the reason they are withheld.

    A ratio to, or a gain over, a classifier that learnt nothing is noise: when the
    real-trained classifier's 95 % CI reaches chance (1 / classes, what any constant
    prediction scores in balanced accuracy), the numbers are withheld and `withheld_reason`
    says why; the per-scenario table stays for whoever wants to look.
    """
    scenarios, gains = result["scenarios"], result.get("gains", {})

    def v(name: str) -> float:
        return float(scenarios[name]["balanced_accuracy"]["value"]) if name in scenarios else float("nan")

    def g(name: str) -> float | None:
        return gains[name]["value"] if name in gains else None

    out: dict[str, Any] = {
        "tstr_over_trtr_balanced_accuracy": v("synthetic") / v("real") if v("real") else float("nan"),
        "augmentation_gain_balanced_accuracy": g("real"),
        "augmentation_gain_25pct_balanced_accuracy": g("real25"),
        "gains": gains,
        "chance_balanced_accuracy": 1.0 / n_classes,
        "withheld_reason": None,
    }
    real = scenarios.get("real", {}).get("balanced_accuracy", {})
    low = real.get("ci_low", float("nan"))
    if not low > 1.0 / n_classes:  # also when the interval is nan
        out["withheld_reason"] = (
            f"the classifier trained on the real training images scores balanced accuracy {real.get('value', float('nan')):.3f} "
            f"(95 % CI {low:.3f} to {real.get('ci_high', float('nan')):.3f}), and that interval includes chance "
            f"({1.0 / n_classes:.3f} with {n_classes} classes): it cannot learn this task from these images at this "
            "size, so usefulness cannot be judged; the synthetic/real ratio and the gains are withheld")
        for k in ("tstr_over_trtr_balanced_accuracy", "augmentation_gain_balanced_accuracy",
                  "augmentation_gain_25pct_balanced_accuracy", "gains"):
            out[k] = None
    else:
        out["headline"] = "; ".join(
            f"adding the synthetic images to {name.replace('real', '') + ' % of ' if name != 'real' else 'all '}the real "
            f"images changes balanced accuracy by {x['value']:+.3f} (95 % CI {x['ci_low']:+.3f} to {x['ci_high']:+.3f}, "
            f"{x['seeds']} seeds): {x['verdict']}" for name, x in gains.items())
    return out
