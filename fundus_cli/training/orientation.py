"""Which side of the photograph the optic disc is on, and turning photographs to one side.

Left and right eyes are mirror images, so a GAN that learns both orientations must learn a
two-way choice of layout from a continuous latent; on 413 IDRiD photographs the in-between
latents drew two optic discs, one on each side. Trained on photographs turned so that the
disc is always on the right, the generator learns one layout, and mirroring half of its samples
restores the left eyes (`GANConfig.orient`).

The optic disc is the brightest large structure of a fundus photograph: the column where the
luminance, box-blurred over an eighth of the image side (about the disc's diameter), exceeds
its surroundings (3x wider, field of view only) most tells the side. Against the surroundings,
because uneven illumination brightens a whole side; field of view only, because the black
surround would make every rim look bright. On 96 IDRiD photographs at 64 px turned by it and
looked at, every disc ended on the right, and it tells the eye of every phantom in the tests;
a lesion brighter and larger than the disc can still fool it (the brightest point alone, tried
first, turned one of 96 the wrong way and failed on phantoms with strong illumination).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SURROUND = -0.9  # luminance in [-1, 1] below which a pixel counts as the black surround


def disc_on_left(x: Tensor) -> Tensor:
    """(B,) bool: True where the optic disc of the images (B, 3, H, W) lies left of centre."""
    lum = x.float().mean(dim=1, keepdim=True)
    inside = (lum > SURROUND).float()  # the black surround must not pull averages down
    k = max(3, x.shape[-1] // 8) | 1

    def mean_inside(size: int) -> Tensor:
        num = F.avg_pool2d(lum * inside, size, stride=1, padding=size // 2, count_include_pad=False)
        den = F.avg_pool2d(inside, size, stride=1, padding=size // 2, count_include_pad=False)
        return num / den.clamp_min(1e-6)

    # the disc-sized mean minus its surroundings' (3x wider): uneven illumination brightens
    # whole sides of a photograph, the disc only itself
    blob = (mean_inside(k) - mean_inside(3 * k)) * inside
    col = blob.flatten(1).argmax(dim=1) % x.shape[-1]
    return col < x.shape[-1] / 2


def disc_to_right(x: Tensor) -> Tensor:
    """Mirror the images whose optic disc lies on the left, so that every disc is on the right."""
    return torch.where(disc_on_left(x)[:, None, None, None], x.flip(3), x)
