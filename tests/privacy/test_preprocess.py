"""Preprocessing for the privacy audit: common disc, fill, standardisation, flips, tiles, hashes."""

from __future__ import annotations

import numpy as np
import pytest

from fundus_cli.data.quality import phash
from fundus_cli.errors import FundusError
from fundus_cli.privacy import preprocess as pp


def discs(n: int, size: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random smooth colour fields on the inscribed disc, black outside."""
    rng = np.random.default_rng(seed)
    mask = pp.disc(size)
    y, x = np.mgrid[:size, :size] / size
    imgs = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        field = sum(rng.uniform(-1, 1) * np.sin(rng.uniform(1, 8) * (x * np.cos(a) + y * np.sin(a)) + rng.uniform(0, 6))
                    for a in rng.uniform(0, np.pi, 4))
        lum = 0.55 + 0.12 * field + 0.03 * rng.standard_normal((size, size))
        img = np.clip(lum[..., None] * np.array([0.9, 0.45, 0.15]), 0, 1) * mask[..., None]
        imgs[i] = (img * 255).round()
    return imgs, np.broadcast_to(mask, (n, size, size)).copy()


def test_common_mask_is_symmetric_inside_the_disc_and_ignores_rare_cut_offs():
    _, masks = discs(20)
    masks[:1, :12] = False  # one photograph cut off at the top: 5 % of the images
    m = pp.common_mask(masks, size=32)
    assert m.dtype == bool and m.shape == (32, 32)
    assert np.array_equal(m, m[:, ::-1])
    assert not (m & ~pp.disc(32)).any() and not m[0].any() and not m[:, 0].any()  # nothing outside the disc
    assert m[4:8].any()  # 95 % coverage keeps the top
    strict = pp.common_mask(masks, size=32, coverage=1.0)  # the intersection loses it
    assert not strict[:9].any() and strict.sum() < m.sum()
    assert np.array_equal(pp.common_mask([masks[:7], masks[7:]], size=32), m)  # chunks == one go
    with pytest.raises(FundusError, match="share only"):
        pp.common_mask(np.zeros((3, 40, 40), bool), size=32)


def test_prepare_standardises_inside_the_mask_and_ignores_brightness_and_contrast():
    imgs, masks = discs(4)
    mask = pp.common_mask(masks, size=32)
    x = pp.prepare(imgs, masks, mask=mask)
    assert x.shape == (4, 32, 32, 3) and x.dtype == np.float32
    inside = x[:, mask].reshape(4, -1)
    np.testing.assert_allclose(inside.mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(inside.std(1), 1, atol=1e-4)
    assert not x[:, ~mask].any()
    darker = (imgs.astype(np.float32) * 0.7 + 10).round().astype(np.uint8) * (masks[..., None] > 0)
    y = pp.prepare(darker, masks, mask=mask)
    rms = np.sqrt(((x - y)[:, mask] ** 2).mean((1, 2)))
    assert rms.max() < 0.05  # an exposure change is still a copy ...
    # ... while unrelated images are far apart (less than the ~1.4 of uncorrelated noise:
    # all fundus images share red > green > blue, which the RGB standardisation keeps).
    assert np.sqrt(((x[0] - x[1])[mask] ** 2).mean()) > 0.3
    # Image by image: chunks give the same rows.
    np.testing.assert_array_equal(np.concatenate([pp.prepare(imgs[:1], masks[:1], mask=mask),
                                                  pp.prepare(imgs[1:], masks[1:], mask=mask)]), x)


def test_flat_images_become_zeros_and_bad_inputs_are_refused():
    mask = pp.common_mask(None, size=16)
    x = pp.prepare(np.full((2, 16, 16, 3), 80, np.uint8), None, mask=mask)
    assert not x.any()
    with pytest.raises(FundusError, match="uint8"):
        pp.to_unit(np.zeros((1, 16, 16, 3), np.float32), None, size=16)
    with pytest.raises(FundusError, match="square RGB"):
        pp.to_unit(np.zeros((1, 16, 12, 3), np.uint8), None, size=16)
    with pytest.raises(FundusError, match="one .* mask per image"):
        pp.to_unit(np.zeros((2, 16, 16, 3), np.uint8), np.ones((1, 16, 16), bool), size=16)


def test_outside_the_own_field_of_view_is_filled_with_the_mean_colour():
    imgs, masks = discs(1)
    cut_img, cut_mask = imgs.copy(), masks.copy()
    cut_img[:, :10] = 0
    cut_mask[:, :10] = False
    u = pp.to_unit(cut_img, cut_mask, size=40)
    top = u[0, 2:8, 15:25]
    mean_inside = (imgs[0][cut_mask[0]] / 255.0).mean(0)
    np.testing.assert_allclose(top, np.broadcast_to(mean_inside, top.shape), atol=1e-5)


def test_flip_commutes_with_preparation():
    imgs, masks = discs(3)
    mask = pp.common_mask(masks, size=32)
    mirrored = pp.prepare(imgs[:, :, ::-1].copy(), masks[:, :, ::-1].copy(), mask=mask)
    np.testing.assert_allclose(pp.flip(pp.prepare(imgs, masks, mask=mask)), mirrored, atol=1e-5)


def test_tile_layout_drops_the_corners_and_covers_the_rest_of_the_mask():
    mask = pp.common_mask(None, size=64)
    tiles = pp.tile_layout(mask)
    assert len(tiles) == 12 and {(t.row, t.col) for t in tiles}.isdisjoint({(0, 0), (0, 3), (3, 0), (3, 3)})
    covered = np.zeros_like(mask)
    for t in tiles:
        covered[t.rows, t.cols] |= t.mask
    corners = np.zeros_like(mask)
    for r, c in [(0, 0), (0, 48), (48, 0), (48, 48)]:
        corners[r:r + 16, c:c + 16] = True
    assert np.array_equal(covered, mask & ~corners)
    assert len(pp.tile_layout(mask, min_coverage=0.1)) == 16


def test_phash_nearest_finds_copies_and_mirrored_copies():
    imgs, _ = discs(12, size=64, seed=3)
    train = np.array([phash(i) for i in imgs[:8]], dtype=np.uint64)
    queries = np.stack([imgs[5], np.ascontiguousarray(imgs[2][:, ::-1]), imgs[9]])
    q = np.array([phash(i) for i in queries], dtype=np.uint64)
    bits, index, flipped = pp.phash_nearest(q, train, flipped=pp.flipped_phashes(queries))
    assert bits[0] == 0 and index[0] == 5 and not flipped[0]
    assert bits[1] == 0 and index[1] == 2 and flipped[1]
    assert bits[2] > 4
    # Blocking does not change the answer.
    for got, want in zip(pp.phash_nearest(q, train, flipped=pp.flipped_phashes(queries), block=3),
                         (bits, index, flipped)):
        np.testing.assert_array_equal(got, want)
    b_plain, _, f_plain = pp.phash_nearest(q, train)
    assert b_plain[1] > 4 and not f_plain.any()
