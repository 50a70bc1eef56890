"""Helpers for tests and benchmarks (as `numpy.testing` is): not used by any command."""

from __future__ import annotations

import cv2
import numpy as np


def quick_fundus(n: int, *, seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """n cheap fundus-like images (orange disc, vignette, optic disc, a few vessels, texture) at
    `size` px, already cropped to the disc, and their masks.

    For statistical tests and benchmarks that need hundreds or thousands of distinct images in
    seconds (the privacy audit's null and copy tests); `render_phantom` is the realistic one.
    Distinct images here are also further apart in perceptual hash than phantoms are.
    """
    rng = np.random.default_rng(seed)
    c = (size - 1) / 2
    y, x = (np.mgrid[:size, :size] - c) / (size / 2)
    disc = x * x + y * y <= 1.0
    out = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        red = rng.uniform(0.55, 0.9)
        colour = np.array([red, red * rng.uniform(0.3, 0.55), red * rng.uniform(0.08, 0.2)])
        lum = 1 - rng.uniform(0.2, 0.5) * (x * x + y * y)
        dx, dy = rng.choice([-1, 1]) * rng.uniform(0.45, 0.65), rng.uniform(-0.15, 0.15)
        lum += 0.5 * np.exp(-((x - dx) ** 2 + (y - dy) ** 2) / 0.02)
        for _ in range(rng.integers(4, 7)):
            a = rng.uniform(0, np.pi)
            u, v = x * np.cos(a) + y * np.sin(a), -x * np.sin(a) + y * np.cos(a)
            path = rng.uniform(-0.6, 0.6) + rng.uniform(0.1, 0.3) * np.sin(rng.uniform(1, 4) * u + rng.uniform(0, 6))
            lum -= 0.25 * np.exp(-((v - path) ** 2) / (2 * rng.uniform(0.02, 0.04) ** 2))
        texture = cv2.resize(rng.standard_normal((8, 8)).astype(np.float32), (size, size),
                             interpolation=cv2.INTER_CUBIC)
        lum += 0.06 * texture + 0.02 * rng.standard_normal((size, size))
        out[i] = (np.clip(lum[..., None] * colour, 0, 1) * disc[..., None] * 255).round()
    return out, np.broadcast_to(disc, (n, size, size)).copy()
