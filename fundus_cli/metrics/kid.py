"""Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with a cubic polynomial kernel.

    k(x, y) = (x.y / D + 1)^3
    MMD^2_u = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j)

Unbiased at any sample size (unlike FID), so it is the metric to trust when only tens of
real images are available; being unbiased, it scatters around 0 for two samples of one
distribution and can come out negative. Reported as the mean and standard deviation over
random subsets, as in torch-fidelity and the original code, so the numbers are comparable.
"""

from __future__ import annotations

import numpy as np

from fundus_cli.errors import FundusError
from fundus_cli.metrics.registry import register_metric

# torch-fidelity's defaults, so values on Inception features are comparable with papers.
DEFAULT_SUBSETS = 100
DEFAULT_SUBSET_SIZE = 1000

# Up to this many kernel entries (float64: 8 bytes each, 256 MiB) the three full kernel
# matrices are computed once and the subsets' sums read from them: the subsets overlap,
# so per-subset kernels would recompute the same values over and over (100 subsets of
# 1,000 from 2,000 images take 25x the products of the full matrices).
_PRECOMPUTE_MAX_ENTRIES = 1 << 25


def _kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1) ** 3


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    return _mmd2_from_kernels(_kernel(x, x), _kernel(y, y), _kernel(x, y))


def _mmd2_from_kernels(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    m, n = len(kxx), len(kyy)
    # The diagonal k(x_i, x_i) pairs a sample with itself; leaving it out is what makes
    # the estimate unbiased.
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def _mmd2_subsets_from_full_kernels(real: np.ndarray, fake: np.ndarray,
                                    draws: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The unbiased MMD^2 of every (real rows, fake rows) subset, from the full kernel matrices.

    A subset's kernel sum is w^T K w with w its 0/1 indicator vector, so the sums of all
    subsets come from one matrix product K W per kernel: far faster than gathering each
    subset's block.
    """
    m = len(draws[0][0])
    wr = np.zeros((len(real), len(draws)))
    wf = np.zeros((len(fake), len(draws)))
    for j, (r, f) in enumerate(draws):
        wr[r, j] = 1.0
        wf[f, j] = 1.0
    krr, kff, krf = _kernel(real, real), _kernel(fake, fake), _kernel(real, fake)
    # Leaving out the diagonal k(x_i, x_i) (a sample paired with itself) makes it unbiased.
    rr = np.einsum("ij,ij->j", wr, krr @ wr) - np.diag(krr) @ wr
    ff = np.einsum("ij,ij->j", wf, kff @ wf) - np.diag(kff) @ wf
    rf = np.einsum("ij,ij->j", wr, krf @ wf)
    return (rr + ff) / (m * (m - 1)) - 2 * rf / (m * m)


def kid(real: np.ndarray, fake: np.ndarray, *, subsets: int = DEFAULT_SUBSETS,
        subset_size: int = DEFAULT_SUBSET_SIZE, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD^2 over random subsets of size min(subset_size, n_real, n_fake).

    Each subset is drawn without replacement, independently for real and fake, from
    numpy's default_rng(seed), so a seed gives the same subsets on every machine.
    """
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise FundusError(f"KID needs two (images, dims) feature arrays of one dimension, got shapes "
                          f"{real.shape} and {fake.shape}; extract both with the same feature network")
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise FundusError(f"KID needs at least 2 images on each side, got {len(real)} real and {len(fake)} "
                          "synthetic")
    if subsets < 1:
        raise ValueError(f"subsets must be positive, got {subsets}")
    rng = np.random.default_rng(seed)
    draws = [(rng.choice(len(real), size, replace=False), rng.choice(len(fake), size, replace=False))
             for _ in range(subsets)]
    n_r, n_f = len(real), len(fake)
    full_entries = n_r * n_r + n_f * n_f + n_r * n_f
    # Multiply-adds: full kernels plus the indicator products, against kernels per subset.
    cheaper = full_entries * (real.shape[1] + subsets) < 3 * subsets * size * size * real.shape[1]
    if full_entries <= _PRECOMPUTE_MAX_ENTRIES and cheaper:
        vals = _mmd2_subsets_from_full_kernels(real, fake, draws)
    else:
        vals = np.array([_mmd2_unbiased(real[r], fake[f]) for r, f in draws])
    return float(np.mean(vals)), float(np.std(vals))


@register_metric("kid")
def kid_metric(real: np.ndarray, fake: np.ndarray, *, seed: int = 0) -> dict[str, float]:
    """Registry entry: the subset mean (the subset std is not a confidence interval; bootstrap it)."""
    return {"kid": kid(real, fake, seed=seed)[0]}
