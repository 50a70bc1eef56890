from __future__ import annotations

import numpy as np

from fundus_cli.metrics.usefulness import (Recipe, auc_binary, classification_metrics, stratified_subset,
                                           usefulness)

FAST = Recipe(epochs=1, min_steps=40, batch=16, width=8, size=32)


def _discs(n: int, label: int, rng: np.random.Generator) -> np.ndarray:
    """Class 0: red-dominant disc, class 1: the same with a bright blob on the left."""
    yy, xx = np.mgrid[:32, :32]
    disc = (yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 14**2
    out = np.zeros((n, 32, 32, 3), np.uint8)
    for i in range(n):
        img = np.zeros((32, 32, 3), float)
        img[disc] = [150, 60, 30]
        img += rng.normal(0, 12, img.shape)
        if label == 1:
            cx = rng.integers(8, 14)
            img[(yy - 16) ** 2 + (xx - cx) ** 2 < 9] = [240, 220, 120]
        out[i] = np.clip(img * disc[..., None], 0, 255)
    return out


def test_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    s = rng.normal(size=50).round(1)  # ties on purpose
    pos = rng.random(50) < 0.4
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in s[pos] for b in s[~pos]]
    assert abs(auc_binary(s, pos) - np.mean(pairs)) < 1e-12
    m = classification_metrics(np.eye(3)[[0, 1, 2, 2]], np.array([0, 1, 2, 1]))
    assert m["accuracy"] == 0.75 and abs(m["balanced_accuracy"] - (1 + 0.5 + 1) / 3) < 1e-12


def test_stratified_subset_keeps_every_class() -> None:
    labels = np.array([0] * 40 + [1] * 8 + [2] * 1)
    idx = stratified_subset(labels, 0.25, seed=0)
    assert sorted(np.bincount(labels[idx]).tolist()) == [1, 2, 10]


def test_learnable_task_is_learned_and_shuffled_synthetic_does_not_help() -> None:
    rng = np.random.default_rng(1)
    real = np.concatenate([_discs(24, 0, rng), _discs(24, 1, rng)])
    real_y = np.repeat([0, 1], 24)
    test = np.concatenate([_discs(20, 0, rng), _discs(20, 1, rng)])
    test_y = np.repeat([0, 1], 20)
    good = np.concatenate([_discs(24, 0, rng), _discs(24, 1, rng)])
    res = usefulness(real, real_y, test, test_y, good, real_y.copy(), n_classes=2, seed=0, recipe=FAST,
                     scenarios=("real", "synthetic"))
    assert res["real"]["accuracy"]["value"] >= 0.9 and res["synthetic"]["macro_auc"]["value"] >= 0.9
    lo, hi = res["real"]["accuracy"]["ci_low"], res["real"]["accuracy"]["ci_high"]
    assert lo <= res["real"]["accuracy"]["value"] <= hi
    bad = usefulness(real, real_y, test, test_y, good, rng.permutation(real_y), n_classes=2, seed=0,
                     recipe=FAST, scenarios=("synthetic",))
    assert bad["synthetic"]["macro_auc"]["value"] < 0.8
