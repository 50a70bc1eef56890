"""KID: the unbiased MMD^2 against an explicit double sum, its behaviour on same and shifted data."""

from __future__ import annotations

import numpy as np
import pytest

import fundus_cli.metrics.kid as kid_module
from fundus_cli.errors import FundusError
from fundus_cli.metrics.kid import _mmd2_unbiased, kid


def mmd2_double_sum(x: np.ndarray, y: np.ndarray) -> float:
    """The estimator written out term by term (Binkowski et al. 2018, eq. 1 with the cubic kernel)."""
    d = x.shape[1]

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return float((a @ b / d + 1) ** 3)

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_estimator_matches_double_sum() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((12, 5)), rng.standard_normal((9, 5)) + 0.3
    assert _mmd2_unbiased(x, y) == pytest.approx(mmd2_double_sum(x, y), rel=1e-12)


def test_precomputed_kernels_give_the_per_subset_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    real, fake = rng.standard_normal((80, 16)), rng.standard_normal((70, 16)) * 1.1
    fast = kid(real, fake, subsets=20, subset_size=50, seed=3)
    monkeypatch.setattr(kid_module, "_PRECOMPUTE_MAX_ENTRIES", 0)  # force the per-subset products
    slow = kid(real, fake, subsets=20, subset_size=50, seed=3)
    assert fast == pytest.approx(slow, rel=1e-10)
    # The same draws, written out (the estimator itself is checked against the double sum above).
    draws = np.random.default_rng(3)
    vals = []
    for _ in range(20):
        r = draws.choice(80, 50, replace=False)
        f = draws.choice(70, 50, replace=False)
        vals.append(_mmd2_unbiased(real[r], fake[f]))
    assert fast[0] == pytest.approx(np.mean(vals), rel=1e-10)


def test_same_distribution_is_near_zero_and_can_be_negative() -> None:
    rng = np.random.default_rng(2)
    real, fake = rng.standard_normal((300, 32)), rng.standard_normal((300, 32))
    mean, std = kid(real, fake, subsets=50, subset_size=100, seed=0)
    assert abs(mean) < 3 * std
    # Unbiased: individual estimates of a zero quantity fall on both sides of it.
    vals = [_mmd2_unbiased(rng.standard_normal((20, 8)), rng.standard_normal((20, 8))) for _ in range(40)]
    assert min(vals) < 0 < max(vals)


def test_shifted_distribution_is_clearly_positive() -> None:
    rng = np.random.default_rng(3)
    real, fake = rng.standard_normal((300, 32)), rng.standard_normal((300, 32)) + 0.5
    mean, std = kid(real, fake, subsets=50, subset_size=100, seed=0)
    same_mean, same_std = kid(real, rng.standard_normal((300, 32)), subsets=50, subset_size=100, seed=0)
    assert mean > 10 * std and mean > same_mean + 10 * same_std


def test_small_sets_and_errors() -> None:
    rng = np.random.default_rng(4)
    mean, _ = kid(rng.standard_normal((5, 4)), rng.standard_normal((7, 4)), subsets=3, seed=0)
    assert np.isfinite(mean)
    with pytest.raises(FundusError, match="at least 2"):
        kid(rng.standard_normal((1, 4)), rng.standard_normal((7, 4)))
    with pytest.raises(FundusError, match="same feature network"):
        kid(rng.standard_normal((5, 4)), rng.standard_normal((7, 3)))
