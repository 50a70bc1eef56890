"""Calibrated memorization statistics on nearest-training-image distances (AUDIT.md, "Statistics").

Notation: T training, H holdout (never trained on), S synthetic. dcr(x) is the distance
from x to its nearest training image, in one embedding (``embeddings.Vectors``), with
flips: d(s, t) = min(d(s, t), d(flip(s), t)).

The building blocks are pure functions of distance arrays (``conformal_p_values``,
``memorization_test``, ``data_copying_z``, ``cell_data_copying``, ``dcr_share``,
``membership_auc``) plus ``nearest``, the exact search on top of ``knn``; ``audit_embedding``
runs them all for one embedding. Everything random takes a seed; the same inputs and seed
give identical numbers.

Without a holdout the calibration distances are leave-one-out training-to-training
distances (excluding the image itself, its duplicate group and its patient), which is the
best available stand-in but not an exchangeable one, so the decision calls it inconclusive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
from scipy import stats as sps

from fundus_cli.errors import FundusError
from fundus_cli.privacy.embeddings import Vectors
from fundus_cli.privacy.knn import knn

# Training vectors as one array set, or chunks (offset, Vectors) produced on demand, so that a
# training set larger than memory is embedded slice by slice on every pass.
Chunks = Callable[[], Iterable[tuple[int, Vectors]]]
TrainVectors = Union[Vectors, Chunks]

# Sub-seeds: each random choice has its own stream, so changing one setting (say the number
# of bootstrap rounds) does not change an unrelated choice (which training images are members).
_SEED_MEMBERS, _SEED_LOO, _SEED_CELLS, _SEED_BOOT = 1, 2, 3, 4


# --------------------------------------------------------------------------- nearest training images


@dataclass(frozen=True)
class Nearest:
    """The k nearest database images of each query, nearest first."""

    distance: np.ndarray  # float64 (Q, k); inf where fewer than k were eligible
    index: np.ndarray  # int64 (Q, k) database rows; -1 where none
    flipped: np.ndarray  # bool (Q, k): the distance is the mirrored query's
    part: np.ndarray  # int32 (Q, k): which part (tile) gave the distance
    shift: np.ndarray | None = None  # int64 (Q, k, 2): (dy, dx) of the registered distance, else None

    @property
    def dcr(self) -> np.ndarray:
        """Distance to the nearest database image, float64 (Q,)."""
        return self.distance[:, 0]

    def take(self, rows: np.ndarray | slice) -> Nearest:
        return Nearest(self.distance[rows], self.index[rows], self.flipped[rows], self.part[rows],
                       None if self.shift is None else self.shift[rows])


def nearest(queries: Vectors, database: TrainVectors, *, k: int = 1, flips: bool | None = None,
            exclude: tuple[np.ndarray, np.ndarray] | None = None, dedupe: np.ndarray | None = None,
            cells: tuple[np.ndarray, np.ndarray] | None = None, device: str = "cpu",
            block_size: int | None = None) -> Nearest:
    """Exact k nearest database images of each query under the embedding's distance.

    The distance is the smallest over parts j (one for whole-image embeddings, one per tile
    for the tiled one) and over flips of ``scale_j * ||q_j - d_j||``; each candidate image
    appears once, at its smallest distance.

    flips: compare the mirrored queries too; None = when the queries carry them.
    exclude: ``(query_groups, database_groups)``, (Q,) / (N,) or (Q, G) / (N, G) integer ids;
        a query never matches a database image that shares a non-negative id with it in any
        column (itself, its duplicate group, its patient).
    dedupe: (N,) duplicate-group id of every database image: the k neighbours are k distinct
        groups, so an image stored ten times counts once among the 50 nearest of the ratio
        test. Exact when the database has at most 2k redundant rows (rows beyond the first of
        their group); beyond that, a query close to many duplicated groups may get fewer than
        k distinct ones.
    cells: ``(query_cells, database_cells)``: only images in the same cell are compared
        (the cell-wise data-copying test).
    """
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    n_q = len(queries)
    use_flips = queries.flipped is not None if flips is None else flips
    if use_flips and queries.flipped is None:
        raise ValueError("flips requested but the query vectors carry no mirrored images")
    q_groups = d_groups = None
    if exclude is not None:
        q_groups, d_groups = (_as_matrix(g) for g in exclude)
        if len(q_groups) != n_q:
            raise FundusError(f"{len(q_groups)} query group rows for {n_q} queries")
    k_search = k
    if dedupe is not None:
        dedupe = np.asarray(dedupe, dtype=np.int64)
        redundant = len(dedupe) - len(np.unique(dedupe))
        k_search = k + min(redundant, 2 * k)
    top = _TopK(n_q, k)
    if n_q == 0:
        return top.result()
    for offset, chunk in _chunks(database):
        if len(chunk.parts) != len(queries.parts):
            raise FundusError(f"database chunk at row {offset} has {len(chunk.parts)} parts, "
                              f"the queries {len(queries.parts)}: embed both with the same settings")
        rows = np.arange(offset, offset + len(chunk))
        for q_sel, d_sel in _cell_pairs(n_q, rows, cells):
            d_rows = rows if d_sel is None else rows[d_sel]
            for j in range(len(queries.parts)):
                sides = [(False, queries.parts[j])] + ([(True, queries.flipped[j])] if use_flips else [])
                for is_flip, q_all in sides:
                    qv = q_all if q_sel is None else q_all[q_sel]
                    dv = chunk.parts[j] if d_sel is None else chunk.parts[j][d_sel]
                    if len(dv) == 0:
                        continue
                    groups = _pair_groups(q_groups, d_groups, queries.blank[j], chunk.blank[j],
                                          q_sel=q_sel, d_rows=d_rows, d_local=d_sel, n_q=len(qv), n_d=len(dv))
                    dist, idx = knn(qv, dv, k=min(k_search, len(dv)), exclude_groups=groups,
                                    device=device, block_size=block_size)
                    found = idx >= 0
                    glob = np.where(found, d_rows[np.where(found, idx, 0)], -1)
                    grp = glob if dedupe is None else np.where(found, dedupe[np.where(found, glob, 0)], -1)
                    top.merge(q_sel, dist.astype(np.float64) * queries.scales[j], glob, grp, flip=is_flip, part=j)
    return top.result()


class _TopK:
    """Running k best (distance, database row) per query, at most one row per group."""

    def __init__(self, n: int, k: int) -> None:
        self.k = k
        self.dist = np.full((n, k), np.inf)
        self.idx = np.full((n, k), -1, np.int64)
        self.grp = np.full((n, k), -1, np.int64)
        self.flip = np.zeros((n, k), bool)
        self.part = np.zeros((n, k), np.int32)

    def merge(self, rows: np.ndarray | None, dist: np.ndarray, idx: np.ndarray, grp: np.ndarray, *,
              flip: bool, part: int) -> None:
        sel = slice(None) if rows is None else rows
        d = np.concatenate([self.dist[sel], dist], 1)
        i = np.concatenate([self.idx[sel], idx], 1)
        g = np.concatenate([self.grp[sel], grp], 1)
        f = np.concatenate([self.flip[sel], np.full(dist.shape, flip)], 1)
        p = np.concatenate([self.part[sel], np.full(dist.shape, part, np.int32)], 1)
        # Keep each group's closest entry: sort by (group, distance, row), blank the repeats.
        order = np.lexsort((i, d, g), axis=1)
        d, i, g, f, p = (np.take_along_axis(a, order, 1) for a in (d, i, g, f, p))
        # (Entries without a row share group -1 with whatever has it; they sort last within it,
        # being inf, so a real row is never the one blanked.)
        repeat = np.zeros(d.shape, bool)
        repeat[:, 1:] = g[:, 1:] == g[:, :-1]
        d = np.where(repeat | (i < 0), np.inf, d)
        # Then the k smallest; ties go to the lower row so the result does not depend on order.
        order = np.lexsort((i, d), axis=1)[:, :self.k]
        d, i, g, f, p = (np.take_along_axis(a, order, 1) for a in (d, i, g, f, p))
        none = ~np.isfinite(d)
        self.dist[sel] = d
        self.idx[sel] = np.where(none, -1, i)
        self.grp[sel] = np.where(none, -1, g)
        self.flip[sel] = f & ~none
        self.part[sel] = np.where(none, 0, p)

    def result(self) -> Nearest:
        return Nearest(self.dist, self.idx, self.flip, self.part)


def _chunks(database: TrainVectors) -> Iterator[tuple[int, Vectors]]:
    if isinstance(database, Vectors):
        yield 0, database
        return
    expected = 0
    for offset, chunk in database():
        if int(offset) != expected:
            raise FundusError(f"training chunks must follow each other: expected offset {expected}, got {offset}")
        expected += len(chunk)
        yield int(offset), chunk


def _cell_pairs(n_q: int, rows: np.ndarray, cells: tuple[np.ndarray, np.ndarray] | None
                ) -> Iterator[tuple[np.ndarray | None, np.ndarray | None]]:
    if cells is None:
        yield None, None
        return
    q_cells, d_cells = np.asarray(cells[0]), np.asarray(cells[1])
    chunk_cells = d_cells[rows]
    for c in np.unique(q_cells):
        q_sel = np.nonzero(q_cells == c)[0]
        d_sel = np.nonzero(chunk_cells == c)[0]
        if len(d_sel):
            yield q_sel, d_sel


def _pair_groups(q_groups: np.ndarray | None, d_groups: np.ndarray | None, q_blank: np.ndarray | None,
                 d_blank: np.ndarray | None, *, q_sel: np.ndarray | None, d_rows: np.ndarray,
                 d_local: np.ndarray | None, n_q: int, n_d: int) -> tuple[np.ndarray, np.ndarray] | None:
    """knn's exclusion columns for one (query subset, database slice) search."""
    q_cols, d_cols = [], []
    if q_groups is not None:
        q_cols.append(q_groups if q_sel is None else q_groups[q_sel])
        d_cols.append(d_groups[d_rows])
    if q_blank is not None and d_blank is not None:
        # Two blank (flat) tiles share group 0, so they are never compared.
        qb = q_blank if q_sel is None else q_blank[q_sel]
        db = d_blank if d_local is None else d_blank[d_local]
        q_cols.append(np.where(qb, 0, -1)[:, None])
        d_cols.append(np.where(db, 0, -1)[:, None])
    if not q_cols:
        return None
    return np.concatenate(q_cols, 1).reshape(n_q, -1), np.concatenate(d_cols, 1).reshape(n_d, -1)


def _as_matrix(groups: np.ndarray) -> np.ndarray:
    g = np.asarray(groups)
    if g.dtype.kind not in "iu":
        raise FundusError(f"group ids must be integers (negative for none), got {g.dtype}")
    return g.astype(np.int64).reshape(len(g), -1)


def train_groups(dup_groups: np.ndarray | None, patients: Sequence[Any] | None, n: int | None = None) -> np.ndarray:
    """(N, 3) int64 exclusion ids for training-to-training distances: the image itself, its
    duplicate group (negative = none) and its patient ("" or None = unknown)."""
    if n is None:
        n = len(dup_groups) if dup_groups is not None else len(patients) if patients is not None else None
    if n is None:
        raise ValueError("give dup_groups, patients or n")
    own = np.arange(n, dtype=np.int64)
    dup = np.full(n, -1, np.int64) if dup_groups is None else np.asarray(dup_groups, dtype=np.int64)
    pat = np.full(n, -1, np.int64)
    if patients is not None:
        ids: dict[Any, int] = {}
        for i, p in enumerate(patients):
            if p is not None and p != "":
                pat[i] = ids.setdefault(p, len(ids))
    if len(dup) != n or len(pat) != n:
        raise FundusError(f"{len(dup)} duplicate groups and {len(pat)} patients for {n} training images")
    return np.stack([own, dup, pat], 1)


def group_representatives(n: int, dup_groups: np.ndarray | None) -> np.ndarray:
    """First row of every duplicate group (every row when groups are unknown), ascending."""
    if dup_groups is None:
        return np.arange(n)
    dup = np.asarray(dup_groups, dtype=np.int64)
    if len(dup) != n:
        raise FundusError(f"{len(dup)} duplicate groups for {n} training images")
    # A negative id means "no group": the row stands alone.
    key = np.where(dup >= 0, dup, -1 - np.arange(n))
    _, first = np.unique(key, return_index=True)
    return np.sort(first)


def sample_train(n: int, size: int, *, dup_groups: np.ndarray | None = None, seed: int = 0,
                 stream: int = _SEED_MEMBERS) -> np.ndarray:
    """``size`` training rows, one per duplicate group, chosen uniformly (seeded), ascending.

    Drawing groups rather than rows means that storing an image ten times neither makes it
    ten times likelier to be drawn nor changes which other images are drawn.
    """
    reps = group_representatives(n, dup_groups)
    if size >= len(reps):
        return reps
    rng = np.random.default_rng([seed, stream])
    return np.sort(reps[rng.choice(len(reps), size, replace=False)])


def gather(train: TrainVectors, rows: np.ndarray) -> Vectors:
    """The training vectors of ``rows`` (ascending), in one pass over the chunks."""
    rows = np.asarray(rows, dtype=np.int64)
    if isinstance(train, Vectors):
        return train.take(rows)
    pieces = []
    for offset, chunk in _chunks(train):
        sel = rows[(rows >= offset) & (rows < offset + len(chunk))] - offset
        if len(sel):
            pieces.append(chunk.take(sel))
    if sum(len(p) for p in pieces) != len(rows):
        raise FundusError(f"training chunks ended before row {int(rows.max())}")
    return Vectors.concat(pieces)


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
    rng = np.random.default_rng([seed, _SEED_CELLS])
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
    rng = np.random.default_rng([seed, _SEED_BOOT])
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


# --------------------------------------------------------------------------- one embedding, end to end


@dataclass(frozen=True)
class AuditSettings:
    """Statistical settings shared by all embeddings (recorded in the report)."""

    alpha: float = 0.05  # tau_alpha quantile and the memorization test's chance rate
    ratio_k: int = 50  # neighbours averaged by the ratio test (Carlini et al. 2023)
    ratio_scale: float = 0.5  # their alpha: r = dcr / (ratio_scale * mean of the ratio_k nearest)
    n_cells: int = 20  # k-means cells for C_T, reduced to keep >= 10 holdout and min_cell_synthetic per cell
    min_cell_synthetic: int = 20  # cells with fewer synthetic images are skipped
    fit_cells_max: int = 5000  # training images (one per duplicate group) the cells are fitted on
    pca_dims: int = 64  # PCA dimensions before k-means
    n_boot: int = 1000  # bootstrap rounds for the membership AUC interval
    loo_queries: int = 5000  # training images used as leave-one-out calibration without a holdout
    seed: int = 0


@dataclass(frozen=True)
class EmbeddingAudit:
    """Every statistic of one embedding."""

    name: str
    calibration: str  # "holdout" or "leave-one-out"
    synthetic: Nearest  # ratio_k nearest distinct training images of each synthetic image
    calibration_dcr: np.ndarray  # dcr of the holdout images (or the leave-one-out training images)
    calibration_rows: np.ndarray | None  # leave-one-out: which training rows
    p_values: np.ndarray  # conformal, per synthetic image
    ratio: np.ndarray  # Carlini ratio, per synthetic image
    memorization: MemorizationTest
    data_copying: ZTest
    cells: CellTest | None  # None for multi-part (tiled) embeddings, the registered distance, or too few images
    dcr_share: float | None  # None without a holdout (or for the registered distance)
    membership: MembershipTest | None  # None without a holdout (or for the registered distance)
    calibration_near: Nearest | None = None  # the calibration images' nearest training images

    @property
    def min_p(self) -> float:
        """The smallest possible conformal p-value, 1 / (|H| + 1)."""
        return 1.0 / (len(self.calibration_dcr) + 1.0)

    def flagged(self, *, ratio: float = 1.0) -> np.ndarray:
        """Per synthetic image: p-value the smallest possible and ratio below ``ratio``."""
        return (self.p_values <= self.min_p * (1 + 1e-9)) & (self.ratio < ratio)

    def summary(self) -> dict[str, Any]:
        """The set-level numbers, JSON-able, for report.json."""
        mem, z = self.memorization, self.data_copying
        out: dict[str, Any] = {
            "calibration": self.calibration,
            "n_synthetic": int(len(self.p_values)),
            "n_calibration": int(len(self.calibration_dcr)),
            "dcr_synthetic_median": _f(np.median(self.synthetic.dcr)) if len(self.p_values) else None,
            "dcr_calibration_median": _f(np.median(self.calibration_dcr)) if len(self.calibration_dcr) else None,
            "min_p_value": self.min_p,
            "memorization": {"alpha": mem.alpha, "tau": _f(mem.tau), "rank": mem.rank, "n_below": mem.n_below,
                             "rate": mem.rate, "expected": mem.expected, "p_exact": mem.p_exact,
                             "p_binomial": mem.p_binomial},
            "z_u": {"z": z.z, "p": z.p},
            "c_t": None if self.cells is None else {
                "c_t": _f(self.cells.c_t), "p": self.cells.p, "n_cells": self.cells.n_cells,
                "cells_used": self.cells.cells_used},
            "dcr_share": _f(self.dcr_share),
            "membership": None if self.membership is None else {
                "auc": self.membership.auc, "ci_low": self.membership.ci_low, "ci_high": self.membership.ci_high,
                "p": self.membership.p, "n_members": self.membership.n_members,
                "n_nonmembers": self.membership.n_nonmembers, "n_boot": self.membership.n_boot},
        }
        return out


def _f(x: float | None) -> float | None:
    return None if x is None else float(x)


def audit_embedding(name: str, *, train: TrainVectors, synthetic: Vectors, holdout: Vectors | None = None,
                    n_train: int | None = None, dup_groups: np.ndarray | None = None,
                    patients: Sequence[Any] | None = None, settings: AuditSettings = AuditSettings(),
                    device: str = "cpu") -> EmbeddingAudit:
    """All statistics of AUDIT.md for one embedding.

    train: the training vectors, or chunks of them (then ``n_train`` or ``dup_groups`` gives
        the count); chunks must carry flipped parts when the holdout is missing (leave-one-out
        queries are training images) or for the membership test (members are queries).
    holdout: already cleaned of duplicates of training images and of training patients
        (``holdout_overlap``). Without it, calibration is leave-one-out on the training set,
        and the DCR share and membership test are not computed.
    dup_groups / patients: per training image, for exclusions (leave-one-out), for counting
        duplicates once (ratio test, member sampling) and for the cells.
    """
    if n_train is None:
        if isinstance(train, Vectors):
            n_train = len(train)
        elif dup_groups is not None:
            n_train = len(dup_groups)
        else:
            raise ValueError("give n_train (or dup_groups) when the training vectors come in chunks")
    if n_train < 2:
        raise FundusError(f"the audit needs at least 2 training images, got {n_train}")
    if holdout is not None and len(holdout) == 0:
        raise FundusError("no usable holdout images are left (all duplicate a training image or share a "
                          "training patient); give another holdout, or none to calibrate leave-one-out")
    s_cfg = settings
    groups = train_groups(dup_groups, patients, n_train)
    dedupe = np.where(groups[:, 1] >= 0, groups[:, 1], -1 - np.arange(n_train))  # ungrouped rows: own id
    n_s = len(synthetic)

    # One pass gathers every training row needed as a query or small database.
    n_cal_target = len(holdout) if holdout is not None else min(s_cfg.loo_queries, n_train)
    loo_rows = None if holdout is not None else sample_train(n_train, n_cal_target, dup_groups=dup_groups,
                                                             seed=s_cfg.seed, stream=_SEED_LOO)
    member_rows = None if holdout is None else sample_train(n_train, len(holdout), dup_groups=dup_groups,
                                                            seed=s_cfg.seed, stream=_SEED_MEMBERS)
    single = len(synthetic.parts) == 1
    fit_rows = sample_train(n_train, s_cfg.fit_cells_max, dup_groups=dup_groups, seed=s_cfg.seed,
                            stream=_SEED_CELLS) if single else None
    wanted = np.unique(np.concatenate([r for r in (loo_rows, member_rows, fit_rows) if r is not None]
                                      or [np.zeros(0, np.int64)]))
    pool = gather(train, wanted) if len(wanted) else None

    def rows_of(r: np.ndarray) -> Vectors:
        assert pool is not None
        return pool.take(np.searchsorted(wanted, r))

    # Calibration queries: the holdout, or training images that may not match themselves,
    # their duplicates or their patient.
    if holdout is not None:
        calib, calib_excl = holdout, np.full((len(holdout), 3), -1, np.int64)
    else:
        assert loo_rows is not None
        calib, calib_excl = rows_of(loo_rows), groups[loo_rows]
    if (synthetic.flipped is None) != (calib.flipped is None):
        # dcr(s) and dcr(h) must be the same kind of minimum, or one side looks closer by construction.
        raise FundusError("the synthetic and the calibration vectors must both carry mirrored images or both "
                          "not; embed the holdout (or the training chunks) with flips too")
    queries = Vectors.concat([synthetic, calib])
    excl = np.concatenate([np.full((n_s, 3), -1, np.int64), calib_excl])
    near = nearest(queries, train, k=s_cfg.ratio_k, exclude=(excl, groups), dedupe=dedupe, device=device)
    near_s = near.take(slice(0, n_s))
    cal_dcr = near.dcr[n_s:]
    if not np.all(np.isfinite(cal_dcr)):
        raise FundusError("some calibration images have no eligible training image (every training image "
                          "shares their patient or duplicate group); the audit cannot calibrate")

    p_values = conformal_p_values(near_s.dcr, cal_dcr)
    ratio = ratio_test(near_s, scale=s_cfg.ratio_scale)
    mem = memorization_test(near_s.dcr, cal_dcr, alpha=s_cfg.alpha)
    z_u = data_copying_z(near_s.dcr, cal_dcr)

    cells = None
    n_cells = min(s_cfg.n_cells, len(cal_dcr) // 10, n_s // max(s_cfg.min_cell_synthetic, 1),
                  len(fit_rows) if fit_rows is not None else 0)
    if single and n_cells >= 1:
        assert fit_rows is not None
        part = fit_cells(rows_of(fit_rows).parts[0], n_cells=n_cells, seed=s_cfg.seed, dims=s_cfg.pca_dims)
        t_cells = np.concatenate([part.assign(chunk.parts[0]) for _, chunk in _chunks(train)])
        q_cells = part.assign(queries.parts[0])
        in_cell = nearest(queries, train, k=1, exclude=(excl, groups), cells=(q_cells, t_cells), device=device)
        d_in = in_cell.dcr
        s_ok = np.isfinite(d_in[:n_s])
        c_ok = np.isfinite(d_in[n_s:])
        cells = cell_data_copying(d_in[:n_s][s_ok], d_in[n_s:][c_ok], cells_synthetic=q_cells[:n_s][s_ok],
                                  cells_calibration=q_cells[n_s:][c_ok], n_cells=n_cells,
                                  min_synthetic=s_cfg.min_cell_synthetic)

    share = membership = None
    if holdout is not None and len(holdout) and n_s:
        assert member_rows is not None
        members = rows_of(member_rows)
        d_t = nearest(synthetic, members, k=1, device=device).dcr
        d_h = nearest(synthetic, holdout, k=1, device=device).dcr
        share = dcr_share(d_t, d_h)
        d_to_s = nearest(Vectors.concat([members, holdout]), synthetic, k=1, device=device).dcr
        membership = membership_auc(d_to_s[:len(members)], d_to_s[len(members):], n_boot=s_cfg.n_boot,
                                    seed=s_cfg.seed)

    return EmbeddingAudit(name=name, calibration="holdout" if holdout is not None else "leave-one-out",
                          synthetic=near_s, calibration_dcr=cal_dcr, calibration_rows=loo_rows, p_values=p_values,
                          ratio=ratio, memorization=mem, data_copying=z_u, cells=cells, dcr_share=share,
                          membership=membership, calibration_near=near.take(slice(n_s, None)))


def audit_nearest(name: str, *, synthetic: Nearest, calibration: Nearest, calibration_kind: str = "holdout",
                  calibration_rows: np.ndarray | None = None, settings: AuditSettings = AuditSettings()
                  ) -> EmbeddingAudit:
    """The per-image statistics and the set-level tests that need only distances, for a
    distance found without an embedding search (the registered distance, which re-ranks
    other embeddings' candidates): p-values, ratio, memorization, Z_U. ``calibration`` must
    come from the same procedure as ``synthetic``, or the p-values are biased.

    calibration_kind: "holdout" or "leave-one-out" (then ``calibration_rows`` are the
    training rows used as calibration queries)."""
    if calibration_kind not in ("holdout", "leave-one-out"):
        raise ValueError(f"calibration_kind must be 'holdout' or 'leave-one-out', got {calibration_kind!r}")
    cal_dcr = calibration.dcr
    if not np.all(np.isfinite(cal_dcr)):
        raise FundusError(f"{name}: some calibration images have no registered distance to any candidate "
                          "training image; the audit cannot calibrate")
    return EmbeddingAudit(name=name, calibration=calibration_kind, synthetic=synthetic, calibration_dcr=cal_dcr,
                          calibration_rows=calibration_rows, p_values=conformal_p_values(synthetic.dcr, cal_dcr),
                          ratio=ratio_test(synthetic, scale=settings.ratio_scale),
                          memorization=memorization_test(synthetic.dcr, cal_dcr, alpha=settings.alpha),
                          data_copying=data_copying_z(synthetic.dcr, cal_dcr), cells=None, dcr_share=None,
                          membership=None, calibration_near=calibration)


# --------------------------------------------------------------------------- holdout hygiene


@dataclass(frozen=True)
class HoldoutOverlap:
    """Holdout images that would make the calibration unfair, and why."""

    keep: np.ndarray  # bool (H,): usable holdout images
    duplicate_of: np.ndarray  # int64 (H,): training image it duplicates, -1 if none
    duplicate_bits: np.ndarray  # int64 (H,): Hamming distance of their hashes (of the nearest hash if none)
    shared_patient: np.ndarray  # bool (H,): the patient also has training images
    duplicate_flipped: np.ndarray | None = None  # bool (H,): the mirror image is the duplicate
    unconfirmed: int = 0  # hash matches that the fine-detail check rejected (look-alikes, kept)


def holdout_overlap(holdout_phash: np.ndarray, train_phash: np.ndarray, *,
                    holdout_phash_flipped: np.ndarray | None = None,
                    confirm: Callable[[int, int, bool], bool] | None = None,
                    holdout_patients: Sequence[Any] | None = None, train_patients: Sequence[Any] | None = None,
                    max_bits: int = 4, block: int = 2048) -> HoldoutOverlap:
    """Flag holdout images that duplicate a training image or belong to a training patient.

    Either would put a holdout image at distance ~0 from the training set and make real
    copies look like chance. A duplicate is the ingest's (and the synthetic side's) rule: a
    perceptual hash at most ``max_bits`` from a training image's, of the image or of its
    mirror image (``holdout_phash_flipped``, ``preprocess.flipped_phashes``), that
    ``confirm(holdout row, training row, mirrored)`` accepts when given (the fine-detail
    check: a 64-bit hash of smooth fundus photographs collides for look-alikes, and dropping
    a look-alike from the calibration would bias it). Every training image within reach is
    tried, closest hash first, until one is confirmed. Unknown patients ("" or None) never match.
    """
    from fundus_cli.data.quality import hamming_matrix

    h = np.asarray(holdout_phash, dtype=np.uint64)
    t = np.asarray(train_phash, dtype=np.uint64)
    sides = [(h, False)]
    if holdout_phash_flipped is not None:
        hf = np.asarray(holdout_phash_flipped, dtype=np.uint64)
        if hf.shape != h.shape:
            raise FundusError(f"{hf.shape} mirrored hashes for {h.shape} holdout images; give one per image")
        sides.append((hf, True))
    nearest_bits = np.full(len(h), 65, np.int64)
    # Candidate (holdout, training, mirrored, bits) within reach, found block by block.
    cand: list[tuple[int, int, int, int]] = []
    for side, mirrored in sides:
        for a in range(0, len(h), block):
            for b in range(0, len(t), block):
                d = hamming_matrix(side[a:a + block], t[b:b + block]).astype(np.int64)
                nearest_bits[a:a + len(d)] = np.minimum(nearest_bits[a:a + len(d)], d.min(1) if d.size else 65)
                ii, jj = np.nonzero(d <= max_bits)
                cand += [(int(d[i, j]), int(i + a), int(j + b), int(mirrored)) for i, j in zip(ii, jj)]
    dup = np.full(len(h), -1, np.int64)
    bits = nearest_bits.copy()
    flipped = np.zeros(len(h), bool)
    rejected = np.zeros(len(h), bool)
    for nb, i, j, mirrored in sorted(cand, key=lambda c: (c[1], c[0], c[3], c[2])):  # per image: closest first
        if dup[i] >= 0:
            continue
        if confirm is None or confirm(i, j, bool(mirrored)):
            dup[i], bits[i], flipped[i] = j, nb, bool(mirrored)
        else:
            rejected[i] = True
    shared = np.zeros(len(h), bool)
    if holdout_patients is not None and train_patients is not None:
        known = {p for p in train_patients if p is not None and p != ""}
        shared = np.array([p is not None and p != "" and p in known for p in holdout_patients], dtype=bool)
    return HoldoutOverlap(keep=(dup < 0) & ~shared, duplicate_of=dup, duplicate_bits=bits, shared_patient=shared,
                          duplicate_flipped=flipped, unconfirmed=int((rejected & (dup < 0)).sum()))
