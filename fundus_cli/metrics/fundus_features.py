"""`--features fundus`: a descriptor of what a fundus photograph is made of, per image.

Generic features (a random CNN, Inception) pool a photograph into statistics in which a
disc of the right colour and layout sits close to real photographs whatever its fine
structure: at 100-200 holdout images, KID in the random-CNN features could not tell a
GAN's vessel-free orange discs from real photographs. This descriptor spends its
dimensions on what a grader looks at, each at scales tied to the image side, so a value
means the same at 64 and 512 px as far as the pixels allow:

- colour: mean and spread of R, G, B inside the field of view, and the luminance in
  three rings from the centre to the rim (vignetting, the disc's place) (9);
- detail by scale: the spread of each channel's band-pass (difference of Gaussians) at
  four octaves, relative to the local background, log-scaled (12);
- vessels: the vessel density of `fundus_stats` and quantiles of the Hessian dark-line
  strength (50th, 90th, 99th) (4);
- texture at the pixel grid: the spread of a 2x2 checkerboard filter per channel, log
  (generator upsampling artefacts), and the optic disc's luminance (4).

Every dimension is a plain number with a meaning, so the realism metrics on them answer
"does anything a grader sees differ", and the per-dimension differences say what. The
scale of the dimensions differs; `evaluate` standardises all sets with the mean and
spread of the real holdout before the metrics (a shared linear map: a KID or FID in these
units compares only between reports on the same holdout, which the report records).
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np

from fundus_cli.data.quality import luminance
from fundus_cli.metrics.fundus_stats import _fill_outside, _inner, disc_brightness, line_strength, vessel_map

# Band-pass octaves: the image minus its blur at the first sigma, then between successive
# sigmas (shares of the side: 1, 2, 4, 8 px at 64 px).
_BANDS = (1 / 64, 1 / 32, 1 / 16, 1 / 8)
NAMES = (
    [f"colour_mean_{c}" for c in "rgb"] + [f"colour_sd_{c}" for c in "rgb"] + [f"ring_luminance_{k}" for k in range(3)]
    + [f"band{b}_{c}" for c in "rgb" for b in range(len(_BANDS))]
    + ["vessel_density", "line_p50", "line_p90", "line_p99"]
    + [f"checker_{c}" for c in "rgb"] + ["disc_brightness"]
)
VERSION = 1  # changing any computation above changes every reported number: bump it


class FundusFeatures:
    """uint8 (B, S, S, 3) images -> float64 (B, 29) descriptors (see the module docstring)."""

    name = "fundus"
    dim = len(NAMES)
    names = NAMES
    fingerprint = hashlib.sha256(f"fundus-features v{VERSION}: {','.join(NAMES)}".encode()).hexdigest()

    def __call__(self, images: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        s = images.shape[1]
        if mask is None:
            yy, xx = np.mgrid[:s, :s]
            mask = (yy - s / 2 + 0.5) ** 2 + (xx - s / 2 + 0.5) ** 2 < (s / 2) ** 2
        mask = mask.astype(bool)
        return np.stack([self._one(im, mask) for im in images]) if len(images) else np.zeros((0, self.dim))

    def _one(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        s = image.shape[0]
        inner = _inner(mask)
        rgb = image.astype(np.float32)
        out: list[float] = []
        px = rgb[inner]
        out += list(px.mean(0) / 255.0) + list(px.std(0) / 255.0)
        lum = luminance(image)
        yy, xx = np.mgrid[:s, :s]
        r = np.hypot(yy - (s - 1) / 2, xx - (s - 1) / 2) / (s / 2)
        for lo, hi in ((0.0, 0.4), (0.4, 0.7), (0.7, 1.0)):
            ring = inner & (r >= lo) & (r < hi)
            out.append(float(lum[ring].mean()) if ring.any() else float(lum[inner].mean()))
        for c in range(3):
            ch = _fill_outside(rgb[..., c], inner)
            background = cv2.GaussianBlur(ch, (0, 0), s / 16)
            rel = ch / np.maximum(background, 8.0)
            blurred = [rel] + [cv2.GaussianBlur(rel, (0, 0), s * f) for f in _BANDS]
            for b in range(len(_BANDS)):
                band = blurred[b] - blurred[b + 1]
                out.append(float(np.log(band[inner].std() + 1e-4)))
        lines = line_strength(image, mask)
        q = np.percentile(lines[0][inner], [50, 90, 99])
        out += ([float(vessel_map(image, mask, lines).sum() / max(1, inner.sum()))]
                + [float(np.log(v + 1e-4)) for v in q])
        kernel = np.array([[1, -1], [-1, 1]], np.float32) / 4
        for c in range(3):
            chk = cv2.filter2D(rgb[..., c] / 255.0, -1, kernel)
            out.append(float(np.log(chk[inner].std() + 1e-4)))
        out.append(disc_brightness(image, mask) / 255.0)
        return np.asarray(out, np.float64)
