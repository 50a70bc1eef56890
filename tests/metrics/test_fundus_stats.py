"""Fundus statistics: each responds to what it claims to measure; distances on known shifts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fundus_cli.errors import FundusError
from fundus_cli.metrics.fundus_stats import fundus_stats, stat_distances, vessel_map

S = 96


def disc_mask() -> np.ndarray:
    yy, xx = np.mgrid[:S, :S]
    return (yy - S / 2 + 0.5) ** 2 + (xx - S / 2 + 0.5) ** 2 < (S / 2 - 1) ** 2


def smooth_fundus(seed: int = 0, vessels: bool = False) -> np.ndarray:
    """Orange background with a gentle gradient and noise, black outside the disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:S, :S] / S
    base = np.stack([190 + 30 * xx, 100 + 20 * yy, 50 + 10 * xx], -1) + rng.normal(0, 1.5, (S, S, 3))
    img = np.clip(base, 0, 255).astype(np.uint8)
    if vessels:
        for _ in range(8):
            p, q = rng.integers(10, S - 10, 2), rng.integers(10, S - 10, 2)
            cv2.line(img, tuple(map(int, p)), tuple(map(int, q)), (120, 45, 25), 1, cv2.LINE_AA)
    return img * disc_mask()[..., None]


def test_shapes_and_histograms_sum_to_one() -> None:
    images = np.stack([smooth_fundus(i) for i in range(3)])
    st = fundus_stats(images, disc_mask())  # one mask for all images
    assert st["histogram"].shape == (3, 3, 32)
    np.testing.assert_allclose(st["histogram"].sum(-1), 1.0)
    assert all(st[k].shape == (3,) for k in ("vessel_density", "sharpness", "disc_brightness"))
    # Black outside the FOV is not counted: the darkest bin is empty.
    assert st["histogram"][:, :, 0].max() == 0


def test_vessel_density_sees_drawn_vessels() -> None:
    images = np.stack([smooth_fundus(0), smooth_fundus(0, vessels=True)])
    st = fundus_stats(images, np.stack([disc_mask()] * 2))
    assert st["vessel_density"][0] < 0.01  # noise and the rim are not vessel
    assert st["vessel_density"][1] > 0.03
    # The detected pixels are the drawn ones (with their anti-aliased edges), and the
    # drawn line cores are found.
    darkening = (images[1].astype(int) - images[0].astype(int)).sum(-1)
    found = vessel_map(images[1], disc_mask())
    assert (found & (darkening < -8)).sum() > 0.95 * found.sum()
    core = (darkening < -60) & disc_mask()
    assert (found & core).sum() > 0.9 * core.sum()


def test_sharpness_drops_after_blur_and_disc_brightness_finds_the_disc() -> None:
    img = smooth_fundus(1, vessels=True)
    blurred = cv2.GaussianBlur(img, (0, 0), 1.5) * disc_mask()[..., None]
    with_disc = img.copy()
    cv2.circle(with_disc, (30, 48), 7, (255, 240, 200), -1)
    st = fundus_stats(np.stack([img, blurred, with_disc]), disc_mask())
    assert st["sharpness"][1] < 0.5 * st["sharpness"][0]
    assert st["disc_brightness"][2] > st["disc_brightness"][0] + 40
    assert st["disc_brightness"][0] == pytest.approx(0.299 * 205 + 0.587 * 110 + 0.114 * 55, abs=25)


def test_distances() -> None:
    real = fundus_stats(np.stack([smooth_fundus(i) for i in range(4)]), disc_mask())
    assert all(v == 0 for v in stat_distances(real, real).values())
    fake = {k: v.copy() for k, v in real.items()}
    fake["sharpness"] += 7.0
    # Every pixel of the red channel moved up by 3 bins (3 x 8 grey levels).
    fake["histogram"][:, 0] = np.roll(real["histogram"][:, 0], 3, axis=-1)
    d = stat_distances(real, fake)
    assert d["sharpness"] == pytest.approx(7.0)
    assert d["colour_emd_r"] == pytest.approx(24.0) and d["colour_emd_g"] == 0
    assert d["colour_emd"] == pytest.approx(8.0)
    assert d["vessel_density"] == d["disc_brightness"] == 0


def test_rejects_bad_input() -> None:
    img = smooth_fundus()[None]
    with pytest.raises(FundusError, match="uint8"):
        fundus_stats(img.astype(np.float32), disc_mask())
    with pytest.raises(FundusError, match="do not match"):
        fundus_stats(img, disc_mask()[:50])
    with pytest.raises(FundusError, match="empty"):
        fundus_stats(img, np.zeros((S, S), bool))
