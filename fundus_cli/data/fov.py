"""Field-of-view (FOV) detection and cropping for colour fundus photographs.

A fundus camera images the retina through a circular aperture, so every photograph is a
bright disc on a dark border. The disc is often wider than the sensor is tall (cut off at
top and bottom), may carry a small notch or knob at the rim, and the border is rarely pure
black (JPEG noise, grey offsets, burnt-in text). Downstream steps want the disc itself:
its centre and radius to crop a square, and a mask to ignore the border.

Coordinates: x to the right, y down, pixel centres at integer coordinates, so pixel
``(i, j)`` covers ``[j - 0.5, j + 0.5] x [i - 0.5, i + 0.5]``.

Detection runs in two stages:
1. coarse: threshold a downscaled brightness image relative to the border level, take the
   largest bright component, and fit a circle robustly to its outline, ignoring outline
   points that lie on the image frame (those are cut-offs, not rim);
2. fine: sample brightness along rays across the coarse rim on the full-resolution image,
   locate the rim step on each ray with sub-pixel precision, and refit robustly, so a
   notch, a knob or a bright text label near the rim costs a few outlier rays, not bias.
The result is accepted only if it explains the image: enough rim, on enough of the
circle, and a bright region that coincides with the disc.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from fundus_cli.data.circle import Circle, robust_circle

__all__ = ["Circle", "crop_to_fov", "detect_fov", "fov_fraction", "fov_mask"]

# Longest side of the image used for the coarse stage: big enough that the outline has
# hundreds of points, small enough that thresholding and contours cost ~1 ms.
_COARSE_SIDE = 256
# Number of rays of the fine stage; a 1-degree spacing leaves hundreds of rays even when
# most of the rim is cut off by the frame.
_N_RAYS = 360
# Brightness contrast (0..255) between border and disc below which we see no disc at all:
# an all-black or uniform image.
_MIN_CONTRAST = 8.0
# Threshold margin above the border level, in border noise standard deviations.
_NOISE_FACTOR = 3.0


def fov_mask(shape: tuple[int, int], circle: Circle) -> np.ndarray:
    """Boolean (H, W) mask of the pixels whose centre lies within the circle."""
    h, w = int(shape[0]), int(shape[1])
    ys = (np.arange(h, dtype=np.float64) - circle.cy) ** 2
    xs = (np.arange(w, dtype=np.float64) - circle.cx) ** 2
    return (ys[:, None] + xs[None, :]) <= circle.r**2


def fov_fraction(shape: tuple[int, int], circle: Circle) -> float:
    """Fraction of the image area inside the disc (a quality column: small = mostly border)."""
    h, w = int(shape[0]), int(shape[1])
    if h == 0 or w == 0:
        return 0.0
    return float(fov_mask((h, w), circle).mean())


def detect_fov(image: np.ndarray) -> Circle | None:
    """Find the circular field of view of a fundus photograph.

    ``image`` is uint8, (H, W, 3) in any channel order, or (H, W). Returns the circle in
    the image's own pixel coordinates, or None when the image shows no plausible disc
    on a darker border (uniform, black, noise, or a picture with no border anywhere).
    """
    v = _brightness(image)
    h, w = v.shape
    if min(h, w) < 16:
        return None

    coarse = _coarse_stage(v)
    if coarse is None:
        return None
    circle, levels, filled_small, small_scale = coarse

    # Two passes: a wide search window absorbs the coarse error (a vignetted rim can put
    # the coarse outline several percent inside), then a narrow one rejects clutter.
    blurred = cv2.GaussianBlur(v, (0, 0), sigmaX=1.0)
    support = None
    for half_width in (0.12, 0.04):
        refined = _refine_on_rays(blurred, circle, levels=levels, half_width=half_width)
        if refined is None:
            return None
        circle, support = refined

    if not _plausible(circle, support=support, shape=(h, w), filled_small=filled_small,
                      small_scale=small_scale):
        return None
    return circle


def crop_to_fov(
    image: np.ndarray,
    circle: Circle,
    *,
    size: int,
    interpolation: int = cv2.INTER_AREA,
) -> tuple[np.ndarray, np.ndarray, Circle]:
    """Crop the disc's bounding square (side 2r), resize it to ``size`` x ``size`` and black
    out everything that is not disc.

    The square is placed with sub-pixel precision; where it extends past the image (a disc
    cut off by the frame) it is black. Returns the square image (same dtype
    and channels as the input), a boolean mask of the pixels that are disc AND came from
    inside the source image (so a cut-off disc's mask is flat at top and bottom), and the
    disc in output coordinates (centre ((size - 1) / 2, (size - 1) / 2), radius size / 2).
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if circle.r <= 0:
        raise ValueError(f"circle radius must be positive, got {circle.r}")
    h, w = image.shape[:2]
    # Output pixel j covers [j - 0.5, j + 0.5]; the output extent [-0.5, size - 0.5] maps
    # onto the square [c - r, c + r], so the source coordinate of output pixel j is
    # c - r + (j + 0.5) * step.
    step = 2.0 * circle.r / size
    x0 = circle.cx - circle.r
    y0 = circle.cy - circle.r

    if interpolation == cv2.INTER_AREA and step > 1.0:
        # warpAffine cannot area-average, and bilinear sampling at a large step aliases
        # vessels and JPEG noise. So first align the square to a pixel grid at (almost)
        # native scale, where bilinear interpolation is harmless, then area-resize: the
        # two extents match exactly, so the composition is the exact mapping above.
        n = max(size, int(np.ceil(2.0 * circle.r)))
        aligned = _warp_square(image, x0=x0, y0=y0, step=2.0 * circle.r / n, n=n,
                               interpolation=cv2.INTER_LINEAR)
        out = cv2.resize(aligned, (size, size), interpolation=cv2.INTER_AREA)
    else:
        flag = cv2.INTER_LINEAR if interpolation == cv2.INTER_AREA else interpolation
        out = _warp_square(image, x0=x0, y0=y0, step=step, n=size, interpolation=flag)
    if out.ndim == 2 and image.ndim == 3:  # cv2 drops a singleton channel axis
        out = out[:, :, None]

    out_circle = Circle(cx=(size - 1) / 2.0, cy=(size - 1) / 2.0, r=size / 2.0)
    centres = x0 + (np.arange(size) + 0.5) * step
    inside_x = (centres >= -0.5) & (centres <= w - 0.5)
    centres_y = y0 + (np.arange(size) + 0.5) * step
    inside_y = (centres_y >= -0.5) & (centres_y <= h - 0.5)
    mask = fov_mask((size, size), out_circle) & inside_y[:, None] & inside_x[None, :]
    out[~mask] = 0
    return out, mask, out_circle


# --------------------------------------------------------------------------- internals


@dataclass(frozen=True)
class _Levels:
    """Brightness levels shared by both stages (0..255 scale)."""

    border: float  # typical border brightness
    threshold: float  # above: disc, below: border


def _brightness(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        raise ValueError(f"detect_fov expects a uint8 image, got {image.dtype}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return image.reshape(image.shape[:2]).astype(np.float32)
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"detect_fov expects an (H, W) or (H, W, 3) image, got {image.shape}")
    # The max channel, not luminance: the fundus is red-dominated and a dark, vignetted rim
    # keeps far more contrast in red than in green or blue, whatever the channel order.
    r, g, b = cv2.split(np.ascontiguousarray(image[:, :, :3]))
    return cv2.max(cv2.max(r, g), b).astype(np.float32)


def _coarse_stage(
    v: np.ndarray,
) -> tuple[Circle, _Levels, np.ndarray, tuple[float, float]] | None:
    h, w = v.shape
    factor = min(1.0, _COARSE_SIDE / max(h, w))
    sh, sw = max(8, round(h * factor)), max(8, round(w * factor))
    small = v if (sh, sw) == (h, w) else cv2.resize(v, (sw, sh), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=1.0)
    sx, sy = sw / w, sh / h

    levels = _levels(small)
    if levels is None:
        return None
    bright = (small > levels.threshold).astype(np.uint8)
    # An opening cuts thin bridges from the disc to burnt-in labels near the rim.
    bright = cv2.morphologyEx(bright, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
    if n < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    component = (labels == largest).astype(np.uint8)
    contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outline = max(contours, key=len).reshape(-1, 2).astype(np.float64)
    # Filled outline = component with its holes closed (dark lesions, a dim macula).
    filled = np.zeros_like(component)
    cv2.drawContours(filled, [outline.astype(np.int32).reshape(-1, 1, 2)], -1, 1, cv2.FILLED)

    on_frame = ((outline[:, 0] <= 0) | (outline[:, 0] >= sw - 1)
                | (outline[:, 1] <= 0) | (outline[:, 1] >= sh - 1))
    # A few hundred points pin a circle down; more only slow the RANSAC.
    rim = outline[~on_frame]
    rim = rim[:: max(1, len(rim) // 400)]
    if len(rim) < 12:
        return None  # a bright region with no dark border: nothing to fit
    # Contour pixels are the outermost disc pixels, half a pixel inside the true edge on
    # average; this bias is small and the fine stage removes it.
    rim_full = np.column_stack([(rim[:, 0] + 0.5) / sx - 0.5, (rim[:, 1] + 0.5) / sy - 0.5])
    fit = robust_circle(rim_full, tolerance=2.0 / min(sx, sy))
    if fit is None:
        return None
    circle, _ = fit
    if not (circle.r > 4.0 and np.isfinite(circle.r)):
        return None
    return circle, levels, filled.astype(bool), (sx, sy)


def _levels(small: np.ndarray) -> _Levels | None:
    sh, sw = small.shape
    ph, pw = max(2, round(0.08 * sh)), max(2, round(0.08 * sw))
    # The border level comes from the image corners, which lie outside any centred disc
    # that leaves some border visible (even one cut off at top and bottom). A global
    # split (Otsu) fails when the border is a small part of the image: its dark class then
    # swallows vessels and the vignetted periphery. The darkest corner wins, so a label
    # or glare in one corner does not matter.
    corners = [small[:ph, :pw], small[:ph, -pw:], small[-ph:, :pw], small[-ph:, -pw:]]
    darkest = min(corners, key=lambda patch: float(np.median(patch)))
    border = float(np.median(darkest))
    noise = 1.4826 * float(np.median(np.abs(darkest - border)))
    # The disc covers well over 10% of any fundus photograph, so the 90th percentile is
    # disc (bright optic disc and lesions are a small part of it).
    disc = float(np.percentile(small, 90))
    contrast = disc - border
    if contrast < _MIN_CONTRAST:
        return None
    # Low in the gap between the two levels: a vignetted rim can be a fraction of the
    # disc's typical brightness and still must count as disc; but clear of border noise.
    threshold = border + min(max(0.15 * contrast, _NOISE_FACTOR * noise + 1.0), 0.5 * contrast)
    return _Levels(border=border, threshold=threshold)


def _refine_on_rays(
    v: np.ndarray, circle: Circle, *, levels: _Levels, half_width: float
) -> tuple[Circle, np.ndarray] | None:
    """Locate the rim step along rays around ``circle``; return the refit and the angles
    (radians) of the rays that support it."""
    h, w = v.shape
    r = circle.r
    span = max(3.0, half_width * r)
    n_samples = int(min(600, max(24, np.ceil(4.0 * span))))  # ~0.5 px apart, capped
    radii = np.linspace(r - span, r + span, n_samples)
    ds = radii[1] - radii[0]
    angles = np.linspace(0.0, 2.0 * np.pi, _N_RAYS, endpoint=False)
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    xs = (circle.cx + cos * radii[None, :]).astype(np.float32)
    ys = (circle.cy + sin * radii[None, :]).astype(np.float32)
    profiles = cv2.remap(v, xs, ys, interpolation=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE).astype(np.float64)
    # Where a ray leaves the image it meets the frame, not the rim (cut-off discs), so only
    # the part of each ray inside the image counts. The ray starts inside (near the rim,
    # on the centre's side), and once out it stays out: the image is convex.
    outside = (xs < 0) | (xs > w - 1) | (ys < 0) | (ys > h - 1)
    first_out = np.where(outside.any(axis=1), np.argmax(outside, axis=1), n_samples)

    # The rim is the OUTERMOST drop below threshold: the optic disc or a bright lesion
    # near the rim can make a steeper edge further in, but never has only border beyond.
    above = (profiles > levels.threshold) & ~outside
    has_above = above.any(axis=1)
    last_above = n_samples - 1 - np.argmax(above[:, ::-1], axis=1)
    ok = has_above & (last_above < first_out - 2)

    k, mid, edge_r = _steepest_descent(profiles, last_above, radii, r)

    # A real rim step falls from disc level to border level; require a step that is a
    # sizeable part of the gap, measured a little away from the edge on either side.
    gap = max(2, int(np.ceil(max(1.5, 0.006 * r) / ds)))
    inner = _window_mean(profiles, k - 3 * gap, k - gap)
    outer = _window_mean(profiles, k + 1 + gap, k + 1 + 3 * gap)
    step = inner - outer
    # The border side of the step must be seen inside the image.
    ok &= (first_out == n_samples) | (k + 1 + 3 * gap <= first_out)
    ok &= (step >= 0.5 * (levels.threshold - levels.border)) & (outer <= levels.threshold)
    ok &= (-mid) > 0
    if ok.sum() < 12:
        return None
    points = np.column_stack([circle.cx + np.cos(angles[ok]) * edge_r[ok],
                              circle.cy + np.sin(angles[ok]) * edge_r[ok]])
    fit = robust_circle(points, tolerance=max(1.0, 0.004 * r))
    if fit is None:
        return None
    refined, inliers = fit
    return refined, angles[ok][inliers]


def _steepest_descent(profiles: np.ndarray, last_above: np.ndarray, radii: np.ndarray,
                      r: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per ray, around the threshold crossing ``last_above``: the sample of the steepest descent
    (the edge itself; the threshold is low and would put the edge at the foot of the step), the
    derivative there, and the edge's radius to a fraction of a sample."""
    n_samples = profiles.shape[1]
    ds = radii[1] - radii[0]
    diffs = np.diff(profiles, axis=1)  # diffs[:, i] sits at radii[i] + ds / 2
    search = max(2, int(np.ceil(max(2.0, 0.015 * r) / ds)))
    idx = np.arange(n_samples - 1)[None, :]
    window = (idx >= (last_above - search)[:, None]) & (idx <= (last_above + search)[:, None])
    masked = np.where(window, diffs, np.inf)
    k = np.argmin(masked, axis=1)
    rows = np.arange(_N_RAYS)
    # Parabolic interpolation of the derivative minimum gives the sub-sample position.
    left = diffs[rows, np.clip(k - 1, 0, n_samples - 2)]
    mid = diffs[rows, k]
    right = diffs[rows, np.clip(k + 1, 0, n_samples - 2)]
    denom = left - 2.0 * mid + right
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.where(denom > 1e-9, 0.5 * (left - right) / denom, 0.0)
    offset = np.clip(offset, -0.5, 0.5)
    interior = (k > 0) & (k < n_samples - 2)
    edge_r = radii[0] + (k + 0.5 + np.where(interior, offset, 0.0)) * ds
    return k, mid, edge_r


def _window_mean(profiles: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """Per-row mean of profiles[i, start[i]:stop[i]], the window clipped to the row (NaN
    where nothing is left, which the callers' comparisons reject)."""
    n = profiles.shape[1]
    cumulative = np.zeros((profiles.shape[0], n + 1))
    np.cumsum(profiles, axis=1, out=cumulative[:, 1:])
    lo = np.clip(start, 0, n)
    hi = np.clip(stop, 0, n)
    rows = np.arange(profiles.shape[0])
    count = (hi - lo).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, (cumulative[rows, hi] - cumulative[rows, lo]) / count, np.nan)


def _plausible(
    circle: Circle,
    *,
    support: np.ndarray,
    shape: tuple[int, int],
    filled_small: np.ndarray,
    small_scale: tuple[float, float],
) -> bool:
    h, w = shape
    if not all(np.isfinite([circle.cx, circle.cy, circle.r])):
        return False
    # The camera centres the aperture: a centre outside the image is a fit to clutter.
    if not (-0.5 <= circle.cx <= w - 0.5 and -0.5 <= circle.cy <= h - 0.5):
        return False
    if circle.r < 0.15 * min(h, w) or circle.r > 0.75 * np.hypot(h, w):
        return False
    # Enough rim, spread over the circle: at least 10% of the rays, in 8+ distinct
    # 10-degree sectors (a cut-off disc still shows two arcs of 40+ degrees).
    if len(support) < 0.1 * _N_RAYS:
        return False
    sectors = np.unique((np.degrees(support) // 10).astype(int))
    if len(sectors) < 8:
        return False
    # The bright region must be the disc: compare the filled coarse component with the
    # circle at the coarse scale.
    sh, sw = filled_small.shape
    disc = fov_mask((sh, sw), _to_small(circle, small_scale))
    union = np.logical_or(disc, filled_small).sum()
    if union == 0:
        return False
    iou = np.logical_and(disc, filled_small).sum() / union
    return bool(iou >= 0.92)


def _to_small(circle: Circle, scale: tuple[float, float]) -> Circle:
    # Rounding the coarse size can make the x and y factors differ by a fraction of a
    # percent; the mean radius is plenty for a plausibility check.
    sx, sy = scale
    return Circle(cx=(circle.cx + 0.5) * sx - 0.5, cy=(circle.cy + 0.5) * sy - 0.5,
                  r=circle.r * 0.5 * (sx + sy))


def _warp_square(
    image: np.ndarray, *, x0: float, y0: float, step: float, n: int, interpolation: int
) -> np.ndarray:
    # Inverse map: output pixel (j, i) samples source (x0 + (j + 0.5) * step, ...).
    # Replicating the edge (the caller blacks out everything outside the image afterwards)
    # keeps the last rows of a cut-off disc from being blended with black padding.
    inverse = np.array([[step, 0.0, x0 + 0.5 * step], [0.0, step, y0 + 0.5 * step]])
    return cv2.warpAffine(
        image, inverse, (n, n), flags=interpolation | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
