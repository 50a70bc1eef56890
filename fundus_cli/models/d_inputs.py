"""Extra input channels of the GAN's strided discriminator, computed from the image itself.

`detail=k` gives the strided D a second copy of its input: the image minus its Gaussian blur
(`high_pass`), times k. Vessels are thin low-contrast lines that move few pixel values; in the
plain D's features they are swamped by colour and illumination, and its logits barely moved
between photographs (sd 0.005). Measured on 413 IDRiD photographs at 64 px, 10 CPU-minutes each,
one run per setting (vessel fraction of the samples, real 0.026): nearest 0.0035, bilinear
0.0054, bilinear + detail 2 / 4 / 8: 0.0098 / 0.0084 / 0.0092 (recall 0.47 / 0.32 / 0.26), and
the grids began to show dark curved lines leaving the disc. `fundus train` uses detail 2.

`vessel=k` gives the strided D one more input channel: the green channel's black top-hat
(`dark_lines`: its morphological closing minus itself, a 5-px element at 64 px), times k. The
high-pass copy answers to every edge (the disc's rim, the field of view, texture); the top-hat
only to dark lines and dots thinner than the element: in a fundus photograph, vessels and red
lesions. Max pooling is differentiable, so G gets a gradient towards the vessels it lacks.
Measured on 413 IDRiD photographs at 64 px (benchmarks/quality.py, 30 CPU-minutes, one thread):
vessel 0 -> 4: KID 2.91 -> 0.61 x1e-3 (real floor 0.17), sharpness distance 576 -> 375 (real
baseline 74), recall 0.62 -> 0.61; faint thin vessel arcades in ~10 of 16 samples at 3x, ~6
of 16 with vessel 0 (seed 0; seed 1 with vessel 4: KID 4.07, sharpness 507, ~5 of 16).
Sampled with the EMA generator's standing statistics (training/ema.py), which removed most of
that seed-to-seed spread, 10-CPU-minute runs, vessel 0 -> 4, seeds 0 / 1: KID 1.18 / 1.00 ->
0.46 / 0.79 x1e-3, recall 0.78 / 0.74 -> 0.84 / 0.86, sharpness distance 507 / 408 -> 298 / 271.
`fundus train` uses vessel 8 (since 2026-11-27). With LeCam on, 30 CPU-minutes at 64 px, seeds 0 / 1,
vessel 4 -> 8: mean vessel fraction of the samples 0.013 / 0.015 -> 0.018 / 0.017 (real 0.026),
vessel-density distance 0.0130 / 0.0111 -> 0.0085 / 0.0091 (real baseline 0.0038), sharpness
distance 237 / 210 -> 149 / 118 (real 74), recall 0.80 / 0.74 -> 0.80 / 0.84, and vessel arcades
visible in more samples; worse: KID 0.31 / 0.28 -> 0.43 / 0.51 x1e-3 (real floor 0.17), the
classifier-feature KID excess 13 / 26 -> 27 / 33 and the optic-disc distance 1.9 / 2.5 -> 7.7 / 4.6.
At 128 px (120 CPU-minutes, one seed, no LeCam), vessel 4 -> 8: vessel-density distance 0.033 ->
0.022, sharpness 114 -> 88, optic disc 8.6 -> 5.2, classifier-feature excess 153 -> 109; KID 0.86 ->
1.57; arcades in about 8 of 16 samples instead of 3.
A relative map (the top-hat of the log of green, so that dark fundi count like bright ones; one
seed at 64 px, gain 4) drew as many vessels as the absolute one at 8 (fraction 0.017) with a
worse KID (0.54) and colour (3.6): not adopted.

`vessel_lines=k` gives the strided D the green channel's Hessian line strength (`line_strength`),
times k: lines only, where the top-hat also answers to dots and to checkerboard cells. On real
photographs its 99th percentile is 3.4-3.6x below the top-hat's (64 and 128 px), so k = 28 matches
the map's 8. Why: the trained D rewarded real photographs' vessels (removing them lowered its
logit by 0.16 at 64 px) but not the samples' dark lines (doubling them lowered it), so what the
generator drew was not shaped like vessels (benchmarks/RESULTS.md). Measured on 413 IDRiD
photographs at 64 px, 30 CPU-minutes, seeds 0 / 1, the demo GAN with vessel 8 -> vessel_lines 28
(vessel 0): mean vessel fraction 0.0187 / 0.0162 -> 0.0224 / 0.0207 (real 0.026), vessel-density
distance 0.0082 / 0.0102 -> 0.0058 / 0.0076 (real baseline 0.0038), sharpness distance 106 / 102
-> 80 / 68 (real 74), recall 0.79 / 0.86 -> 0.85 / 0.84; KID excess -0.08 / -0.08 -> 0.19 / 0.16
x1e-3 (CI about +-1); arcades in more samples on seed 1, as many on seed 0. Seed 2: vessel distance
0.0090 -> 0.0084, KID excess -0.03 -> 0.56, sharpness 161 -> 301. The evaluation's vessel
measure is Hessian-based too, so an independent one agreed before this was adopted: the share of
the top-hat's thresholded pixels in connected pieces of 12 px or more, real 0.41, 0.38 / 0.29 ->
0.37 / 0.41. `fundus train --preset demo` uses it at 64 px; above, and in the other presets, the
top-hat (not measured there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def high_pass(x: Tensor, image_size: int) -> Tensor:
    """`x` minus its Gaussian blur (sigma = 1 px at 64 px, scaled with the image): thin dark
    lines (vessels) and fine texture, without the colour and the slow shading that dominate
    the raw pixels."""
    return x - _blur(x, image_size / 64)


def _blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of each channel, edges replicated."""
    radius = max(1, round(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    blur = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(blur, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


# Hessian scales as shares of the side, floored where a Gaussian stops smoothing the pixel grid
# (the same scales as the evaluation's vessel detector, metrics/fundus_stats.py).
LINE_SCALES = (1 / 400, 1 / 200, 1 / 100)
MIN_SIGMA = 0.7


def line_strength(x: Tensor, image_size: int) -> Tensor:
    """Dark-line strength of the green channel from its Hessian, (B, 1, S, S), >= 0: at each
    pixel's best scale sigma, sigma^2 (l1 - |l2|), where l1 is the curvature across a dark line
    (upwards) and l2 the curvature along it. A line scores its depth below its surroundings; a
    dot or blob curves up both ways and a saddle or checkerboard both ways opposite, and score
    ~0, which the black top-hat (`dark_lines`) does not tell apart from vessels. Differentiable.
    Computed in float32 and returned in x's dtype: in float16 the square root's epsilon (1e-12)
    rounds to 0, and its gradient on flat regions becomes infinite."""
    g = x[:, 1:2].float()
    best = torch.zeros_like(g)
    for sigma in sorted({max(MIN_SIGMA, image_size * f) for f in LINE_SCALES}):
        p = F.pad(_blur(g, sigma), (1, 1, 1, 1), mode="replicate")
        c = p[..., 1:-1, 1:-1]
        gxx = p[..., 1:-1, 2:] - 2 * c + p[..., 1:-1, :-2]
        gyy = p[..., 2:, 1:-1] - 2 * c + p[..., :-2, 1:-1]
        gxy = (p[..., 2:, 2:] - p[..., 2:, :-2] - p[..., :-2, 2:] + p[..., :-2, :-2]) / 4
        half = (gxx + gyy) / 2
        root = torch.sqrt(((gxx - gyy) / 2) ** 2 + gxy**2 + 1e-12)
        # across - |along| = half + root - |half - root|; <= 0 unless across > 0
        best = torch.maximum(best, F.relu(half + root - (half - root).abs()) * sigma**2)
    return best.to(x.dtype)


def dark_lines(x: Tensor, image_size: int) -> Tensor:
    """Black top-hat of the green channel (its morphological closing minus itself): dark lines
    and dots narrower than the structuring element, i.e. vessels, microaneurysms and
    haemorrhages, zero elsewhere. Green, because vessels contrast most there. The square
    element is 5 px at 64 px (vessels there are 1-3 px wide), scaled with the image; max
    pooling is differentiable, so G learns from it."""
    k = 2 * max(1, round(2 * image_size / 64)) + 1
    g = x[:, 1:2]
    closed = -_square_max(-_square_max(g, k), k)  # dilation, then erosion
    return closed - g


def _square_max(x: Tensor, k: int) -> Tensor:
    """Max over each k x k window (stride 1, same size): a row pass, then a column pass. The
    same values as one square max pool, at 2k comparisons per pixel instead of k^2 (2.5x faster
    at 128 px, 4x at 256 px, forward and backward on a CPU)."""
    x = F.max_pool2d(x, (1, k), stride=1, padding=(0, k // 2))
    return F.max_pool2d(x, (k, 1), stride=1, padding=(k // 2, 0))
