"""Usefulness: does synthetic data help a diagnostic classifier? (train on X, test on real holdout)

A small CNN with one fixed, seeded recipe is trained on each training set of a scenario and
tested on the same real holdout images:
    real            real training images (the reference)
    synthetic       synthetic only (train-on-synthetic, test-on-real: TSTR)
    real+synthetic  both (augmentation)
    real25          a stratified 25 % of the real training images
    real25+synthetic  the same 25 % plus all synthetic images (augmentation where data is scarce)
Accuracy, balanced accuracy and macro one-vs-rest AUC, each with a bootstrap 95 % CI over
the test images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

SCENARIOS = ("real", "synthetic", "real+synthetic", "real25", "real25+synthetic")


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
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model


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


def usefulness(real_images: np.ndarray, real_labels: np.ndarray, test_images: np.ndarray, test_labels: np.ndarray,
               synth_images: np.ndarray, synth_labels: np.ndarray, *, n_classes: int, seed: int = 0,
               recipe: Recipe = Recipe(), scenarios: tuple[str, ...] = SCENARIOS,
               trained: dict[str, Any] | None = None) -> dict[str, dict]:
    """Train one classifier per scenario, test each on the real holdout; numbers with CIs.

    `trained` maps a scenario to a classifier already trained on its set with this seed and
    recipe (e.g. `--features classifier`'s "real" one), which is used instead of training again.
    """
    sub = stratified_subset(real_labels, 0.25, seed=seed)
    sets = {
        "real": (real_images, real_labels),
        "synthetic": (synth_images, synth_labels),
        "real+synthetic": (np.concatenate([real_images, synth_images]), np.concatenate([real_labels, synth_labels])),
        "real25": (real_images[sub], real_labels[sub]),
        "real25+synthetic": (np.concatenate([real_images[sub], synth_images]),
                             np.concatenate([real_labels[sub], synth_labels])),
    }
    out: dict[str, dict] = {}
    for name in scenarios:
        x, y = sets[name]
        model = (trained or {}).get(name) or train_classifier(x, y, n_classes=n_classes, seed=seed, recipe=recipe)
        proba = predict_proba(model, test_images, size=recipe.size)
        out[name] = {"train_images": int(len(x)), **with_ci(proba, test_labels, seed=seed)}
    return out
