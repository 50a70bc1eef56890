"""Registered distance: exact against brute force, zero for moved copies (also of cut-off discs), re-ranking."""

from __future__ import annotations

import numpy as np
import pytest

from fundus_cli.testing import quick_fundus
from fundus_cli.errors import FundusError
from fundus_cli.privacy import preprocess as pp
from fundus_cli.privacy import register as rg
from fundus_cli.privacy import views as vw

S, SHIFT = 24, 3  # tiny, so that the brute force below is quick


@pytest.fixture(scope="module")
def data():
    imgs, masks = quick_fundus(12, seed=3, size=S)
    mask = pp.common_mask(masks, size=S)
    x = pp.prepare(imgs, masks, mask=mask)
    own = np.ones((len(x), int(mask.sum())), bool)
    yy, _ = np.nonzero(mask)
    own[3] = yy > 4  # training image 3 is cut off at the top, 7 at the bottom
    own[7] = yy < S - 5
    return imgs, mask, x[:, mask].reshape(len(x), -1), own


def brute(pix: np.ndarray, mask: np.ndarray, own: np.ndarray, q: int, t: int) -> tuple[float, bool, tuple[int, int]]:
    """Slide the (mirrored) query over t; Pearson r over the overlap inside t's own field of view,
    each image's channel means removed there; distance sqrt(2 - 2 r) at the best."""
    yy, xx = np.nonzero(mask)

    def image(row: np.ndarray) -> np.ndarray:
        out = np.zeros((S, S, 3))
        out[yy, xx] = row.reshape(-1, 3)
        return out

    qi, ti = image(pix[q]), image(pix[t])
    inside = np.zeros((S, S), bool)
    inside[yy, xx] = own[t]
    best = (-np.inf, False, (0, 0))
    for flip in (False, True):
        qq = qi[:, ::-1] if flip else qi
        for dy in range(-SHIFT, SHIFT + 1):
            for dx in range(-SHIFT, SHIFT + 1):
                moved = np.zeros_like(qq)
                valid = np.zeros((S, S), bool)
                ys, yd = slice(max(dy, 0), S + min(dy, 0)), slice(max(-dy, 0), S - max(dy, 0))
                xs, xd = slice(max(dx, 0), S + min(dx, 0)), slice(max(-dx, 0), S - max(dx, 0))
                moved[yd, xd], valid[yd, xd] = qq[ys, xs], mask[ys, xs]
                over = valid & inside & mask
                if (valid & mask).sum() < 0.5 * mask.sum():
                    continue
                a, b = moved[over], ti[over]
                a, b = a - a.mean(0), b - b.mean(0)
                r = (a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())
                if r > best[0] + 1e-9:
                    best = (r, flip, (dy, dx))
    return float(np.sqrt(max(0.0, 2 - 2 * best[0]))), best[1], best[2]


def test_registered_distance_is_the_best_overlap_correlation(data):
    _, mask, pix, own = data
    reg = rg.Registrar(mask, max_shift=SHIFT)
    q_rows, q_sums = reg.queries(pix)
    side = reg.train_side(pix, own)
    pairs = [(0, 1), (5, 3), (9, 7), (4, 7), (1, 0), (6, 6)]
    got = reg.distances(q_rows[[a for a, _ in pairs]], q_sums[[a for a, _ in pairs]], side,
                        np.array([b for _, b in pairs]))
    for i, (q, t) in enumerate(pairs):
        d, flip, shift = brute(pix, mask, own, q, t)
        assert got.distance[i] == pytest.approx(d, abs=1e-3), (q, t)  # float32 FFTs: ~1e-3 at 0
        if q != t:
            assert (bool(got.flipped[i]), tuple(got.shift[i])) == (flip, shift), (q, t)
    assert got.distance[-1] < 1e-3 and 0.5 < got.distance[:-1].min()  # itself vs unrelated images


def test_moved_and_mirrored_copies_come_out_at_zero_also_with_cut_off_bands():
    imgs, masks = quick_fundus(6, seed=8, size=64)
    masks[2, :10] = False  # a disc cut off by the frame: black band at the top
    imgs[2, :10] = 0
    mask = pp.common_mask(None, size=64)  # most images are whole: the band lies inside the common disc
    reg = rg.Registrar(mask, max_shift=8)
    own = pp.resize_masks(masks, 64)[:, mask]
    cases = [(0, (8, -5), False), (2, (-7, 8), False), (4, (3, 2), True), (2, (6, 0), True)]
    copies = []
    for t, (dy, dx), flip in cases:
        moved = vw.shift_images(imgs[t:t + 1], dy, dx)[0]
        copies.append(moved[:, ::-1] if flip else moved)
    # A generator's copy carries the generator's full disc mask, black bands included.
    q = pp.prepare(np.stack(copies), np.broadcast_to(pp.disc(64), (len(cases), 64, 64)), mask=mask)[:, mask]
    t_pix = pp.prepare(imgs, masks, mask=mask)[:, mask]
    q_rows, q_sums = reg.queries(q.reshape(len(q), -1))
    got = reg.distances(q_rows, q_sums, reg.train_side(t_pix.reshape(len(t_pix), -1), own),
                        np.array([c[0] for c in cases]))
    assert (got.distance < 2e-3).all(), got.distance
    assert [tuple(s) for s in got.shift] == [c[1] for c in cases]  # the (mirrored) query's shift
    assert got.flipped.tolist() == [c[2] for c in cases]
    plain = reg.distances(q_rows[3:], q_sums[3:], reg.train_side(t_pix[2:3].reshape(1, -1), None), np.array([0]))
    assert plain.distance[0] > 0.1  # without the own field of view the moved black band spoils the match


def test_registered_nearest_re_ranks_candidates_by_chunk_with_duplicate_groups(data):
    _, mask, pix, own = data
    reg = rg.Registrar(mask, max_shift=SHIFT)
    cand = np.array([[1, 2, -1, 2], [3, 3, 7, 11], [0, 5, 9, 9]])
    queries = pix[[0, 5, 9]]
    chunks = [(0, pix[:5], own[:5]), (5, pix[5:10], own[5:10]), (10, pix[10:], own[10:])]
    d, i, f, s = rg.registered_nearest(reg, queries, cand, chunks, k=3)
    q_rows, q_sums = reg.queries(queries)
    side = reg.train_side(pix, own)
    for row in range(3):
        uniq = sorted({c for c in cand[row] if c >= 0})
        ref = reg.distances(q_rows[[row] * len(uniq)], q_sums[[row] * len(uniq)], side, np.array(uniq))
        order = np.lexsort((uniq, ref.distance))[:3]
        np.testing.assert_allclose(d[row, :len(order)], ref.distance[order], rtol=1e-5, atol=1e-3)
        assert i[row, :len(order)].tolist() == [uniq[o] for o in order]
    assert i[0, 2] == -1 and np.isinf(d[0, 2])  # only two distinct candidates
    assert d[2, 0] < 1e-3 and i[2, 0] == 9  # itself
    # Rows 9 and 5 in one duplicate group: query 9 keeps only the closer of them.
    groups = np.arange(12)
    groups[5] = 9
    d2, i2, _, _ = rg.registered_nearest(reg, queries, cand, chunks, k=3, groups=groups)
    assert i2[2].tolist() == [9, 0, -1]
    with pytest.raises(FundusError, match="follow each other"):
        rg.registered_nearest(reg, queries, cand, [(0, pix[:5], own[:5]), (6, pix[6:], own[6:])], k=3)
    with pytest.raises(FundusError, match="symmetric"):
        rg.Registrar(np.triu(np.ones((S, S), bool)), max_shift=2)


def test_views_shifts_and_fine_detail_confirmation():
    assert vw.view_offsets(8) == [(a, b) for a in (-6, 0, 6) for b in (-6, 0, 6) if (a, b) != (0, 0)]
    assert vw.view_offsets(2) == []
    img = np.arange(2 * 5 * 5 * 3, dtype=np.uint8).reshape(2, 5, 5, 3)
    moved = vw.shift_images(img, 2, -1)
    np.testing.assert_array_equal(moved[:, 2:, :4], img[:, :3, 1:])
    assert not moved[:, :2].any() and not moved[:, :, 4].any()
    imgs, _ = quick_fundus(3, seed=2, size=64)
    copy = vw.shift_images(imgs[:1], -5, 7)[0][:, ::-1]
    same = rg.detail_correlation(copy, imgs[0], shift=(-5, 7), flipped=True, working_size=64)
    other = rg.detail_correlation(copy, imgs[1], shift=(-5, 7), flipped=True, working_size=64)
    assert same > 0.95 and other < 0.9  # the rule: >= 0.9 (DUP_CORRELATION)
    # Shifts are in working-size pixels: the same copy stored at 128 px.
    big = np.stack([np.kron(i, np.ones((2, 2, 1), np.uint8)) for i in (copy, imgs[0])])
    assert rg.detail_correlation(big[0], big[1], shift=(-5, 7), flipped=True, working_size=64) > 0.95
