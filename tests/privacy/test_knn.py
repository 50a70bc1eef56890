"""Exact nearest neighbours: agreement with float64 brute force, streaming, exclusions, near copies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fundus_cli.errors import FundusError
from fundus_cli.privacy.knn import knn


def brute_force(q: np.ndarray, d: np.ndarray, k: int, banned: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Float64 all-pairs distances, sorted; banned (Q, N) pairs get inf."""
    dist = np.sqrt(((q[:, None, :].astype(np.float64) - d[None, :, :].astype(np.float64)) ** 2).sum(-1))
    if banned is not None:
        dist[banned] = np.inf
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, 1), order


def assert_exact(q: np.ndarray, d: np.ndarray, dist: np.ndarray, idx: np.ndarray, k: int,
                 banned: np.ndarray | None = None) -> None:
    """Same neighbours as brute force up to float32 ties, and each distance true for its index."""
    ref_d, ref_i = brute_force(q, d, k + 1, banned)  # one more, to see ties at the k-th place
    kk = min(k, ref_d.shape[1])
    assert dist.shape == idx.shape == (len(q), k) and idx.dtype == np.int64 and dist.dtype == np.float32
    np.testing.assert_allclose(dist[:, :kk], ref_d[:, :kk], rtol=1e-5, atol=1e-6)
    valid = idx >= 0
    assert np.array_equal(valid, np.isfinite(dist))
    rows = np.nonzero(valid)[0]
    true_d = np.linalg.norm(q[rows].astype(np.float64) - d[idx[valid]].astype(np.float64), axis=1)
    np.testing.assert_allclose(dist[valid], true_d, rtol=1e-5, atol=1e-6)
    # Where brute force leaves a clear gap, the index itself must match (not only the distance).
    edges = np.pad(ref_d, ((0, 0), (1, 1)), constant_values=(-np.inf, np.inf))
    with np.errstate(invalid="ignore"):  # inf - inf among excluded places
        gap = np.diff(edges, axis=1)
        clear = (np.minimum(gap[:, :kk], gap[:, 1:kk + 1]) > 1e-4) & np.isfinite(ref_d[:, :kk])
    assert clear.sum() >= 0.5 * np.isfinite(ref_d[:, :kk]).sum()  # the check below has work to do
    assert np.array_equal(idx[:, :kk][clear], ref_i[:, :kk][clear])
    for row in idx:  # no database row twice
        ok = row[row >= 0]
        assert len(np.unique(ok)) == len(ok)
    assert np.all(dist[:, 1:] >= dist[:, :-1])  # sorted ascending, inf last


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((37, 24)).astype(np.float32),
            rng.standard_normal((1000, 24)).astype(np.float32))


@pytest.mark.parametrize("k", [1, 7, 50])
# Blocks that divide N or not, fewer block columns than k (full top-k), one query per block.
@pytest.mark.parametrize("block_size,query_block_size",
                         [(1000, 64), (333, 10), (64, 7), (8 * 75, 37), (50, 1)])
def test_matches_brute_force(data, k, block_size, query_block_size):
    q, d = data
    dist, idx = knn(q, d, k=k, block_size=block_size, query_block_size=query_block_size)
    assert_exact(q, d, dist, idx, k)


def test_fewer_rows_than_k_pads_with_inf_and_minus_one(data):
    q, d = data
    dist, idx = knn(q, d[:3], k=5, block_size=2)
    assert_exact(q, d[:3], dist, idx, 5)
    assert np.all(idx[:, 3:] == -1) and np.all(np.isinf(dist[:, 3:]))
    assert np.array_equal(np.sort(idx[:, :3], axis=1), np.tile([0, 1, 2], (len(q), 1)))


def test_streamed_chunks_equal_the_array(data):
    q, d = data
    want = knn(q, d, k=9, block_size=128)
    sizes = [1, 200, 3, 128, 400, 268]  # smaller and larger than a block, summing to 1000
    starts = np.cumsum([0] + sizes[:-1])

    def chunks():
        for s, n in zip(starts, sizes):
            yield int(s), d[s:s + n]

    for source in (chunks, chunks()):  # a callable or an iterator
        got = knn(q, source, k=9, block_size=128)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6)


def test_chunk_offsets_are_global_indices(data):
    q, d = data
    dist, idx = knn(q, [(5000, d[:500]), (9000, d[500:])], k=3, block_size=256)
    ref_d, ref_i = knn(q, d, k=3)
    np.testing.assert_array_equal(idx, np.where(ref_i < 500, ref_i + 5000, ref_i - 500 + 9000))


def test_near_copy_distance_is_zero_despite_large_norms():
    # Embeddings with a large common offset make ||q||^2 + ||d||^2 - 2 q.d cancel badly.
    rng = np.random.default_rng(1)
    d = (100 + rng.standard_normal((2000, 256))).astype(np.float32)
    q = d[[3, 1500, 777]].copy()
    q[2, 5] += 1e-3  # a near copy: one coordinate moved slightly
    dist, idx = knn(q, d, k=2, block_size=512)
    assert list(idx[:, 0]) == [3, 1500, 777]
    assert dist[0, 0] < 1e-5 and dist[1, 0] < 1e-5
    assert abs(dist[2, 0] - 1e-3) < 1e-5
    assert_exact(q, d, dist, idx, 2)


def test_exact_with_offset_data_and_no_copies():
    rng = np.random.default_rng(2)
    q = (100 + rng.standard_normal((20, 64))).astype(np.float32)
    d = (100 + rng.standard_normal((700, 64))).astype(np.float32)
    dist, idx = knn(q, d, k=5, block_size=96)
    assert_exact(q, d, dist, idx, 5)


def test_exclusion_by_groups(data):
    q, d = data
    rng = np.random.default_rng(3)
    q_groups = rng.integers(-1, 5, len(q))
    d_groups = rng.integers(-1, 5, len(d))
    banned = (q_groups[:, None] == d_groups[None, :]) & (q_groups[:, None] >= 0)
    dist, idx = knn(q, d, k=6, block_size=128, exclude_groups=(q_groups, d_groups))
    assert_exact(q, d, dist, idx, 6, banned)
    assert not banned[np.arange(len(q))[:, None], idx].any()


def test_training_to_training_excludes_self_duplicates_and_patient():
    rng = np.random.default_rng(4)
    t = rng.standard_normal((300, 16)).astype(np.float32)
    t[10] = t[11]  # an exact duplicate pair, in one duplicate group
    dup = np.full(300, -1)
    dup[[10, 11]] = 0
    patient = np.arange(300) // 3  # three images per patient
    own = np.arange(300)
    groups = np.stack([own, dup, patient], axis=1)
    dist, idx = knn(t, t, k=4, block_size=64, exclude_groups=(groups, groups))
    banned = ((own[:, None] == own[None, :]) | ((dup[:, None] == dup[None, :]) & (dup[:, None] >= 0))
              | (patient[:, None] == patient[None, :]))
    assert_exact(t, t, dist, idx, 4, banned)
    assert np.all(dist[:, 0] > 0.1)  # without the exclusions row 10 would find row 11 at 0


def test_no_valid_neighbour_left_gives_inf_and_minus_one(data):
    q, d = data
    d_groups = np.stack([np.zeros(len(d), np.int64), np.full(len(d), 7)], axis=1)
    d_groups[[4, 9], 0] = 2
    q_groups = np.tile([0, 7], (len(q), 1))
    q_groups[0] = -1      # query 0 excludes nothing
    q_groups[1, 1] = -1   # query 1 excludes group 0 only, leaving rows 4 and 9
    dist, idx = knn(q, d, k=3, block_size=100, exclude_groups=(q_groups, d_groups))
    assert np.all(idx[0] >= 0)
    assert set(idx[1, :2]) == {4, 9} and idx[1, 2] == -1 and np.isinf(dist[1, 2])
    assert np.all(idx[2:] == -1) and np.all(np.isinf(dist[2:]))
    banned = ((q_groups[:, None, :] == d_groups[None, :, :]) & (q_groups[:, None, :] >= 0)).any(-1)
    assert_exact(q, d, dist, idx, 3, banned)


def test_cosine_metric(data):
    q, d = data
    dist, idx = knn(q, d * 7.0, k=4, metric="cosine", block_size=256)
    cos = (q @ d.T) / np.linalg.norm(q, axis=1)[:, None] / np.linalg.norm(d, axis=1)[None, :]
    ref = np.sort(1 - cos, axis=1)[:, :4]
    np.testing.assert_allclose(dist, ref, atol=1e-5)
    np.testing.assert_allclose(dist, 1 - np.take_along_axis(cos, idx, 1), atol=1e-5)


def test_accepts_tensors_and_other_dtypes(data):
    q, d = data
    want = knn(q, d, k=3)
    got = knn(torch.from_numpy(q).double(), torch.from_numpy(d), k=3)
    np.testing.assert_array_equal(got[1], want[1])
    got = knn(q.astype(np.float64), d.astype(np.float64), k=3)
    np.testing.assert_array_equal(got[1], want[1])
    big_endian = d.astype(">f4")
    big_endian.flags.writeable = False
    got = knn(q, [(0, big_endian[:500]), (500, big_endian[500:])], k=3)
    np.testing.assert_array_equal(got[1], want[1])


def test_bad_inputs_raise_clear_errors(data):
    q, d = data
    with pytest.raises(ValueError, match="k must be"):
        knn(q, d, k=0)
    with pytest.raises(ValueError, match="valid metrics"):
        knn(q, d, k=1, metric="manhattan")
    with pytest.raises(FundusError, match="to match the queries"):
        knn(q, d[:, :5], k=1)
    with pytest.raises(FundusError, match=r"expected \(rows, 24\)"):
        knn(q, [(0, d[:10]), (10, d[10:20, :5])], k=1)
    with pytest.raises(FundusError, match="pair"):
        knn(q, [d[:10]], k=1)
    bad = d.copy()
    bad[123, 4] = np.nan
    with pytest.raises(FundusError, match="row 123"):
        knn(q, bad, k=1, block_size=100)
    with pytest.raises(FundusError, match="row 2 is all zeros"):
        knn(q, np.concatenate([d[:2], np.zeros((1, 24), np.float32)]), k=1, metric="cosine")
    with pytest.raises(FundusError, match="no entry in the database groups"):
        knn(q, d, k=1, exclude_groups=(np.zeros(len(q), int), np.zeros(10, int)))


def test_empty_inputs(data):
    q, d = data
    dist, idx = knn(q[:0], d, k=3)
    assert dist.shape == idx.shape == (0, 3)
    dist, idx = knn(q, d[:0], k=3)
    assert np.all(idx == -1) and np.all(np.isinf(dist))


def test_same_result_on_one_thread_and_thread_count_restored(data):
    q, d = data
    threads = torch.get_num_threads()
    many = knn(q, d, k=5, block_size=128, query_block_size=8)
    assert torch.get_num_threads() == threads
    torch.set_num_threads(1)
    try:
        one = knn(q, d, k=5, block_size=128, query_block_size=8)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(one[1], many[1])
    np.testing.assert_allclose(one[0], many[0], rtol=1e-6)
