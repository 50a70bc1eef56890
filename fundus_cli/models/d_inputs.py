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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def high_pass(x: Tensor, image_size: int) -> Tensor:
    """`x` minus its Gaussian blur (sigma = 1 px at 64 px, scaled with the image): thin dark
    lines (vessels) and fine texture, without the colour and the slow shading that dominate
    the raw pixels."""
    sigma = image_size / 64
    radius = max(1, round(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    blur = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    blur = F.conv2d(F.pad(blur, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return x - blur


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
