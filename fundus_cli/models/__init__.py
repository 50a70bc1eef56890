"""Networks by name, for `fundus train --arch NAME`.

`build_model("vae", {"image_size": 64, "width": 32})` returns an `nn.Module` whose
`.config.to_dict()` is the resolved, JSON-able config to store in the checkpoint; building
from that dict again and loading the state_dict gives back the same network. The
architectures and what the rest of the package needs of them are listed in `registry.py`.
"""

from __future__ import annotations

from fundus_cli.models.gan import GAN, Discriminator, GANConfig, Generator
from fundus_cli.models.layers import set_fov_mask
from fundus_cli.models.registry import ARCHITECTURES, Architecture, architecture, build_model
from fundus_cli.models.vae import VAE, VAEConfig

__all__ = [
    "ARCHITECTURES",
    "GAN",
    "VAE",
    "Architecture",
    "Discriminator",
    "GANConfig",
    "Generator",
    "VAEConfig",
    "architecture",
    "build_model",
    "set_fov_mask",
]
