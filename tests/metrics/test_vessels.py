"""The vessel detector of the fundus statistics: it finds vessels and nothing else.

Controls at 64 px (the size generators are trained at): smooth discs, isotropic noise and
checkerboard texture at the contrast of real vessels at this size (~8 grey levels in
green) must score near zero; drawn vessels must not; and on DRIVE's photographs the share
must follow the expert-traced vessels that remain after erasing some of them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.stats

from fundus_cli.metrics.fundus_stats import _inner, fundus_stats

S = 64
BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "vessels.py"


def disc_mask(s: int = S) -> np.ndarray:
    yy, xx = np.mgrid[:s, :s]
    return (yy - s / 2 + 0.5) ** 2 + (xx - s / 2 + 0.5) ** 2 < (s / 2 - 1) ** 2


def orange_disc(seed: int) -> np.ndarray:
    """Float RGB: orange gradient and a bright optic disc, no vessels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:S, :S] / S
    img = np.stack([170 + 40 * xx, 80 + 30 * yy, 30 + 10 * xx], -1).astype(np.float32)
    cy, cx = rng.uniform(0.35, 0.65, 2) * S
    d2 = ((yy * S - cy) ** 2 + (xx * S - cx) ** 2) / (S / 14) ** 2
    return img + np.exp(-d2)[..., None] * np.array([60, 90, 60], np.float32)


def with_vessels(img: np.ndarray, seed: int) -> np.ndarray:
    """Six 1-px dark lines, 20 % darker than the background (major vessels at 64 px)."""
    rng = np.random.default_rng(seed)
    out = img.copy()
    for _ in range(6):
        p, q = rng.integers(8, S - 8, 2), rng.integers(8, S - 8, 2)
        line = np.zeros((S, S), np.float32)
        cv2.line(line, tuple(map(int, p)), tuple(map(int, q)), 1.0, 1, cv2.LINE_AA)
        out *= 1 - 0.2 * line[..., None]
    return out


def checkerboard(period: int, amplitude: float) -> np.ndarray:
    yy, xx = np.mgrid[:S, :S] // (period // 2)
    return np.where((yy + xx) % 2 == 0, amplitude, -amplitude).astype(np.float32)[..., None]


def density(*images: np.ndarray) -> np.ndarray:
    m = disc_mask()
    batch = np.stack([np.clip(im, 0, 255).astype(np.uint8) * m[..., None].astype(np.uint8) for im in images])
    return fundus_stats(batch, m)["vessel_density"]


def test_drawn_vessels_are_found_and_smooth_discs_are_empty() -> None:
    plain = [orange_disc(i) for i in range(3)]
    assert density(*plain).max() == 0
    drawn = density(*[with_vessels(p, i) for i, p in enumerate(plain)])
    assert drawn.min() > 0.02


@pytest.mark.parametrize("sd", [4.0, 8.0])
def test_isotropic_noise_is_not_vessel(sd: float) -> None:
    rng = np.random.default_rng(1)
    noisy = [orange_disc(i) + rng.normal(0, sd, (S, S, 3)) for i in range(3)]
    assert density(*noisy).max() < 0.02
    # ... and does not hide real vessels either
    assert density(*[with_vessels(n, i) for i, n in enumerate(noisy)]).min() > 0.02


@pytest.mark.parametrize(("period", "amplitude"), [(2, 4.0), (2, 8.0), (4, 4.0), (4, 8.0)])
def test_checkerboard_texture_is_not_vessel(period: int, amplitude: float) -> None:
    textured = [orange_disc(i) + checkerboard(period, amplitude) for i in range(3)]
    assert density(*textured).max() < 0.01
    assert density(*[with_vessels(t, i) for i, t in enumerate(textured)]).min() > 0.02


def test_vessels_erased_by_a_closing_leave_nothing() -> None:
    drawn = [with_vessels(orange_disc(i), i) for i in range(3)]
    closed = [cv2.morphologyEx(np.clip(d, 0, 255).astype(np.uint8), cv2.MORPH_CLOSE,
                               cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))).astype(np.float32)
              for d in drawn]
    assert density(*closed).max() < 0.005


def test_drive_photographs_follow_the_expert_vessels(shared_data) -> None:
    """6 DRIVE photographs at 64 px after the ingest crop: erasing the expert-traced vessels
    in 0-4 of 4 sectors lowers the measured share in step with the true one, and erasing all
    of them (inpainting) leaves at most a third of it. Full figures: benchmarks/vessels.py."""
    root = shared_data("drive")
    spec = importlib.util.spec_from_file_location("bench_vessels", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = bench.load_drive(root, [None, S], limit=6)
    nat_images, nat_masks, nat_traced = data[None]
    _, masks, _ = data[S]
    true_left, found, real, erased = [], [], [], []
    for i in range(len(nat_images)):
        side = nat_images[i].shape[0]
        yy, xx = np.mgrid[:side, :side] - side / 2
        sector = (np.arctan2(yy, xx) + np.pi) / (2 * np.pi)
        for k in range(5):
            area = sector < k / 4
            img = bench.erase_vessels(nat_images[i], nat_traced[i] * area, "inpaint") if k else nat_images[i]
            small = bench.resize(img, S) * masks[i][..., None]
            left = bench.resize(nat_traced[i] * ~area, S)
            true_left.append(left[_inner(masks[i])].mean())
            found.append(bench.share(bench.fs.vessel_map, small, masks[i]))
        real.append(found[-5])
        erased.append(found[-1])
    rho = scipy.stats.spearmanr(true_left, found)[0]
    assert rho > 0.6, f"dose-response Spearman {rho:.2f}"
    assert np.mean(erased) < np.mean(real) / 3, (real, erased)
