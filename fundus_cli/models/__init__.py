"""Networks by name, for `fundus train --arch NAME`.

`build_model("vae", {"image_size": 64, "width": 32})` returns an `nn.Module` whose
`.config.to_dict()` is the resolved, JSON-able config to store in the checkpoint; building
from that dict again and loading the state_dict gives back the same network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from fundus_cli.errors import FundusError

ModelBuilder = Callable[[Mapping[str, Any]], nn.Module]

MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: make `builder(config_dict) -> nn.Module` available as `name`."""

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = builder
        return builder

    return decorator


def build_model(name: str, config: Mapping[str, Any] | None = None) -> nn.Module:
    """Build architecture `name` from a JSON-able config (missing keys take defaults)."""
    try:
        builder = MODELS[name]
    except KeyError:
        raise FundusError(
            f"unknown model architecture {name!r}; valid names: {', '.join(sorted(MODELS))}"
        ) from None
    return builder({} if config is None else config)


# Imported last: the architecture modules register themselves with `register_model` above.
from fundus_cli.models.gan import GAN, Discriminator, GANConfig, Generator  # noqa: E402
from fundus_cli.models.layers import set_fov_mask  # noqa: E402
from fundus_cli.models.vae import VAE, VAEConfig  # noqa: E402

__all__ = [
    "GAN",
    "MODELS",
    "VAE",
    "Discriminator",
    "GANConfig",
    "Generator",
    "VAEConfig",
    "build_model",
    "register_model",
    "set_fov_mask",
]
