"""Embeddings: pixel (RMS = correlation distance, flips), tiled (partial copies), learned (seeded, robust)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from fundus_cli.privacy import preprocess as pp
from fundus_cli.privacy import neighbours as nb
from fundus_cli.privacy.embeddings import Vectors, pixel_embedding, tiled_embedding
from fundus_cli.privacy.learned import EncoderConfig, learned_embedding, train_encoder, weights_sha256


def photos(n: int, *, seed: int, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Orange discs with a bright spot, dark curves and texture: each image distinct."""
    rng = np.random.default_rng(seed)
    c = (size - 1) / 2
    y, x = (np.mgrid[:size, :size] - c) / (size / 2)
    mask = x * x + y * y <= 1
    out = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        lum = 0.8 - 0.3 * (x * x + y * y)
        sx, sy = rng.uniform(-0.6, 0.6, 2)
        lum += 0.4 * np.exp(-((x - sx) ** 2 + (y - sy) ** 2) / 0.02)
        for _ in range(5):
            a, off, amp, fr = rng.uniform(0, np.pi), rng.uniform(-0.6, 0.6), rng.uniform(0.1, 0.3), rng.uniform(1, 4)
            u, v = x * np.cos(a) + y * np.sin(a), -x * np.sin(a) + y * np.cos(a)
            lum -= 0.25 * np.exp(-((v - off - amp * np.sin(fr * u)) ** 2) / 0.002)
        lum += 0.05 * cv2.resize(rng.standard_normal((8, 8)).astype(np.float32), (size, size),
                                 interpolation=cv2.INTER_CUBIC)
        colour = np.array([0.9, rng.uniform(0.35, 0.5), rng.uniform(0.1, 0.2)])
        out[i] = (np.clip(lum[..., None] * colour, 0, 1) * mask[..., None] * 255).round()
    return out, np.broadcast_to(mask, (n, size, size)).copy()


@pytest.fixture(scope="module")
def data():
    imgs, masks = photos(60, seed=0)
    return imgs, masks, pp.common_mask(masks, size=32)


def test_vectors_validate_and_slice():
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    v = Vectors(parts=(a, a[:, :2]), flipped=(a, a[:, :2]), blank=(None, np.array([0, 1, 0, 1], bool)))
    assert v.scales == (1.0, 1.0) and len(v) == 4
    w = Vectors.concat([v.take(np.array([0, 1])), v.take(np.array([2, 3]))])
    np.testing.assert_array_equal(w.parts[1], v.parts[1])
    np.testing.assert_array_equal(w.blank[1], v.blank[1])
    assert w.blank[0] is None
    with pytest.raises(ValueError, match="every part"):
        Vectors(parts=(a, a[:3]))
    with pytest.raises(ValueError, match="flipped"):
        Vectors(parts=(a,), flipped=(a[:, :1],))


def test_pixel_distance_is_the_correlation_distance_and_flips_mirror(data):
    imgs, masks, mask = data
    x = pp.prepare(imgs[:5], masks[:5], mask=mask)
    v = pixel_embedding(x, mask)
    near = nb.nearest(v.take(np.array([0])), v.take(np.array([1])), k=1, flips=False)
    r = np.corrcoef(x[0][mask].ravel(), x[1][mask].ravel())[0, 1]
    assert near.dcr[0] == pytest.approx(np.sqrt(2 - 2 * r), rel=1e-5)
    mirrored = pixel_embedding(pp.flip(x), mask, flips=False)
    np.testing.assert_array_equal(v.flipped[0], mirrored.parts[0])
    assert pixel_embedding(x, mask, flips=False).flipped is None


def test_tiled_distance_finds_a_pasted_quarter_and_skips_flat_tiles(data):
    imgs, masks, mask = data
    pasted = imgs[7].copy()
    pasted[:24, 24:] = imgs[3][:24, 24:]  # top right quarter of image 3
    x = pp.prepare(np.concatenate([imgs[:6], pasted[None]]), masks[:7], mask=mask)
    train, query = tiled_embedding(x[:6], mask), tiled_embedding(x[6:], mask)
    assert len(train.parts) == 12
    near = nb.nearest(query, train, k=2)
    assert near.index[0, 0] == 3 and near.dcr[0] < 1e-3 and near.distance[0, 1] > 0.05
    tile = train.names[near.part[0, 0]]
    row, col = map(int, tile.split()[1].split(","))
    assert row <= 1 and col >= 2  # a tile inside the pasted quarter
    whole = nb.nearest(pixel_embedding(x[6:], mask), pixel_embedding(x[:6], mask), k=1)
    assert whole.dcr[0] > 0.1  # three quarters differ: the whole-image distance does not see it

    flat = np.full((2, 48, 48, 3), 120, np.uint8) * masks[:2, ..., None]
    flat[0, 30:, :] = imgs[0, 30:, :]  # bottom of the disc has content, top is flat
    fx = pp.prepare(flat, masks[:2], mask=mask)
    fv = tiled_embedding(fx, mask)
    top = [j for j, n in enumerate(fv.names) if n.startswith("tile 0,")]
    assert all(fv.blank[j][0] for j in top)
    # Image 1 is entirely flat: standardised it is all zeros, so every tile is blank and two
    # flat tiles never count as a match.
    assert not fx[1].any() and all(b[1] for b in fv.blank)
    assert nb.nearest(fv.take(np.array([1])), fv.take(np.array([0])), k=1).dcr[0] >= 0.99


def test_learned_embedding_is_seeded_and_recorded(data):
    imgs, masks, mask = data
    before = torch.random.get_rng_state()
    cfg = EncoderConfig(steps=2, batch=8, width=8, seed=5)
    a = train_encoder(imgs[:20], masks[:20], mask=mask, config=cfg)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global generator is untouched
    b = train_encoder(imgs[:20], masks[:20], mask=mask, config=cfg)
    c = train_encoder(imgs[:20], masks[:20], mask=mask, config=EncoderConfig(steps=2, batch=8, width=8, seed=6))
    assert a.weights_sha256 == b.weights_sha256 == weights_sha256(b.model) != c.weights_sha256
    assert len(a.weights_sha256) == 64 and len(a.losses) == 2 and np.isfinite(a.losses).all()
    json.dumps(a.config.to_dict())
    va, vb = learned_embedding(a, imgs[:20], masks[:20]), learned_embedding(b, imgs[:20], masks[:20])
    np.testing.assert_array_equal(va.parts[0], vb.parts[0])
    assert va.parts[0].shape == (20, 8 * 8 * 16)
    np.testing.assert_allclose(np.linalg.norm(va.parts[0], axis=1), 1, rtol=1e-5)
    # Batch composition does not matter (GroupNorm, not BatchNorm), so a copy is at distance ~0.
    alone = learned_embedding(a, imgs[3:4], masks[3:4], batch=1)
    np.testing.assert_allclose(alone.parts[0][0], va.parts[0][3], atol=1e-5)
    near = nb.nearest(alone, va, k=1)
    assert near.index[0, 0] == 3 and near.dcr[0] < 1e-3


def test_trained_encoder_keeps_transformed_copies_near_their_source(data):
    imgs, masks, mask = data
    untrained = train_encoder(imgs, masks, mask=mask, config=EncoderConfig(steps=0, batch=24))
    trained = train_encoder(imgs, masks, mask=mask, config=EncoderConfig(steps=25, batch=24))
    assert np.mean(trained.losses[-5:]) < np.mean(trained.losses[:5])
    src = np.arange(30)

    def recall(enc, transform) -> float:
        q = np.stack([transform(i) for i in imgs[src]])
        near = nb.nearest(learned_embedding(enc, q, masks[src]), learned_embedding(enc, imgs, masks), k=1)
        return float((near.index[:, 0] == src).mean())

    def shift(img):  # 3 px at 48 px: about 8 px of a 128 px photograph
        return cv2.warpAffine(img, np.float32([[1, 0, 3], [0, 1, 0]]), (48, 48))

    def rotate(img):
        return cv2.warpAffine(img, cv2.getRotationMatrix2D((23.5, 23.5), 5, 1.0), (48, 48))

    def gamma(img):
        return (255 * (img / 255.0) ** 1.15).round().astype(np.uint8)

    assert recall(trained, shift) >= 0.8 and recall(trained, shift) > recall(untrained, shift) + 0.2
    assert recall(trained, rotate) >= 0.9 and recall(trained, gamma) >= 0.9
