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


def test_standing_statistics_are_the_average_of_the_models_own_batches() -> None:
    from fundus_cli.training.ema import standing_statistics

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.3))
    net.eval()
    net[1].running_mean.fill_(5.0)  # stale statistics, as copied from another set of weights
    batches = [torch.randn(8, 3, 6, 6) + i for i in range(3)]
    it = iter(batches)
    standing_statistics(net, lambda: net(next(it)), 3)

    acts = [net[0](b).detach() for b in batches]
    mean = torch.stack([a.mean(dim=(0, 2, 3)) for a in acts]).mean(0)  # the plain average of the batches
    var = torch.stack([a.var(dim=(0, 2, 3), unbiased=True) for a in acts]).mean(0)
    assert torch.allclose(net[1].running_mean, mean, atol=1e-5)
    assert torch.allclose(net[1].running_var, var, atol=1e-4)
    assert not net.training and net[1].momentum == 0.3  # eval mode and momentum restored
    standing_statistics(torch.nn.Linear(2, 2), lambda: None, 3)  # no BatchNorm: nothing to do


def test_gan_trainer_gives_its_ema_generator_standing_statistics() -> None:
    from fundus_cli.training.trainers import GANTrainer

    hp = {"lr": 1e-3, "lr_d": 1e-3, "gan_loss": "hinge", "r1_gamma": 0.0, "r1_every": 4, "diffaugment": "",
          "ema_decay": 0.9, "ada_target": 0.0}
    model = {"image_size": 32, "width": 8, "latent_dim": 16, "num_classes": 2}
    t = GANTrainer(model, hp, device=torch.device("cpu"), fov_mask=None)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 0, 1])
    for step in range(3):
        t.step(x, y, step, gen)
    bn = "norm_out.running_mean"
    copied = t.G.state_dict()[bn].clone()
    assert torch.equal(t.G_ema.state_dict()[bn], copied)  # ema_update copied the raw generator's

    first = t.state()["ema"]["generator"]
    assert not torch.allclose(first[bn], copied)  # recomputed for the averaged weights
    assert torch.equal(t.state()["ema"]["generator"][bn], first[bn])  # fixed latents: the same again
    z = torch.randn(2, 16)
    expected = t.G_ema(z, y[:2])
    assert torch.equal(t.sample(z, y[:2]), expected)
    # after another step they are due again, and the raw generator's training is untouched by them
    t.step(x, y, 3, gen)
    assert torch.equal(t.G_ema.state_dict()[bn], t.G.state_dict()[bn])
    assert not torch.equal(t.state()["ema"]["generator"][bn], t.G.state_dict()[bn])
