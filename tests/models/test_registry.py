"""The architecture registry: every entry is complete, and the places outside models/ that need an
architecture (the CLI's --arch choices, the trainers, the presets' run lengths) know each one."""

from __future__ import annotations

import pytest
import torch

from fundus_cli.errors import FundusError
from fundus_cli.models.registry import ARCHITECTURES, architecture, build_model


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_each_architecture_builds_names_its_networks_and_draws_images(name: str) -> None:
    spec = architecture(name)
    assert spec.name == name and spec.sampler in spec.networks
    model = build_model(name, {"image_size": 32, "width": 8, "latent_dim": 16})
    for net_name in spec.networks:
        assert isinstance(spec.network(model, net_name), torch.nn.Module)
    # the stored config builds the same network again (what a checkpoint relies on)
    again = build_model(name, model.config.to_dict())
    assert [p.shape for p in again.parameters()] == [p.shape for p in model.parameters()]
    sampler = spec.network(model, spec.sampler).eval()
    with torch.no_grad():
        x = spec.draw(sampler, torch.randn(2, 16), None)
    assert x.shape == (2, 3, 32, 32) and float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert spec.scale_option in ("truncation", "temperature")


def test_an_unknown_architecture_is_a_clear_error() -> None:
    with pytest.raises(FundusError, match=r"unknown model architecture 'diffusion'; valid names: gan, vae"):
        build_model("diffusion")


def test_the_cli_trainers_and_presets_know_every_architecture() -> None:
    from fundus_cli.cli.train import Arch
    from fundus_cli.training.config import _PRESET_VALUES, ARCHS, TrainConfig
    from fundus_cli.training.trainers import TRAINERS

    names = list(ARCHITECTURES)
    assert [a.value for a in Arch] == names == list(ARCHS)
    assert sorted(TRAINERS) == sorted(names)
    for preset in _PRESET_VALUES.values():
        assert sorted(preset["steps_cpu"]) == sorted(preset["steps_gpu"]) == sorted(names)
    # the settings an architecture copies into its model_config are training settings
    fields = set(TrainConfig.__dataclass_fields__)
    for spec in ARCHITECTURES.values():
        assert set(spec.train_options) <= fields
