"""What the VAE and the GAN share: the field-of-view mask, the size rules, config dicts.

Each network file keeps its own blocks so that it reads on its own; only the pieces that
must behave identically in both live here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Self, TypeVar

import torch
from torch import Tensor, nn

from fundus_cli.errors import FundusError

IMAGE_CHANNELS = 3  # RGB in [-1, 1]
IMAGE_SIZES = (32, 64, 128, 256)
BOTTOM_SIZE = 4  # both networks go down to (or start from) a 4x4 feature map
MAX_DEFAULT_MULT = 8  # default channel multipliers stop doubling here, which bounds 256-px cost

ConfigT = TypeVar("ConfigT")


def num_levels(image_size: int) -> int:
    """Resolution halvings between `image_size` and the 4x4 bottom (64 px -> 4)."""
    return int(math.log2(image_size // BOTTOM_SIZE))


def default_channel_mults(image_size: int) -> tuple[int, ...]:
    """1, 2, 4, 8, 8, 8 ... from full resolution down, one entry per level."""
    return tuple(min(2**i, MAX_DEFAULT_MULT) for i in range(num_levels(image_size)))


def resolve_channel_mults(config: Any) -> None:
    """Fill an empty `channel_mults` with the default so the stored config is the resolved one."""
    if not config.channel_mults and config.image_size in IMAGE_SIZES:
        # frozen dataclass: __post_init__ is the one place a field may still be set
        object.__setattr__(config, "channel_mults", default_channel_mults(config.image_size))


def check_config(config: Any) -> None:
    """Validate the fields every model config has; FundusError names the field and the fix."""
    name = type(config).__name__
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        default = field.default
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):  # a NaN or infinite gain would only show as NaN losses
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif isinstance(default, tuple):
            ok = isinstance(value, tuple) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            )
        else:
            ok = isinstance(value, type(default))
        if not ok:
            want = "a finite number" if isinstance(default, float) else f"of the same type as its default {default!r}"
            raise FundusError(f"{name}.{field.name} must be {want}, got {value!r}")
    if config.image_size not in IMAGE_SIZES:
        raise FundusError(
            f"{name}.image_size must be one of {', '.join(map(str, IMAGE_SIZES))}, "
            f"got {config.image_size}; resize the images at ingest"
        )
    levels = num_levels(config.image_size)
    if len(config.channel_mults) != levels or min(config.channel_mults) < 1:
        raise FundusError(
            f"{name}.channel_mults needs {levels} positive entries for {config.image_size}-px "
            f"images (one per level from {config.image_size} px down to 8 px), "
            f"got {list(config.channel_mults)}; leave it empty for the default "
            f"{list(default_channel_mults(config.image_size))}"
        )
    for field_name, minimum in (("width", 1), ("latent_dim", 1), ("num_classes", 0)):
        if getattr(config, field_name) < minimum:
            raise FundusError(
                f"{name}.{field_name} must be >= {minimum}, got {getattr(config, field_name)}"
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The fields and methods every architecture's config shares (each subclass adds its own
    fields after these): image size, widths per level, latent size, classes, JSON round trip."""

    image_size: int = 64  # square RGB images; 32, 64, 128 or 256
    width: int = 32  # channels at full resolution; every layer scales with it
    channel_mults: tuple[int, ...] = ()  # per level, full res first; () = 1,2,4,8,8,8[:levels]
    latent_dim: int = 128  # size of the latent vector z
    num_classes: int = 0  # 0 = unconditional; else the labels 0..num_classes-1 condition the model

    def __post_init__(self) -> None:
        """Resolve the default widths and validate the shared fields (subclasses call this
        first, then check their own)."""
        resolve_channel_mults(self)
        check_config(self)

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(self.width * m for m in self.channel_mults)

    @property
    def noise_dim(self) -> int:
        """Size of the standard-normal vector the model draws an image from (z, plus any
        further noise an architecture adds)."""
        return self.latent_dim

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return config_from_dict(cls, data)


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-able dict (tuples become lists) for config.json and checkpoints."""
    return {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in dataclasses.asdict(config).items()
    }


def config_from_dict(cls: type[ConfigT], data: Mapping[str, Any]) -> ConfigT:
    """Build `cls` from a JSON object; unknown keys are an error, missing keys take defaults."""
    if not isinstance(data, Mapping):
        raise FundusError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise FundusError(
            f"unknown {cls.__name__} key(s): {', '.join(map(str, unknown))}; "
            f"valid keys: {', '.join(fields)}"
        )
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        # JSON has no tuples; lists come back from config.json and are made hashable again
        if isinstance(fields[key].default, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def check_labels(y: Tensor | None, num_classes: int, batch: int) -> None:
    """Labels are required exactly when the model is conditional; a mix-up is a caller bug."""
    if num_classes == 0:
        if y is not None:
            raise ValueError("this model is unconditional (num_classes=0); pass y=None")
        return
    if y is None:
        raise ValueError(f"this model is conditional on {num_classes} classes; pass labels y")
    if y.shape != (batch,):
        raise ValueError(f"labels must have shape ({batch},), got {tuple(y.shape)}")


def fov_mask_buffer(image_size: int) -> Tensor:
    """All ones, i.e. no mask, until `set_fov_mask`.

    The buffer always exists, so a checkpoint saved with a measured mask loads with
    `strict=True` into a freshly built model.
    """
    return torch.ones(1, 1, image_size, image_size)


def apply_fov_mask(x: Tensor, mask: Tensor) -> Tensor:
    """Black (-1) outside the field of view; a mask of ones leaves `x` exactly unchanged."""
    return mask * x + (1 - mask) * -1.0


def set_fov_mask(model: nn.Module, mask: Tensor) -> None:
    """Copy a field-of-view mask (H, W), (1, H, W) or (1, 1, H, W) with values in [0, 1]
    into every `fov_mask` buffer of `model` (the VAE, a GAN's generator, an EMA copy)."""
    targets = [m for m in model.modules() if isinstance(getattr(m, "fov_mask", None), Tensor)]
    if not targets:
        raise ValueError(f"{type(model).__name__} has no fov_mask buffer")
    if mask.dim() not in (2, 3, 4) or (mask.dim() > 2 and math.prod(mask.shape[:-2]) != 1):
        raise FundusError(
            f"field-of-view mask must be (H, W) or (1, 1, H, W), got {tuple(mask.shape)}"
        )
    mask = mask.detach().reshape(1, 1, *mask.shape[-2:])
    if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise FundusError("field-of-view mask values must lie in [0, 1]")
    for module in targets:
        buffer: Tensor = module.fov_mask  # type: ignore[assignment]
        if buffer.shape != mask.shape:
            raise FundusError(
                f"field-of-view mask is {mask.shape[-2]}x{mask.shape[-1]} but the model makes "
                f"{buffer.shape[-2]}x{buffer.shape[-1]} images; measure the mask on data of "
                "the model's image_size"
            )
        # copy_ keeps the buffer's device, dtype and memory format
        buffer.copy_(mask)


def mirror_by_latent(x: Tensor, z: Tensor) -> Tensor:
    """Left eyes back for a model trained with every optic disc on the right: mirror the images
    whose first latent is negative (half of them, a function of z alone, so a seed always gives
    the same eye). The field-of-view mask is symmetric, so mirrored images keep a black surround."""
    return torch.where((z[:, 0] < 0)[:, None, None, None], x.flip(3), x)
