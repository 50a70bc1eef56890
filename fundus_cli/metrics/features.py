"""Feature extractors for realism metrics.

The default, `random`, is a fixed, randomly initialised convolutional network. Random
embeddings are informative for domains far from ImageNet (Naeem et al. 2020), need no
download, and are the same everywhere: the weights come from numpy's PCG64 raw 64-bit
stream (stable across numpy versions, unlike its distribution methods) turned into normal
deviates by our own Box-Muller transform, and the report records their SHA-256.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

RANDOM_CNN_WIDTHS = (32, 64, 128, 256)
RANDOM_CNN_SEED = 20201010  # fixed: changing it changes every reported number


def _stable_normal(seed: int, n: int) -> np.ndarray:
    """n standard-normal float32 deviates from PCG64's raw stream with Box-Muller."""
    bits = np.random.PCG64(seed).random_raw(n + (n & 1))
    # 53-bit uniforms in (0, 1): never exactly 0, so log() is finite
    u = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
    u1, u2 = u[0::2], u[1::2]
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.empty(u.size)
    z[0::2] = r * np.cos(2 * np.pi * u2)
    z[1::2] = r * np.sin(2 * np.pi * u2)
    return z[:n].astype(np.float32)


class RandomCNN:
    """Conv 3x3 stride 2 + ReLU, four times; features are the masked mean and standard
    deviation of every layer's maps (2 x 960 dims). Means carry colour and layout; the spread
    of the first layers' responses is what changes when fine texture (vessels, sharpness) is
    missing, which means alone barely register."""

    name = "random"

    def __init__(self, *, seed: int = RANDOM_CNN_SEED, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        weights = []
        c_in = 3
        h = hashlib.sha256()
        for i, c_out in enumerate(RANDOM_CNN_WIDTHS):
            fan_in = c_in * 9
            w = _stable_normal(seed + i, c_out * fan_in).reshape(c_out, c_in, 3, 3) * np.sqrt(2.0 / fan_in)
            if i == 0:
                # Random 3x3 filters mostly average their patch, so fine texture (vessels,
                # sharpness) barely moves the features: a blurred set then scores like a real
                # one. Half of the first layer is made zero-mean per kernel: pure edge and
                # texture detectors, next to the colour-carrying other half.
                half = c_out // 2
                w[:half] -= w[:half].mean(axis=(2, 3), keepdims=True)
                w[:half] *= 3.0  # the zero-mean part has less energy; bring it to a similar scale
            h.update(w.astype("<f4").tobytes())  # what the network computes with
            weights.append(torch.from_numpy(w.astype(np.float32)).to(self.device))
            c_in = c_out
        self.weights = weights
        self.fingerprint = h.hexdigest()
        self.dim = 2 * sum(RANDOM_CNN_WIDTHS)

    @torch.no_grad()
    def __call__(self, images: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """uint8 (B, S, S, 3) -> float64 (B, dim). `mask` (S, S) limits pooling to the field of view."""
        x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        m = torch.ones(1, 1, *x.shape[-2:], device=self.device) if mask is None else \
            torch.from_numpy(mask.astype(np.float32)).to(self.device)[None, None]
        x = x * m
        feats = []
        for w in self.weights:
            x = F.relu(F.conv2d(x, w, stride=2, padding=1))
            m = F.avg_pool2d(m, 2, ceil_mode=True) if m.shape[-1] > 1 else m
            m_b = (m > 0.5).float() if m.shape[-1] > 1 else m
            denom = m_b.sum().clamp_min(1.0)
            mean = (x * m_b).sum(dim=(2, 3)) / denom
            var = ((x - mean[..., None, None]) ** 2 * m_b).sum(dim=(2, 3)) / denom
            feats += [mean, var.sqrt()]
        return torch.cat(feats, dim=1).double().cpu().numpy()


def extract(extractor: Callable[..., np.ndarray], batches: Iterator[np.ndarray], *,
            mask: np.ndarray | None = None) -> np.ndarray:
    out = [extractor(b, mask) for b in batches]
    return np.concatenate(out) if out else np.zeros((0, getattr(extractor, "dim", 0)))
