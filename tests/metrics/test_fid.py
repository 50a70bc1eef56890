"""FID: agreement with the scipy.linalg.sqrtm formula, both internal routes, known answers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from fundus_cli.errors import FundusError
from fundus_cli.metrics.fid import fid_from_stats, frechet_distance


def sqrtm_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The pytorch-fid formula, on float64 sample covariances."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def correlated(rng: np.random.Generator, n: int, d: int, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    return (rng.standard_normal((n, d)) @ mix) * scale + shift + rng.standard_normal(d) * 0.3


@pytest.mark.parametrize("n1, n2, d", [
    (400, 300, 64),   # more images than dimensions: covariance (Cholesky) route
    (40, 60, 128),    # fewer: singular covariances, Gram (nuclear-norm) route
])
def test_matches_sqrtm_reference(n1: int, n2: int, d: int) -> None:
    rng = np.random.default_rng(0)
    a = correlated(rng, n1, d)
    b = correlated(rng, n2, d, scale=1.3, shift=0.1)
    ref = sqrtm_fid(a, b)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    # The statistics route, including the eigendecomposition fallback for a singular S1.
    ours = fid_from_stats(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert ours == pytest.approx(ref, rel=1e-6)


def nuclear_norm_fid(x: np.ndarray, y: np.ndarray) -> float:
    """tr sqrt(S1 S2) as the sum of singular values of A B^T (S1 = A^T A, S2 = B^T B): an
    SVD is accurate to rounding even for the zero singular values, unlike any route that
    takes square roots of eigenvalues of S1 S2."""
    a = (x - x.mean(0)) / np.sqrt(len(x) - 1)
    b = (y - y.mean(0)) / np.sqrt(len(y) - 1)
    diff = x.mean(0) - y.mean(0)
    return float(diff @ diff + np.sum(a * a) + np.sum(b * b) - 2 * scipy.linalg.svdvals(a @ b.T).sum())


@pytest.mark.parametrize("n1, n2", [(20, 25), (25, 20), (200, 300)])
def test_exact_against_singular_values(n1: int, n2: int) -> None:
    # Several seeds: a zero eigenvalue computed as -eps is clipped harmlessly, one computed
    # as +eps costs sqrt(eps) (about 1e-10 of the FID here); about half the draws show it.
    for seed in range(6):
        rng = np.random.default_rng(seed)
        x, y = correlated(rng, n1, 150), correlated(rng, n2, 150, scale=0.8)
        ref = nuclear_norm_fid(x, y)
        # Gram route (fewer images than dims) and Cholesky route (more) are exact.
        assert frechet_distance(x, y) == pytest.approx(ref, rel=1e-12)
        # From singular covariances, square roots of eigenvalues that should be 0 keep ~sqrt(eps).
        via_stats = fid_from_stats(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
        assert via_stats == pytest.approx(ref, rel=1e-7 if min(n1, n2) <= 150 else 1e-12)


def test_symmetric_and_zero_for_identical_sets() -> None:
    rng = np.random.default_rng(2)
    a, b = correlated(rng, 300, 32), correlated(rng, 250, 32, scale=2.0)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    scale = frechet_distance(a, b)
    assert frechet_distance(a, a) <= 1e-9 * scale
    assert frechet_distance(a[:10], a[:10]) <= 1e-9 * scale  # singular route too


def test_known_answers() -> None:
    rng = np.random.default_rng(3)
    a = correlated(rng, 500, 48)
    shift = rng.standard_normal(48)
    # Same covariance: only the means differ.
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-9)
    # Scaling by c about the origin: |(1 - c) mu|^2 + (1 - c)^2 tr(S).
    c = 1.7
    mu, s = a.mean(0), np.cov(a, rowvar=False)
    expected = (1 - c) ** 2 * (mu @ mu + np.trace(s))
    assert frechet_distance(a, c * a) == pytest.approx(expected, rel=1e-8)
    # Two Gaussians with diagonal covariances: sum of (sqrt(v1) - sqrt(v2))^2 per axis.
    v1, v2 = rng.uniform(0.5, 2, 48), rng.uniform(0.5, 2, 48)
    m1, m2 = rng.standard_normal(48), rng.standard_normal(48)
    expected = (m1 - m2) @ (m1 - m2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert fid_from_stats(m1, np.diag(v1), m2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)


def test_rejects_bad_input() -> None:
    rng = np.random.default_rng(4)
    with pytest.raises(FundusError, match="dimension"):
        frechet_distance(rng.standard_normal((10, 4)), rng.standard_normal((10, 5)))
    with pytest.raises(FundusError, match="at least 2"):
        frechet_distance(rng.standard_normal((1, 4)), rng.standard_normal((10, 4)))
    bad = rng.standard_normal((10, 4))
    bad[3, 1] = np.nan
    with pytest.raises(FundusError, match="NaN"):
        frechet_distance(bad, rng.standard_normal((10, 4)))
