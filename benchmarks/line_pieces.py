"""How connected are the dark lines of generated fundus photographs, measured without the Hessian?

The evaluation's vessel fraction and the demo GAN's discriminator both use a Hessian line measure,
so this script checks vessels with one they do not share: the green channel's black top-hat
(5 x 5 square element at 64 px, scaled with the image) inside the field of view, thresholded at
the holdout's 95th percentile; then, per image, the 8-connected pieces. Real vessels form long
connected trees; short fragments, specks and meshes score lower.

    python benchmarks/line_pieces.py HOLDOUT.h5 SAMPLES.h5 [MORE.h5 ...]

Prints, per file: the thresholded share of the field of view, the share of those pixels in pieces
of 12 px or more ("long"), and the mean size of each image's largest piece (px), over its first
512 images. Used in benchmarks/RESULTS.md (the Hessian line strength, 2026-11-28).
"""

from __future__ import annotations

import sys

import cv2
import h5py
import numpy as np


def green_and_fov(path: str) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        images = f["images"][:512]
    green = images[..., 1] if images.shape[-1] == 3 else images[:, 1]
    fov = np.stack([cv2.erode((g > 12).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0 for g in green])
    return green, fov


def top_hat(green: np.ndarray) -> np.ndarray:
    k = 2 * max(1, round(2 * green.shape[-1] / 64)) + 1
    element = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
    return np.stack([cv2.morphologyEx(g, cv2.MORPH_BLACKHAT, element) for g in green])


def pieces(lines: np.ndarray, fov: np.ndarray, threshold: float) -> tuple[float, float, float]:
    on, long, largest = [], [], []
    for t, m in zip(lines, fov):
        binary = ((t > threshold) & m).astype(np.uint8)
        _, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        sizes = stats[1:, cv2.CC_STAT_AREA]
        on.append(binary.sum() / max(1, m.sum()))
        long.append(sizes[sizes >= 12].sum() / max(1, sizes.sum()))
        largest.append(sizes.max() if len(sizes) else 0)
    return float(np.mean(on)), float(np.mean(long)), float(np.mean(largest))


def main(paths: list[str]) -> None:
    green, fov = green_and_fov(paths[0])
    threshold = float(np.percentile(top_hat(green)[fov], 95))
    print(f"threshold: the holdout's 95th percentile of the top-hat, {threshold:.1f} green levels")
    print(f"{'file':48s} {'on':>7s} {'long':>6s} {'largest':>8s}")
    for path in paths:
        g, m = (green, fov) if path == paths[0] else green_and_fov(path)
        on, long, largest = pieces(top_hat(g), m, threshold)
        print(f"{path[-48:]:48s} {on:7.4f} {long:6.3f} {largest:8.1f}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1:])
