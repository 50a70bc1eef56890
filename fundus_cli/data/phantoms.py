"""Procedural fundus photographs: the built-in demo and test data.

Every image is rendered from a `PhantomSpec` (numpy + OpenCV only), so a seed fully
determines the data set and tests can re-render any image bit for bit. The labels file
carries the true field-of-view circle, which is the ground truth for the FOV detector.

Geometry is worked out in "canonical" coordinates: origin at the FOV centre, unit = FOV
radius, x to the right, y down, laid out as a LEFT eye (optic disc on the image's left,
as in a standard left-eye photograph). A right eye is the same picture mirrored in x.
"""

from __future__ import annotations

import math
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from fundus_cli.errors import FundusError

CLASS_NAMES = ("healthy", "diabetic_retinopathy", "amd")
_CLASS_P = (0.5, 0.3, 0.2)
_INTERNAL_R = 360  # FOV radius (px) of the internal render; bigger images are upscaled
_JPEG_QUALITY = 92
_LABEL_HEADER = ("image", "label", "patient", "eye", "fov_cx", "fov_cy", "fov_r")
_IMAGE_NAME = re.compile(r"^\d{4,}_(left|right)\.jpg(\.tmp)?$")


@dataclass(frozen=True, kw_only=True)
class PhantomSpec:
    """Everything needed to render one image; lengths in fractions of fov_r unless noted."""

    width: int  # image size, pixels
    height: int
    fov_cx: float  # true field-of-view circle, pixels of the full image
    fov_cy: float
    fov_r: float
    label: int  # index into CLASS_NAMES; 0 renders no lesions
    patient: int
    eye: str  # "left" (disc on the image's left) or "right" (mirrored)
    notch: str  # "none" | "rect" | "triangle": camera mark cut into the rim
    notch_angle: float  # radians, image coordinates (0 = right, pi/2 = down)
    notch_size: float
    colour: tuple[float, float, float]  # RGB reflectance of the posterior pole, 0..1
    brightness: float  # exposure gain; below ~0.7 the photograph looks dark
    vignette: float  # radial fall-off towards the rim, 0..1
    illum_angle: float  # direction of the smooth illumination gradient, radians
    illum_strength: float  # its amplitude across one radius
    texture_seed: int  # choroidal texture
    texture_strength: float
    disc_x: float  # optic disc centre, canonical (left-eye) coordinates
    disc_y: float
    disc_r: float  # horizontal disc radius
    disc_aspect: float  # vertical / horizontal disc radius
    cup_ratio: float  # cup radius / disc radius
    disc_pallor: float  # 0 = orange-pink rim, 1 = pale yellow
    macula_dd: float  # disc-to-fovea distance in disc diameters
    fovea_dy: float  # fovea sits slightly below the disc centre
    macula_darkness: float
    fovea_reflex: float  # 0 = no foveal light reflex
    vessel_seed: int  # trunks and first branches: shared by both eyes of a patient
    vessel_detail_seed: int  # finer branches: per eye
    vessel_contrast: float
    lesion_seed: int
    severity: float  # 0..1, number and size of lesions (ignored when label is 0)
    halo: float  # yellowish crescent of stray light along the rim, 0 = none
    blur: float  # Gaussian sigma
    noise: float  # sensor noise sigma on the 0..1 scale
    noise_seed: int
    background: float  # level of the near-black surround, 0..255


@dataclass(frozen=True)
class PhantomResult:
    out_dir: Path
    n_images: int
    labels_csv: Path
    class_counts: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- planning


def plan_phantoms(*, n: int, seed: int) -> list[PhantomSpec]:
    """Specs for n images of about n/2 patients, left eye then right eye of each.

    Patient k's specs depend only on (seed, k), so a smaller n gives a prefix of a larger one.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise FundusError(f"phantoms: n must be a positive whole number, got {n!r}; pass e.g. n=200")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise FundusError(f"phantoms: seed must be a whole number >= 0, got {seed!r}")
    specs: list[PhantomSpec] = []
    for patient in range((n + 1) // 2):
        eyes = ("left", "right") if 2 * patient + 1 < n else ("left",)
        specs.extend(_plan_patient(np.random.default_rng([seed, patient]), patient, eyes))
    return specs


def _plan_patient(rng: np.random.Generator, patient: int, eyes: tuple[str, ...]) -> list[PhantomSpec]:
    u = rng.uniform
    label = int(rng.choice(len(CLASS_NAMES), p=_CLASS_P))
    severity = float(u(0.25, 1.0))

    # One camera per patient: both eyes share image size, circle and notch.
    cut = rng.random() < 0.3
    width = int(u(600, 2000))
    aspect = u(1.3, 1.5) if cut else u(1.0, 1.5)
    height = int(round(width / aspect))
    if cut:  # circle wider than the frame is tall: flat top and bottom
        r = height / 2 * u(1.06, 1.2)
        cy = height / 2 + u(-0.02, 0.02) * height
    else:
        r = min(width, height) / 2 * u(0.86, 0.97)
        cy = height / 2 + u(-1, 1) * min(0.02 * height, height / 2 - r - 2)
    cx = width / 2 + u(-1, 1) * min(0.02 * width, max(0.0, width / 2 - r - 2))
    notch = str(rng.choice(["rect", "triangle"])) if rng.random() < 0.2 else "none"
    notch_angle = float(rng.choice([-0.25, -0.75, 0.25, 0.75]) * math.pi + u(-0.2, 0.2))
    notch_size = float(u(0.025, 0.05))

    red = u(0.62, 0.95)
    green = red * u(0.32, 0.62)
    blue = green * u(0.15, 0.65)
    brightness = float(np.clip(math.exp(rng.normal(math.log(0.9), 0.18)), 0.45, 1.2))
    disc_r = u(0.11, 0.15)
    disc_x = -u(0.52, 0.68)
    disc_y = u(-0.06, 0.06)
    disc_aspect = u(1.0, 1.15)
    cup_ratio = u(0.25, 0.5)
    disc_pallor = u(0.0, 1.0)
    macula_dd = u(2.0, 2.4)
    fovea_dy = u(0.0, 0.05)
    vessel_seed = int(rng.integers(2**31))
    vessel_contrast = u(0.8, 1.1)

    specs = []
    for eye in eyes:
        specs.append(
            PhantomSpec(
                width=width,
                height=height,
                fov_cx=round(float(cx), 2),
                fov_cy=round(float(cy), 2),
                fov_r=round(float(r), 2),
                label=label,
                patient=patient,
                eye=eye,
                notch=notch,
                notch_angle=notch_angle,
                notch_size=notch_size,
                colour=(float(red), float(green), float(blue)),
                brightness=float(brightness * u(0.92, 1.08)),
                vignette=float(u(0.15, 0.45)),
                illum_angle=float(u(0, 2 * math.pi)),
                illum_strength=float(u(0.0, 0.22)),
                texture_seed=int(rng.integers(2**31)),
                texture_strength=float(u(0.035, 0.1)),
                disc_x=float(disc_x + rng.normal(0, 0.01)),
                disc_y=float(disc_y + rng.normal(0, 0.01)),
                disc_r=float(disc_r * u(0.97, 1.03)),
                disc_aspect=float(disc_aspect),
                cup_ratio=float(cup_ratio * u(0.9, 1.1)),
                disc_pallor=float(disc_pallor),
                macula_dd=float(macula_dd),
                fovea_dy=float(fovea_dy),
                macula_darkness=float(u(0.15, 0.4)),
                fovea_reflex=float(0.0 if rng.random() < 0.5 else u(0.1, 0.35)),
                vessel_seed=vessel_seed,
                vessel_detail_seed=int(rng.integers(2**31)),
                vessel_contrast=float(vessel_contrast),
                lesion_seed=int(rng.integers(2**31)),
                severity=severity,
                halo=float(0.0 if rng.random() < 0.6 else u(0.05, 0.25)),
                blur=float(u(0.001, 0.003)),
                noise=float(u(0.004, 0.012)),
                noise_seed=int(rng.integers(2**31)),
                background=float(u(0.0, 6.0)),
            )
        )
    return specs


# --------------------------------------------------------------------------- rendering


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
        _lesions(refl, spec, to_px, ri, disc, fovea)
    _disc(refl, X, Y, spec, ri)
    _vessels(refl, spec, to_px, ri, disc, fovea)

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


# --------------------------------------------------------------------------- vessels

_W_MIN = 0.0022  # thinnest vessel drawn (fraction of fov_r)
_MAX_DEPTH = 3


@dataclass
class _Sprout:
    x: float
    y: float
    theta: float  # heading, radians, canonical image coordinates (y down)
    w: float  # width, fraction of fov_r
    depth: int
    artery: bool
    kind: str  # "arcade" | "nasal" | "macular" | "out" | "in"
    side: int = 0  # arcades: -1 superior, +1 inferior
    bend: float = 0.3  # arcades: distance over which the heading relaxes ...
    final: float = 0.3  # ... from its start to this angle off the horizontal (diverging)


def _vessel_tree(
    spec: PhantomSpec, disc: tuple[float, float], fovea: tuple[float, float]
) -> list[tuple[list, list, bool]]:
    """Grow arteries and veins from the disc as smooth random walks that branch and thin.

    Returns (points, widths, is_artery) per vessel in canonical coordinates.
    """
    main = random.Random(spec.vessel_seed)
    detail = random.Random(spec.vessel_detail_seed)
    Dx, Dy = disc
    Fx, Fy = fovea
    rho0 = math.hypot(Fx - Dx, Fy - Dy)
    dr = spec.disc_r
    w_vein = main.uniform(0.026, 0.031)
    w_art = w_vein * main.uniform(0.68, 0.78)

    stack: list[_Sprout] = []
    for side in (-1, 1):  # four main arcades: artery and vein, above and below the macula
        for artery in (True, False):
            stack.append(
                _Sprout(
                    Dx + main.gauss(0, 0.15) * dr,
                    Dy + main.gauss(0, 0.15) * dr,
                    side * main.uniform(1.1, 1.45),
                    (w_art if artery else w_vein) * main.uniform(0.95, 1.05),
                    0,
                    artery,
                    "arcade",
                    side,
                    bend=main.uniform(0.25, 0.45),
                    final=main.uniform(-0.05, 0.25),
                )
            )
        for artery in (True, False):  # nasal trunks
            th = math.pi + side * main.uniform(0.5, 1.2)
            stack.append(
                _Sprout(Dx, Dy, th, (w_art if artery else w_vein) * main.uniform(0.55, 0.8), 0, artery, "nasal")
            )
    for _ in range(main.randint(2, 4)):  # small papillomacular vessels towards the fovea
        th = main.uniform(-0.5, 0.5)
        stack.append(
            _Sprout(Dx + 0.8 * dr, Dy + main.uniform(-0.6, 0.6) * dr, th, main.uniform(0.004, 0.007), 1,
                    main.random() < 0.5, "macular")
        )
    stack.reverse()

    fav = 0.06 + 0.6 * dr  # foveal avascular zone: no vessel enters
    out: list[tuple[list, list, bool]] = []
    while stack:
        sp = stack.pop()
        rng = main if sp.depth <= 1 else detail
        out.append(_grow(sp, rng, stack, (Dx, Dy), (Fx, Fy), rho0, fav))
    return out


def _grow(sp: _Sprout, rng: random.Random, stack: list[_Sprout], D: tuple[float, float],
          F: tuple[float, float], rho0: float, fav: float) -> tuple[list, list, bool]:
    Dx, Dy = D
    Fx, Fy = F
    x, y, th, w = sp.x, sp.y, sp.theta, sp.w
    pts = [(x, y)]
    ws = [w]
    thick = w > 0.012
    step = 0.01 if thick else 0.016
    # Curvature is an Ornstein-Uhlenbeck process: smooth bends, tortuous small vessels.
    ell = 0.12
    sig = (1.8 if thick else 2.0 + 200 * max(0.0, 0.008 - w)) * (1.0 if sp.kind != "macular" else 1.5)
    decay = math.exp(-step / ell)
    kick = sig * math.sqrt(1 - decay * decay)
    kappa = rng.gauss(0, sig)
    taper = math.exp(-step * (0.35 if sp.depth == 0 else 1.2))
    gain = {"arcade": 9.0, "nasal": 1.5, "macular": 5.0, "out": 2.0, "in": 5.0}[sp.kind]
    interval = (0.1, 0.2, 0.3, 0.4)[sp.depth]
    next_branch = 0.02 + rng.expovariate(1 / interval) if sp.kind != "macular" else 1e9
    if sp.kind == "arcade":
        next_branch += 0.5 * rho0 * 0.3
    travelled = 0.0
    for _ in range(600):
        # Desired heading.
        if sp.kind == "arcade":
            # Leave the disc steeply, then flatten out above / below the macula while still
            # diverging, so the two arcades never meet at the temporal raphe.
            a = sp.final + (abs(sp.theta) - sp.final) * math.exp(-travelled / sp.bend)
            ddx, ddy = math.cos(a), sp.side * math.sin(a)
        elif sp.kind in ("macular", "in"):
            ddx, ddy = Fx - x, Fy - y
        else:  # away from the posterior pole: from the disc nearby, from the fovea further out
            ax, ay = x - Dx, y - Dy
            bx, by = x - Fx, y - Fy
            na = max(ax * ax + ay * ay, 1e-4)
            nb = max(bx * bx + by * by, 1e-4)
            ddx, ddy = ax / na + 0.8 * bx / nb, ay / na + 0.8 * by / nb
            if sp.kind == "nasal":
                ddx -= 2.0  # nasal trunks keep heading nasally
        diff = (math.atan2(ddy, ddx) - th + math.pi) % (2 * math.pi) - math.pi
        th += diff * min(1.0, gain * step)
        kappa = kappa * decay + kick * rng.gauss(0, 1)
        th += kappa * step
        x += step * math.cos(th)
        y += step * math.sin(th)
        w *= taper
        travelled += step
        pts.append((x, y))
        ws.append(w)
        if x * x + y * y > 1.06 or w < _W_MIN:
            break
        if (x - Fx) ** 2 + (y - Fy) ** 2 < fav * fav:
            break
        if travelled >= next_branch:
            next_branch = travelled + 0.02 + rng.expovariate(1 / interval)
            if sp.depth >= _MAX_DEPTH:
                continue
            inward = sp.kind == "arcade" and rng.random() < 0.3
            if inward:
                c = rng.uniform(0.25, 0.45)
            elif sp.depth == 0:  # trunks give off mostly small side branches and stay wide
                c = rng.uniform(0.25, 0.65)
            else:
                c = rng.uniform(0.35, 0.8)
            cw = w * c
            if cw < _W_MIN * 1.3:
                continue
            angle = rng.uniform(0.45, 1.1)
            # Pick the side that points away from (or, for inward branches, towards) the fovea.
            ox, oy = x - Fx, y - Fy
            s_plus = math.cos(th + angle) * ox + math.sin(th + angle) * oy
            s_minus = math.cos(th - angle) * ox + math.sin(th - angle) * oy
            if sp.kind == "arcade":
                sgn = 1 if (s_plus > s_minus) != inward else -1
            else:
                sgn = rng.choice((-1, 1))
            stack.append(_Sprout(x, y, th + sgn * angle, cw, sp.depth + 1, sp.artery, "in" if inward else "out"))
            w *= (1 - c**3) ** (1 / 3)
            th -= sgn * angle * c * c * 0.5  # the parent is deflected the other way
    return pts, ws, sp.artery


def _vessels(refl: np.ndarray, spec: PhantomSpec, to_px: Callable, ri: float,
             disc: tuple[float, float], fovea: tuple[float, float]) -> None:
    tree = _vessel_tree(spec, disc, fovea)
    ih, iw = refl.shape[:2]
    ss = 2  # draw supersampled, then average down: sub-pixel widths
    masks = {True: np.zeros((ih * ss, iw * ss), np.uint8), False: np.zeros((ih * ss, iw * ss), np.uint8)}
    runs = []
    for pts, ws, artery in tree:
        if len(pts) < 2:
            continue
        P = np.rint(to_px(np.asarray(pts, np.float64), ss) * 8).astype(np.int32)
        wpx = np.asarray(ws) * ri * ss
        thick = np.maximum(1, np.rint(wpx)).astype(np.int64)
        # Thin vessels are also shallower: less contrast as well as less width.
        contrast = np.clip(0.2 + 0.8 * np.asarray(ws) / 0.014, 0.25, 1.0)
        fade = np.minimum(1.0, np.arange(len(pts))[::-1] / 4.0)  # vessel ends fade out
        val = np.rint(np.minimum(1.0, wpx) * contrast * fade * 12).astype(np.int64)
        key = thick * 100 + val
        cuts = np.concatenate([[0], np.flatnonzero(np.diff(key[:-1])) + 1, [len(pts) - 1]])
        for a, b in zip(cuts[:-1], cuts[1:]):
            if b > a and val[a] > 0:
                runs.append((int(val[a]), int(thick[a]), artery, P[a : b + 1]))
    runs.sort(key=lambda t: (t[0], t[1]))
    for val, thick, artery, poly in runs:
        cv2.polylines(masks[artery], [poly], False, min(255, round(val * 255 / 12)), thick, cv2.LINE_AA, shift=3)
    sig = max(0.4, 0.7 * ri / 360)
    am, vm = (
        cv2.GaussianBlur(cv2.resize(masks[k], (iw, ih), interpolation=cv2.INTER_AREA), (0, 0), sig).astype(np.float32)
        * np.float32(1 / 255)
        for k in (True, False)
    )
    # Vessels dive into the optic cup: fade them towards the disc centre.
    cup = to_px(np.array([disc]))[0]
    jj = np.arange(iw, dtype=np.float32)[None, :] - cup[0]
    ii = np.arange(ih, dtype=np.float32)[:, None] - cup[1]
    s_cup = 0.35 * spec.disc_r * ri
    fade = min(1.0, spec.vessel_contrast) * (1.0 - 0.75 * np.exp(-(jj * jj + ii * ii) / (2 * s_cup * s_cup)))
    am *= fade
    vm *= fade
    # Blood absorbs green far more than red: vessels look dark red, not brown.
    vein = (0.72, 0.4, 0.55)
    art = (0.88, 0.65, 0.75)
    for ch in range(3):
        # Arteries cross over veins.
        refl[..., ch] *= (1 - am) * (1 - vm * (1 - vein[ch])) + am * art[ch]


# --------------------------------------------------------------------------- lesions


def _lesions(refl: np.ndarray, spec: PhantomSpec, to_px: Callable, ri: float,
             disc: tuple[float, float], fovea: tuple[float, float]) -> None:
    rng = np.random.default_rng(spec.lesion_seed)
    sev = spec.severity
    ih, iw = refl.shape[:2]
    layers: dict[str, np.ndarray] = {}
    sh = 8

    def layer(name: str) -> np.ndarray:
        if name not in layers:
            layers[name] = np.zeros((ih, iw), np.uint8)
        return layers[name]

    def centre(p: np.ndarray) -> tuple[int, int]:
        q = to_px(p[None, :])[0]
        return int(round(q[0] * sh)), int(round(q[1] * sh))

    def spot(name: str, p: np.ndarray, rad: float, val: float) -> None:
        cv2.circle(layer(name), centre(p), max(1, int(round(rad * ri * sh))), int(val), -1, cv2.LINE_AA, shift=3)

    def blob(name: str, p: np.ndarray, ax: float, ay: float, ang: float, val: float) -> None:
        axes = (max(1, int(round(ax * ri * sh))), max(1, int(round(ay * ri * sh))))
        cv2.ellipse(layer(name), centre(p), axes, ang, 0, 360, int(val), -1, cv2.LINE_AA, shift=3)

    D = np.asarray(disc)
    F = np.asarray(fovea)
    pole = (D + 2 * F) / 3

    def sample(k: int, centre_: np.ndarray, sigma: float) -> np.ndarray:
        """k points around centre_, inside the FOV and off the disc."""
        pts = np.empty((0, 2))
        while len(pts) < k:
            cand = centre_ + rng.normal(0, sigma, size=(2 * k + 8, 2))
            ok = (np.hypot(cand[:, 0], cand[:, 1]) < 0.93) & (np.hypot(*(cand - D).T) > 1.3 * spec.disc_r)
            pts = np.concatenate([pts, cand[ok]])
        return pts[:k]

    if spec.label == 1:  # diabetic retinopathy
        for p in sample(int(4 + 40 * sev * rng.uniform(0.5, 1.0)), pole, 0.33):  # microaneurysms
            spot("haem", p, rng.uniform(0.0028, 0.006), rng.uniform(190, 255))
        for p in sample(int(rng.poisson(1 + 16 * sev**1.5)), pole, 0.38):  # blot haemorrhages
            size = rng.uniform(0.008, 0.028) * (0.6 + 0.6 * sev)
            val = rng.uniform(150, 235)
            for _ in range(rng.integers(4, 9)):  # irregular: a clump of overlapping ellipses
                q = p + rng.normal(0, 0.55 * size, 2)
                ax, ay = size * rng.uniform(0.3, 0.7), size * rng.uniform(0.3, 0.7)
                blob("blot", q, ax, ay, rng.uniform(0, 180), val * rng.uniform(0.75, 1.0))
        for p in sample(int(rng.poisson(3 * sev)), pole, 0.3):  # flame haemorrhages along nerve fibres
            d = p - D
            ang = math.degrees(math.atan2(d[1], d[0]))
            size = rng.uniform(0.01, 0.02)
            u_ = d / max(float(np.hypot(*d)), 1e-6)
            for k in range(int(rng.integers(3, 6))):  # feathered streaks along the fibres
                q = p + u_ * rng.normal(0, 1.2 * size) + u_[::-1] * np.array([1, -1]) * rng.normal(0, 0.4 * size)
                blob("blot", q, size * rng.uniform(1.5, 2.5), size * rng.uniform(0.2, 0.4), ang, rng.uniform(110, 190))
        n_clusters = int(rng.poisson(0.3 + 5 * sev)) if rng.random() < 0.8 else 0
        for _ in range(n_clusters):  # hard exudates: clusters, often ringing the macula
            a = rng.uniform(0, 2 * math.pi)
            c = F + rng.uniform(0.06, 0.4) * np.array([math.cos(a), math.sin(a)])
            spread = rng.uniform(0.01, 0.045)
            for _ in range(int(rng.integers(3, 25))):
                q = c + rng.normal(0, spread, 2)
                rad = rng.uniform(0.003, 0.009)
                ax, ay = rad * rng.uniform(0.7, 1.3), rad * rng.uniform(0.7, 1.3)
                blob("exu", q, ax, ay, rng.uniform(0, 180), rng.uniform(190, 255))
        if sev > 0.5:
            for p in sample(int(rng.poisson(3 * (sev - 0.4))), D * 0.6 + F * 0.4, 0.25):  # cotton-wool spots
                size = rng.uniform(0.015, 0.03)
                blob("cws", p, size * rng.uniform(1.0, 1.8), size, rng.uniform(0, 180), rng.uniform(120, 200))
    elif spec.label == 2:  # age-related macular degeneration
        sigma = rng.uniform(0.07, 0.15)
        for p in sample(int(15 + 130 * sev * rng.uniform(0.5, 1.0)), F, sigma):  # drusen
            big = rng.random() < 0.15 * sev
            rad = rng.uniform(0.011, 0.02) if big else rng.uniform(0.003, 0.009)
            spot("drusen", p, rad, rng.uniform(90, 190))
        if sev > 0.45:
            for p in sample(int(rng.poisson(8 * sev)), F, 0.06):  # pigment clumps
                ax, ay = rng.uniform(0.004, 0.012), rng.uniform(0.004, 0.01)
                blob("pig", p, ax, ay, rng.uniform(0, 180), rng.uniform(120, 220))
        if sev > 0.75 and rng.random() < 0.5:  # geographic atrophy
            for _ in range(int(rng.integers(1, 4))):
                q = F + rng.normal(0, 0.03, 2)
                s_ = rng.uniform(0.03, 0.07)
                blob("atrophy", q, s_ * rng.uniform(0.8, 1.2), s_ * rng.uniform(0.8, 1.2), rng.uniform(0, 180), 120)

    # name: (blur in internal px at r=360, mode, colour)
    looks = {
        "haem": (0.7, "red", (0.6, 0.1, 0.07)),
        "blot": (1.6, "red", (0.62, 0.12, 0.08)),
        "pig": (1.2, "mul", (0.6, 0.45, 0.42)),
        "exu": (0.7, "mix", (1.0, 0.82, 0.3)),
        "drusen": (1.8, "mix", (0.98, 0.78, 0.42)),
        "cws": (3.0, "mix", (0.95, 0.86, 0.7)),
        "atrophy": (4.0, "mix", (0.95, 0.66, 0.42)),
    }
    for name, m in layers.items():
        blur, mode, col = looks[name]
        a = cv2.GaussianBlur(m.astype(np.float32) / 255, (0, 0), max(0.3, blur * ri / 360))
        red = refl[..., 0].copy()
        for ch in range(3):
            if mode == "mul":
                refl[..., ch] *= 1 - a * (1 - col[ch])
            elif mode == "red":  # blood: dark red relative to the local red reflectance
                refl[..., ch] += a * (col[ch] * red - refl[..., ch])
            else:
                refl[..., ch] += a * (col[ch] - refl[..., ch])


# --------------------------------------------------------------------------- writing


def write_phantoms(
    out_dir: Path,
    *,
    n: int = 200,
    seed: int = 0,
    overwrite: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> PhantomResult:
    """Write n phantom photographs as out_dir/images/*.jpg plus out_dir/labels.csv.

    labels.csv: image (relative path), label (class name), patient, eye and the true
    field-of-view circle fov_cx, fov_cy, fov_r in pixels.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FundusError(f"{out_dir} is a file, not a folder; choose another output folder for the phantoms")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FundusError(
            f"{out_dir} already exists and is not empty; choose a new folder or pass overwrite=True (--overwrite)"
        )
    specs = plan_phantoms(n=n, seed=seed)
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    if overwrite:  # drop phantoms of an earlier, larger run so the folder matches labels.csv
        for old in images.iterdir():
            if old.is_file() and _IMAGE_NAME.match(old.name):
                old.unlink()

    rows = []
    counts = dict.fromkeys(CLASS_NAMES, 0)
    for spec in specs:
        rgb = render_phantom(spec)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        if not ok:  # pragma: no cover - OpenCV only fails here on a broken build
            raise RuntimeError("OpenCV could not encode a JPEG")
        rel = f"images/{spec.patient:04d}_{spec.eye}.jpg"
        _atomic_write(out_dir / rel, buf.tobytes())
        name = CLASS_NAMES[spec.label]
        counts[name] += 1
        rows.append((rel, name, spec.patient, spec.eye, spec.fov_cx, spec.fov_cy, spec.fov_r))
        if on_progress is not None:
            on_progress(1)

    labels = out_dir / "labels.csv"
    lines = [",".join(_LABEL_HEADER)] + [",".join(str(v) for v in row) for row in rows]
    _atomic_write(labels, ("\n".join(lines) + "\n").encode())
    return PhantomResult(out_dir=out_dir, n_images=len(specs), labels_csv=labels, class_counts=counts)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
