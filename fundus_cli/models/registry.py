"""The architectures by name: what the rest of fundus-cli needs to know of each one.

Training, checkpoints and sampling look an architecture up here instead of branching on its
name, so a new one is its network module in this package plus one entry in ARCHITECTURES (and
its trainer, the loss and the step, in `training/trainers.py`; tests/models/test_registry.py
says what is missing).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from fundus_cli.errors import FundusError
from fundus_cli.models.gan import build_gan
from fundus_cli.models.vae import build_vae

ModelBuilder = Callable[[Mapping[str, Any]], nn.Module]


@dataclass(frozen=True)
class Architecture:
    name: str
    build: ModelBuilder  # JSON-able config (missing keys take defaults) -> module with `.config.to_dict()`
    # checkpoint name under "models"/"ema"/"optimizers" -> attribute of the built module ("" = itself)
    networks: Mapping[str, str]
    sampler: str  # the network (a key of `networks`) that draws images
    draw: Callable[[nn.Module, Tensor, Tensor | None], Tensor]  # (sampler, z, y) -> images in [-1, 1]
    scale_option: str  # the `fundus sample` option that scales z: "temperature" | "truncation"
    # TrainConfig fields that shape this network, copied into its model_config with these types
    train_options: Mapping[str, Callable[[Any], Any]]

    def network(self, model: nn.Module, name: str) -> nn.Module:
        """The part of a built module that the checkpoint keeps under `name`."""
        attr = self.networks[name]
        return getattr(model, attr) if attr else model


def _decode(net: nn.Module, z: Tensor, y: Tensor | None) -> Tensor:
    return net.decode(z, y)  # type: ignore[operator]


def _generate(net: nn.Module, z: Tensor, y: Tensor | None) -> Tensor:
    return net(z, y)


# Ordered as `--arch` lists them.
ARCHITECTURES: dict[str, Architecture] = {
    "vae": Architecture(name="vae", build=build_vae, networks={"vae": ""}, sampler="vae", draw=_decode,
                        scale_option="temperature", train_options={"local_latent": int}),
    "gan": Architecture(name="gan", build=build_gan,
                        networks={"generator": "generator", "discriminator": "discriminator"},
                        sampler="generator", draw=_generate, scale_option="truncation",
                        train_options={"discriminator": str, "patch_head": bool, "upsample": str, "detail": float,
                                       "vessel": float, "vessel_lines": float}),
}


def architecture(name: str) -> Architecture:
    """The entry for `name`; an unknown name is a FundusError listing the valid ones."""
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise FundusError(
            f"unknown model architecture {name!r}; valid names: {', '.join(sorted(ARCHITECTURES))}"
        ) from None


def build_model(name: str, config: Mapping[str, Any] | None = None) -> nn.Module:
    """Build architecture `name` from a JSON-able config (missing keys take defaults)."""
    return architecture(name).build({} if config is None else config)
