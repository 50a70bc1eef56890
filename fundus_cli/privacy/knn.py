"""Exact k-nearest-neighbour search: blocked matrix products with a running top-k.

The privacy audit needs, for every query embedding, its k nearest database embeddings
(k = 1 for the distance to the closest record, k = 50 for the ratio test), exactly, for
databases that may not fit in memory. Each (query block x database block) step is one
GEMM whose output is reduced to candidates at once, so memory is bounded by the block
sizes and never by the number of database rows: a centred copy of the queries (Q x D),
the running top-k (Q x k), one database block (block_size x D) and one score block per
thread (query rows x block_size), all float32 (measured: +160 MiB for 5,000 x 1,024
queries, k = 50, 2 threads, whether the streamed database has 10,000 or 100,000 rows).

The database is either an array or a stream of ``(offset, rows)`` chunks (e.g. read from
HDF5 one slice at a time); both go through the same loop, so they give the same answer.
"""

from __future__ import annotations

import math
import queue
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Union

import numpy as np
import torch

from fundus_cli.errors import FundusError
from fundus_cli.privacy.knn_exclusion import Exclusion

ArrayLike = Union[np.ndarray, torch.Tensor]
Chunks = Iterable[tuple[int, ArrayLike]]
# A callable is accepted as well as an iterable so that a reader can open its file lazily.
Database = Union[ArrayLike, Chunks, Callable[[], Chunks]]

METRICS = ("l2", "cosine")

# Measured on a 2-core AVX-512 CPU with D = 1024: a one-thread GEMM runs at ~95 GFLOP/s
# from about 1000 x 2048 up; 4096 database rows per block beat 2048 end to end (half the
# per-block steps) and 8192 gained nothing. A GPU wants bigger blocks to fill it.
_CPU_BLOCKS = (4096, 2048)   # (database rows, query rows) per GEMM
_GPU_BLOCKS = (16384, 4096)
_MIN_QUERY_BLOCK = 256  # below this, splitting queries across threads costs more than it gains

# Candidate pre-filter: columns are read in strided groups of this size; a group whose
# minimum cannot beat a query's current k-th best is skipped without a full top-k.
_GROUP = 8

# The expanded form ||q||^2 + ||d||^2 - 2 q.d loses a few eps * (||q||^2 + ||d||^2) to
# rounding (at most 4.4 eps measured for D = 1024). Candidates whose squared distance is
# below this share of that scale (near copies, which the audit exists to find) are
# recomputed from the difference q - d; every other distance is then within about 1e-5
# (relative) of the truth, and a copy's distance comes out 0, not sqrt(eps) * ||q||.
_RECOMPUTE_BELOW = 1.0 / 16


def knn(queries: ArrayLike, database: Database, *, k: int, metric: str = "l2",
        block_size: int | None = None, query_block_size: int | None = None,
        device: str | torch.device = "cpu",
        exclude_groups: tuple[ArrayLike, ArrayLike] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest database rows of every query row, exactly.

    queries: (Q, D) array or tensor (any real dtype; computed in float32).
    database: (N, D) array or tensor, or an iterable of ``(offset, rows)`` chunks where
        ``rows`` is (n_i, D) and its rows have global indices offset .. offset + n_i - 1,
        or a zero-argument callable returning such an iterable. Chunks of any size are
        re-blocked to ``block_size`` rows, so a reader can yield whatever its file holds.
    k: neighbours per query. Where fewer than k database rows are eligible (small N, or
        exclusions), the missing places hold distance inf and index -1.
    metric: "l2" (Euclidean distance, not squared) or "cosine" (1 - cosine similarity;
        all-zero rows are rejected because their direction is undefined).
    block_size / query_block_size: rows per GEMM; defaults suit the device.
    device: where the products run ("cpu", "cuda", "cuda:1", ...).
    exclude_groups: ``(query_groups, database_groups)``, shapes (Q,) and (N,), or (Q, G)
        and (N, G) for several kinds of group at once. A pair is never a neighbour if it
        shares a group id >= 0 in any column; negative ids mean "no group". The audit uses
        columns (own index, duplicate group, patient) for training-to-training queries.

    Returns (distances, indices): float32 (Q, k) sorted ascending per row, and int64
    (Q, k) global database indices. Equal distances are ordered arbitrarily, the same way
    on every run with the same inputs, block sizes and number of threads.

    On a CPU the search runs on as many threads of its own as torch's intra-op setting
    (torch.get_num_threads()), and sets that process-wide setting to 1 meanwhile (restored
    on return). On a GPU it turns TF32 matmuls off meanwhile, likewise restored.
    """
    dev = torch.device(device)
    block_size, query_block_size = _checked(k, metric, dev, block_size, query_block_size)
    if dev.type != "cpu":
        # A caller may have allowed TF32 GEMMs (10 mantissa bits), fine for training but
        # not for an exact search.
        precision = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")
        try:
            return _search(queries, database, k=k, metric=metric, block_size=block_size,
                           query_block_size=query_block_size, dev=dev, workers=1,
                           exclude_groups=exclude_groups)
        finally:
            torch.set_float32_matmul_precision(precision)
    # On a CPU, each of torch's intra-op threads takes whole query blocks and every op runs
    # single-threaded, instead of all threads sharing each op: a shared op waits at a barrier
    # for its slowest thread, and on a busy machine the many small ops made the search
    # 1.2-1.6x slower (over 10x for a few queries), while whole blocks per thread meet once
    # per database block. GEMM throughput is the same either way (measured).
    workers = torch.get_num_threads()
    torch.set_num_threads(1)  # process-wide in torch, hence restored however we leave
    try:
        return _search(queries, database, k=k, metric=metric, block_size=block_size,
                       query_block_size=query_block_size, dev=dev, workers=workers,
                       exclude_groups=exclude_groups)
    finally:
        torch.set_num_threads(workers)


def _checked(k: int, metric: str, dev: torch.device, block_size: int | None,
             query_block_size: int | None) -> tuple[int, int]:
    """Refuse a bad k or metric; the block sizes, the device's defaults where not given."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")
    default_blocks = _CPU_BLOCKS if dev.type == "cpu" else _GPU_BLOCKS
    block_size = default_blocks[0] if block_size is None else block_size
    query_block_size = default_blocks[1] if query_block_size is None else query_block_size
    if block_size < 1 or query_block_size < 1:
        raise ValueError(f"block sizes must be positive, got {block_size} and {query_block_size}")
    return block_size, query_block_size


def _search(queries: ArrayLike, database: Database, *, k: int, metric: str, block_size: int,
            query_block_size: int, dev: torch.device, workers: int,
            exclude_groups: tuple[ArrayLike, ArrayLike] | None) -> tuple[np.ndarray, np.ndarray]:
    """knn() once its arguments are checked; `workers` threads fold query blocks in parallel."""
    q = _to_float32(queries, dev)
    if q.ndim != 2:
        raise FundusError(f"queries must be a 2-D (count, dim) array, got shape {tuple(q.shape)}")
    n_queries, dim = q.shape
    if n_queries == 0:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    q, shift, q_norms = _centred(q, metric)
    groups = Exclusion(exclude_groups, n_queries, dev) if exclude_groups is not None else None

    best_d = torch.full((n_queries, k), math.inf, device=dev)  # squared distances
    best_i = torch.full((n_queries, k), -1, dtype=torch.int64, device=dev)

    q_step = _query_step(n_queries, query_block_size, workers)
    starts = range(0, n_queries, q_step)
    workers = min(workers, len(starts))
    # Reused buffers: a fresh allocation this size costs page faults on every block.
    free_scores: queue.SimpleQueue[torch.Tensor] = queue.SimpleQueue()
    for _ in range(workers):
        free_scores.put(torch.empty(q_step * block_size, device=dev))
    rows_buf = torch.empty((block_size, dim), device=dev)

    # A new thread starts with OpenMP's default team size (all cores), not torch's setting.
    with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        for ids, parts in _blocks(database, block_size, dim, dev):
            n = ids.numel()
            rows = _shifted_rows(parts, ids, rows_buf[:n], shift, metric)
            r_norms = _squared_norms(rows, what="database", first_index=int(ids[0]))
            if groups is not None:
                groups.check_ids(ids)

            def fold(start: int) -> None:
                sl = slice(start, min(start + q_step, n_queries))
                buf = free_scores.get()
                scores = buf[: (sl.stop - start) * n].view(-1, n)
                # One GEMM with the database norms folded in: ||d||^2 - 2 q.d ranks like the
                # distance; ||q||^2 is added to the few candidates only.
                torch.addmm(r_norms, q[sl], rows.T, beta=1, alpha=-2, out=scores)
                if groups is not None:
                    groups.mask(scores, sl, ids)
                _merge(scores, q[sl], q_norms[sl], rows, r_norms, ids, best_d[sl], best_i[sl], k=k)
                free_scores.put(buf)

            if workers == 1:
                for start in starts:
                    fold(start)
            else:
                for _ in pool.map(fold, starts):  # re-raises a worker's exception here
                    pass

    return _sorted_result(best_d, best_i, metric)


def _centred(q: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The queries centred on their mean (unit rows first for cosine), the shift, their squared norms.

    Distances do not change under a common shift, but rounding error scales with the norms:
    centring on the queries' mean keeps embeddings with a large common offset (all pixel means
    near 100, say) as exact as centred ones. Any shift is correct; this one is small."""
    if metric == "cosine":
        q = _unit_rows(q, what="queries")
    shift = q.mean(0)
    q = q - shift
    return q, shift, _squared_norms(q, what="queries", first_index=0)


def _query_step(n_queries: int, query_block_size: int, workers: int) -> int:
    """Rows per query block: even blocks (5000 in blocks of 2048 -> 3 x 1667), and at least two per
    worker so that a worker slowed by another process does not hold up the rest for a whole
    block, but not so small that per-op overhead dominates."""
    n_qblocks = max(math.ceil(n_queries / query_block_size),
                    min(2 * workers, math.ceil(n_queries / _MIN_QUERY_BLOCK)))
    return math.ceil(n_queries / n_qblocks)


def _shifted_rows(parts: Iterable[torch.Tensor], ids: torch.Tensor, rows: torch.Tensor, shift: torch.Tensor,
                  metric: str) -> torch.Tensor:
    """One database block in `rows` (a reused buffer), shifted like the queries (unit rows for cosine)."""
    at = 0
    for part in parts:
        if metric == "cosine":
            part = _unit_rows(part, what="database", first_index=int(ids[at]))
        torch.sub(part, shift, out=rows[at:at + part.shape[0]])
        at += part.shape[0]
    return rows


def _sorted_result(best_d: torch.Tensor, best_i: torch.Tensor, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The running top-k as knn returns it: sorted, distances (not squared), -1 where none."""
    best_d, order = torch.sort(best_d, dim=1, stable=True)
    best_i = best_i.gather(1, order)
    best_i[torch.isinf(best_d)] = -1
    best_d = best_d.clamp(min=0)
    # For unit vectors ||a - b||^2 = 2 - 2 cos(a, b).
    dist = best_d.sqrt() if metric == "l2" else (best_d / 2).clamp(max=2)
    return dist.cpu().numpy().astype(np.float32, copy=False), best_i.cpu().numpy()


def _merge(scores: torch.Tensor, q: torch.Tensor, q_norms: torch.Tensor, rows: torch.Tensor,
           r_norms: torch.Tensor, ids: torch.Tensor, best_d: torch.Tensor, best_i: torch.Tensor,
           *, k: int) -> None:
    """Fold one score block into the running top-k (best_d, best_i are updated in place).

    scores[a, j] = ||rows_j||^2 - 2 q_a.rows_j; best_d holds full squared distances.
    """
    b, n = scores.shape
    bar = best_d.amax(1) - q_norms  # the k-th best so far, in score units
    stride = n // _GROUP
    cand = None
    if n % _GROUP == 0 and k <= stride:
        # Few entries of a block can beat the k-th best so far. The minimum over strided
        # groups of _GROUP columns is one cheap vectorised pass; only the groups that can
        # contribute are gathered, which avoids a full top-k over the block.
        group_min = scores.view(b, _GROUP, stride).amin(1)
        unset = torch.isinf(bar)
        if bool(unset.any()):
            # Queries without k neighbours yet: the k smallest group minima are k distinct
            # entries, so the k-th of them bounds the block's own k-th best from above.
            kth = group_min.amin(1) if k == 1 else torch.kthvalue(group_min, k, dim=1).values
            bar = torch.where(unset, torch.nextafter(kth, torch.tensor(math.inf, device=kth.device)), bar)
        r, g = (group_min < bar[:, None]).nonzero(as_tuple=True)
        if r.numel() == 0:
            return
        if r.numel() * _GROUP * 4 <= b * n:  # else a plain top-k is cheaper
            # Flat indices: 1-D index_select is much faster than 2-D advanced indexing.
            flat = ((r * n + g)[:, None] + stride * torch.arange(_GROUP, device=g.device)).view(-1)
            vals = scores.view(-1).index_select(0, flat)
            sel = (vals.view(-1, _GROUP) < bar[r, None]).view(-1).nonzero().squeeze(1)
            flat, vals = flat.index_select(0, sel), vals.index_select(0, sel)
            r = torch.div(flat, n, rounding_mode="floor")
            # Pad each query's survivors into one row (flat is sorted, so slots are row ranks).
            counts = torch.bincount(r, minlength=b)
            slot = torch.arange(r.numel(), device=r.device) - (torch.cumsum(counts, 0) - counts)[r]
            width = int(counts.max())
            cand_s = torch.full((b, width), math.inf, device=scores.device)
            cand_c = torch.zeros((b, width), dtype=torch.int64, device=scores.device)
            cand_s[r, slot] = vals
            cand_c[r, slot] = flat - r * n
            cand = cand_s, cand_c
    if cand is None:
        cand = torch.topk(scores, min(k, n), dim=1, largest=False, sorted=False)
    cand_s, cand_c = cand

    pool_d = torch.cat([best_d, cand_s + q_norms[:, None]], 1)
    keep = torch.topk(pool_d, k, dim=1, largest=False, sorted=False).indices
    new_d = pool_d.gather(1, keep)
    is_new = keep >= k
    local = cand_c.gather(1, (keep - k).clamp(min=0))  # column in this block; junk where not new
    new_i = torch.where(is_new, ids[local], best_i.gather(1, keep.clamp(max=k - 1)))

    # Near copies: recompute from differences, where the expanded form has cancelled.
    risky = is_new & (new_d < _RECOMPUTE_BELOW * (q_norms[:, None] + r_norms[local]))
    if bool(risky.any()):
        a, s = risky.nonzero(as_tuple=True)
        diff = q[a] - rows[local[a, s]]
        new_d[a, s] = (diff * diff).sum(1)
    best_d.copy_(new_d)
    best_i.copy_(new_i)


def _blocks(database: Database, block_size: int, dim: int, dev: torch.device
            ) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
    """(global row ids, float32 row pieces on dev) for blocks of block_size rows (the last may
    be short). Pieces are views where possible; the caller copies them into its block buffer."""
    if isinstance(database, (np.ndarray, torch.Tensor)):
        if database.ndim != 2 or database.shape[1] != dim:
            raise FundusError(f"database must be a 2-D (count, {dim}) array to match the queries, "
                              f"got shape {tuple(database.shape)}")
        for start in range(0, database.shape[0], block_size):
            rows = _to_float32(database[start:start + block_size], dev)
            yield torch.arange(start, start + rows.shape[0], device=dev), [rows]
        return

    chunks = database() if callable(database) else database
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []
    n_pending = 0
    for item in chunks:
        try:
            offset, rows = item
        except (TypeError, ValueError):
            raise FundusError("a database chunk must be a pair (offset, rows)") from None
        offset = int(offset)
        rows = _to_float32(rows, dev)
        if rows.ndim != 2 or rows.shape[1] != dim or offset < 0:
            raise FundusError(f"database chunk at offset {offset} has shape {tuple(rows.shape)}; "
                              f"expected (rows, {dim}) at a non-negative offset")
        ids = torch.arange(offset, offset + rows.shape[0], device=dev)
        # Large chunks are cut into views; small ones are gathered until a block is full,
        # so the GEMMs keep their efficient size whatever the reader yields.
        while rows.shape[0]:
            take = min(block_size - n_pending, rows.shape[0])
            pending.append((ids[:take], rows[:take]))
            n_pending += take
            ids, rows = ids[take:], rows[take:]
            if n_pending == block_size:
                yield torch.cat([p[0] for p in pending]), [p[1] for p in pending]
                pending, n_pending = [], 0
    if pending:
        yield torch.cat([p[0] for p in pending]), [p[1] for p in pending]


def _to_float32(x: ArrayLike, dev: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        if x.is_complex() or x.dtype == torch.bool:
            raise FundusError(f"embeddings must be real numbers, got {x.dtype}")
        return x.to(device=dev, dtype=torch.float32)
    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
        raise FundusError(f"embeddings must be real numbers, got {a.dtype}")
    a = a.astype(np.float32, copy=False)  # also native byte order (HDF5 may hold big-endian)
    if not a.flags.writeable:
        a = a.copy()  # torch.from_numpy warns on read-only memory (e.g. np.memmap mode "r")
    return torch.from_numpy(a).to(dev)


def _squared_norms(x: torch.Tensor, *, what: str, first_index: int) -> torch.Tensor:
    """Row norms squared; a non-finite norm also catches NaN or infinite entries, for free."""
    norms = torch.linalg.vector_norm(x, dim=1).square_()
    finite = torch.isfinite(norms)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0]) + first_index
        raise FundusError(f"{what} row {bad} contains NaN, infinity or values too large for float32 "
                          "distances; recompute the embeddings")
    return norms


def _unit_rows(x: torch.Tensor, *, what: str, first_index: int = 0) -> torch.Tensor:
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    zero = norms[:, 0] == 0
    if bool(zero.any()):
        bad = int(zero.nonzero()[0, 0]) + first_index
        raise FundusError(f"{what} row {bad} is all zeros, so its cosine distance is undefined; "
                          "use metric 'l2' or drop the row")
    return x / norms
