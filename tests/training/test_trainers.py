from __future__ import annotations

import pytest
import torch

from fundus_cli.training import trainers
from fundus_cli.training.trainers import GANTrainer, VAETrainer

GAN_HP = {"lr": 1e-3, "lr_d": 1e-3, "gan_loss": "hinge", "r1_gamma": 0.1, "r1_every": 4,
          "diffaugment": "color,translation,cutout", "ema_decay": 0.99, "ada_target": 0.6}
VAE_HP = {"lr": 1e-3, "beta": 1.0, "kl_warmup": 0, "recon": "l1", "ssim_weight": 0.2, "ema_decay": 0.99,
          "adv_weight": 0.5, "diffaugment": ""}
MODEL = {"image_size": 32, "width": 8, "latent_dim": 16, "num_classes": 2}


def test_ada_probability_follows_the_overfitting_signal() -> None:
    t = GANTrainer(MODEL, GAN_HP, device=torch.device("cpu"), fov_mask=None)
    assert t.ada_p == 0.0
    for _ in range(trainers.ADA_INTERVAL):
        t._ada_adjust(torch.ones(8), 8)  # D sure that every real is real: overfitting
    rise = trainers.ADA_INTERVAL * 8 / trainers.ADA_IMAGES
    assert abs(t.ada_p - rise) < 1e-12
    for _ in range(3 * trainers.ADA_INTERVAL):
        t._ada_adjust(-torch.ones(8, 5), 8)  # (B, 1 + P) logits: the whole-image column counts
    assert t.ada_p == 0.0  # clamped, never negative
    # the state travels in the checkpoint
    t.ada_p = 0.25
    t._ada_adjust(torch.ones(8), 8)
    other = GANTrainer(MODEL, GAN_HP, device=torch.device("cpu"), fov_mask=None)
    other.load_state(t.state())
    assert (other.ada_p, other._ada_sum, other._ada_n) == (0.25, 8.0, 8)


def test_ada_p_zero_means_no_augmentation_and_one_means_always() -> None:
    t = GANTrainer(MODEL, GAN_HP, device=torch.device("cpu"), fov_mask=None)
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(t._aug(x, gen), x)
    t.ada_p = 1.0
    assert not torch.equal(t._aug(x, gen), x)


def test_vae_adversarial_term_trains_a_discriminator_and_reaches_the_decoder() -> None:
    torch.manual_seed(0)
    t = VAETrainer(MODEL, VAE_HP, device=torch.device("cpu"), fov_mask=None)
    assert t.D is not None
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    y = torch.tensor([0, 1, 0, 1])
    d_before = [p.detach().clone() for p in t.D.parameters()]
    out = t.step(x, y, 0, torch.Generator().manual_seed(0))
    assert {"d_loss", "adv", "adv_w"} <= set(out) and out["adv_w"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(d_before, t.D.parameters()))
    state = t.state()
    assert set(state["models"]) == {"vae", "discriminator"}
    assert set(state["optimizers"]) == {"vae", "discriminator"}
    # the VAE optimizer must not move the discriminator (it has its own)
    vae_params = {id(p) for group in t.opt.param_groups for p in group["params"]}
    assert not any(id(p) in vae_params for p in t.D.parameters())
    plain = VAETrainer(MODEL, {**VAE_HP, "adv_weight": 0.0}, device=torch.device("cpu"), fov_mask=None)
    assert plain.D is None and set(plain.state()["models"]) == {"vae"}


def test_format_1_checkpoints_are_refused_with_the_reason(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from fundus_cli.errors import FundusError
    from fundus_cli.training import checkpoint as ckpt_mod

    t = GANTrainer(MODEL, GAN_HP, device=torch.device("cpu"), fov_mask=None)
    payload = {"arch": "gan", "model_config": MODEL, "train_config": {}, "step": 1, "rng": {},
               "dataset_fingerprint": "x", "class_names": ["a", "b"], "image_size": 32, **t.state()}
    path = ckpt_mod.save_checkpoint(tmp_path, payload, keep=1)
    old = torch.load(path, weights_only=True)
    old["format_version"] = 1
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(FundusError, match="format 1.*optic-disc orientation.*Train again"):
        ckpt_mod.load_checkpoint(tmp_path / "old.pt")


def test_bf16_autocast_and_channels_last_paths_run_on_cpu() -> None:
    # the GPU presets use bf16 autocast and channels-last; their code paths run on a CPU too
    import math

    x = (torch.rand(4, 3, 32, 32) * 2 - 1).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([0, 1, 0, 1])
    for trainer in (VAETrainer(MODEL, VAE_HP, device=torch.device("cpu"), fov_mask=None, amp="bf16",
                               channels_last=True),
                    GANTrainer(MODEL, {**GAN_HP, "r1_every": 1}, device=torch.device("cpu"), fov_mask=None,
                               amp="bf16", channels_last=True)):
        if isinstance(trainer, GANTrainer):
            trainer.ada_p = 0.5
        out = trainer.step(x, y, 0, torch.Generator().manual_seed(0))
        assert all(math.isfinite(v) for v in out.values()), out
        sample = trainer.sample(torch.randn(2, 16), y[:2])
        assert sample.dtype == torch.float32 and sample.shape == (2, 3, 32, 32)


@pytest.mark.parametrize("amp", [False, True, "bfloat16", ""])
def test_an_amp_setting_other_than_off_bf16_fp16_is_refused(amp: object) -> None:
    # amp=False was once read as "not off": float16 autocast on a CPU, 16x slower and no error
    x, y = torch.rand(4, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 0, 1])
    t = GANTrainer(MODEL, GAN_HP, device=torch.device("cpu"), fov_mask=None, amp=amp)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="amp must be"):
        t.step(x, y, 1, torch.Generator().manual_seed(0))


def test_runs_saved_before_upsample_detail_vessel_and_lecam_existed_keep_their_behaviour() -> None:
    from fundus_cli.training.config import TrainConfig, config_from_json, hyperparameters, model_config, resolve

    old = config_from_json({"arch": "gan"})
    assert (old.detail, old.upsample, old.vessel, old.vessel_lines, old.lecam) == (0.0, "nearest", 0.0, 0.0, 0.0)
    assert hyperparameters(old)["lecam"] == 0.0
    assert old.ada_target == 0.0 and hyperparameters(old)["ada_target"] == 0.0  # a fixed policy, as those runs had
    assert {"detail": 0.0, "upsample": "nearest", "vessel": 0.0}.items() <= model_config(old, 2).items()
    new = model_config(resolve(TrainConfig(arch="gan"), stored_size=64, n_images=100, n_classes=2,
                               device=torch.device("cpu")), 2)
    assert new["detail"] > 0 and new["upsample"] == "bilinear" and new["vessel"] > 0


def test_vae_runs_saved_before_the_local_latent_keep_the_global_z_alone() -> None:
    from fundus_cli.models import build_model
    from fundus_cli.training.config import TrainConfig, config_from_json, model_config, resolve

    old = model_config(config_from_json({"arch": "vae", "size": 32, "width": 8, "latent_dim": 16}), 2)
    assert old["local_latent"] == 0 and not hasattr(build_model("vae", old), "loc_prior")
    new = model_config(resolve(TrainConfig(arch="vae"), stored_size=64, n_images=100, n_classes=2,
                               device=torch.device("cpu")), 2)
    assert new["local_latent"] == 8 and build_model("vae", new).config.noise_dim == 128 + 8 * 64


def test_vae_line_weight_adds_the_vessel_line_term_to_the_reconstruction_loss() -> None:
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    y = torch.tensor([0, 1, 0, 1])
    outs = []
    for weight in (0.0, 2.0):
        torch.manual_seed(0)
        t = VAETrainer(MODEL, {**VAE_HP, "adv_weight": 0.0, "line_weight": weight}, device=torch.device("cpu"),
                       fov_mask=None)
        outs.append(t.step(x, y, 0, torch.Generator().manual_seed(0)))
    plain, with_lines = outs
    assert "lines" not in plain and with_lines["lines"] > 0
    assert with_lines["recon"] == pytest.approx(plain["recon"] + 2.0 * with_lines["lines"], rel=1e-5)


def test_vae_runs_saved_before_the_line_term_train_without_it_and_bad_weights_are_refused() -> None:
    from fundus_cli.errors import FundusError
    from fundus_cli.training.config import TrainConfig, config_from_json, hyperparameters, resolve

    assert hyperparameters(config_from_json({"arch": "vae"}))["line_weight"] == 0.0
    assert hyperparameters(TrainConfig(arch="vae"))["line_weight"] == 1.0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(FundusError, match="line_weight"):
            resolve(TrainConfig(arch="vae", line_weight=bad), stored_size=64, n_images=100, n_classes=2,
                    device=torch.device("cpu"))


def test_the_resnet_discriminator_trains_without_the_strided_ones_input_channels() -> None:
    """detail and vessel are the strided D's: left unset, the resnet D goes without them (it used to
    take the strided D's defaults and refuse them); set by the user, the model refuses them."""
    from fundus_cli.errors import FundusError
    from fundus_cli.models import build_model
    from fundus_cli.training.config import TrainConfig, model_config, resolve

    def resolved(**kw: object) -> TrainConfig:
        return resolve(TrainConfig(arch="gan", preset="demo", **kw), stored_size=64, n_images=100, n_classes=2,
                       device=torch.device("cpu"))

    resnet = resolved(discriminator="resnet")
    assert (resnet.detail, resnet.vessel, resnet.vessel_lines) == (0.0, 0.0, 0.0)
    assert type(build_model("gan", model_config(resnet, 2)).discriminator).__name__ == "Discriminator"
    assert (resolved().detail, resolved().vessel, resolved().vessel_lines) == (0.0, 0.0, 28.0)
    with pytest.raises(FundusError, match="vessel_lines"):
        build_model("gan", model_config(resolved(discriminator="resnet", vessel_lines=4.0), 2))
    with pytest.raises(FundusError, match="vessel"):
        build_model("gan", model_config(resolved(discriminator="resnet", vessel=4.0), 2))
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(FundusError, match="detail .*give a finite gain"):
            resolved(detail=bad)


def test_r1_runs_the_discriminator_eagerly_when_compiled(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # R1 is a double backward, which compiled graphs refuse ("donated buffers ... create_graph",
    # seen with --compile on CPU and GPU): the R1 pass must not go through torch.compile's module
    from torch import nn

    seen: list[tuple[str, bool]] = []

    class Compiled(nn.Module):  # stands in for torch.compile's wrapper, recording its inputs
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x, *rest):  # type: ignore[no-untyped-def]
            seen.append((type(self.inner).__name__, x.requires_grad))
            return self.inner(x, *rest)

    monkeypatch.setattr(torch, "compile", lambda module, **kw: Compiled(module))
    t = GANTrainer(MODEL, {**GAN_HP, "r1_every": 1, "ada_target": 0.0}, device=torch.device("cpu"), fov_mask=None,
                   compile=True)
    out = t.step(torch.rand(4, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 0, 1]), 0, torch.Generator().manual_seed(0))
    assert "r1" in out and out["r1"] > 0
    d_calls = [needs_grad for name, needs_grad in seen if "Discriminator" in name]
    assert d_calls == [False]  # the compiled D ran the D step only; R1's input (needs grad) went eagerly
    assert any("Generator" in name for name, _ in seen)


def test_lecam_pulls_reals_to_the_fake_average_and_its_anchors_travel_in_the_checkpoint() -> None:
    hp = {**GAN_HP, "ada_target": 0.0, "diffaugment": "", "lecam": 0.5}
    t = GANTrainer(MODEL, hp, device=torch.device("cpu"), fov_mask=None)
    real = torch.tensor([2.0, 2.0, 2.0, 2.0], requires_grad=True)
    fake = torch.tensor([-1.0, -1.0, -1.0, -1.0], requires_grad=True)
    # the first batch sets the anchors (2, -1): penalty = 0.5 * ((2 - -1)^2 + (-1 - 2)^2)
    assert abs(t._lecam_penalty(real, fake).item() - 0.5 * 18) < 1e-6
    assert t._lecam_anchor == (2.0, -1.0)
    # the gradient pulls the real logits down towards the fakes' average and the fakes' up
    real.grad = fake.grad = None
    t._lecam_penalty(real, fake).backward()
    assert (real.grad > 0).all() and (fake.grad < 0).all()
    # anchors move by 1 - LECAM_DECAY towards the batch means, whole-image column only
    t._lecam_anchor = (1.0, 0.0)
    t._lecam_penalty(torch.full((4, 3), 3.0).index_fill(1, torch.tensor([1, 2]), 100.0), torch.zeros(4, 3))
    k = trainers.LECAM_DECAY
    assert abs(t._lecam_anchor[0] - (k * 1.0 + (1 - k) * 3.0)) < 1e-9 and t._lecam_anchor[1] == 0.0
    # a step uses it (the anchors appear), and a resumed trainer continues from the same anchors
    t2 = GANTrainer(MODEL, hp, device=torch.device("cpu"), fov_mask=None)
    logged = t2.step(torch.rand(4, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 0, 1]), 1, torch.Generator().manual_seed(0))
    assert t2._lecam_anchor is not None
    assert logged["lecam"] > 0
    other = GANTrainer(MODEL, hp, device=torch.device("cpu"), fov_mask=None)
    other.load_state(t2.state())
    assert other._lecam_anchor == t2._lecam_anchor
    # weight 0 (what presets give above 64 px): no penalty, no anchors
    off = GANTrainer(MODEL, {**hp, "lecam": 0.0}, device=torch.device("cpu"), fov_mask=None)
    logged = off.step(torch.rand(4, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 0, 1]), 1, torch.Generator().manual_seed(0))
    assert off._lecam_anchor is None and off.state()["lecam"] is None and "lecam" not in logged


def test_the_logged_d_loss_is_the_adversarial_loss_alone_and_lecam_its_own_column() -> None:
    x, y = torch.rand(4, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 0, 1])
    logged = {}
    for weight in (0.0, 5.0):
        torch.manual_seed(3)
        t = GANTrainer(MODEL, {**GAN_HP, "ada_target": 0.0, "diffaugment": "", "lecam": weight},
                       device=torch.device("cpu"), fov_mask=None)
        logged[weight] = t.step(x, y, 1, torch.Generator().manual_seed(0))
    # same weights, same batch: the same adversarial loss, whatever the penalty added to it
    assert logged[0.0]["d_loss"] == pytest.approx(logged[5.0]["d_loss"], rel=1e-6)
    assert logged[5.0]["lecam"] > 0 and "lecam" not in logged[0.0]



def test_the_demo_gan_gives_its_d_the_line_strength_at_64_px_and_the_top_hat_elsewhere() -> None:
    """vessel_lines and detail 0 were measured in the demo preset at 64 px only; every other preset
    and size keeps the high-pass copy and the top-hat (detail 2, vessel 8), and what the user sets wins."""
    from fundus_cli.models import build_model
    from fundus_cli.training.config import TrainConfig, model_config, resolve

    def gains(preset: str, size: int, **kw: object) -> tuple[float | None, float | None, float | None]:
        cfg = resolve(TrainConfig(arch="gan", preset=preset, size=size, **kw), stored_size=size, n_images=100,
                      n_classes=2, device=torch.device("cpu"))
        return cfg.detail, cfg.vessel, cfg.vessel_lines

    assert gains("demo", 64) == (0.0, 0.0, 28.0)
    assert gains("demo", 32) == (0.0, 0.0, 28.0)
    assert gains("demo", 128) == (2.0, 8.0, 0.0)
    assert gains("default", 64) == gains("large", 64) == (2.0, 8.0, 0.0)
    assert gains("demo", 64, vessel=8.0, detail=2.0) == (2.0, 8.0, 28.0)
    assert gains("demo", 128, vessel_lines=5.0, vessel=0.0) == (2.0, 0.0, 5.0)
    cfg = resolve(TrainConfig(arch="gan", preset="demo"), stored_size=64, n_images=100, n_classes=2,
                  device=torch.device("cpu"))
    assert build_model("gan", model_config(cfg, 2)).discriminator.features[0].in_channels == 4  # RGB, lines
