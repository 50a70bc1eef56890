from __future__ import annotations

import json
import math

import pytest
import torch

from fundus_cli.errors import FundusError
from fundus_cli.models import VAE, VAEConfig, build_model, set_fov_mask
from fundus_cli.models.vae import (
    beta_schedule,
    kl_divergence,
    line_loss,
    reconstruction_loss,
    ssim,
)

TINY = {"width": 8, "latent_dim": 16, "class_embed_dim": 8}



def tiny_vae(image_size: int = 32, num_classes: int = 0) -> VAE:
    torch.manual_seed(0)
    return build_model("vae", {"image_size": image_size, "num_classes": num_classes, **TINY})


def disc_mask(size: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = (size - 1) / 2
    return (((yy - c) ** 2 + (xx - c) ** 2) <= (0.45 * size) ** 2).float()


@pytest.mark.parametrize("image_size", [32, 64])
@pytest.mark.parametrize("num_classes", [0, 3])
def test_shapes_train_and_batch1_eval(image_size: int, num_classes: int) -> None:
    vae = tiny_vae(image_size, num_classes)
    x = torch.rand(2, 3, image_size, image_size) * 2 - 1
    y = torch.tensor([0, 2]) if num_classes else None
    x_hat, mu, logvar = vae(x, y)
    assert x_hat.shape == x.shape
    assert mu.shape == logvar.shape == (2, 16)
    assert x_hat.min() >= -1 and x_hat.max() <= 1

    vae.eval()
    with torch.no_grad():
        y1 = y[:1] if y is not None else None
        z = torch.randn(1, 16)
        sample = vae.decode(z, y1)
        assert sample.shape == (1, 3, image_size, image_size)
        # eval mode reconstructs from mu: deterministic
        assert torch.equal(vae(x[:1], y1)[0], vae(x[:1], y1)[0])


def test_labels_required_exactly_when_conditional() -> None:
    x = torch.zeros(2, 3, 32, 32)
    with pytest.raises(ValueError, match="conditional"):
        tiny_vae(num_classes=3)(x)
    with pytest.raises(ValueError, match="unconditional"):
        tiny_vae()(x, torch.tensor([0, 1]))


def test_conditional_decoder_uses_the_label() -> None:
    vae = tiny_vae(num_classes=3).eval()
    z = torch.randn(1, 16)
    with torch.no_grad():
        a, b = vae.decode(z, torch.tensor([0])), vae.decode(z, torch.tensor([1]))
    assert not torch.allclose(a, b)


def test_fov_mask_paints_outside_black_and_is_saved() -> None:
    vae = tiny_vae()
    mask = disc_mask(32)
    set_fov_mask(vae, mask)
    out = vae.decode(torch.randn(3, 16))
    outside = (mask == 0).expand_as(out)
    assert torch.all(out[outside] == -1.0)
    assert (out[~outside] != -1.0).all()

    # the mask travels in the state_dict and loads strictly into a fresh model
    fresh = VAE(VAEConfig.from_dict(vae.config.to_dict()))
    fresh.load_state_dict(vae.state_dict())
    assert torch.equal(fresh.fov_mask[0, 0], mask)


def test_set_fov_mask_rejects_wrong_size_and_range() -> None:
    vae = tiny_vae()
    with pytest.raises(FundusError, match="64x64.*32x32"):
        set_fov_mask(vae, disc_mask(64))
    with pytest.raises(FundusError, match=r"\[0, 1\]"):
        set_fov_mask(vae, disc_mask(32) * 2)


def test_kl_divergence() -> None:
    zeros = torch.zeros(4, 16)
    assert kl_divergence(zeros, zeros).item() == 0.0
    # one unit of mean in one dim costs 0.5 nats
    mu = zeros.clone()
    mu[:, 0] = 1.0
    assert kl_divergence(mu, zeros).item() == pytest.approx(0.5)
    assert kl_divergence(zeros, torch.full((4, 16), 0.5)).item() > 0


def test_ssim_is_one_for_identical_images_and_drops_with_noise() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)
    noisy = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    s = ssim(noisy, x)
    assert s.shape == (2,) and (s < 0.9).all()


def test_reconstruction_loss() -> None:
    x = torch.zeros(2, 3, 32, 32)
    assert reconstruction_loss(x, x, ssim_weight=0.5).item() == pytest.approx(0.0, abs=1e-4)
    off = x + 0.5
    n = 3 * 32 * 32  # summed over pixels
    assert reconstruction_loss(off, x, kind="l1").item() == pytest.approx(0.5 * n)
    assert reconstruction_loss(off, x, kind="l2").item() == pytest.approx(0.25 * n)
    with pytest.raises(ValueError):
        reconstruction_loss(off, x, kind="l3")


def test_line_loss_costs_a_missing_or_extra_vessel_but_not_shading_or_a_blob() -> None:
    n = 3 * 64 * 64  # in reconstruction_loss's units
    x = torch.zeros(2, 3, 64, 64)
    vessel = x.clone()
    vessel[:, 1, 10:54, 31:33] = -0.3  # a dark vertical line in the green channel
    missing = line_loss(x, vessel).item()
    assert line_loss(vessel, vessel).item() == 0.0
    assert missing > 0.002 * n and line_loss(vessel, x).item() == pytest.approx(missing)  # extra = missing
    # a line in red or blue alone is not a vessel in the green channel
    red = x.clone()
    red[:, 0, 10:54, 31:33] = -0.3
    assert line_loss(red, x).item() == 0.0
    # smooth shading (curved only at the borders) and a dark blob of the same depth cost far
    # less than the thin line
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    shading = x + 0.3 * (xx + yy)[None, None]
    blob = x - 0.3 * torch.exp(-((xx**2 + yy**2) / 0.02))[None, None]
    assert line_loss(shading, x).item() < 0.15 * missing
    assert line_loss(blob, x).item() < 0.15 * missing
    # its gradient deepens a faint line towards the photograph's
    rec = (0.5 * vessel).requires_grad_(True)
    before = line_loss(rec, vessel)
    before.backward()
    assert rec.grad is not None and rec.grad[:, 1].abs().sum() > 0 and rec.grad[:, 0].abs().sum() == 0
    assert line_loss(rec.detach() - 1e-4 * rec.grad, vessel).item() < before.item()
    with pytest.raises(ValueError, match="one shape"):
        line_loss(x[:, :, :32], x)


def test_beta_schedule_warms_up_linearly() -> None:
    assert beta_schedule(0, beta=4.0, warmup_steps=100) == 0.0
    assert beta_schedule(50, beta=4.0, warmup_steps=100) == 2.0
    assert beta_schedule(1000, beta=4.0, warmup_steps=100) == 4.0
    assert beta_schedule(0, beta=4.0) == 4.0


def test_gradients_reach_every_parameter() -> None:
    vae = tiny_vae(num_classes=3)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    y = torch.tensor([0, 1, 2, 0])  # every class, so every embedding row gets a gradient
    x_hat, mu, logvar = vae(x, y)
    (reconstruction_loss(x_hat, x, ssim_weight=0.2) + kl_divergence(mu, logvar)).backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("local_latent", [0, 4])
def test_overfits_four_images(local_latent: int) -> None:
    torch.manual_seed(0)
    vae = build_model("vae", {"image_size": 32, "local_latent": local_latent, **TINY})
    torch.manual_seed(1)
    # smooth images, which a tiny decoder can actually fit
    x = torch.nn.functional.interpolate(torch.rand(4, 3, 4, 4) * 2 - 1, size=32, mode="bilinear")
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    losses = []
    for step in range(30):
        x_hat, mu, logvar, kl_local = vae.reconstruct(x, None, torch.randn(4, vae.config.noise_dim))
        rec = reconstruction_loss(x_hat, x)
        loss = rec + beta_schedule(step, beta=0.1, warmup_steps=30) * (kl_divergence(mu, logvar) + kl_local.mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(rec.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("local_latent", [0, 4])
def test_channels_last_and_bf16_autocast(local_latent: int) -> None:
    torch.manual_seed(0)
    vae = build_model("vae", {"image_size": 32, "local_latent": local_latent, **TINY})
    vae = vae.to(memory_format=torch.channels_last)
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_hat, mu, logvar, kl_local = vae.reconstruct(x, None, torch.randn(2, vae.config.noise_dim))
        loss = reconstruction_loss(x_hat, x, ssim_weight=0.5) + kl_divergence(mu, logvar) + kl_local.mean()
    assert x_hat.shape == x.shape and math.isfinite(loss.item())
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in vae.parameters())


def test_config_json_round_trip_and_validation() -> None:
    cfg = VAEConfig(image_size=64, width=16, num_classes=5)
    assert cfg.channel_mults == (1, 2, 4, 8)  # resolved, so config.json records it
    again = VAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(FundusError, match="unknown VAEConfig key.*depth.*valid keys.*image_size"):
        VAEConfig.from_dict({"depth": 3})
    with pytest.raises(FundusError, match="image_size"):
        VAEConfig(image_size=48)
    with pytest.raises(FundusError, match="channel_mults needs 4"):
        VAEConfig(image_size=64, channel_mults=(1, 2))
    with pytest.raises(FundusError, match="width"):
        VAEConfig.from_dict({"width": "wide"})


def test_registry_rejects_unknown_names_listing_valid_ones() -> None:
    with pytest.raises(FundusError, match="'diffusion'.*gan, vae"):
        build_model("diffusion", {})


# ---------------------------------------------------------------------------- local latent


def local_vae(image_size: int = 32, num_classes: int = 0, local_latent: int = 4) -> VAE:
    torch.manual_seed(0)
    return build_model("vae", {"image_size": image_size, "num_classes": num_classes, "local_latent": local_latent,
                               **TINY})


def test_gaussian_kl_matches_torch_distributions() -> None:
    from torch.distributions import Normal, kl_divergence as torch_kl

    from fundus_cli.models.vae import gaussian_kl

    g = torch.Generator().manual_seed(0)
    mu_q, mu_p, lv_q, lv_p = (torch.randn(5, generator=g) for _ in range(4))
    want = torch_kl(Normal(mu_q, (0.5 * lv_q).exp()), Normal(mu_p, (0.5 * lv_p).exp()))
    assert torch.allclose(gaussian_kl(mu_q, lv_q, mu_p, lv_p), want, atol=1e-6)
    # against the standard normal it is the global z's KL
    assert torch.allclose(gaussian_kl(mu_q, lv_q, torch.zeros(5), torch.zeros(5)).sum(),
                          kl_divergence(mu_q[None], lv_q[None]), atol=1e-6)


@pytest.mark.parametrize("image_size", [32, 64, 128])
def test_local_latent_noise_layout_and_kl(image_size: int) -> None:
    vae = local_vae(image_size, num_classes=2)
    assert vae.config.noise_dim == 16 + 4 * 8 * 8
    x = torch.rand(3, 3, image_size, image_size) * 2 - 1
    y = torch.tensor([0, 1, 0])
    eps = torch.randn(3, vae.config.noise_dim, generator=torch.Generator().manual_seed(0))
    x_hat, mu, logvar, kl_local = vae.reconstruct(x, y, eps)
    assert x_hat.shape == x.shape and mu.shape == (3, 16) and kl_local.shape == (3,)
    # the posterior head starts as a zero correction of the prior: no KL yet
    assert torch.equal(kl_local, torch.zeros(3))
    with torch.no_grad():
        vae.loc_post[-1].bias.add_(0.3)
    kl_local = vae.reconstruct(x, y, eps)[3]
    assert (kl_local > 0).all()
    # the local noise reaches the image, in reconstructions and in samples
    other = eps.clone()
    other[:, 16:] = -other[:, 16:]
    assert not torch.allclose(vae.reconstruct(x, y, other)[0], x_hat)
    vae.eval()
    with torch.no_grad():
        assert not torch.allclose(vae.decode(eps, y), vae.decode(other, y))
        with pytest.raises(ValueError, match=f"noise of shape \\(B, {vae.config.noise_dim}\\)"):
            vae.decode(eps[:, :16], y)


def test_local_latent_samples_follow_the_prior_head() -> None:
    """Sampling draws the local cells from the learned prior: moving the prior head's mean
    moves the samples, and the posterior's mean is that prior mean plus a correction."""
    vae = local_vae().eval()
    z = torch.randn(2, vae.config.noise_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = vae.decode(z)
        vae.loc_prior[-1].bias[:4].add_(1.0)  # the first 4 outputs are the mean's channels
        assert not torch.allclose(vae.decode(z), before)


def test_local_latent_gradients_reach_every_parameter() -> None:
    vae = local_vae(num_classes=3)
    with torch.no_grad():  # past the zero start of both heads, as after the first steps
        for head in (vae.loc_prior[-1], vae.loc_post[-1]):
            head.weight.normal_(0, 0.01)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    y = torch.tensor([0, 1, 2, 0])
    eps = torch.randn(4, vae.config.noise_dim)
    x_hat, mu, logvar, kl_local = vae.reconstruct(x, y, eps)
    (reconstruction_loss(x_hat, x) + kl_divergence(mu, logvar) + kl_local.mean()).backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_local_latent_config() -> None:
    assert VAEConfig().local_latent == 0 and VAEConfig().noise_dim == VAEConfig().latent_dim
    with pytest.raises(FundusError, match="local_latent must be >= 0"):
        VAEConfig(local_latent=-1)
    # a config saved before the field existed builds the global-z-only VAE
    old = {k: v for k, v in VAEConfig(image_size=32, width=8).to_dict().items() if k != "local_latent"}
    assert not hasattr(build_model("vae", old), "loc_prior")
