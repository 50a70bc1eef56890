"""One optimisation step per architecture, and sampling from a trained model.

Each trainer owns its networks, optimizers and EMA copies and exposes the same small
surface to the loop: `step(x, y, step)`, `sample(z, y)`, and `state()`/`load_state()` for
checkpoints. All randomness comes from the torch.Generator the loop passes in, so a
resumed run draws exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from fundus_cli.models import build_model
from fundus_cli.models.gan import (d_hinge_loss, d_nonsaturating_loss, g_hinge_loss, g_nonsaturating_loss,
                                   r1_penalty)
from fundus_cli.models.layers import set_fov_mask
from fundus_cli.models.vae import beta_schedule, kl_divergence, reconstruction_loss
from fundus_cli.training.diffaugment import diff_augment
from fundus_cli.training.ema import ema_update, make_ema


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _ema_decay(step: int, decay: float) -> float:
    # Early on the average would be dominated by the random initial weights; ramp it up.
    return min(decay, (1.0 + step) / (10.0 + step))


def _wrap(module: nn.Module, ddp: bool, device: torch.device) -> nn.Module:
    if not ddp:
        return module
    return DDP(module, device_ids=[device.index] if device.type == "cuda" else None)


class _VAEForward(nn.Module):
    """Encode, reparameterise with given noise, decode: one forward for DDP, with the noise
    drawn by the loop's generator so that runs are reproducible and resumable."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: Tensor, y: Tensor | None, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.vae.encode(x, y)
        z = mu.float() + torch.exp(0.5 * logvar.float()) * eps
        return self.vae.decode(z, y), mu, logvar


class VAETrainer:
    arch = "vae"

    def __init__(self, model_config: dict[str, Any], hp: dict[str, Any], *, device: torch.device,
                 fov_mask: Tensor | None, ddp: bool = False, amp: str = "off", channels_last: bool = False,
                 compile: bool = False) -> None:
        self.hp, self.device, self.amp = hp, device, amp
        self.model = build_model("vae", model_config).to(device)
        if fov_mask is not None:
            set_fov_mask(self.model, fov_mask.to(device))
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = make_ema(self.model)
        self.net = _wrap(_VAEForward(self.model), ddp, device)
        if compile:
            self.net = torch.compile(self.net)  # type: ignore[assignment]
        self.opt = torch.optim.Adam(self.model.parameters(), lr=hp["lr"], betas=(0.9, 0.999))

    def step(self, x: Tensor, y: Tensor | None, step: int, gen: torch.Generator) -> dict[str, float]:
        self.model.train()
        eps = torch.randn(x.shape[0], self.latent_dim, generator=gen).to(self.device)
        with _autocast(self.device, self.amp):
            x_hat, mu, logvar = self.net(x, y, eps)
        rec = reconstruction_loss(x_hat, x, kind=self.hp["recon"], ssim_weight=self.hp["ssim_weight"])
        kl = kl_divergence(mu, logvar)
        beta = beta_schedule(step, beta=self.hp["beta"], warmup_steps=self.hp["kl_warmup"])
        loss = rec + beta * kl
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        ema_update(self.ema, self.model, _ema_decay(step, self.hp["ema_decay"]))
        return {"loss": loss.item(), "recon": rec.item(), "kl": kl.item(), "beta": beta}

    @torch.no_grad()
    def sample(self, z: Tensor, y: Tensor | None, *, temperature: float = 1.0) -> Tensor:
        return self.ema.decode(z * temperature, y).float()

    @property
    def latent_dim(self) -> int:
        return int(self.model.config.latent_dim)

    def state(self) -> dict[str, Any]:
        return {"models": {"vae": self.model.state_dict()}, "ema": {"vae": self.ema.state_dict()},
                "optimizers": {"vae": self.opt.state_dict()}}

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["models"]["vae"])
        self.ema.load_state_dict(ckpt["ema"]["vae"])
        self.opt.load_state_dict(ckpt["optimizers"]["vae"])


class GANTrainer:
    arch = "gan"

    def __init__(self, model_config: dict[str, Any], hp: dict[str, Any], *, device: torch.device,
                 fov_mask: Tensor | None, ddp: bool = False, amp: str = "off", channels_last: bool = False,
                 compile: bool = False) -> None:
        self.hp, self.device, self.amp = hp, device, amp
        self.gan = build_model("gan", model_config).to(device)
        if fov_mask is not None:
            set_fov_mask(self.gan, fov_mask.to(device))
        if channels_last:
            self.gan = self.gan.to(memory_format=torch.channels_last)
        self.G, self.D = self.gan.generator, self.gan.discriminator
        self.G_ema = make_ema(self.G)
        self.G_net, self.D_net = _wrap(self.G, ddp, device), _wrap(self.D, ddp, device)
        if compile:
            self.G_net, self.D_net = torch.compile(self.G_net), torch.compile(self.D_net)  # type: ignore[assignment]
        betas = (0.0, 0.99)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=hp["lr"], betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=hp["lr_d"], betas=betas)
        if hp["gan_loss"] == "hinge":
            self.d_loss, self.g_loss = d_hinge_loss, g_hinge_loss
        else:
            self.d_loss, self.g_loss = d_nonsaturating_loss, g_nonsaturating_loss

    def _z(self, n: int, gen: torch.Generator) -> Tensor:
        return torch.randn(n, self.G.config.latent_dim, generator=gen).to(self.device)

    def _aug(self, x: Tensor, gen: torch.Generator) -> Tensor:
        policy = self.hp["diffaugment"]
        return diff_augment(x, policy, generator=gen) if policy else x

    def step(self, x: Tensor, y: Tensor | None, step: int, gen: torch.Generator) -> dict[str, float]:
        b = x.shape[0]
        self.G.train()
        self.D.train()
        # -- discriminator: reals and fakes in one forward (DDP expects one forward per backward)
        self.D.requires_grad_(True)
        with torch.no_grad(), _autocast(self.device, self.amp):
            fake = self.G_net(self._z(b, gen), y)
        yy = None if y is None else torch.cat([y, y])
        with _autocast(self.device, self.amp):
            logits = self.D_net(torch.cat([self._aug(x, gen), self._aug(fake.to(x.dtype), gen)]), yy)
        d_loss = self.d_loss(logits[:b], logits[b:])
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        logits = logits.detach().float()
        out = {"d_loss": d_loss.item(), "d_real": logits[:b].mean().item(), "d_fake": logits[b:].mean().item()}
        # -- lazy R1 on augmented reals every r1_every steps, scaled up to match (StyleGAN2)
        every, gamma = self.hp["r1_every"], self.hp["r1_gamma"]
        if gamma > 0 and step % every == 0:
            real = self._aug(x, gen).detach().requires_grad_(True)
            with _autocast(self.device, self.amp):
                real_logits = self.D_net(real, y)
            r1 = r1_penalty(real_logits, real)
            self.opt_d.zero_grad(set_to_none=True)
            # The zero term puts every D parameter in the graph (a bias does not change the
            # input gradient); DDP waits for a gradient from each parameter.
            (r1 * (gamma / 2) * every + 0 * real_logits.float().mean()).backward()
            self.opt_d.step()
            out["r1"] = r1.item()
        # -- generator: D's weights are frozen and it is called outside DDP (no gradient sync)
        self.D.requires_grad_(False)
        with _autocast(self.device, self.amp):
            fake = self.G_net(self._z(b, gen), y)
            g_logits = self.D(self._aug(fake, gen), y)
        g_loss = self.g_loss(g_logits)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        self.D.requires_grad_(True)
        ema_update(self.G_ema, self.G, _ema_decay(step, self.hp["ema_decay"]))
        out["g_loss"] = g_loss.item()
        return out

    @torch.no_grad()
    def sample(self, z: Tensor, y: Tensor | None, *, temperature: float = 1.0) -> Tensor:
        # Truncation: shrink z towards the mean (temperature < 1 trades variety for fidelity).
        return self.G_ema(z * temperature, y).float()

    @property
    def latent_dim(self) -> int:
        return int(self.G.config.latent_dim)

    def state(self) -> dict[str, Any]:
        return {"models": {"generator": self.G.state_dict(), "discriminator": self.D.state_dict()},
                "ema": {"generator": self.G_ema.state_dict()},
                "optimizers": {"generator": self.opt_g.state_dict(), "discriminator": self.opt_d.state_dict()}}

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.G.load_state_dict(ckpt["models"]["generator"])
        self.D.load_state_dict(ckpt["models"]["discriminator"])
        self.G_ema.load_state_dict(ckpt["ema"]["generator"])
        self.opt_g.load_state_dict(ckpt["optimizers"]["generator"])
        self.opt_d.load_state_dict(ckpt["optimizers"]["discriminator"])


TRAINERS = {"vae": VAETrainer, "gan": GANTrainer}

