"""A circle in image coordinates, and a robust fit of one to points (the rim of a field of view)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Circle:
    """A circle in image coordinates (pixel centres at integers), in pixels."""

    cx: float
    cy: float
    r: float

    def scaled(self, factor: float) -> Circle:
        """The same circle in an image resized by ``factor`` (e.g. 0.25 for a reduced decode).

        With pixel centres at integers, resizing maps x to (x + 0.5) * factor - 0.5, which
        is why the centre is not simply multiplied.
        """
        return Circle(
            cx=(self.cx + 0.5) * factor - 0.5,
            cy=(self.cy + 0.5) * factor - 0.5,
            r=self.r * factor,
        )


def robust_circle(points: np.ndarray, *, tolerance: float) -> tuple[Circle, np.ndarray] | None:
    """RANSAC over point triples, then least squares on the consensus set.

    A notch, knob or label covers a minority of rim points but can drag a plain least-
    squares fit by several pixels; triples that hit only rim agree on one circle.
    """
    n = len(points)
    if n < 6:
        return None
    rng = np.random.default_rng(0)  # deterministic: the same image gives the same circle
    n_trials = 128
    triples = rng.integers(0, n, size=(n_trials, 3))
    # Triples with a repeated point are degenerate (collinear) and are dropped below.
    a, b, c = points[triples[:, 0]], points[triples[:, 1]], points[triples[:, 2]]
    centres, radii = _circumcircles(a, b, c)
    good = np.isfinite(radii) & (radii > 0)
    if not good.any():
        return None
    centres, radii = centres[good], radii[good]
    dist = np.hypot(points[None, :, 0] - centres[:, None, 0], points[None, :, 1] - centres[:, None, 1])
    residual = np.abs(dist - radii[:, None])
    counts = (residual <= tolerance).sum(axis=1)
    best = int(np.argmax(counts))
    inliers = residual[best] <= tolerance
    if inliers.sum() < 6:
        return None
    circle = _lsq_circle(points[inliers])
    # Re-select inliers against the refined circle (RANSAC's triple is noisier) and refit.
    for _ in range(3):
        d = np.abs(np.hypot(points[:, 0] - circle.cx, points[:, 1] - circle.cy) - circle.r)
        new = d <= tolerance
        if new.sum() < 6:
            break
        circle = _lsq_circle(points[new])
        if np.array_equal(new, inliers):
            break
        inliers = new
    return circle, inliers


def _circumcircles(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ax, ay, bx, by, cx, cy = a[:, 0], a[:, 1], b[:, 0], b[:, 1], c[:, 0], c[:, 1]
    d = 2.0 * (ax * (by - cy) + bx * (cy - ay) + cx * (ay - by))
    a2, b2, c2 = ax**2 + ay**2, bx**2 + by**2, cx**2 + cy**2
    with np.errstate(divide="ignore", invalid="ignore"):
        ux = (a2 * (by - cy) + b2 * (cy - ay) + c2 * (ay - by)) / d
        uy = (a2 * (cx - bx) + b2 * (ax - cx) + c2 * (bx - ax)) / d
    r = np.hypot(ax - ux, ay - uy)
    r[np.abs(d) < 1e-9] = np.nan  # collinear triple: no circle
    return np.column_stack([ux, uy]), r


def _lsq_circle(points: np.ndarray) -> Circle:
    """Algebraic (Kasa) fit, then Gauss-Newton on the geometric distance.

    The algebraic fit is biased towards small radii on a partial arc (a cut-off disc);
    a few geometric iterations from it remove that bias.
    """
    mean = points.mean(axis=0)
    p = points - mean  # centred for a well-conditioned system
    x, y = p[:, 0], p[:, 1]
    design = np.column_stack([x, y, np.ones_like(x)])
    sol, *_ = np.linalg.lstsq(design, x**2 + y**2, rcond=None)
    cx, cy = sol[0] / 2.0, sol[1] / 2.0
    r = float(np.sqrt(max(sol[2] + cx**2 + cy**2, 1e-12)))
    for _ in range(10):
        dx, dy = x - cx, y - cy
        d = np.maximum(np.hypot(dx, dy), 1e-12)
        jac = np.column_stack([-dx / d, -dy / d, -np.ones_like(d)])
        delta, *_ = np.linalg.lstsq(jac, -(d - r), rcond=None)
        cx, cy, r = cx + delta[0], cy + delta[1], r + delta[2]
        if np.abs(delta).max() < 1e-6:
            break
    return Circle(cx=float(cx + mean[0]), cy=float(cy + mean[1]), r=float(abs(r)))
