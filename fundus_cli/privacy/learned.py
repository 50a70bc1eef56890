"""E2, the learned embedding of the privacy audit: a small residual CNN trained from scratch on
the training images only with a SimCLR contrastive loss (NT-Xent) and mild augmentations, so
that transformed copies stay near their source (see ``embeddings.py`` for how its vectors are
compared). Seeded; the SHA-256 of its weights goes into the report.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fundus_cli.errors import FundusError
from fundus_cli.privacy.embeddings import Vectors
from fundus_cli.privacy.preprocess import resize_masks, to_unit


class _Block(nn.Module):
    """Pre-activation residual block. GroupNorm, not BatchNorm: an image's embedding must not
    depend on which other images share its batch."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(4, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm2 = nn.GroupNorm(4, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.skip = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.norm1(x)))
        h = self.conv2(F.relu(self.norm2(h)))
        return h + self.skip(x)


class Encoder(nn.Module):
    """Standardised masked images (B, 3, s, s) -> features for the audit and projections for training.

    Stem, ``depth`` stride-2 residual blocks doubling the width, the final map averaged down
    to ``grid`` x ``grid`` cells. The audit's embedding (``features``) is that pooled map,
    flattened and L2-normalised: it keeps the coarse layout, which tells aligned fundus
    photographs apart. A global average pool, with or without the projection head (the usual
    SimCLR choices), threw that away: on 100 synthetic photographs after 100 steps it found
    the source of 17-37 % of 90 %-crop copies and 0-3 % of gamma-changed ones, the pooled
    4 x 4 map of 97-100 %. The two-layer projection head is used by the loss only (Chen et al. 2020).
    """

    def __init__(self, *, width: int = 16, depth: int = 3, grid: int = 4, dim: int = 64) -> None:
        super().__init__()
        if width % 4:
            raise ValueError(f"width must be a multiple of 4 (GroupNorm with 4 groups), got {width}")
        self.stem = nn.Conv2d(3, width, 3, 1, 1)
        blocks, c = [], width
        for _ in range(depth):
            blocks.append(_Block(c, 2 * c, 2))
            c *= 2
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.GroupNorm(4, c)
        self.grid = grid
        self.feature_dim = c * grid * grid
        self.head = nn.Sequential(nn.Linear(self.feature_dim, 2 * c), nn.ReLU(), nn.Linear(2 * c, dim))

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm(self.blocks(self.stem(x))))
        return F.adaptive_avg_pool2d(h, self.grid).flatten(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The audit's embedding: unit vectors (B, feature_dim)."""
        return F.normalize(self._pooled(x), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Unit projections (B, dim) for the contrastive loss."""
        return F.normalize(self.head(self._pooled(x)), dim=1)


@dataclass(frozen=True)
class EncoderConfig:
    """Everything that determines the learned embedding besides the training images."""

    input_size: int = 32  # px; the network sees the images at this size (CPU-friendly)
    width: int = 16  # channels after the stem; doubled by each block
    depth: int = 3  # stride-2 residual blocks
    grid: int = 4  # the final feature map is pooled to grid x grid cells: the embedding has
    #                width * 2**depth * grid**2 dimensions (2048 by default)
    dim: int = 64  # projection size, used by the loss only
    steps: int = 400  # optimisation steps
    batch: int = 64  # images per step (two augmented views each)
    lr: float = 1e-3  # AdamW peak, linear warm-up then cosine decay to 0
    warmup: int = 20  # warm-up steps (at most a fifth of the steps)
    clip: float = 1.0  # gradient-norm clipping
    weight_decay: float = 1e-4
    temperature: float = 0.2  # NT-Xent
    max_images: int = 20000  # training images kept in memory for training (seeded subsample)
    seed: int = 0
    # Augmentation ranges; shifts and zoom as fractions of the image side.
    shift: float = 0.125  # up to +-8 px at 64 px
    rotate_deg: float = 5.0
    zoom: float = 0.12  # up to a 90 % crop resized back
    gamma: tuple[float, float] = (0.8, 1.2)
    noise: float = 0.04  # Gaussian sigma on the 0..1 scale, drawn from U(0, noise)
    blur: float = 0.8  # Gaussian sigma in pixels at input_size, drawn from U(0, blur)
    colour: float = 0.1  # per-channel gain drawn from U(1 - colour, 1 + colour)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class LearnedEncoder:
    """A trained E2 encoder and what is needed to apply and record it."""

    model: Encoder
    config: EncoderConfig
    mask: np.ndarray  # common disc at config.input_size
    weights_sha256: str
    losses: tuple[float, ...]  # per step, to show that training did something


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of the parameters and buffers (names, shapes and little-endian float32 values)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        arr = t.detach().cpu().numpy().astype("<f4" if t.is_floating_point() else "<i8")
        h.update(name.encode())
        h.update(str(tuple(arr.shape)).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def train_encoder(images: Any, masks: Any | None, *, mask: np.ndarray, config: EncoderConfig = EncoderConfig(),
                  device: str | torch.device = "cpu", chunk: int = 1024) -> LearnedEncoder:
    """Train E2 from scratch on the training images only.

    images: uint8 (N, S, S, 3), or anything whose slices ``images[a:b]`` give such arrays
        (an h5py dataset), read ``chunk`` rows at a time.
    masks: their field-of-view masks (N, S, S) sliced the same way, or None.
    mask: the audit's common disc at the working size (``preprocess.common_mask``).

    Deterministic for a given config.seed on one machine and device; the global torch and
    numpy random states are left as they were.
    """
    cfg = config
    if cfg.steps < 0 or cfg.batch < 2:
        raise FundusError(f"encoder training needs steps >= 0 and batch >= 2, got {cfg.steps} and {cfg.batch}")
    n = len(images)
    if n < 2:
        raise FundusError(f"the learned embedding needs at least 2 training images, got {n}")
    dev = torch.device(device)
    small_mask = _input_mask(mask, cfg.input_size)
    rng = np.random.default_rng([cfg.seed, 11])
    keep = np.sort(rng.choice(n, cfg.max_images, replace=False)) if n > cfg.max_images else np.arange(n)
    data = torch.from_numpy(_unit_images(images, masks, keep, size=cfg.input_size, chunk=chunk))
    data = data.permute(0, 3, 1, 2).contiguous()  # (n, 3, s, s) in 0..1
    mask_t = torch.from_numpy(small_mask).to(dev)

    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        model = Encoder(width=cfg.width, depth=cfg.depth, grid=cfg.grid, dim=cfg.dim).to(dev)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batch = min(cfg.batch, len(data))
    losses = []
    model.train()
    # Without a warm-up the first large steps can collapse every embedding onto one point, from
    # which NT-Xent has no gradient to recover (measured: loss stuck at log(2B - 1)).
    warmup = min(cfg.warmup, max(cfg.steps // 5, 1))
    for step in range(cfg.steps):
        ramp = min(1.0, (step + 1) / warmup)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * ramp * 0.5 * (1 + math.cos(math.pi * step / max(cfg.steps, 1)))
        idx = torch.from_numpy(np.sort(rng.choice(len(data), batch, replace=False)))
        x = data[idx].to(dev)
        views = torch.cat([_augment(x, mask_t, gen, cfg), _augment(x, mask_t, gen, cfg)])
        loss = _nt_xent(model(views), cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        losses.append(loss.detach().item())
    model.eval()
    model.requires_grad_(False)
    return LearnedEncoder(model=model, config=cfg, mask=small_mask, weights_sha256=weights_sha256(model),
                          losses=tuple(losses))


@torch.no_grad()
def learned_embedding(encoder: LearnedEncoder, images: np.ndarray, masks: np.ndarray | None, *,
                      flips: bool = True, batch: int = 256, device: str | torch.device = "cpu") -> Vectors:
    """E2 vectors of uint8 images (N, S, S, 3) with their field-of-view masks (or None)."""
    dev = torch.device(device)
    model = encoder.model.to(dev)
    mask_t = torch.from_numpy(encoder.mask).to(dev)
    size = encoder.config.input_size
    outs: list[list[np.ndarray]] = [[], []]
    for a in range(0, len(images), batch):
        x = torch.from_numpy(to_unit(np.asarray(images[a:a + batch]),
                                     None if masks is None else np.asarray(masks[a:a + batch]), size=size))
        x = _standardise_t(x.permute(0, 3, 1, 2).to(dev), mask_t)
        outs[0].append(model.features(x).cpu().numpy())
        if flips:
            outs[1].append(model.features(torch.flip(x, dims=(3,))).cpu().numpy())
    dim = model.feature_dim
    z = np.concatenate(outs[0]) if outs[0] else np.zeros((0, dim), np.float32)
    zf = (np.concatenate(outs[1]) if outs[1] else np.zeros((0, dim), np.float32)) if flips else None
    return Vectors(parts=(z.astype(np.float32),), flipped=None if zf is None else (zf.astype(np.float32),),
                   names=("learned",))


def _input_mask(mask: np.ndarray, size: int) -> np.ndarray:
    m = resize_masks(mask[None].astype(np.uint8), size)[0]
    return m & m[:, ::-1]


def _unit_images(images: Any, masks: Any | None, keep: np.ndarray, *, size: int, chunk: int) -> np.ndarray:
    """to_unit() of the rows ``keep`` (sorted), reading contiguous slices only."""
    out = np.empty((len(keep), size, size, 3), np.float32)
    at = 0
    for a in range(0, len(images), chunk):
        rows = keep[(keep >= a) & (keep < a + chunk)] - a
        if len(rows) == 0:
            continue
        imgs = np.asarray(images[a:a + chunk])[rows]
        ms = None if masks is None else np.asarray(masks[a:a + chunk])[rows]
        out[at:at + len(rows)] = to_unit(imgs, ms, size=size)
        at += len(rows)
    return out


def _standardise_t(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Torch twin of preprocess.standardise for (B, 3, s, s) batches."""
    m = mask.to(x.dtype)
    count = m.sum() * 3
    mean = (x * m).sum((1, 2, 3), keepdim=True) / count
    var = (((x - mean) * m) ** 2).sum((1, 2, 3), keepdim=True) / count
    return (x - mean) / var.sqrt().clamp(min=1e-4) * m


def _augment(x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator, cfg: EncoderConfig) -> torch.Tensor:
    """Mildly transformed, standardised copies of (B, 3, s, s) images in 0..1. All draws come
    from ``gen`` on the CPU, so the views do not depend on the device."""
    b, _, s, _ = x.shape
    dev = x.device

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(b, *shape, generator=gen)).to(dev)

    g_lo, g_hi = cfg.gamma
    x = x.clamp(min=0) ** u(g_lo, g_hi, 1, 1, 1)
    # Per-channel gains (white balance): without them the network keys on each image's tint,
    # the easiest cue to tell images apart, and a gamma change then moves copies away.
    x = x * u(1 - cfg.colour, 1 + cfg.colour, 3, 1, 1)
    angle = u(-cfg.rotate_deg, cfg.rotate_deg) * (math.pi / 180)
    zoom = 1.0 / u(1.0, 1.0 + cfg.zoom)
    mirror = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0).to(dev)
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    theta = torch.stack([torch.stack([cos * mirror, -sin, u(-2 * cfg.shift, 2 * cfg.shift)], 1),
                         torch.stack([sin * mirror, cos, u(-2 * cfg.shift, 2 * cfg.shift)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # Per-sample Gaussian blur, separable 5-tap kernels applied as one grouped convolution.
    sigma = u(1e-3, max(cfg.blur, 1e-3))
    taps = torch.arange(-2, 3, device=dev, dtype=x.dtype)
    k = torch.exp(-taps[None] ** 2 / (2 * sigma[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(3, 0)  # (3B, 5)
    y = x.reshape(1, 3 * b, s, s)
    y = F.conv2d(F.pad(y, (2, 2, 0, 0), mode="replicate"), k[:, None, None, :], groups=3 * b)
    y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode="replicate"), k[:, None, :, None], groups=3 * b)
    x = y.reshape(b, 3, s, s)
    noise = torch.randn(x.shape, generator=gen).to(dev)
    x = x + noise * u(0.0, cfg.noise, 1, 1, 1)
    return _standardise_t(x, mask)


def _nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss for unit vectors z = (view 1 of B images; view 2 of the same B)."""
    n = z.shape[0]
    b = n // 2
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(n, dtype=torch.bool, device=z.device), -math.inf)
    target = (torch.arange(n, device=z.device) + b) % n
    return F.cross_entropy(sim, target)
