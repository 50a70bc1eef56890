from __future__ import annotations

import pytest
import torch

from fundus_cli.models import build_model, set_fov_mask
from fundus_cli.training.ema import ema_update, make_ema


def generator() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("gan", {"image_size": 32, "width": 8, "latent_dim": 16}).generator


def test_ema_averages_parameters_and_copies_buffers() -> None:
    model = generator()
    ema = make_ema(model)
    assert not ema.training and not any(p.requires_grad for p in ema.parameters())
    before = {k: v.clone() for k, v in ema.state_dict().items()}

    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model(torch.randn(4, 16))  # training-mode BN updates its running statistics
    set_fov_mask(model, torch.zeros(32, 32))

    ema_update(ema, model, decay=0.75)
    name = "fc.weight"
    expected = 0.75 * before[name] + 0.25 * model.state_dict()[name]
    assert torch.allclose(ema.state_dict()[name], expected)
    for key in ("blocks.0.norm1.bn.running_mean", "fov_mask"):
        assert torch.equal(ema.state_dict()[key], model.state_dict()[key])
        assert not torch.equal(ema.state_dict()[key], before[key])

    ema_update(ema, model, decay=0.0)
    assert torch.equal(ema.state_dict()[name], model.state_dict()[name])


def test_ema_rejects_bad_decay_and_mismatched_models() -> None:
    model = generator()
    with pytest.raises(ValueError):
        ema_update(make_ema(model), model, decay=1.5)
    with pytest.raises(ValueError, match="different"):
        ema_update(make_ema(model), torch.nn.Linear(2, 2), decay=0.9)
