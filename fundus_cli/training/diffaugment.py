"""Differentiable Augmentation for data-efficient GAN training (Zhao et al., NeurIPS 2020).

The same random transform family is applied to real and generated images before the
discriminator sees them, and gradients flow through it to the generator, so D cannot
memorise a small training set while G is not taught to produce augmented images.
The operations and their ranges follow the authors' reference implementation
(github.com/mit-han-lab/data-efficient-gans, DiffAugment_pytorch.py) except for the
translation padding value, see `_translation`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from fundus_cli.errors import FundusError

TRANSLATION_RATIO = 0.125  # shift by up to 1/8 of the image side
CUTOUT_RATIO = 0.5  # erase a square of half the image side
SURROUND_VALUE = -1.0  # black in [-1, 1]: the colour outside the fundus field of view

Augment = Callable[[Tensor, "torch.Generator | None"], Tensor]


def _uniform(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """One U[0, 1) draw per sample, shaped (B, 1, 1, 1), drawn where the generator lives."""
    device = generator.device if generator is not None else x.device
    r = torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=device)
    return r.to(device=x.device, dtype=x.dtype)


def _randint(
    low: int, high: int, n: int, x: Tensor, generator: torch.Generator | None
) -> Tensor:
    device = generator.device if generator is not None else x.device
    return torch.randint(low, high, (n, 1, 1), generator=generator, device=device).to(x.device)


def _brightness(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return x + (_uniform(x, generator) - 0.5)


def _saturation(x: Tensor, generator: torch.Generator | None) -> Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_uniform(x, generator) * 2) + mean


def _contrast(x: Tensor, generator: torch.Generator | None) -> Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(x, generator) + 0.5) + mean


def _translation(x: Tensor, generator: torch.Generator | None) -> Tensor:
    # The reference pads with 0, mid-grey in [-1, 1]. Fundus photographs have a black
    # surround, so we pad with -1: a shifted image then looks like a shifted photograph
    # instead of gaining grey bars that only augmented images have.
    b, _, h, w = x.shape
    shift_h, shift_w = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    dh = _randint(-shift_h, shift_h + 1, b, x, generator)
    dw = _randint(-shift_w, shift_w + 1, b, x, generator)
    grid_b, grid_h, grid_w = torch.meshgrid(
        torch.arange(b, device=x.device),
        torch.arange(h, device=x.device),
        torch.arange(w, device=x.device),
        indexing="ij",
    )
    # indices into the 1-pixel padded image; anything shifted out lands on the padding
    grid_h = torch.clamp(grid_h + dh + 1, 0, h + 1)
    grid_w = torch.clamp(grid_w + dw + 1, 0, w + 1)
    x_pad = F.pad(x, [1, 1, 1, 1], value=SURROUND_VALUE)
    return x_pad.permute(0, 2, 3, 1)[grid_b, grid_h, grid_w].permute(0, 3, 1, 2)


def _cutout(x: Tensor, generator: torch.Generator | None) -> Tensor:
    b, _, h, w = x.shape
    size_h, size_w = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    off_h = _randint(0, h + (1 - size_h % 2), b, x, generator)
    off_w = _randint(0, w + (1 - size_w % 2), b, x, generator)
    grid_b, grid_h, grid_w = torch.meshgrid(
        torch.arange(b, device=x.device),
        torch.arange(size_h, device=x.device),
        torch.arange(size_w, device=x.device),
        indexing="ij",
    )
    grid_h = torch.clamp(grid_h + off_h - size_h // 2, 0, h - 1)
    grid_w = torch.clamp(grid_w + off_w - size_w // 2, 0, w - 1)
    mask = torch.ones(b, h, w, dtype=x.dtype, device=x.device)
    mask[grid_b, grid_h, grid_w] = 0
    # erased to 0 as in the reference; the patch lies anywhere, so it is not a surround
    return x * mask.unsqueeze(1)


AUGMENTS: dict[str, list[Augment]] = {
    "color": [_brightness, _saturation, _contrast],
    "translation": [_translation],
    "cutout": [_cutout],
}


def diff_augment(
    x: Tensor, policy: str = "color,translation,cutout", generator: torch.Generator | None = None
) -> Tensor:
    """Randomly augment a batch (B, C, H, W) in [-1, 1], independently per sample.

    `policy` is a comma-separated subset of color, translation, cutout (empty: no-op),
    applied in that written order. Differentiable in `x`. Pass a seeded `generator` for
    reproducible draws; it may live on the CPU while `x` is on a GPU.
    """
    channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last
    )
    names = [p.strip() for p in policy.split(",") if p.strip()]
    unknown = [n for n in names if n not in AUGMENTS]
    if unknown:
        raise FundusError(
            f"unknown DiffAugment policy {', '.join(unknown)}; valid: {', '.join(AUGMENTS)}"
        )
    for name in names:
        for augment in AUGMENTS[name]:
            x = augment(x, generator)
    # the indexing in translation scrambles strides; hand back the layout we were given
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=layout)
