"""Nearest training images in one embedding: the exact search on top of ``knn``, with flips,
exclusions (an image's own duplicate group and patient) and k-means cells, and the training
rows it samples (AUDIT.md, "Statistics"; the tests that use the distances are in
``copying_tests.py``, one embedding's whole audit in ``stats.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from fundus_cli.errors import FundusError
from fundus_cli.privacy.embeddings import Vectors
from fundus_cli.privacy.knn import knn

# Training vectors as one array set, or chunks (offset, Vectors) produced on demand, so that a
# training set larger than memory is embedded slice by slice on every pass.
Chunks = Callable[[], Iterable[tuple[int, Vectors]]]
TrainVectors = Union[Vectors, Chunks]

# Sub-seeds: each random choice has its own stream, so changing one setting (say the number
# of bootstrap rounds) does not change an unrelated choice (which training images are members).
SEED_MEMBERS, SEED_LOO, SEED_CELLS, SEED_BOOT = 1, 2, 3, 4

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
    q_groups, d_groups = _exclusion_groups(exclude, n_q)
    dedupe, k_search = _deduplicated(dedupe, k)
    top = _TopK(n_q, k)
    if n_q == 0:
        return top.result()
    for offset, chunk in train_chunks(database):
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


def _exclusion_groups(exclude: tuple[np.ndarray, np.ndarray] | None, n_q: int
                      ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(query groups, database groups) as (rows, columns) id matrices, or (None, None)."""
    if exclude is None:
        return None, None
    q_groups, d_groups = (_as_matrix(g) for g in exclude)
    if len(q_groups) != n_q:
        raise FundusError(f"{len(q_groups)} query group rows for {n_q} queries")
    return q_groups, d_groups


def _deduplicated(dedupe: np.ndarray | None, k: int) -> tuple[np.ndarray | None, int]:
    """The group ids as int64, and how many neighbours to search so that k distinct groups remain."""
    if dedupe is None:
        return None, k
    dedupe = np.asarray(dedupe, dtype=np.int64)
    redundant = len(dedupe) - len(np.unique(dedupe))
    return dedupe, k + min(redundant, 2 * k)


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


def train_chunks(database: TrainVectors) -> Iterator[tuple[int, Vectors]]:
    """(offset, vectors) of the training set in order, from one array set or from its chunks (checked)."""
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
                 stream: int = SEED_MEMBERS) -> np.ndarray:
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
    for offset, chunk in train_chunks(train):
        sel = rows[(rows >= offset) & (rows < offset + len(chunk))] - offset
        if len(sel):
            pieces.append(chunk.take(sel))
    if sum(len(p) for p in pieces) != len(rows):
        raise FundusError(f"training chunks ended before row {int(rows.max())}")
    return Vectors.concat(pieces)
