from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fundus_cli.errors import FundusError
from fundus_cli.models import GAN, GANConfig, build_model, set_fov_mask
from fundus_cli.models.gan import (
    GAN_LOSSES,
    d_hinge_loss,
    d_nonsaturating_loss,
    g_hinge_loss,
    g_nonsaturating_loss,
    r1_penalty,
)
from fundus_cli.models.d_inputs import dark_lines, high_pass, line_strength

TINY = {"width": 8, "latent_dim": 16}



DISCS = pytest.mark.parametrize("disc_kind", ["strided", "resnet"])


def tiny_gan(image_size: int = 32, num_classes: int = 0, disc_kind: str = "strided") -> GAN:
    torch.manual_seed(0)
    return build_model("gan", {"image_size": image_size, "num_classes": num_classes,
                               "discriminator": disc_kind, **TINY})


def sn_convs(disc: nn.Module) -> list[nn.Module]:
    """The spectrally normalised conv layers of a discriminator, input side first."""
    return [m for m in disc.modules() if isinstance(m, nn.Conv2d) and hasattr(m, "parametrizations")]


@DISCS
@pytest.mark.parametrize("image_size", [32, 64])
@pytest.mark.parametrize("num_classes", [0, 3])
def test_shapes_train_and_batch1_eval(image_size: int, num_classes: int, disc_kind: str) -> None:
    gan = tiny_gan(image_size, num_classes, disc_kind)
    y = torch.tensor([0, 2]) if num_classes else None
    fake = gan.generator(torch.randn(2, 16), y)
    assert fake.shape == (2, 3, image_size, image_size)
    assert fake.min() >= -1 and fake.max() <= 1
    assert gan.discriminator(fake, y).shape == (2,)

    gan.eval()
    with torch.no_grad():
        y1 = y[:1] if y is not None else None
        one = gan.generator(torch.randn(1, 16), y1)
        assert one.shape == (1, 3, image_size, image_size)
        assert gan.discriminator(one, y1).shape == (1,)


@DISCS
def test_generator_and_projection_discriminator_use_the_label(disc_kind: str) -> None:
    gan = tiny_gan(num_classes=3, disc_kind=disc_kind)
    # conditional BN starts as the identity for every class; give the classes their own
    # gains, as training would, to see that the generator routes the label through
    with torch.no_grad():
        for module in gan.generator.modules():
            if isinstance(module, nn.Embedding):
                module.weight.normal_()
    gan.eval()
    z = torch.randn(1, 16)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        a, b = torch.tensor([0]), torch.tensor([1])
        assert not torch.allclose(gan.generator(z, a), gan.generator(z, b))
        assert not torch.allclose(gan.discriminator(x, a), gan.discriminator(x, b))


def test_fov_mask_paints_outside_black_and_is_saved() -> None:
    gan = tiny_gan()
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    mask = (((yy - 15.5) ** 2 + (xx - 15.5) ** 2) <= 14.0**2).float()
    set_fov_mask(gan, mask)
    fake = gan.generator(torch.randn(3, 16))
    outside = (mask == 0).expand_as(fake)
    assert torch.all(fake[outside] == -1.0)
    assert (fake[~outside] != -1.0).all()
    fresh = GAN(GANConfig.from_dict(gan.config.to_dict()))
    fresh.load_state_dict(gan.state_dict())
    assert torch.equal(fresh.generator.fov_mask[0, 0], mask)


def test_hinge_losses() -> None:
    confident_real, confident_fake = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -2.0])
    assert d_hinge_loss(confident_real, confident_fake).item() == 0.0
    assert d_hinge_loss(torch.tensor([0.5]), torch.tensor([-2.0])).item() == pytest.approx(0.5)
    assert d_hinge_loss(torch.tensor([2.0]), torch.tensor([0.0])).item() == pytest.approx(1.0)
    assert g_hinge_loss(torch.tensor([1.0, 3.0])).item() == pytest.approx(-2.0)


def test_nonsaturating_losses() -> None:
    zero = torch.zeros(3)
    assert d_nonsaturating_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert d_nonsaturating_loss(torch.full((3,), 10.0), torch.full((3,), -10.0)).item() < 1e-3
    # the generator's loss falls as D believes its samples
    assert g_nonsaturating_loss(torch.tensor([2.0])) < g_nonsaturating_loss(torch.tensor([-2.0]))
    assert set(GAN_LOSSES) == {"hinge", "nonsaturating"}


def test_r1_penalty() -> None:
    x = torch.rand(2, 3, 32, 32).requires_grad_(True)
    bias = nn.Parameter(torch.tensor(0.3))
    assert r1_penalty(bias.expand(2), x).item() == 0.0  # constant D
    assert r1_penalty(torch.zeros(2), x).item() == 0.0  # D without parameters

    w = torch.randn(3, 32, 32)
    linear = (x * w).flatten(1).sum(1)  # grad_x = w for every sample
    assert r1_penalty(linear, x).item() == pytest.approx(w.square().sum().item(), rel=1e-5)

    with pytest.raises(ValueError, match="requires_grad"):
        r1_penalty(linear, x.detach())

    # a patch head: the whole-image logit and the patches' mean weigh the same, whatever the
    # number of patches (a plain sum of 1 + P identical columns would scale it by (1 + P)^2)
    one = r1_penalty(linear, x).item()
    for patches in (3, 255):
        both = r1_penalty(linear[:, None].expand(-1, 1 + patches), x).item()
        assert both == pytest.approx(4 * one, rel=1e-5)

    for kind in ("strided", "resnet"):
        disc = tiny_gan(disc_kind=kind).discriminator
        real = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
        penalty = r1_penalty(disc(real), real)
        assert penalty.item() > 0
        penalty.backward()  # differentiable, so it can regularise D
        assert sn_convs(disc)[0].parametrizations.weight.original.grad.abs().sum() > 0


@DISCS
def test_gradients_reach_every_parameter(disc_kind: str) -> None:
    gan = tiny_gan(num_classes=3, disc_kind=disc_kind)
    y = torch.tensor([0, 1, 2, 0])  # every class, so every embedding row gets a gradient
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    fake = gan.generator(torch.randn(4, 16), y)
    # non-saturating, because hinge has zero gradient wherever D is already confident
    d_nonsaturating_loss(gan.discriminator(real, y), gan.discriminator(fake, y)).backward()
    for name, p in gan.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@DISCS
def test_discriminator_is_spectrally_normalised(disc_kind: str) -> None:
    disc = tiny_gan(disc_kind=disc_kind).discriminator
    x = torch.rand(2, 3, 32, 32)
    for _ in range(30):  # each training-mode forward runs one power iteration
        disc(x)
    assert all(hasattr(m, "parametrizations") for m in disc.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    weight = sn_convs(disc)[1].weight.detach()
    assert torch.linalg.matrix_norm(weight.flatten(1), ord=2).item() == pytest.approx(1.0, abs=0.05)


@DISCS
def test_discriminator_learns_to_separate(disc_kind: str) -> None:
    disc = tiny_gan(disc_kind=disc_kind).discriminator
    torch.manual_seed(1)
    real = torch.nn.functional.interpolate(torch.rand(4, 3, 4, 4) * 2 - 1, size=32)
    fake = torch.rand(4, 3, 32, 32) * 2 - 1
    opt = torch.optim.Adam(disc.parameters(), lr=1e-3, betas=(0.0, 0.99))
    losses = []
    for _ in range(20):
        loss = d_hinge_loss(disc(real), disc(fake))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@DISCS
def test_channels_last_and_bf16_autocast(disc_kind: str) -> None:
    gan = tiny_gan(num_classes=2, disc_kind=disc_kind).to(memory_format=torch.channels_last)
    y = torch.tensor([0, 1])
    real = (torch.rand(2, 3, 32, 32) * 2 - 1).contiguous(memory_format=torch.channels_last)
    real.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake = gan.generator(torch.randn(2, 16), y)
        real_logits = gan.discriminator(real, y)
        loss = d_hinge_loss(real_logits, gan.discriminator(fake, y)) + r1_penalty(real_logits, real)
    assert math.isfinite(loss.item())
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in gan.parameters() if p.grad is not None)


def test_config_json_round_trip_and_validation() -> None:
    cfg = GANConfig(image_size=128, width=64, num_classes=5)
    assert cfg.channel_mults == (1, 2, 4, 8, 8)
    assert GANConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(FundusError, match="unknown GANConfig key.*beta1.*valid keys"):
        GANConfig.from_dict({"image_size": 64, "beta1": 0.0})
    with pytest.raises(FundusError, match="num_classes"):
        GANConfig(num_classes=-1)
    with pytest.raises(FundusError, match="discriminator must be one of strided, resnet"):
        GANConfig(discriminator="patch")
    # the resnet discriminator has no extra inputs and no patch head: asking for them is refused,
    # not ignored
    with pytest.raises(FundusError, match="detail, vessel belong to the strided discriminator"):
        GANConfig(discriminator="resnet", detail=2.0, vessel=4.0)
    with pytest.raises(FundusError, match="patch_head belong"):
        GANConfig(discriminator="resnet", patch_head=True)
    assert GANConfig(discriminator="strided", detail=2.0, vessel=4.0, patch_head=True).vessel == 4.0


def test_registry_rejects_unknown_names_listing_valid_ones() -> None:
    with pytest.raises(FundusError, match="'stylegan'.*gan, vae"):
        build_model("stylegan")


def test_patch_head_scores_whole_image_and_neighbourhoods() -> None:
    gan = build_model("gan", {"image_size": 32, "num_classes": 2, "patch_head": True, **TINY})
    y = torch.tensor([0, 1])
    logits = gan.discriminator(torch.rand(2, 3, 32, 32), y)
    assert logits.shape == (2, 1 + 8 * 8)  # one whole-image logit, one per 8x8 map position
    # both scales weigh the same in every loss, whatever the number of patches
    whole_bad = torch.cat([torch.full((2, 1), -1.0), torch.ones(2, 64)], dim=1)
    patches_bad = torch.cat([torch.ones(2, 1), torch.full((2, 64), -1.0)], dim=1)
    good = torch.full((2, 65), -1.0)
    assert d_hinge_loss(whole_bad, good).item() == pytest.approx(d_hinge_loss(patches_bad, good).item()) == 2.0
    assert g_hinge_loss(whole_bad).item() == pytest.approx(g_hinge_loss(patches_bad).item())
    x = torch.rand(2, 3, 32, 32).requires_grad_(True)
    assert r1_penalty(gan.discriminator(x, y), x).item() > 0


def test_orient_mirrors_half_the_samples_in_eval_mode_only() -> None:
    torch.manual_seed(0)
    plain = build_model("gan", {"image_size": 32, **TINY})
    oriented = build_model("gan", {"image_size": 32, "orient": True, **TINY})
    oriented.load_state_dict(plain.state_dict())
    z = torch.randn(64, 16)
    assert torch.equal(oriented.generator(z), plain.generator(z))  # training: one orientation only
    plain.eval()
    oriented.eval()
    with torch.no_grad():
        a, b = plain.generator(z), oriented.generator(z)
    flipped = z[:, 0] < 0
    assert 10 < int(flipped.sum()) < 54
    assert torch.equal(b[flipped], a[flipped].flip(3))
    assert torch.equal(b[~flipped], a[~flipped])


def test_high_pass_keeps_thin_lines_and_drops_colour_and_shading() -> None:
    size = 64
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    shading = 0.3 + 0.4 * xx / size  # slow left-right gradient, like uneven illumination
    image = torch.stack([shading, 0.5 * shading, 0.2 * shading])[None].clone()
    vessel = (xx == 30) & (yy > 10) & (yy < 50)
    image[:, :, vessel] -= 0.2  # a one-pixel dark line in every channel
    hp = high_pass(image, size)
    inside = (slice(None), slice(None), slice(12, 48))
    # the line stands out: strongly negative on it, near zero a few pixels away
    assert hp[0, :, vessel].mean() < -0.12
    assert hp[inside][..., 40:50].abs().max() < 0.01  # shading and colour are gone
    assert high_pass(torch.full((1, 3, size, size), 0.7), size).abs().max() < 1e-5


def test_dark_lines_finds_thin_dark_lines_in_green_only() -> None:
    size = 64
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    shading = 0.2 + 0.4 * xx / size
    image = torch.stack([shading, 0.6 * shading, 0.2 * shading])[None].clone()
    inside = (xx - 32) ** 2 + (yy - 32) ** 2 < 28**2
    image[:, :, ~inside] = -1.0  # black surround outside the field of view
    vessel = ((xx - 20).abs() <= 1) & (yy > 10) & (yy < 50)  # 3 px wide, dark
    image[:, 1][:, vessel] -= 0.3
    image[:, :, (xx == 44) & (yy > 10) & (yy < 50)] += 0.3  # a bright line: not a vessel
    wide = (xx >= 30) & (xx < 38) & (yy > 40) & (yy < 50)  # 8 px wide dark patch: not thin
    image[:, 1][:, wide] -= 0.3
    d = dark_lines(image, size)
    assert d.shape == (1, 1, size, size) and float(d.min()) >= 0
    assert float(d[0, 0][vessel].mean()) > 0.25
    # a bright line leaves at most the shading's slope across the element (0.015 here)
    assert float(d[0, 0, 12:48, 42:47].max()) < 0.02
    assert float(d[0, 0, 43:47, 32:36].max()) < 0.02  # nor does the middle of the wide patch
    # the field of view's edge and the slow shading are not lines
    assert float(d[0, 0][~vessel & ~wide].max()) < 0.05
    # at 128 px the element doubles: a 6-px vessel still counts
    big = torch.zeros(1, 3, 128, 128)
    big[:, 1, :, 60:66] -= 0.3
    assert float(dark_lines(big, 128)[0, 0, 64, 62]) > 0.25 and float(dark_lines(big, 64)[0, 0, 64, 62]) < 1e-6


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_dark_lines_is_the_square_element_top_hat(size: int) -> None:
    # the row-then-column max equals the k x k max pool of the definition, ties and edges included
    k = 2 * max(1, round(2 * size / 64)) + 1
    g = torch.Generator().manual_seed(size)
    x = torch.rand(2, 3, size, size, generator=g)
    x[..., size // 2 :, :] = x[..., size // 2 :, :].round(decimals=1)  # many ties
    x[..., : size // 4, :] = -1.0  # a flat black surround at the border
    dilated = F.max_pool2d(x[:, 1:2], k, stride=1, padding=k // 2)
    want = -F.max_pool2d(-dilated, k, stride=1, padding=k // 2) - x[:, 1:2]
    assert torch.equal(dark_lines(x, size), want)


def test_line_strength_answers_to_lines_not_dots_or_checkerboards() -> None:
    size = 64
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    flat = torch.zeros(1, 3, size, size)
    line = flat.clone()
    line[:, 1, 10:54, 20] -= 0.3  # 1 px wide, dark
    dot = flat.clone()
    dot[:, 1, 31:33, 40:42] -= 0.3  # 2x2 dark dot
    board = flat.clone()
    board[:, 1] += 0.15 * ((xx // 2 + yy // 2) % 2 * 2 - 1)  # a 2-px checkerboard, the line's contrast
    on_line = float(line_strength(line, size)[0, 0, 20:44, 20].mean())
    assert on_line > 0.05
    assert float(line_strength(dot, size).max()) < 0.25 * on_line
    # the top-hat fills every dark cell (half the board at the line's depth); this scores a fifth
    assert float(line_strength(board, size)[0, 0, 8:56, 8:56].mean()) < 0.25 * on_line
    # a bright line: only its flanks curve upwards, weakly
    assert float(line_strength(-line, size).max()) < 0.3 * on_line
    assert float(line_strength(flat, size).max()) < 1e-5
    x = line.clone().requires_grad_(True)
    line_strength(x, size).sum().backward()  # differentiable: G learns through it
    assert x.grad is not None and float(x.grad[:, 1].abs().sum()) > 0 and float(x.grad[:, 0].abs().sum()) == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_line_strength_gradients_stay_finite_in_half_precision(dtype: torch.dtype) -> None:
    # under fp16 autocast the D's input is float16; computed in it, the square root's epsilon
    # rounded to 0 and flat regions sent infinite gradients back to G
    for image in (torch.zeros(2, 3, 32, 32), torch.rand(2, 3, 32, 32) * 0.01):
        x = image.to(dtype).requires_grad_(True)
        out = line_strength(x, 32)
        out.sum().backward()
        assert out.dtype == dtype and x.grad is not None and bool(torch.isfinite(x.grad).all())


def test_vessel_discriminator_sees_one_more_channel() -> None:
    torch.manual_seed(0)
    gan = build_model("gan", {"image_size": 32, "detail": 4.0, "vessel": 4.0, **TINY})
    assert gan.discriminator.features[0].in_channels == 7  # RGB, high-pass RGB, dark lines
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    gan.discriminator(x).sum().backward()  # G learns through the top-hat: its gradient exists
    assert x.grad is not None and float(x.grad[:, 1].abs().sum()) > 0
    both = build_model("gan", {"image_size": 32, "detail": 4.0, "vessel": 4.0, "vessel_lines": 20.0, **TINY})
    assert both.discriminator.features[0].in_channels == 8  # and the Hessian line strength
    with pytest.raises(FundusError, match="vessel_lines"):
        build_model("gan", {"image_size": 32, "vessel_lines": -1.0, **TINY})
    assert build_model("gan", {"image_size": 32, **TINY}).discriminator.features[0].in_channels == 3
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(FundusError, match="vessel"):
            GANConfig(vessel=bad)


def test_detail_discriminator_sees_the_high_pass_channels() -> None:
    torch.manual_seed(0)
    gan = build_model("gan", {"image_size": 32, "detail": 4.0, **TINY})
    first = gan.discriminator.features[0]
    assert first.in_channels == 6  # RGB plus its high-pass copy
    x = torch.rand(2, 3, 32, 32)
    # a change that only the high-pass copy amplifies still reaches the logit
    assert gan.discriminator(x).shape == (2,)
    for bad in (-1.0, math.nan, -math.inf):
        with pytest.raises(FundusError, match="detail"):
            GANConfig(detail=bad)


def test_bilinear_generator_has_no_nearest_neighbour_blocks() -> None:
    torch.manual_seed(0)
    nearest = build_model("gan", {"image_size": 32, **TINY})
    smooth = build_model("gan", {"image_size": 32, "upsample": "bilinear", **TINY})
    smooth.load_state_dict(nearest.state_dict())  # same weights, only the upsampling differs
    block = nearest.generator.blocks[0]
    h = torch.randn(1, block.conv1.in_channels, 4, 4)
    # the skip path alone: nearest repeats each value in a 2x2 block, bilinear interpolates
    up_n = block._up(h)
    up_b = smooth.generator.blocks[0]._up(h)
    assert torch.equal(up_n[..., 0::2, 0::2], up_n[..., 1::2, 1::2])
    assert not torch.allclose(up_b[..., 0::2, 0::2], up_b[..., 1::2, 1::2])
    assert smooth.generator(torch.randn(2, 16)).shape == (2, 3, 32, 32)
    with pytest.raises(FundusError, match="upsample"):
        GANConfig(upsample="bicubic")
