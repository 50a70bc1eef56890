"""Resampling confidence intervals for metrics on feature arrays.

Features are extracted once; each replicate recomputes the metric on resampled rows of
the real and the fake set (drawn independently: they are independent samples), so a
replicate costs one metric evaluation on feature arrays.

Two resampling schemes:

* "half" (default): each replicate takes half of each set without replacement (the
  delete-d jackknife with d = n/2). For a mean, the spread of half-samples drawn
  without replacement equals the spread of the full-sample value, with no rescaling.
* "replace": the classic bootstrap, n rows with replacement. Repeated rows are what
  FID, KID and PRDC handle worst: a repeated row is its own nearest neighbour, which
  shrinks PRDC's balls, and the repeats add spread of their own.

Measured on Gaussian features (32 dims, 100 vs 100 images, 300 independent draws for the
true spread; `tests/metrics/test_bootstrap.py` repeats a small version), the interval's
half-width / 1.96 against the true standard deviation, half vs replace:
FID 0.62 vs 0.68 (true 0.40), precision 0.040 vs 0.053 (0.038), recall 0.040 vs 0.053
(0.043), coverage 0.026 vs 0.063 (0.027), KID 0.042 vs 0.046 (0.031). At 256 dims and
60 images: FID 5.3 vs 6.9 (3.8), coverage 0.029 vs 0.080 (0.033), KID 0.023 vs 0.037
(0.016). So "half" is close for PRDC and on the wide (cautious) side for FID and KID,
whose smaller-sample values vary more than the sqrt(n) rule assumes.

Both schemes evaluate the metric on fewer distinct images than the full sample, and FID
and PRDC depend on sample size (FID of a smaller sample is larger). A plain percentile
interval then lies beside the full-sample value, often without containing it. The
interval is therefore the percentile interval of the replicates moved by their mean's
offset from the full-sample value: it keeps the measured spread, centred where the full
sample is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

from fundus_cli.errors import FundusError

DEFAULT_N_BOOT = 100
Resample = Literal["half", "replace"]


def bootstrap_cis(fn: Callable[..., dict[str, float]], real: np.ndarray, fake: np.ndarray, *,
                  n_boot: int = DEFAULT_N_BOOT, seed: int = 0, alpha: float = 0.05,
                  resample: Resample = "half") -> dict[str, tuple[float, float]]:
    """(low, high) for every value of a registry metric fn(real, fake, *, seed) -> dict.

    The replicates' rows come from numpy's default_rng(seed); replicate i passes
    seed + i + 1 to fn, so metrics with their own randomness (KID's subsets) vary too.
    With resample="half" each set must hold at least 2 x the metric's minimum.
    """
    if n_boot < 2:
        raise FundusError(f"a resampling interval needs at least 2 replicates, got {n_boot}")
    if not 0 < alpha < 1:
        raise FundusError(f"alpha must lie between 0 and 1 (0.05 gives a 95 % interval), got {alpha}")
    if resample not in ("half", "replace"):
        raise ValueError(f"resample must be 'half' or 'replace', got {resample!r}")
    real, fake = np.asarray(real), np.asarray(fake)
    point = fn(real, fake, seed=seed)
    rng = np.random.default_rng(seed)
    reps: dict[str, list[float]] = {name: [] for name in point}
    for i in range(n_boot):
        r = real[_draw(rng, len(real), resample)]
        f = fake[_draw(rng, len(fake), resample)]
        for name, value in fn(r, f, seed=seed + i + 1).items():
            reps[name].append(value)
    return {name: _centred_percentile(np.asarray(reps[name]), point[name], alpha) for name in point}


def bootstrap_ci(fn: Callable[[np.ndarray, np.ndarray], float], real: np.ndarray, fake: np.ndarray, *,
                 n_boot: int = DEFAULT_N_BOOT, seed: int = 0, alpha: float = 0.05,
                 resample: Resample = "half") -> tuple[float, float]:
    """(low, high) for a single-valued fn(real, fake) -> float; see bootstrap_cis."""
    return bootstrap_cis(lambda r, f, *, seed: {"value": fn(r, f)}, real, fake,
                         n_boot=n_boot, seed=seed, alpha=alpha, resample=resample)["value"]


def cis_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two (low, high) intervals share a point: if so, the two values are not told apart."""
    return a[0] <= b[1] and b[0] <= a[1]


def _draw(rng: np.random.Generator, n: int, resample: Resample) -> np.ndarray:
    if resample == "replace":
        return rng.integers(0, n, n)
    return np.sort(rng.permutation(n)[: n // 2])


def _centred_percentile(reps: np.ndarray, point: float, alpha: float) -> tuple[float, float]:
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    shift = float(np.mean(reps)) - point
    return float(lo - shift), float(hi - shift)
