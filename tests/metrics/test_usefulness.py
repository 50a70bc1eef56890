from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from fundus_cli.metrics.usefulness import (Recipe, auc_binary, classification_metrics, stratified_subset, summarise,
                                           usefulness)

FAST = Recipe(epochs=1, min_steps=40, batch=16, width=8, size=32)


YY, XX = np.mgrid[:32, :32]
DISC = (YY - 15.5) ** 2 + (XX - 15.5) ** 2 < 14**2


def _images(n: int, label: int, rng: np.random.Generator, *, colour: list[int], noise: float,
            mark: Callable[[np.ndarray, np.random.Generator], None]) -> np.ndarray:
    """n noisy 32 px discs of `colour`; in class 1 each also gets `mark` (drawn after its noise)."""
    out = np.zeros((n, 32, 32, 3), np.uint8)
    for i in range(n):
        img = np.zeros((32, 32, 3), float)
        img[DISC] = colour
        img += rng.normal(0, noise, img.shape)
        if label == 1:
            mark(img, rng)
        out[i] = np.clip(img * DISC[..., None], 0, 255)
    return out


def _discs(n: int, label: int, rng: np.random.Generator) -> np.ndarray:
    """Class 0: red-dominant disc, class 1: the same with a bright blob on the left."""
    def blob(img: np.ndarray, rng: np.random.Generator) -> None:
        cx = rng.integers(8, 14)
        img[(YY - 16) ** 2 + (XX - cx) ** 2 < 9] = [240, 220, 120]

    return _images(n, label, rng, colour=[150, 60, 30], noise=12, mark=blob)


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
                     seeds=1, fractions=(1.0,), n_boot=100)["scenarios"]
    assert res["real"]["accuracy"]["value"] >= 0.9 and res["synthetic"]["macro_auc"]["value"] >= 0.9
    lo, hi = res["real"]["accuracy"]["ci_low"], res["real"]["accuracy"]["ci_high"]
    assert lo <= res["real"]["accuracy"]["value"] <= hi
    bad = usefulness(real, real_y, test, test_y, good, rng.permutation(real_y), n_classes=2, seed=0,
                     recipe=FAST, seeds=1, fractions=(1.0,), n_boot=100)["scenarios"]
    assert bad["synthetic"]["macro_auc"]["value"] < 0.8


def _faint(n: int, label: int, rng: np.random.Generator) -> np.ndarray:
    """A task that needs more than a dozen examples: class 1 has a faint blob anywhere in a noisy disc."""
    def blob(img: np.ndarray, rng: np.random.Generator) -> None:
        cy, cx = rng.integers(8, 24, 2)
        img[(YY - cy) ** 2 + (XX - cx) ** 2 < 12] += [45, 45, 25]

    return _images(n, label, rng, colour=[150, 70, 35], noise=25, mark=blob)


def test_paired_gain_real_images_help_at_25_percent_and_shuffled_labels_do_not() -> None:
    # Issue 11 item 3: a 'generator' returning more real images with their labels must show a
    # significant paired gain when added to 25 % of the real images; with shuffled labels the
    # same images must show none (or a loss).
    rng = np.random.default_rng(3)
    n = 40
    real, real_y = np.concatenate([_faint(n, 0, rng), _faint(n, 1, rng)]), np.repeat([0, 1], n)
    test, test_y = np.concatenate([_faint(50, 0, rng), _faint(50, 1, rng)]), np.repeat([0, 1], 50)
    extra, extra_y = np.concatenate([_faint(n, 0, rng), _faint(n, 1, rng)]), np.repeat([0, 1], n)
    # Without augmentation: this checks the paired-gain machinery on a task that 20 images do not
    # teach (balanced accuracy ~0.66) and 100 do (~0.99); the augmented recipe is tested above.
    recipe = Recipe(epochs=1, min_steps=120, batch=16, width=8, size=32, augment=False)
    kw = dict(n_classes=2, seed=0, recipe=recipe, seeds=2, fractions=(0.25,), tstr=False, n_boot=200)
    good = usefulness(real, real_y, test, test_y, extra, extra_y, **kw)
    gain = good["gains"]["real25"]
    assert gain["verdict"] == "gain" and gain["ci_low"] > 0, gain
    assert set(good["gains"]) == {"real25", "real"} and gain["seeds"] == 2
    shuffled = usefulness(real, real_y, test, test_y, extra, rng.permutation(extra_y), **kw)
    assert shuffled["gains"]["real25"]["verdict"] != "gain", shuffled["gains"]["real25"]
    assert shuffled["gains"]["real25"]["value"] < gain["value"]
    # Label fidelity: the real-trained classifiers agree with the true labels of the extra images
    # about as often as they recall each class on the holdout; shuffled labels halve that.
    fid = {r["class_index"]: r for r in good["label_fidelity"]}
    assert abs(fid[1]["synthetic_agreement"] - fid[1]["holdout_recall"]) < 0.25
    assert np.mean([r["synthetic_agreement"] for r in shuffled["label_fidelity"]]) < \
        np.mean([r["synthetic_agreement"] for r in good["label_fidelity"]])


def _scenarios(real: tuple[float, float, float], others: dict[str, float]) -> dict[str, dict]:
    def ba(v: float, lo: float, hi: float) -> dict:
        return {"balanced_accuracy": {"value": v, "ci_low": lo, "ci_high": hi}}

    out = {"real": ba(*real)}
    out.update({k: ba(v, v - 0.1, v + 0.1) for k, v in others.items()})
    gains = {"real": {"value": others["real+synthetic"] - real[0], "ci_low": -0.2, "ci_high": 0.1, "seeds": 3,
                      "verdict": "no significant change"},
             "real25": {"value": others["real25+synthetic"] - others["real25"], "ci_low": 0.02, "ci_high": 0.2,
                        "seeds": 3, "verdict": "gain"}}
    return {"scenarios": out, "gains": gains}


def test_summary_withholds_ratio_and_gains_when_the_real_baseline_is_at_chance() -> None:
    others = {"synthetic": 0.44, "real+synthetic": 0.52, "real25": 0.30, "real25+synthetic": 0.40}
    # 3 classes: chance 1/3; the real-trained classifier's CI reaches below it (issue 16, item 2)
    s = summarise(_scenarios((0.317, 0.22, 0.41), others), 3)
    assert s["tstr_over_trtr_balanced_accuracy"] is None and s["augmentation_gain_balanced_accuracy"] is None
    assert s["augmentation_gain_25pct_balanced_accuracy"] is None and s["gains"] is None
    assert "includes chance (0.333 with 3 classes)" in s["withheld_reason"]
    assert "cannot learn this task" in s["withheld_reason"]
    # The same numbers with a baseline clear of chance are reported.
    s = summarise(_scenarios((0.60, 0.50, 0.70), others), 3)
    assert s["withheld_reason"] is None
    assert s["tstr_over_trtr_balanced_accuracy"] == pytest.approx(0.44 / 0.60)
    assert s["augmentation_gain_balanced_accuracy"] == pytest.approx(-0.08)
    assert s["augmentation_gain_25pct_balanced_accuracy"] == pytest.approx(0.10)
    assert "25 % of the real images changes balanced accuracy by +0.100" in s["headline"]
    assert s["headline"].endswith("gain")
    # Two classes: chance is 0.5, and an interval that touches it counts as including it.
    assert summarise(_scenarios((0.58, 0.50, 0.66), others), 2)["withheld_reason"] is not None


def test_one_class_resamples_are_skipped_without_a_warning() -> None:
    """A bootstrap resample of a tiny test set can hold one class (AUC undefined): it is left out
    of the CI, and numpy's "Mean of empty slice" warning does not reach the terminal (it did,
    in `fundus demo --quick`)."""
    import warnings

    from fundus_cli.metrics.usefulness import seed_averaged_with_ci

    labels = np.array([0, 1, 0])
    probas = [np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]), np.array([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1]])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = seed_averaged_with_ci(probas, labels, seed=0, n_boot=40)
    assert out["macro_auc"]["value"] == 1.0  # both seeds rank the one positive first
    assert out["macro_auc"]["ci_low"] == out["macro_auc"]["ci_high"] == 1.0  # from the two-class resamples
