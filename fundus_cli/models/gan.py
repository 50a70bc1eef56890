"""ResNet GAN for small fundus datasets (SNGAN / projection-discriminator family).

Generator: z -> linear -> 4x4 -> residual blocks that upsample (nearest + 3x3 conv, no
transposed convs, hence no checkerboard artefacts) -> BN, ReLU, conv -> tanh, then the
field-of-view mask paints the surround black. Conditional batch norm (per-class gain and
bias) carries the label.

Discriminator (`discriminator=`): "strided" (the default): spectrally normalised strided
convolutions to 4x4, flattened, linear logit; it learns fine detail (vessels) much sooner on
small CPU budgets. "resnet": residual blocks that downsample (average pooling) to 4x4, one more block,
ReLU, global sum pooling, linear logit; every weight is spectrally normalised and there is
no normalisation layer (batch statistics would leak between real and fake samples and
disturb the R1 gradient). The class enters through a projection term <embed(y), h>
(Miyato & Koyama 2018).

With `orient` the generator is trained on photographs turned so that the optic disc is on the
right (training/orientation.py) and, in eval mode, mirrors the half of its samples whose first
latent is negative: one layout to learn instead of two, which on 413 IDRiD photographs ended the
samples with two optic discs (same CPU budget: recall 0.53 -> 0.75, disc-brightness distance to
the holdout 27.5 -> 4.4, colour distance 8.7 -> 4.0).

`upsample="bilinear"` (what `fundus train` uses): the generator's blocks upsample bilinearly
instead of repeating pixels; with nearest upsampling the skip paths carry 2x2, 4x4 ... blocks
all the way up, and 20-30 CPU-minute runs on IDRiD showed them as a blocky grid.
`detail=k`, `vessel=k` and `vessel_lines=k` give the strided D more input channels: the image's
high-pass copy, its vessel map (black top-hat) and its Hessian line strength (models/d_inputs.py
says what each is and what it was measured to do).

`patch_head` adds a 1x1-conv logit per position of the strided D's second feature map (each sees
a 10x10-pixel window): the VAE's adversarial term uses it for local texture.

Loss helpers (pure functions): hinge and non-saturating losses for D and G (whole-image and
patch logits weighted equally), and the R1 penalty on reals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from fundus_cli.errors import FundusError
from fundus_cli.models.d_inputs import dark_lines, high_pass, line_strength
from fundus_cli.models.layers import (
    BOTTOM_SIZE,
    ModelConfig,
    IMAGE_CHANNELS,
    apply_fov_mask,
    check_labels,
    fov_mask_buffer,
    mirror_by_latent,
)


@dataclass(frozen=True)
class GANConfig(ModelConfig):
    # image_size, width, channel_mults, latent_dim, num_classes: see ModelConfig (the class conditions G's batch norm and D's projection)
    discriminator: str = "strided"  # strided (SN strided convs, fast to learn detail) | resnet
    patch_head: bool = False  # strided D also scores each 10x10-pixel neighbourhood (the VAE's D uses it)
    orient: bool = False  # trained with every optic disc on the right; eval mode mirrors half
    upsample: str = "nearest"  # generator upsampling: nearest | bilinear (train's default)
    detail: float = 0.0  # strided D also sees the image minus its blur, times this gain (0 = off)
    vessel: float = 0.0  # strided D also sees the green channel's dark thin lines (black top-hat), times this
    vessel_lines: float = 0.0  # strided D also sees the green channel's Hessian line strength, times this

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.discriminator not in DISCRIMINATORS:
            raise FundusError(f"GANConfig.discriminator must be one of {', '.join(DISCRIMINATORS)}, "
                              f"got {self.discriminator!r}")
        if self.upsample not in ("nearest", "bilinear"):
            raise FundusError(f"GANConfig.upsample must be nearest or bilinear, got {self.upsample!r}")
        for name in ("detail", "vessel", "vessel_lines"):
            if getattr(self, name) < 0:
                raise FundusError(f"GANConfig.{name} must be >= 0 (0 = off), got {getattr(self, name)}")
        used = [n for n in ("detail", "vessel", "vessel_lines", "patch_head") if getattr(self, n)]
        if self.discriminator == "resnet" and used:
            raise FundusError(f"GANConfig: {', '.join(used)} belong to the strided discriminator, which "
                              f"discriminator='resnet' replaces; set them to 0/False, or use 'strided'.")


# ----------------------------------------------------------------------------- generator


class ClassBatchNorm2d(nn.Module):
    """BatchNorm whose gain and bias are looked up per class (plain affine BN when
    unconditional). In eval mode it uses running statistics, so batch-1 sampling works."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=num_classes == 0)
        self.embed = nn.Embedding(num_classes, 2 * channels) if num_classes else None
        if self.embed is not None:
            # start as the identity, like an unconditional BN
            nn.init.ones_(self.embed.weight[:, :channels])
            nn.init.zeros_(self.embed.weight[:, channels:])

    def forward(self, x: Tensor, y: Tensor | None) -> Tensor:
        h = self.bn(x)
        if self.embed is None:
            return h
        gain, bias = self.embed(y).to(h.dtype).chunk(2, dim=1)
        return h * gain[:, :, None, None] + bias[:, :, None, None]


class GBlock(nn.Module):
    """BN-ReLU-conv, upsample, BN-ReLU-conv, plus an upsampled (1x1-projected) skip.

    The first conv runs before the upsampling, at a quarter of the cost; the second one,
    after nearest upsampling, smooths the 2x2 blocks, so no transposed conv is needed.
    """

    def __init__(self, in_ch: int, out_ch: int, num_classes: int, upsample: str = "nearest") -> None:
        super().__init__()
        self.mode = upsample
        self.norm1 = ClassBatchNorm2d(in_ch, num_classes)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = ClassBatchNorm2d(out_ch, num_classes)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor, y: Tensor | None) -> Tensor:
        h = self.conv1(F.relu(self.norm1(x, y)))
        h = self._up(F.relu(self.norm2(h, y)))
        h = self.conv2(h)
        # a 1x1 conv commutes with nearest upsampling, and is 4x cheaper before it
        skip = x if self.skip is None else self.skip(x)
        return self._up(skip) + h

    def _up(self, x: Tensor) -> Tensor:
        if self.mode == "nearest":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class Generator(nn.Module):
    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        prev_ch = ch[1:] + ch[-1:]  # each block's input width; the bottom keeps ch[-1]
        self.fc = nn.Linear(config.latent_dim, ch[-1] * BOTTOM_SIZE * BOTTOM_SIZE)
        self.blocks = nn.ModuleList(
            GBlock(p, c, config.num_classes, config.upsample) for c, p in zip(reversed(ch), reversed(prev_ch))
        )
        self.norm_out = nn.BatchNorm2d(ch[0])
        self.conv_out = nn.Conv2d(ch[0], IMAGE_CHANNELS, 3, padding=1)
        self.register_buffer("fov_mask", fov_mask_buffer(config.image_size))

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Latents (B, latent_dim) ~ N(0, I) -> images (B, 3, S, S) in [-1, 1]."""
        check_labels(y, self.config.num_classes, z.shape[0])
        h = self.fc(z).view(-1, self.config.channels[-1], BOTTOM_SIZE, BOTTOM_SIZE)
        for block in self.blocks:
            h = block(h, y)
        x = torch.tanh(self.conv_out(F.relu(self.norm_out(h))))
        x = apply_fov_mask(x, self.fov_mask)
        return mirror_by_latent(x, z) if self.config.orient and not self.training else x


# ------------------------------------------------------------------------- discriminator


class DBlock(nn.Module):
    """(ReLU)-conv-ReLU-(avgpool)-conv plus an (avgpooled, 1x1-projected) skip, all
    spectrally normalised. The first block skips the pre-activation: its input is the image.

    Pooling between the two convs (StyleGAN2's D does the same with a strided second conv)
    runs the second conv on a quarter of the pixels; D runs three times per training step,
    so this is where CPU time goes.
    """

    def __init__(self, in_ch: int, out_ch: int, *, downsample: bool, preactivation: bool) -> None:
        super().__init__()
        self.downsample = downsample
        self.preactivation = preactivation
        self.conv1 = spectral_norm(nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.conv2 = spectral_norm(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = spectral_norm(nn.Conv2d(in_ch, out_ch, 1)) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(x) if self.preactivation else x
        h = F.relu(self.conv1(h))
        skip = x
        if self.downsample:
            h = F.avg_pool2d(h, 2)
            # pooling first: the 1x1 conv commutes with it and runs on 4x fewer pixels
            skip = F.avg_pool2d(skip, 2)
        h = self.conv2(h)
        if self.skip is not None:
            skip = self.skip(skip)
        return h + skip


class Discriminator(nn.Module):
    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        in_ch = (IMAGE_CHANNELS,) + ch[:-1]
        blocks = [
            DBlock(i, c, downsample=True, preactivation=level > 0)
            for level, (i, c) in enumerate(zip(in_ch, ch))
        ]
        blocks.append(DBlock(ch[-1], ch[-1], downsample=False, preactivation=True))
        self.blocks = nn.Sequential(*blocks)
        self.linear = spectral_norm(nn.Linear(ch[-1], 1))
        self.embed = (
            spectral_norm(nn.Embedding(config.num_classes, ch[-1])) if config.num_classes else None
        )

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Images (B, 3, S, S) -> logits (B,); higher means 'real'."""
        check_labels(y, self.config.num_classes, x.shape[0])
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))  # sum pooling, as in SNGAN
        logits = self.linear(h).squeeze(1)
        if self.embed is not None:
            logits = logits + (self.embed(y) * h).sum(dim=1)
        return logits


class StridedDiscriminator(nn.Module):
    """Spectrally normalised 4x4 stride-2 convolutions with leaky ReLUs down to 4x4, then a
    linear logit on the flattened map (the "standard CNN" D of Miyato et al. 2018, without its
    stride-1 layers).

    Measured on 160 phantoms at 64 px, equal CPU time (300 s, one thread): with this D the
    generator drew optic discs and vessel arcades after ~1,000 steps, while with the residual D
    (average pooling) it still drew smooth orange discs; it is also ~1.3x cheaper per step.
    Every layer downsamples, so each unit sees full-resolution detail (thin vessels) through
    one strided filter instead of through an average pool. Flattening keeps where things are:
    the optic disc lies left or right of centre, never in the middle.
    """

    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        outs = ch[1:] + ch[-1:]  # one level wider than the generator at each resolution
        layers: list[nn.Module] = []
        in_ch = IMAGE_CHANNELS * (2 if config.detail > 0 else 1) + (config.vessel > 0) + (config.vessel_lines > 0)
        for out_ch in outs:
            layers += [spectral_norm(nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        # after two stride-2 layers each unit sees a 10x10-pixel window of the image
        self.patch = spectral_norm(nn.Conv2d(outs[1], 1, 1)) if config.patch_head else None
        flat = in_ch * BOTTOM_SIZE * BOTTOM_SIZE
        self.linear = spectral_norm(nn.Linear(flat, 1))
        self.embed = spectral_norm(nn.Embedding(config.num_classes, flat)) if config.num_classes else None

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Images (B, 3, S, S) -> logits (B,); higher means 'real'."""
        check_labels(y, self.config.num_classes, x.shape[0])
        extra = []
        if self.config.detail > 0:
            extra.append(self.config.detail * high_pass(x, self.config.image_size))
        if self.config.vessel > 0:
            extra.append(self.config.vessel * dark_lines(x, self.config.image_size))
        if self.config.vessel_lines > 0:
            extra.append(self.config.vessel_lines * line_strength(x, self.config.image_size))
        if extra:
            x = torch.cat([x, *extra], dim=1)
        if self.patch is None:
            h = self.features(x).flatten(1)
        else:
            mid = self.features[:4](x)
            h = self.features[4:](mid).flatten(1)
        logits = self.linear(h).squeeze(1)
        if self.embed is not None:
            logits = logits + (self.embed(y) * h).sum(dim=1)
        if self.patch is None:
            return logits
        # (B, 1 + patches): column 0 the whole image, the others one neighbourhood each
        return torch.cat([logits[:, None], self.patch(mid).flatten(1)], dim=1)


DISCRIMINATORS: dict[str, type[nn.Module]] = {"strided": StridedDiscriminator, "resnet": Discriminator}


class GAN(nn.Module):
    """Generator and discriminator in one module, so one state_dict, `.to()` and
    `set_fov_mask` cover both. Train them with separate optimizers over
    `gan.generator.parameters()` and `gan.discriminator.parameters()`."""

    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.config = config
        self.generator = Generator(config)
        self.discriminator = DISCRIMINATORS[config.discriminator](config)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.generator(z, y)


def build_gan(config: Mapping[str, Any]) -> GAN:
    return GAN(GANConfig.from_dict(config))


# -------------------------------------------------------------------------------- losses
# Logits are cast to float32: the losses are cheap and bf16 rounding would bias them.


def _heads(fn: Callable[[Tensor], Tensor], logits: Tensor) -> Tensor:
    """Mean of `fn` per image (B,), or, for (B, 1 + P) logits, the whole-image head's mean plus
    the patch heads' mean: the two scales weigh the same whatever the number of patches."""
    logits = logits.float()
    if logits.dim() == 1:
        return fn(logits).mean()
    return fn(logits[:, 0]).mean() + fn(logits[:, 1:]).mean()


def d_hinge_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """E[relu(1 - D(real))] + E[relu(1 + D(fake))]; zero once reals >= 1 and fakes <= -1."""
    return _heads(lambda t: F.relu(1 - t), real_logits) + _heads(lambda t: F.relu(1 + t), fake_logits)


def g_hinge_loss(fake_logits: Tensor) -> Tensor:
    """-E[D(G(z))]."""
    return _heads(lambda t: -t, fake_logits)


def d_nonsaturating_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Binary cross-entropy on logits: E[softplus(-D(real))] + E[softplus(D(fake))]."""
    return _heads(lambda t: F.softplus(-t), real_logits) + _heads(F.softplus, fake_logits)


def g_nonsaturating_loss(fake_logits: Tensor) -> Tensor:
    """E[softplus(-D(G(z)))], i.e. -log sigmoid(D(G(z))) (Goodfellow et al. 2014)."""
    return _heads(lambda t: F.softplus(-t), fake_logits)


def r1_penalty(real_logits: Tensor, real_images: Tensor) -> Tensor:
    """E[||grad_x D(x)||^2] on reals (Mescheder et al. 2018); multiply by gamma / 2 yourself.

    `real_images` must have had `requires_grad_(True)` before the discriminator saw them.
    The graph is kept so the penalty itself can be backpropagated. For (B, 1 + P) logits (a patch
    head) it penalises the whole-image logit plus the patch logits' mean, the two scales weighing
    the same as in the losses; their plain sum made the penalty grow with P^2, and at 64 px (256
    patches) it held the discriminator at D(real) = D(fake).
    """
    if not real_images.requires_grad:
        raise ValueError("call real_images.requires_grad_(True) before computing D(real_images)")
    if real_logits.dim() == 2:
        real_logits = real_logits[:, 0] + real_logits[:, 1:].mean(dim=1)
    if not real_logits.requires_grad:  # D ignores its input, so its gradient is zero
        return real_images.new_zeros((), dtype=torch.float32)
    (grad,) = torch.autograd.grad(
        real_logits.float().sum(), real_images, create_graph=True, allow_unused=True
    )
    if grad is None:  # as above, but D has parameters
        return real_images.new_zeros((), dtype=torch.float32)
    return grad.float().square().flatten(1).sum(dim=1).mean()


# name -> (discriminator loss, generator loss), for a `--gan-loss` option
GAN_LOSSES: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "hinge": (d_hinge_loss, g_hinge_loss),
    "nonsaturating": (d_nonsaturating_loss, g_nonsaturating_loss),
}
