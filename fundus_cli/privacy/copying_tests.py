"""Calibrated tests of copying on nearest-training-image distances (AUDIT.md, "Statistics"):
per image, the conformal p-value and the ratio test; per set, the memorization test, Z_U,
C_T on k-means cells, the DCR share and the membership AUC. Pure functions of distance
arrays; everything random takes a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as sps

from fundus_cli.errors import FundusError
from fundus_cli.privacy.neighbours import SEED_BOOT, SEED_CELLS, Nearest

# --------------------------------------------------------------------------- per-image statistics


def conformal_p_values(dcr: np.ndarray, calibration: np.ndarray) -> np.ndarray:
    """p(s) = (1 + #{h: dcr(h) <= dcr(s)}) / (|H| + 1): small when s is closer to the
    training set than the holdout images are. The smallest possible value is 1 / (|H| + 1)."""
    cal = np.sort(np.asarray(calibration, dtype=np.float64))
    below = np.searchsorted(cal, np.asarray(dcr, dtype=np.float64), side="right")
    return (1.0 + below) / (len(cal) + 1.0)


def ratio_test(near: Nearest, *, scale: float = 0.5) -> np.ndarray:
    """Carlini et al. 2023: r = dcr / (scale * mean distance to the k nearest training images).

    r < 1 marks an image much closer to one training image than to the rest; a blurry
    "average" image, near everything, stays above. NaN where no neighbour was found.
    """
    d = near.distance
    finite = np.isfinite(d)
    count = finite.sum(1)
    mean = np.where(finite, d, 0.0).sum(1) / np.maximum(count, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = d[:, 0] / (scale * mean)
    # 0 / 0 (the query duplicates all its neighbours) is a copy: ratio 0.
    r = np.where((d[:, 0] == 0) & (count > 0), 0.0, r)
    return np.where(count > 0, r, np.nan)


# --------------------------------------------------------------------------- set-level tests


@dataclass(frozen=True)
class MemorizationTest:
    """Share of synthetic images closer to the training set than tau_alpha."""

    alpha: float
    tau: float | None  # the floor(alpha (|H| + 1))-th smallest calibration dcr; None if |H| too small
    rank: int  # that rank, j
    n_below: int  # synthetic images with dcr < tau
    rate: float  # m = n_below / |S|
    expected: float  # j / (|H| + 1): the chance rate, <= alpha
    p_exact: float  # P(at least n_below) when S and H are exchangeable (negative hypergeometric)
    p_binomial: float  # one-sided binomial test of m against alpha, as AUDIT.md words it


def memorization_test(dcr_synthetic: np.ndarray, calibration: np.ndarray, *, alpha: float = 0.05
                      ) -> MemorizationTest:
    """Memorization rate m and its one-sided tests.

    tau is the j-th smallest calibration distance with j = floor(alpha (|H| + 1)), so that a
    synthetic image exchangeable with the holdout falls below it with probability
    j / (|H| + 1) <= alpha exactly. The binomial test treats tau as known; it is not (it is
    estimated from |H| images), which makes the binomial test anticonservative whenever |S|
    is not much smaller than |H|: with |H| = |S| = 1000 it rejects a true null at the 0.001
    level several percent of the time. The exact test counts ranks instead: under the null
    the number of synthetic images below the j-th holdout distance is negative
    hypergeometric, whatever the distributions.
    """
    if not 0.0 < alpha < 1.0:
        raise FundusError(f"alpha must be in (0, 1), got {alpha}")
    s = np.asarray(dcr_synthetic, dtype=np.float64)
    cal = np.sort(np.asarray(calibration, dtype=np.float64))
    n_s, n_h = len(s), len(cal)
    j = int(np.floor(alpha * (n_h + 1) + 1e-9))
    if n_s == 0 or j < 1:
        return MemorizationTest(alpha=alpha, tau=None, rank=j, n_below=0, rate=0.0, expected=0.0,
                                p_exact=1.0, p_binomial=1.0)
    tau = float(cal[j - 1])
    below = int((s < tau).sum())
    p_exact = float(sps.nhypergeom.sf(below - 1, n_h + n_s, n_s, j)) if below > 0 else 1.0
    p_binom = float(sps.binomtest(below, n_s, alpha, alternative="greater").pvalue)
    return MemorizationTest(alpha=alpha, tau=tau, rank=j, n_below=below, rate=below / n_s,
                            expected=j / (n_h + 1), p_exact=min(1.0, p_exact), p_binomial=p_binom)


@dataclass(frozen=True)
class ZTest:
    """Meehan et al. 2020's Z_U: standardised Mann-Whitney U of dcr(S) against dcr(H)."""

    z: float  # strongly negative: synthetic images closer to the training set than holdout images
    p: float  # one-sided, Phi(z): small for copying
    u: float  # #{(s, h): dcr(s) > dcr(h)} + half the ties
    n_synthetic: int
    n_calibration: int


def data_copying_z(dcr_synthetic: np.ndarray, calibration: np.ndarray) -> ZTest:
    """Z_U = (U - m n / 2) / sqrt(m n (m + n + 1) / 12), U counting pairs where the synthetic
    image is FARTHER from the training set (Meehan et al.'s sign: Z_U << 0 is data copying)."""
    s = np.asarray(dcr_synthetic, dtype=np.float64)
    h = np.asarray(calibration, dtype=np.float64)
    m, n = len(s), len(h)
    if m == 0 or n == 0:
        return ZTest(z=0.0, p=1.0, u=0.0, n_synthetic=m, n_calibration=n)
    u = float(sps.rankdata(np.concatenate([s, h]))[:m].sum() - m * (m + 1) / 2)
    z = (u - m * n / 2) / np.sqrt(m * n * (m + n + 1) / 12)
    return ZTest(z=float(z), p=float(sps.norm.cdf(z)), u=u, n_synthetic=m, n_calibration=n)


@dataclass(frozen=True)
class Cells:
    """A partition of the embedding fitted on training images: PCA, then k-means."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (D, p)
    centroids: np.ndarray  # (n_cells, p)

    def assign(self, x: np.ndarray) -> np.ndarray:
        """Cell of every row of x (N, D): nearest centroid in the PCA space."""
        y = (np.asarray(x, dtype=np.float64) - self.mean) @ self.components
        return _nearest_centroid(y, self.centroids)


def fit_cells(x: np.ndarray, *, n_cells: int, seed: int = 0, dims: int = 64, iterations: int = 100) -> Cells:
    """Seeded k-means (k-means++ start, Lloyd) on the top ``dims`` principal components of x.

    PCA first (randomised, exact enough for a partition) keeps the cost independent of the
    embedding's width; the test is valid for any partition fitted without S and H, so the
    partition only needs to be sensible, not optimal.
    """
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    if n_cells < 1 or n < n_cells:
        raise FundusError(f"cannot fit {n_cells} cells to {n} training images")
    rng = np.random.default_rng([seed, SEED_CELLS])
    mean = x.mean(0)
    xc = x - mean
    p = max(1, min(dims, n - 1, d))
    if p < d:
        # Randomised range finder (Halko et al. 2011). torch's LAPACK honours
        # torch.set_num_threads, which numpy's threaded BLAS on a busy machine does not.
        xt = torch.from_numpy(xc)
        q = torch.linalg.qr(xt @ torch.from_numpy(rng.standard_normal((d, min(p + 10, d))))).Q
        for _ in range(2):  # power iterations sharpen the leading subspace
            q = torch.linalg.qr(xt @ (xt.T @ q)).Q
        vt = torch.linalg.svd(q.T @ xt, full_matrices=False).Vh
        comps = vt[:p].T.numpy()
    else:
        comps = np.eye(d)
    y = xc @ comps
    # k-means++ seeding.
    centres = [y[rng.integers(n)]]
    d2 = ((y - centres[0]) ** 2).sum(1)
    for _ in range(1, n_cells):
        total = d2.sum()
        i = int(rng.choice(n, p=d2 / total)) if total > 0 else int(rng.integers(n))
        centres.append(y[i])
        d2 = np.minimum(d2, ((y - y[i]) ** 2).sum(1))
    c = np.array(centres)
    labels = None
    for _ in range(iterations):
        new = _nearest_centroid(y, c)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        for j in range(n_cells):
            members = labels == j
            if members.any():
                c[j] = y[members].mean(0)
            else:  # an empty cell takes the point worst served by its centre
                far = int(((y - c[labels]) ** 2).sum(1).argmax())
                c[j] = y[far]
                labels[far] = j
    return Cells(mean=mean, components=comps, centroids=c)


def _nearest_centroid(y: np.ndarray, c: np.ndarray) -> np.ndarray:
    d2 = (y * y).sum(1)[:, None] - 2 * y @ c.T + (c * c).sum(1)[None, :]
    return d2.argmin(1).astype(np.int64)


@dataclass(frozen=True)
class CellTest:
    """Meehan et al. 2020's C_T: per-cell Z_U averaged with the holdout's share as weight."""

    c_t: float | None  # None when no cell has enough synthetic images
    p: float  # one-sided, from C_T / sqrt(sum w^2) ~ N(0, 1) under the null (independent cells)
    n_cells: int
    cells_used: int
    z_cells: tuple[float | None, ...]  # per cell; None where skipped
    weights: tuple[float, ...]  # holdout share per cell


def cell_data_copying(dcr_synthetic: np.ndarray, calibration: np.ndarray, *, cells_synthetic: np.ndarray,
                      cells_calibration: np.ndarray, n_cells: int, min_synthetic: int = 20) -> CellTest:
    """C_T from within-cell distances (each image's distance to the nearest training image
    of its own cell). Cells with fewer than ``min_synthetic`` synthetic images are skipped,
    as Meehan et al. skip cells rarely visited by the generator (their Pi_tau): a Z_U from a
    handful of samples is noise, and a generator that avoids a region is not copying there."""
    s, h = np.asarray(dcr_synthetic, np.float64), np.asarray(calibration, np.float64)
    cs, ch = np.asarray(cells_synthetic), np.asarray(cells_calibration)
    n_h = len(h)
    z_cells: list[float | None] = []
    weights = []
    for c in range(n_cells):
        in_s, in_h = s[cs == c], h[ch == c]
        weights.append(len(in_h) / n_h if n_h else 0.0)
        if len(in_s) >= max(min_synthetic, 1) and len(in_h) > 0:
            z_cells.append(data_copying_z(in_s, in_h).z)
        else:
            z_cells.append(None)
    used = [(w, z) for w, z in zip(weights, z_cells) if z is not None]
    if not used:
        return CellTest(c_t=None, p=1.0, n_cells=n_cells, cells_used=0, z_cells=tuple(z_cells),
                        weights=tuple(weights))
    w = np.array([u[0] for u in used])
    z = np.array([u[1] for u in used])
    c_t = float((w * z).sum() / w.sum())
    p = float(sps.norm.cdf((w * z).sum() / np.sqrt((w * w).sum())))
    return CellTest(c_t=c_t, p=p, n_cells=n_cells, cells_used=len(used), z_cells=tuple(z_cells),
                    weights=tuple(weights))


def dcr_share(d_train: np.ndarray, d_holdout: np.ndarray) -> float:
    """Share of synthetic images closer to the (|H|-sized) training subsample than to the
    holdout; ties count half. 0.5 = no preference, towards 1 = pulled towards the training set."""
    t, h = np.asarray(d_train, np.float64), np.asarray(d_holdout, np.float64)
    if len(t) == 0:
        return float("nan")
    return float(((t < h).sum() + 0.5 * (t == h).sum()) / len(t))


@dataclass(frozen=True)
class MembershipTest:
    """Membership inference by distance to the nearest synthetic image (GAN-Leaks style)."""

    auc: float  # P(a member is closer to S than a non-member); 0.5 = no leakage
    ci_low: float  # bootstrap percentile interval
    ci_high: float
    p: float  # one-sided Mann-Whitney (normal approximation): members closer
    n_members: int
    n_nonmembers: int
    n_boot: int


def membership_auc(d_members: np.ndarray, d_nonmembers: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95) -> MembershipTest:
    """AUC of score = -distance to the nearest synthetic image, members (training images)
    against non-members (holdout), with a seeded bootstrap interval resampling both groups."""
    m = np.asarray(d_members, np.float64)
    n = np.asarray(d_nonmembers, np.float64)
    if len(m) == 0 or len(n) == 0:
        raise FundusError("membership inference needs training and holdout images")
    auc = _auc(m, n)
    rng = np.random.default_rng([seed, SEED_BOOT])
    boots = np.array([_auc(m[rng.integers(0, len(m), len(m))], n[rng.integers(0, len(n), len(n))])
                      for _ in range(n_boot)]) if n_boot > 0 else np.array([auc])
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    u = auc * len(m) * len(n)
    z = (u - len(m) * len(n) / 2) / np.sqrt(len(m) * len(n) * (len(m) + len(n) + 1) / 12)
    return MembershipTest(auc=auc, ci_low=float(lo), ci_high=float(hi), p=float(sps.norm.sf(z)),
                          n_members=len(m), n_nonmembers=len(n), n_boot=n_boot)


def _auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """P(member distance < non-member distance) + half the ties, from ranks."""
    ranks = sps.rankdata(np.concatenate([nonmembers, members]))
    u = ranks[:len(nonmembers)].sum() - len(nonmembers) * (len(nonmembers) + 1) / 2
    return float(u / (len(members) * len(nonmembers)))
