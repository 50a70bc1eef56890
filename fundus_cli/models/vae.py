"""Convolutional beta-VAE for fundus photographs, optionally class-conditional.

Encoder: conv -> [residual block, stride-2 conv] per level down to 4x4 -> linear -> (mu, logvar).
Decoder: linear -> 4x4 -> [conv, nearest upsample, residual block] per level -> conv -> tanh,
then the field-of-view mask paints the surround black.

With `local_latent` c > 0 a second, spatial latent of c channels on the 8x8 grid joins the
global z (a two-level hierarchical VAE, as in NVAE / Ladder VAEs): after the decoder's first
level a prior head predicts its Gaussian from the decoder's 8x8 features (so from z alone), the
posterior head from those features and the encoder's 8x8 features, and its KL is taken
against that learned prior. The global z places the disc, the macula and the colour; the local
cells can say where vessels run, which a 128-number z under the KL cannot afford to.
Sampling stays one draw of N(0, I): the noise vector is z followed by the local cells'
standard-normal noise, which the prior head's mean and scale turn into the local latent.

With `num_classes > 0` a label embedding is added as a per-channel bias inside every residual
block of both halves and is concatenated to z at the decoder input.

Loss helpers (pure functions): `reconstruction_loss` (L1 or L2, optionally mixed with SSIM),
`line_loss` (L1 between the images' vessel-line maps), `kl_divergence` and the warm-up
schedule `beta_schedule`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fundus_cli.errors import FundusError
from fundus_cli.models.d_inputs import line_strength
from fundus_cli.models.layers import (
    BOTTOM_SIZE,
    ModelConfig,
    IMAGE_CHANNELS,
    apply_fov_mask,
    check_labels,
    fov_mask_buffer,
    mirror_by_latent,
)

# exp(logvar) beyond these overflows in bf16/fp16 or makes the KL term explode early on
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
LOCAL_GRID = 8  # the local latent's cells per side (the decoder's first level above the 4x4 bottom)


@dataclass(frozen=True)
class VAEConfig(ModelConfig):
    # image_size, width, channel_mults, latent_dim, num_classes: see ModelConfig (the class conditions both halves)
    class_embed_dim: int = 64  # size of the label embedding (unused when unconditional)
    orient: bool = False  # trained with every optic disc on the right; eval-mode decode mirrors half
    local_latent: int = 0  # channels of the spatial latent on the 8x8 grid (0 = global z only)

    @property
    def noise_dim(self) -> int:
        """Size of the standard-normal vector that `decode` maps to an image."""
        return self.latent_dim + self.local_latent * LOCAL_GRID * LOCAL_GRID

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.class_embed_dim < 1:
            raise FundusError(f"VAEConfig.class_embed_dim must be >= 1, got {self.class_embed_dim}")
        if self.local_latent < 0:
            raise FundusError(f"VAEConfig.local_latent must be >= 0, got {self.local_latent}")


def _groups(channels: int) -> int:
    # 32 groups as usual, fewer when a narrow demo width has fewer channels than that
    return math.gcd(32, channels)


class ResBlock(nn.Module):
    """Pre-activation residual block (GroupNorm, SiLU, 3x3 conv, twice) at fixed width.

    GroupNorm rather than BatchNorm so that reconstructions of one image do not depend on
    the rest of the batch and batch-1 encoding behaves as in training.
    """

    def __init__(self, channels: int, cond_dim: int = 0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(channels), channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.cond = nn.Linear(cond_dim, channels) if cond_dim else None
        self.norm2 = nn.GroupNorm(_groups(channels), channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.cond is not None:
            h = h + self.cond(cond)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h


class VAE(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        # the last level keeps its width into the 4x4 bottom
        next_ch = ch[1:] + ch[-1:]
        cond_dim = config.class_embed_dim if config.num_classes else 0
        self.embed = nn.Embedding(config.num_classes, cond_dim) if config.num_classes else None
        bottom = ch[-1] * BOTTOM_SIZE * BOTTOM_SIZE

        self.enc_in = nn.Conv2d(IMAGE_CHANNELS, ch[0], 3, padding=1)
        self.enc_blocks = nn.ModuleList(ResBlock(c, cond_dim) for c in ch)
        # the stride-2 conv also widens, so residual blocks never need a projection skip
        self.enc_down = nn.ModuleList(
            nn.Conv2d(c, n, 3, stride=2, padding=1) for c, n in zip(ch, next_ch)
        )
        self.enc_mid = ResBlock(ch[-1], cond_dim)
        self.enc_norm = nn.GroupNorm(_groups(ch[-1]), ch[-1])
        self.enc_out = nn.Linear(bottom, 2 * config.latent_dim)

        self.dec_in = nn.Linear(config.latent_dim + cond_dim, bottom)
        self.dec_mid = ResBlock(ch[-1], cond_dim)
        # each level narrows the channels with a conv at the lower resolution (4x cheaper)
        # before nearest upsampling; the residual block after it smooths the 2x2 blocks
        self.dec_up = nn.ModuleList(
            nn.Conv2d(n, c, 3, padding=1) for c, n in zip(reversed(ch), reversed(next_ch))
        )
        self.dec_blocks = nn.ModuleList(ResBlock(c, cond_dim) for c in reversed(ch))
        self.dec_norm = nn.GroupNorm(_groups(ch[0]), ch[0])
        self.dec_out = nn.Conv2d(ch[0], IMAGE_CHANNELS, 3, padding=1)
        self.register_buffer("fov_mask", fov_mask_buffer(config.image_size))
        c_loc = config.local_latent
        if c_loc:
            # at 8x8 the encoder's last block and the decoder's first have ch[-1] channels
            self.loc_prior = nn.Sequential(nn.GroupNorm(_groups(ch[-1]), ch[-1]), nn.SiLU(),
                                           nn.Conv2d(ch[-1], 2 * c_loc, 3, padding=1))
            self.loc_post = nn.Sequential(nn.GroupNorm(_groups(2 * ch[-1]), 2 * ch[-1]), nn.SiLU(),
                                          nn.Conv2d(2 * ch[-1], 2 * c_loc, 3, padding=1))
            self.loc_in = nn.Conv2d(c_loc, ch[-1], 1)
            for head in (self.loc_prior[-1], self.loc_post[-1]):  # start at the prior N(0, I), posterior = prior
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def _cond(self, y: Tensor | None, batch: int) -> Tensor | None:
        check_labels(y, self.config.num_classes, batch)
        return None if self.embed is None else self.embed(y)

    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Images (B, 3, S, S) in [-1, 1] -> (mu, logvar) of the global z, each (B, latent_dim)."""
        mu, logvar, _ = self._encode(x, y)
        return mu, logvar

    def _encode(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """(mu, logvar, the encoder's 8x8 features for the local latent's posterior)."""
        cond = self._cond(y, x.shape[0])
        h = self.enc_in(x)
        for block, down in zip(self.enc_blocks, self.enc_down):
            h = block(h, cond)
            if h.shape[-1] == LOCAL_GRID:
                feat8 = h
            h = down(h)
        h = F.silu(self.enc_norm(self.enc_mid(h, cond)))
        mu, logvar = self.enc_out(h.flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX), feat8

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Noise (B, noise_dim) -> images (B, 3, S, S) in [-1, 1], black outside the mask.

        The noise is the global z, then (with `local_latent`) the local cells' standard-normal
        noise, scaled and shifted by the prior head. With `orient`, eval mode (sampling) mirrors
        the images whose z[:, 0] < 0, giving back left eyes to a model trained on photographs
        turned to one side."""
        d = self.config.latent_dim
        if z.dim() != 2 or z.shape[1] != self.config.noise_dim:
            raise ValueError(f"decode needs noise of shape (B, {self.config.noise_dim}), got {tuple(z.shape)}")
        x, _ = self._decode(z[:, :d], y, local_eps=z[:, d:])
        if self.config.orient and not self.training:
            x = mirror_by_latent(x, z)
        return x

    def reconstruct(self, x: Tensor, y: Tensor | None, eps: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Encode, sample the posterior with the given standard-normal noise (B, noise_dim),
        decode: (x_hat, mu, logvar, the local latent's KL per image (B,), zeros without one)."""
        d = self.config.latent_dim
        mu, logvar, feat8 = self._encode(x, y)
        z = mu.float() + torch.exp(0.5 * logvar.float()) * eps[:, :d]
        x_hat, kl_local = self._decode(z, y, local_eps=eps[:, d:], feat8=feat8)
        return x_hat, mu, logvar, kl_local

    def _decode(self, z: Tensor, y: Tensor | None, *, local_eps: Tensor,
                feat8: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Images, and the local latent's KL per image when `feat8` (the encoder's 8x8
        features) gives its posterior; without them the local latent is drawn from its prior."""
        cond = self._cond(y, z.shape[0])
        zc = z if cond is None else torch.cat([z, cond.to(z.dtype)], dim=1)
        c = self.config.channels[-1]
        h = self.dec_mid(self.dec_in(zc).view(-1, c, BOTTOM_SIZE, BOTTOM_SIZE), cond)
        kl_local = torch.zeros(z.shape[0], device=z.device)
        for up, block in zip(self.dec_up, self.dec_blocks):
            h = block(F.interpolate(up(h), scale_factor=2.0, mode="nearest"), cond)
            if self.config.local_latent and h.shape[-1] == LOCAL_GRID:
                h, kl_local = self._local(h, local_eps, feat8)
        x = torch.tanh(self.dec_out(F.silu(self.dec_norm(h))))
        return apply_fov_mask(x, self.fov_mask), kl_local

    def _local(self, h: Tensor, eps: Tensor, feat8: Tensor | None) -> tuple[Tensor, Tensor]:
        """Add the local latent to the decoder's 8x8 features: drawn from the prior head's
        Gaussian, or from the posterior's (then also its KL against that prior, per image)."""
        c_loc = self.config.local_latent
        eps = eps.reshape(-1, c_loc, LOCAL_GRID, LOCAL_GRID).to(h.dtype)
        mu_p, logvar_p = self.loc_prior(h).float().chunk(2, dim=1)
        logvar_p = logvar_p.clamp(LOGVAR_MIN, LOGVAR_MAX)
        if feat8 is None:
            z_loc, kl = mu_p + torch.exp(0.5 * logvar_p) * eps, torch.zeros(h.shape[0], device=h.device)
        else:
            # the posterior as a correction of the prior (NVAE's residual form)
            d_mu, d_logvar = self.loc_post(torch.cat([h, feat8.to(h.dtype)], dim=1)).float().chunk(2, dim=1)
            mu_q, logvar_q = mu_p + d_mu, (logvar_p + d_logvar).clamp(LOGVAR_MIN, LOGVAR_MAX)
            z_loc = mu_q + torch.exp(0.5 * logvar_q) * eps
            kl = gaussian_kl(mu_q, logvar_q, mu_p, logvar_p).flatten(1).sum(dim=1)
        return h + self.loc_in(z_loc.to(h.dtype)), kl

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(x_hat, mu, logvar). z is sampled in training mode; eval mode decodes the posterior
        means, so that evaluation reconstructions are deterministic."""
        if self.training:
            eps = torch.randn(x.shape[0], self.config.noise_dim, device=x.device)
        else:
            eps = torch.zeros(x.shape[0], self.config.noise_dim, device=x.device)
        x_hat, mu, logvar, _ = self.reconstruct(x, y, eps)
        return x_hat, mu, logvar


def build_vae(config: Mapping[str, Any]) -> VAE:
    return VAE(VAEConfig.from_dict(config))


# ---------------------------------------------------------------------------- losses


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    """Normalised 2-D Gaussian (size, size), the window of Wang et al. 2004."""
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(
    x: Tensor, y: Tensor, *, window_size: int = 11, sigma: float = 1.5, data_range: float = 2.0
) -> Tensor:
    """Mean SSIM per image, shape (B,), differentiable; 1 when x == y.

    `data_range` is 2 because images live in [-1, 1]. Computed in float32 with autocast
    off: E[x^2] - E[x]^2 cancels catastrophically in bf16.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) tensors of one shape: {x.shape}, {y.shape}")
    if min(x.shape[-2:]) < window_size:
        raise ValueError(f"images {tuple(x.shape[-2:])} are below the {window_size}-px window")
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, y = x.float(), y.float()
        channels = x.shape[1]
        window = gaussian_window(window_size, sigma).to(x.device)
        window = window.expand(channels, 1, window_size, window_size)

        def blur(t: Tensor) -> Tensor:
            return F.conv2d(t, window, groups=channels)  # 'valid', as in the reference code

        c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
        mu_x, mu_y = blur(x), blur(y)
        var_x = blur(x * x) - mu_x * mu_x
        var_y = blur(y * y) - mu_y * mu_y
        cov = blur(x * y) - mu_x * mu_y
        ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
            (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
        )
        return ssim_map.flatten(1).mean(dim=1)


def reconstruction_loss(
    x_hat: Tensor, x: Tensor, *, kind: str = "l1", ssim_weight: float = 0.0
) -> Tensor:
    """Per-image reconstruction error summed over pixels, averaged over the batch.

    Summing over pixels (and `kl_divergence` over latent dims) keeps beta = 1 the usual
    ELBO balance whatever the image size. With `ssim_weight` w the per-pixel error becomes
    (1 - w) * |error| + w * (1 - SSIM) (Zhao et al. 2017), which keeps edges sharper.
    """
    if kind not in ("l1", "l2"):
        raise ValueError(f"reconstruction loss kind must be 'l1' or 'l2', got {kind!r}")
    if not 0.0 <= ssim_weight <= 1.0:
        raise ValueError(f"ssim_weight must lie in [0, 1], got {ssim_weight}")
    diff = x_hat.float() - x.float()
    err = diff.abs() if kind == "l1" else diff.square()
    per_image = err.flatten(1).mean(dim=1)
    if ssim_weight > 0:
        per_image = (1 - ssim_weight) * per_image + ssim_weight * (1 - ssim(x_hat, x))
    return per_image.mean() * x[0].numel()


# Line strength times this is about 1 on real photographs' larger vessels (the GAN's D takes its
# line input at the same gain; models/d_inputs.py).
LINE_GAIN = 28.0


def line_loss(x_hat: Tensor, x: Tensor) -> Tensor:
    """L1 between the dark-line (vessel) maps of reconstructions and photographs, per image in
    the units of `reconstruction_loss` (a mean over pixels times the image's size), averaged
    over the batch. The maps are the green channel's Hessian line strength (`line_strength`)
    times LINE_GAIN: a line drawn where the photograph has none costs as much as one left out,
    while smooth shading, dots and blobs (which curve both ways) score about 0 in both maps."""
    if x_hat.shape != x.shape or x.dim() != 4:
        raise ValueError(f"line_loss needs two (B, C, H, W) tensors of one shape: {x_hat.shape}, {x.shape}")
    size = x.shape[-1]
    diff = LINE_GAIN * (line_strength(x_hat.float(), size) - line_strength(x.float(), size))
    return diff.abs().flatten(1).mean(dim=1).mean() * x[0].numel()


def gaussian_kl(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """KL(N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p))) elementwise."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).square()) / logvar_p.exp() - 1)


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over latent dims, averaged over the batch."""
    mu, logvar = mu.float(), logvar.float()
    return (-0.5 * (1 + logvar - mu.square() - logvar.exp())).sum(dim=1).mean()


def beta_schedule(step: int, *, beta: float = 1.0, warmup_steps: int = 0) -> float:
    """KL weight at `step`: linear from 0 to `beta` over `warmup_steps`, then constant.

    Starting at 0 lets the decoder learn to use z before the KL term pulls the posterior
    onto the prior (posterior collapse otherwise).
    """
    if step < 0 or warmup_steps < 0:
        raise ValueError(f"step and warmup_steps must be >= 0, got {step}, {warmup_steps}")
    if warmup_steps == 0:
        return float(beta)
    return float(beta) * min(1.0, step / warmup_steps)
