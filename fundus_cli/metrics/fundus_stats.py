"""Fundus statistics: per-image measures a clinician would recognise, and distances between
their real and synthetic distributions.

Feature-space metrics (FID, PRDC) say *that* two sets differ; these say *how*: wrong
colours, missing or too many vessels, blur, a washed-out optic disc. All are computed on
uint8 RGB images (B, S, S, 3) inside their field-of-view masks, at the stored size; sizes
are relative to S, so a statistic means the same at 64 and at 512 pixels as far as the
pixels allow (thin vessels vanish at 64 px).

    histogram        (B, 3, bins)  share of FOV pixels per grey-level bin, per channel
    vessel_density   (B,)  share of FOV pixels on a vessel visible at this size (Hessian
                           line detector, see below; the eroded FOV, as for sharpness)
    sharpness        (B,)  variance of the Laplacian of luminance inside the eroded FOV,
                           the same measure as the ingest quality report
    disc_brightness  (B,)  luminance (0..255) of the brightest disc-sized blob: the optic disc

Vessel detector: vessels are thin, elongated structures darker than their surroundings,
clearest in the green channel. The green channel is divided by its smooth local background
(so exposure and the bright optic disc do not matter), and at a few Gaussian scales tied to
the image side the Hessian's eigenvalues say how a pixel's neighbourhood curves: across a
dark line strongly upwards (l1 > 0), along it hardly at all (l2 ~ 0). The line strength
sigma^2 (l1 - |l2|) is a line's depth below its background (a share of it) times a shape
factor; a pixel is vessel where it exceeds VESSEL_LINE_CONTRAST at some scale, and only
components at least S/32 long count. A checkerboard curves equally in both directions
(blob or saddle: l1 - |l2| ~ 0) and isotropic noise rarely makes lines several pixels
long; the previous detector (a black top-hat) counted both as vessel, over a quarter of
the image at 64 px. Validated against DRIVE's manual vessel maps and on vessel-free
controls: `python benchmarks/vessels.py`.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import scipy.ndimage
import scipy.stats

from fundus_cli.data.quality import luminance, quality_measures
from fundus_cli.errors import FundusError

HIST_BINS = 32
SCALAR_STATS = ("vessel_density", "sharpness", "disc_brightness")

# Hessian scales as shares of the image side: DRIVE's vessels are ~1/500 to ~1/50 of the
# field of view across; below _MIN_SIGMA px a Gaussian no longer smooths the pixel grid, and
# a 2-px checkerboard would survive into the derivatives.
_LINE_SCALES = (1 / 400, 1 / 200, 1 / 100)
_MIN_SIGMA = 0.7
# Local background for the relative contrast: much wider than any vessel.
_BACKGROUND_FRACTION = 1 / 16
# Line strength threshold (depth below the local background, as a share of it, times a
# shape factor). Chosen on DRIVE and the controls of benchmarks/vessels.py: at 0.02 a
# 4-px checkerboard of +-8 grey levels passes as vessel at 64 and 128 px, at 0.03 it does
# not, and photographs with their vessels erased score about 1/3 (64 px) to 1/7 (native)
# of the originals.
VESSEL_LINE_CONTRAST = 0.03
# Shortest component that counts, as a share of the side (never under 3 px): a vessel is
# long, a noise speck is not.
_MIN_LENGTH_FRACTION = 1 / 32
# Gaussian sigma for the optic-disc blob, as a share of the image side (the disc radius
# is ~1/14 of the field of view).
_DISC_SIGMA_FRACTION = 1 / 30


def fundus_stats(images: np.ndarray, masks: np.ndarray, *, bins: int = HIST_BINS) -> dict[str, np.ndarray]:
    """Per-image statistics of uint8 (B, S, S, 3) RGB images; masks (B, S, S) or one (S, S), bool."""
    images = np.asarray(images)
    masks = np.asarray(masks).astype(bool)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise FundusError(f"fundus statistics need uint8 (images, S, S, 3) RGB arrays, got {images.dtype} "
                          f"{images.shape}")
    if masks.ndim == 2 and masks.shape == images.shape[1:3]:
        masks = np.broadcast_to(masks, images.shape[:3])
    if masks.shape != images.shape[:3]:
        raise FundusError(f"field-of-view masks {masks.shape} do not match images {images.shape}")
    n = len(images)
    out = {
        "histogram": np.zeros((n, 3, bins)),
        "vessel_density": np.zeros(n),
        "sharpness": np.zeros(n),
        "disc_brightness": np.zeros(n),
    }
    for i in range(n):
        image, mask = images[i], masks[i]
        count = int(mask.sum())
        if count == 0:
            raise FundusError(f"image {i} has an empty field-of-view mask; re-run `fundus ingest`")
        for c in range(3):
            out["histogram"][i, c] = np.bincount(image[..., c][mask].astype(np.int64) * bins // 256,
                                                 minlength=bins) / count
        out["vessel_density"][i] = float(vessel_map(image, mask).sum() / max(1, _inner(mask).sum()))
        out["sharpness"][i] = quality_measures(image, mask, fov_fraction=1.0)["sharpness"]
        out["disc_brightness"][i] = disc_brightness(image, mask)
    return out


def vessel_map(image: np.ndarray, mask: np.ndarray,
               strength: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Bool (S, S): pixels of one RGB image that the line detector calls vessel.

    Only the eroded field of view counts (see _inner): rim pixels are partly black after
    resizing and would read as a dark ring of vessel. `strength`: line_strength(image, mask)
    when the caller has it already.
    """
    strength, inner = strength if strength is not None else line_strength(image, mask)
    found = ((strength > VESSEL_LINE_CONTRAST) & inner).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(found, connectivity=8)
    extent = np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT])
    keep = extent >= max(3.0, image.shape[0] * _MIN_LENGTH_FRACTION)
    keep[0] = False  # the background label
    return keep[labels]


def line_strength(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float32 (S, S) dark-line strength (see the module docstring) and the eroded FOV it is valid in."""
    s = image.shape[0]
    inner = _inner(mask)
    green = _fill_outside(image[..., 1].astype(np.float32), inner)
    background = cv2.GaussianBlur(green, (0, 0), sigmaX=s * _BACKGROUND_FRACTION)
    relative = green / np.maximum(background, 1.0)
    best = np.zeros_like(relative)
    for sigma in sorted({max(_MIN_SIGMA, s * f) for f in _LINE_SCALES}):
        smooth = cv2.GaussianBlur(relative, (0, 0), sigmaX=sigma)
        # 3x3 Sobel second derivatives are 4x the central differences of the smoothed image.
        gxx = cv2.Sobel(smooth, cv2.CV_32F, 2, 0, ksize=3) / 4
        gyy = cv2.Sobel(smooth, cv2.CV_32F, 0, 2, ksize=3) / 4
        gxy = cv2.Sobel(smooth, cv2.CV_32F, 1, 1, ksize=3) / 4
        half = (gxx + gyy) / 2
        root = np.sqrt(((gxx - gyy) / 2) ** 2 + gxy**2)
        across, along = half + root, half - root
        np.maximum(best, np.where(across > 0, across - np.abs(along), 0.0) * sigma**2, out=best)
    return best, inner


def disc_brightness(image: np.ndarray, mask: np.ndarray) -> float:
    """Highest disc-sized local mean of luminance (0..255) inside the FOV."""
    y = luminance(image) * 255.0
    m = mask.astype(np.float32)
    sigma = max(1.0, image.shape[0] * _DISC_SIGMA_FRACTION)
    # Normalised convolution: near the rim, the black outside would otherwise drag the
    # local mean down.
    num = cv2.GaussianBlur(y * m, (0, 0), sigmaX=sigma)
    den = cv2.GaussianBlur(m, (0, 0), sigmaX=sigma)
    inside = mask & (den > 0.5)
    if not inside.any():
        inside = mask
    return float((num[inside] / np.maximum(den[inside], 1e-6)).max())


def stat_distances(real: dict[str, np.ndarray], fake: dict[str, np.ndarray]) -> dict[str, float]:
    """Distances between real and synthetic distributions of each statistic.

    Scalars: Wasserstein-1 between the two empirical distributions, in the statistic's
    own units. Colour: earth mover's distance between the mean histograms of the two sets,
    per channel in grey levels, as `colour_emd_{r,g,b}` and their mean `colour_emd`.
    """
    out: dict[str, float] = {}
    for name in SCALAR_STATS:
        a, b = np.asarray(real[name], np.float64), np.asarray(fake[name], np.float64)
        if a.size == 0 or b.size == 0:
            raise FundusError(f"no values of {name} to compare ({a.size} real, {b.size} synthetic)")
        out[name] = float(scipy.stats.wasserstein_distance(a, b))
    h_real = np.asarray(real["histogram"]).mean(0)
    h_fake = np.asarray(fake["histogram"]).mean(0)
    bins = h_real.shape[-1]
    centres = (np.arange(bins) + 0.5) * 256 / bins
    emd = [float(scipy.stats.wasserstein_distance(centres, centres, h_real[c], h_fake[c])) for c in range(3)]
    out.update({f"colour_emd_{ch}": e for ch, e in zip("rgb", emd)})
    out["colour_emd"] = float(np.mean(emd))
    return out


def _inner(mask: np.ndarray) -> np.ndarray:
    """The field of view less a rim of ~S/64 pixels (the same erosion as ingest's sharpness);
    falls back to the whole mask when that would leave nothing."""
    k = max(3, mask.shape[0] // 32) | 1
    # A field of view cut off by the photograph's edge is eroded there too.
    inner = cv2.erode(mask.astype(np.uint8), np.ones((k, k), np.uint8), borderType=cv2.BORDER_CONSTANT,
                      borderValue=0).astype(bool)
    return inner if inner.any() else mask


def _fill_outside(channel: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Outside pixels take the value of the nearest FOV pixel, so the rim is not an edge."""
    if mask.all():
        return channel
    iy, ix = _nearest_inside(np.packbits(mask).tobytes(), mask.shape)
    return channel[iy, ix]


@functools.lru_cache(maxsize=4)
def _nearest_inside(packed: bytes, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    # evaluate passes one mask for every image: one distance transform serves them all.
    mask = np.unpackbits(np.frombuffer(packed, np.uint8), count=shape[0] * shape[1]).reshape(shape).astype(bool)
    _, (iy, ix) = scipy.ndimage.distance_transform_edt(~mask, return_indices=True)
    return iy, ix
