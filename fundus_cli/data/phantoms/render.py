"""One phantom photograph from its spec: background, macula, optic disc, illumination, surround and
the field of view (vessels and lesions in their own modules)."""

from __future__ import annotations

import math
import random

import cv2
import numpy as np

from fundus_cli.data.phantoms.lesions import lesions
from fundus_cli.data.phantoms.plan import PhantomSpec
from fundus_cli.data.phantoms.vessels import vessels


_INTERNAL_R = 360  # FOV radius (px) of the internal render; bigger images are upscaled


def render_phantom(spec: PhantomSpec) -> np.ndarray:
    """Render one photograph: RGB uint8 array of shape (height, width, 3)."""
    if spec.eye not in ("left", "right"):
        raise ValueError(f"PhantomSpec.eye must be 'left' or 'right', got {spec.eye!r}")
    W, H, r = spec.width, spec.height, spec.fov_r
    cx, cy = spec.fov_cx, spec.fov_cy
    mirror = 1.0 if spec.eye == "left" else -1.0

    # Only the circle's bounding box holds the fundus; render it at a modest size.
    x0, x1 = max(0, math.floor(cx - r - 2)), min(W, math.ceil(cx + r + 2))
    y0, y1 = max(0, math.floor(cy - r - 2)), min(H, math.ceil(cy + r + 2))
    bw, bh = x1 - x0, y1 - y0
    s = min(1.0, _INTERNAL_R / r)
    iw, ih = max(8, round(bw * s)), max(8, round(bh * s))
    sx, sy = iw / bw, ih / bh
    ri = r * s  # FOV radius in internal pixels

    # Canonical coordinates of internal pixel centres (broadcastable row / column).
    X = (mirror * ((x0 + (np.arange(iw, dtype=np.float32) + 0.5) / sx - 0.5) - cx) / r)[None, :]
    Y = (((y0 + (np.arange(ih, dtype=np.float32) + 0.5) / sy - 0.5) - cy) / r)[:, None]

    def to_px(pts: np.ndarray, ss: float = 1.0) -> np.ndarray:
        """Canonical (N, 2) -> internal pixel coordinates, optionally supersampled."""
        j = ((cx + mirror * pts[:, 0] * r) - x0 + 0.5) * sx * ss - 0.5
        i = ((cy + pts[:, 1] * r) - y0 + 0.5) * sy * ss - 0.5
        return np.stack([j, i], axis=1)

    disc = (spec.disc_x, spec.disc_y)
    fovea = (spec.disc_x + 2 * spec.disc_r * spec.macula_dd, spec.disc_y + spec.fovea_dy)

    refl = _background(spec, ih, iw)
    _macula(refl, X, Y, fovea, spec)
    if spec.label != 0:
        lesions(refl, spec, to_px, ri, disc, fovea)
    _disc(refl, X, Y, spec, ri)
    vessels(refl, spec, to_px, ri, disc, fovea)

    img = refl * _illumination(spec, X, Y, ih, iw)[..., None]
    if spec.halo > 0:
        rho = np.sqrt(X * X + Y * Y)
        ang = np.arctan2(Y, X * mirror)
        crescent = 0.5 + 0.5 * np.cos(ang - spec.illum_angle - math.pi)
        ring = spec.halo * np.exp(-(((rho - 0.97) / 0.07) ** 2)) * crescent
        img += ring[..., None] * np.array([0.9, 0.9, 0.55], np.float32) * spec.brightness
    sigma = spec.blur * ri
    if sigma > 0.25:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    noise_rng = np.random.default_rng(spec.noise_seed)
    grain = noise_rng.standard_normal((ih // 2 + 1, iw // 2 + 1, 3), dtype=np.float32)
    img += cv2.resize(grain, (iw, ih), interpolation=cv2.INTER_NEAREST) * np.float32(spec.noise)
    np.maximum(img, 0, out=img)
    fundus = cv2.convertScaleAbs(img, alpha=255.0)  # rounds and saturates at 255
    if (iw, ih) != (bw, bh):
        fundus = cv2.resize(fundus, (bw, bh), interpolation=cv2.INTER_LINEAR)

    out = _surround(spec, noise_rng)
    alpha = _fov_mask(spec, x0, y0, bw, bh)
    box = out[y0:y1, x0:x1]
    out[y0:y1, x0:x1] = cv2.blendLinear(fundus, box, alpha, 1.0 - alpha)
    return out


def _smooth_noise(rng: np.random.Generator, ih: int, iw: int, cells: tuple[int, ...]) -> np.ndarray:
    """Band-limited noise, std ~1: random grids of several sizes (coarse ones weigh most),
    summed on a small canvas with ~4 px per cell of the finest grid, then upsampled once."""
    scale = min(1.0, 4 * max(cells) / max(ih, iw))
    ch, cw = max(4, round(ih * scale)), max(4, round(iw * scale))
    total = np.zeros((ch, cw), np.float32)
    weight = 1.0
    norm = 0.0
    for c in cells:
        gy, gx = max(2, round(c * ch / max(ch, cw))), max(2, round(c * cw / max(ch, cw)))
        grid = rng.standard_normal((gy + 2, gx + 2), dtype=np.float32)
        up = cv2.resize(grid, (cw + 2 * cw // gx, ch + 2 * ch // gy), interpolation=cv2.INTER_CUBIC)
        oy, ox = ch // gy, cw // gx  # drop the border cells, where cubic upsampling is flat
        total += weight * up[oy : oy + ch, ox : ox + cw]
        norm += weight**2
        weight *= 0.55
    total *= np.float32(1 / math.sqrt(norm))
    if (ch, cw) != (ih, iw):
        total = cv2.resize(total, (iw, ih), interpolation=cv2.INTER_LINEAR)
    return total


def _grain(rng: np.random.Generator, ih: int, iw: int) -> np.ndarray:
    """Fine retinal texture, std ~0.5: white noise at half resolution, upsampled."""
    small = rng.standard_normal((max(2, ih // 2), max(2, iw // 2)), dtype=np.float32)
    return cv2.resize(small, (iw, ih), interpolation=cv2.INTER_LINEAR)


def _background(spec: PhantomSpec, ih: int, iw: int) -> np.ndarray:
    rng = np.random.default_rng(spec.texture_seed)
    coarse = _smooth_noise(rng, ih, iw, (5, 11, 23, 47))
    fine = _grain(rng, ih, iw)
    t = spec.texture_strength
    refl = np.empty((ih, iw, 3), np.float32)
    # Choroidal texture shows mostly in green and blue; red is nearly saturated pigment.
    for ch, (c, w) in enumerate(zip(spec.colour, (0.6, 1.0, 1.2))):
        refl[..., ch] = c * (1.0 + t * w * coarse + 0.35 * t * w * fine)
    return refl


def _macula(refl: np.ndarray, X: np.ndarray, Y: np.ndarray, fovea: tuple[float, float], spec: PhantomSpec) -> None:
    d2 = (X - fovea[0]) ** 2 + (Y - fovea[1]) ** 2
    dd = 2 * spec.disc_r
    m = spec.macula_darkness * (0.7 * np.exp(-d2 / (2 * (0.45 * dd) ** 2)) + 0.3 * np.exp(-d2 / (2 * (1.1 * dd) ** 2)))
    for ch, w in enumerate((0.7, 1.0, 1.0)):
        refl[..., ch] *= 1.0 - w * m
    if spec.fovea_reflex > 0:
        spot = spec.fovea_reflex * np.exp(-d2 / (2 * (0.035 * dd) ** 2))
        refl += (spot * 0.6)[..., None]


def _disc(refl: np.ndarray, X: np.ndarray, Y: np.ndarray, spec: PhantomSpec, ri: float) -> None:
    a, b = spec.disc_r, spec.disc_r * spec.disc_aspect
    dx, dy = spec.disc_x, spec.disc_y
    # Work in a window around the disc; X is mirrored, so search by value.
    cols = np.flatnonzero(np.abs(X[0] - dx) < 3 * a)
    rows = np.flatnonzero(np.abs(Y[:, 0] - dy) < 3 * b)
    if cols.size == 0 or rows.size == 0:
        return
    c0, c1, r0, r1 = cols.min(), cols.max() + 1, rows.min(), rows.max() + 1
    Xw, Yw = X[:, c0:c1], Y[r0:r1, :]
    ex, ey = (Xw - dx) / a, (Yw - dy) / b
    rho = np.sqrt(ex * ex + ey * ey)
    phi = np.arctan2(ey, ex)
    rng = random.Random(spec.vessel_seed ^ 0x5EED)
    p1, p2 = rng.uniform(0, 6.3), rng.uniform(0, 6.3)
    rho_b = rho / (1 + 0.05 * np.cos(2 * phi + p1) + 0.03 * np.cos(3 * phi + p2))
    alpha = 1.0 / (1.0 + np.exp(-(1.0 - rho_b) / 0.045))
    glow = 0.05 * np.exp(-(rho * rho) / (2 * 1.4**2))
    pal = spec.disc_pallor
    # The temporal side of the rim is paler (thinner nerve-fibre rim): brighter towards +x.
    temporal = 1.0 + 0.08 * np.clip(ex, -1, 1)
    # Brighter than any background: the disc is nearly always the brightest structure.
    rim = (1.12, 0.72 + 0.2 * pal, 0.25 + 0.2 * pal)
    ccx, ccy = dx + 0.15 * a, dy
    cup_r = spec.cup_ratio
    rc = np.sqrt(((Xw - ccx) / (cup_r * a)) ** 2 + ((Yw - ccy) / (cup_r * b)) ** 2)
    cup = 0.85 / (1.0 + np.exp(-(1.0 - rc) / 0.25))
    cup_col = (1.3, 1.05, 0.6)
    win = refl[r0:r1, c0:c1]
    for ch in range(3):
        v = win[..., ch] * (1 + glow * (1.0 if ch < 2 else 0.5))
        v = v * (1 - alpha) + rim[ch] * temporal * alpha
        win[..., ch] = v * (1 - cup) + cup_col[ch] * cup


def _illumination(spec: PhantomSpec, X: np.ndarray, Y: np.ndarray, ih: int, iw: int) -> np.ndarray:
    rho2 = X * X + Y * Y
    radial = 1.0 - spec.vignette * rho2 ** 1.25
    # Darker last few percent of the radius: light falls off at the aperture edge.
    edge = 1.0 - 0.35 * np.clip((np.sqrt(rho2) - 0.88) / 0.12, 0, 1) ** 2
    ca, sa = math.cos(spec.illum_angle), math.sin(spec.illum_angle)
    grad = 1.0 + spec.illum_strength * (ca * X + sa * Y)
    lf = _smooth_noise(np.random.default_rng(spec.texture_seed + 1), ih, iw, (3, 6))
    illum = spec.brightness * radial * edge * grad * (1.0 + 0.06 * lf)
    return np.maximum(illum, 0.05).astype(np.float32)


def _surround(spec: PhantomSpec, rng: np.random.Generator) -> np.ndarray:
    """The near-black frame outside the aperture, with a little sensor noise."""
    tile = rng.normal(spec.background, 1.2, size=(64, 64, 3))
    tile = np.clip(tile + 0.5, 0, 255).astype(np.uint8)
    reps = (spec.height // 64 + 1, spec.width // 64 + 1, 1)
    return np.ascontiguousarray(np.tile(tile, reps)[: spec.height, : spec.width])


def _fov_mask(spec: PhantomSpec, x0: int, y0: int, bw: int, bh: int) -> np.ndarray:
    """Anti-aliased aperture (with its notch) at full resolution, float32 0..1."""
    sh = 16
    mask = np.zeros((bh, bw), np.uint8)
    c = (round((spec.fov_cx - x0) * sh), round((spec.fov_cy - y0) * sh))
    cv2.circle(mask, c, round(spec.fov_r * sh), 255, -1, cv2.LINE_AA, shift=4)
    if spec.notch != "none":
        r, size = spec.fov_r, spec.notch_size * spec.fov_r
        ca, sa = math.cos(spec.notch_angle), math.sin(spec.notch_angle)

        def at(u: float, v: float) -> tuple[float, float]:
            """u along the ray from the centre through the notch, v across it."""
            return spec.fov_cx - x0 + u * ca - v * sa, spec.fov_cy - y0 + u * sa + v * ca

        if spec.notch == "rect":
            pts = [at(r - size, -size / 2), at(r + size, -size / 2), at(r + size, size / 2), at(r - size, size / 2)]
        else:
            pts = [at(r + size, -size), at(r + size, size), at(r - 1.4 * size, 0.0)]
        poly = np.array([[round(px * sh), round(py * sh)] for px, py in pts], np.int32)
        cv2.fillPoly(mask, [poly], 0, cv2.LINE_AA, shift=4)
    mask = cv2.GaussianBlur(mask, (0, 0), max(0.4, spec.fov_r / 900))
    return mask.astype(np.float32) * np.float32(1 / 255)
