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
from fundus_cli.models.vae import beta_schedule, kl_divergence, line_loss, reconstruction_loss
from fundus_cli.training.diffaugment import diff_augment
from fundus_cli.training.ema import ema_update, make_ema, standing_statistics


ADA_INTERVAL = 4  # steps between adjustments of the augmentation probability
# Standing statistics of the EMA generator (training/ema.py): 8 batches of 64 fixed latents (on a
# 30-minute 64-px GAN, KID 0.60 / 0.50 / 0.46 x1e-3 with 4 / 16 / 32 batches; 8 cost 3 CPU-s at 64 px).
STANDING_SEED, STANDING_BATCH, STANDING_BATCHES = 20190928, 64, 8
ADA_IMAGES = 20_000  # real images over which p can move from 0 to 1 (StyleGAN2-ADA: 500k; our runs are short)
LECAM_DECAY = 0.99  # moving average of D's outputs that LeCam regularisation pulls towards (as in its paper)


def _whole_image(logits: Tensor) -> Tensor:
    """The whole-image logits (B,) of a discriminator's output: (B,) as is, or column 0 of the
    (B, 1 + P) logits of one with a patch head."""
    return logits[:, 0] if logits.dim() == 2 else logits


_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    # strict: amp=False was once read as "not off" and ran float16 on a CPU, 16x slower per step
    if amp == "off":
        return contextlib.nullcontext()
    if amp not in _AMP_DTYPES:
        raise ValueError(f"amp must be 'off', 'bf16' or 'fp16' (resolved by training.config), not {amp!r}")
    return torch.autocast(device_type=device.type, dtype=_AMP_DTYPES[amp])


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

    def forward(self, x: Tensor, y: Tensor | None, eps: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.vae.reconstruct(x, y, eps)


class VAETrainer:
    """beta-VAE, optionally with an adversarial term (hp["adv_weight"] > 0, VAE-GAN style) and
    a vessel-line term in its reconstruction loss (hp["line_weight"] > 0, `line_loss`).

    With the adversarial term a patch discriminator (the GAN's strided D with its patch head)
    learns to tell training photographs from reconstructions and from decoded prior samples,
    and the decoder is also trained to fool it, so that it draws vessels and texture instead of
    the per-pixel average that L1/SSIM alone reward. Its weight is VQGAN's adaptive one
    (Esser et al. 2021): the ratio of the reconstruction and adversarial gradient norms at the
    decoder's last layer, times `adv_weight`, so it needs no tuning against the pixel count.
    """

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
        self.adv_weight = float(hp.get("adv_weight", 0.0))
        self.D: nn.Module | None = None
        if self.adv_weight > 0:
            mc = self.model.config
            self.D = build_model("gan", {"image_size": mc.image_size, "width": mc.width,
                                         "latent_dim": mc.latent_dim, "num_classes": mc.num_classes,
                                         "patch_head": True}).discriminator.to(device)
            if channels_last:
                self.D = self.D.to(memory_format=torch.channels_last)
            self.D_net = _wrap(self.D, ddp, device)
            self.opt_d = torch.optim.Adam(self.D.parameters(), lr=hp["lr"], betas=(0.5, 0.99))

    def step(self, x: Tensor, y: Tensor | None, step: int, gen: torch.Generator) -> dict[str, float]:
        self.model.train()
        eps = torch.randn(x.shape[0], self.latent_dim, generator=gen).to(self.device)
        with _autocast(self.device, self.amp):
            x_hat, mu, logvar, kl_local = self.net(x, y, eps)
        rec = reconstruction_loss(x_hat, x, kind=self.hp["recon"], ssim_weight=self.hp["ssim_weight"])
        line_weight = float(self.hp.get("line_weight", 0.0))
        if line_weight > 0:
            lines = line_loss(x_hat, x)
            rec = rec + line_weight * lines  # part of the reconstruction term, also for the adversarial weight
        kl = kl_divergence(mu, logvar) + kl_local.mean()
        beta = beta_schedule(step, beta=self.hp["beta"], warmup_steps=self.hp["kl_warmup"])
        loss = rec + beta * kl
        out = {"recon": rec.item(), "kl": kl.item(), "beta": beta}
        if self.model.config.local_latent:
            out["kl_local"] = kl_local.mean().item()
        if line_weight > 0:
            out["lines"] = lines.item()
        if self.D is not None:
            loss = loss + self._adversarial(x, x_hat, rec, y, gen, out)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        ema_update(self.ema, self.model, _ema_decay(step, self.hp["ema_decay"]))
        return {"loss": loss.item(), **out}

    def _adversarial(self, x: Tensor, x_hat: Tensor, rec: Tensor, y: Tensor | None, gen: torch.Generator,
                     out: dict[str, float]) -> Tensor:
        """One discriminator step, then the decoder's adaptive-weighted adversarial loss."""
        assert self.D is not None
        b = x.shape[0]
        z = torch.randn(b, self.latent_dim, generator=gen).to(self.device)
        with _autocast(self.device, self.amp):
            x_prior = self.model.decode(z, y)
        fakes = torch.cat([x_hat, x_prior])
        yy = None if y is None else torch.cat([y, y, y])
        policy = self.hp.get("diffaugment") or ""
        aug = (lambda t: diff_augment(t, policy, generator=gen)) if policy else (lambda t: t)
        self.D.requires_grad_(True)
        with _autocast(self.device, self.amp):
            logits = self.D_net(aug(torch.cat([x, fakes.detach().to(x.dtype)])), yy)
        d_loss = d_hinge_loss(logits[:b], logits[b:])
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        self.D.requires_grad_(False)
        with _autocast(self.device, self.amp):
            g_logits = self.D(aug(fakes), None if y is None else torch.cat([y, y]))
        adv = g_hinge_loss(g_logits)
        last = self.model.dec_out.weight
        g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
        g_adv = torch.autograd.grad(adv, last, retain_graph=True)[0]
        weight = (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, 1e4).detach() * self.adv_weight
        out.update(d_loss=d_loss.item(), adv=adv.item(), adv_w=float(weight))
        return weight * adv

    @torch.no_grad()
    def sample(self, z: Tensor, y: Tensor | None, *, temperature: float = 1.0) -> Tensor:
        return self.ema.decode(z * temperature, y).float()

    @property
    def latent_dim(self) -> int:
        """Size of the noise one image is drawn from (z, then the local latent's cells)."""
        return int(self.model.config.noise_dim)

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"models": {"vae": self.model.state_dict()}, "ema": {"vae": self.ema.state_dict()},
                                 "optimizers": {"vae": self.opt.state_dict()}}
        if self.D is not None:
            state["models"]["discriminator"] = self.D.state_dict()
            state["optimizers"]["discriminator"] = self.opt_d.state_dict()
        return state

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["models"]["vae"])
        self.ema.load_state_dict(ckpt["ema"]["vae"])
        self.opt.load_state_dict(ckpt["optimizers"]["vae"])
        if self.D is not None:
            self.D.load_state_dict(ckpt["models"]["discriminator"])
            self.opt_d.load_state_dict(ckpt["optimizers"]["discriminator"])


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
        # R1 differentiates D's input gradient (double backward), which compiled graphs refuse:
        # the R1 step (one step in r1_every) runs the same weights eagerly.
        self.D_r1 = self.D_net
        if compile:
            self.G_net, self.D_net = torch.compile(self.G_net), torch.compile(self.D_net)  # type: ignore[assignment]
        betas = (0.0, 0.99)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=hp["lr"], betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=hp["lr_d"], betas=betas)
        if hp["gan_loss"] == "hinge":
            self.d_loss, self.g_loss = d_hinge_loss, g_hinge_loss
        else:
            self.d_loss, self.g_loss = d_nonsaturating_loss, g_nonsaturating_loss
        # Adaptive augmentation (Karras et al. 2020): the share of augmented images follows
        # the discriminator's overfitting signal E[sign D(real)] towards `ada_target`.
        self.ada_target = float(hp.get("ada_target", 0.0))
        self._stats_fresh = False  # True while the EMA generator holds standing statistics for its weights
        self.ada_p = 0.0 if self.ada_target > 0 else 1.0
        self._ada_sum, self._ada_n = 0.0, 0
        # LeCam regularisation (Tseng et al. 2021): D's outputs on reals are pulled towards the
        # moving average of its outputs on fakes and vice versa, which keeps D from drifting
        # apart on a few hundred images. The averages start at the first batch's means.
        self.lecam = float(hp.get("lecam", 0.0))
        self._lecam_anchor: tuple[float, float] | None = None  # (reals, fakes)

    def _lecam_penalty(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        """lecam * (mean (D(x) - a_fake)^2 + mean (D(G(z)) - a_real)^2) on the whole-image logits,
        then the anchors move by LECAM_DECAY."""
        r, f = _whole_image(real_logits).float(), _whole_image(fake_logits).float()
        m_real, m_fake = torch.stack([r.mean(), f.mean()]).tolist()  # one device sync for both
        a_real, a_fake = self._lecam_anchor or (m_real, m_fake)
        penalty = (r - a_fake).square().mean() + (f - a_real).square().mean()
        k = LECAM_DECAY
        self._lecam_anchor = (k * a_real + (1 - k) * m_real, k * a_fake + (1 - k) * m_fake)
        return self.lecam * penalty

    def _z(self, n: int, gen: torch.Generator) -> Tensor:
        return torch.randn(n, self.G.config.latent_dim, generator=gen).to(self.device)

    def _aug(self, x: Tensor, gen: torch.Generator) -> Tensor:
        policy = self.hp["diffaugment"]
        if not policy:
            return x
        if self.ada_target > 0 and self.ada_p == 0.0:
            return x  # nothing to augment: skip the work (p and this test are restored on resume)
        augmented = diff_augment(x, policy, generator=gen)
        if self.ada_target <= 0:
            return augmented
        keep = (torch.rand(x.shape[0], generator=gen) >= self.ada_p).to(x.device)
        return torch.where(keep[:, None, None, None], x, augmented)

    def _ada_adjust(self, real_logits: Tensor, batch: int) -> None:
        """Every ADA_INTERVAL steps move p by up to ADA_INTERVAL * batch / ADA_IMAGES."""
        head = _whole_image(real_logits)
        self._ada_sum += float(torch.sign(head).sum())
        self._ada_n += head.shape[0]
        if self._ada_n >= ADA_INTERVAL * batch:
            r = self._ada_sum / self._ada_n
            step = self._ada_n / ADA_IMAGES
            self.ada_p = min(1.0, max(0.0, self.ada_p + (step if r > self.ada_target else -step)))
            self._ada_sum, self._ada_n = 0.0, 0

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
        lecam = self._lecam_penalty(logits[:b], logits[b:]) if self.lecam > 0 else None
        self.opt_d.zero_grad(set_to_none=True)
        (d_loss if lecam is None else d_loss + lecam).backward()
        self.opt_d.step()
        logits = logits.detach().float()
        # d_loss is the adversarial loss alone, comparable between runs with and without LeCam.
        out = {"d_loss": d_loss.item(), "d_real": logits[:b].mean().item(), "d_fake": logits[b:].mean().item()}
        if lecam is not None:
            out["lecam"] = lecam.item()
        if self.ada_target > 0:
            self._ada_adjust(logits[:b], b)
            out["ada_p"] = self.ada_p
        # -- lazy R1 on augmented reals every r1_every steps, scaled up to match (StyleGAN2)
        every, gamma = self.hp["r1_every"], self.hp["r1_gamma"]
        if gamma > 0 and step % every == 0:
            real = self._aug(x, gen).detach().requires_grad_(True)
            with _autocast(self.device, self.amp):
                real_logits = self.D_r1(real, y)
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
        self._stats_fresh = False  # the EMA has changed: its statistics are due again
        out["g_loss"] = g_loss.item()
        return out

    @torch.no_grad()
    def sample(self, z: Tensor, y: Tensor | None, *, temperature: float = 1.0) -> Tensor:
        # Truncation: shrink z towards the mean (temperature < 1 trades variety for fidelity).
        self._standing_statistics()
        return self.G_ema(z * temperature, y).float()

    def _standing_statistics(self) -> None:
        """The EMA generator's BatchNorm statistics recomputed for its weights (training/ema.py),
        from fixed latents and uniform labels, once per EMA update at most; checkpoints carry them."""
        if self._stats_fresh:
            return
        gen = torch.Generator().manual_seed(STANDING_SEED)
        n_classes = int(self.G.config.num_classes)

        def run() -> None:
            z = torch.randn(STANDING_BATCH, self.latent_dim, generator=gen).to(self.device)
            y = torch.randint(n_classes, (STANDING_BATCH,), generator=gen).to(self.device) if n_classes else None
            with _autocast(self.device, self.amp):
                self.G_ema(z, y)

        standing_statistics(self.G_ema, run, STANDING_BATCHES)
        self._stats_fresh = True

    @property
    def latent_dim(self) -> int:
        return int(self.G.config.latent_dim)

    def state(self) -> dict[str, Any]:
        self._standing_statistics()
        return {"models": {"generator": self.G.state_dict(), "discriminator": self.D.state_dict()},
                "ema": {"generator": self.G_ema.state_dict()},
                "optimizers": {"generator": self.opt_g.state_dict(), "discriminator": self.opt_d.state_dict()},
                "ada": {"p": self.ada_p, "sum": self._ada_sum, "n": self._ada_n},
                "lecam": None if self._lecam_anchor is None else list(self._lecam_anchor)}

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.G.load_state_dict(ckpt["models"]["generator"])
        self.D.load_state_dict(ckpt["models"]["discriminator"])
        self.G_ema.load_state_dict(ckpt["ema"]["generator"])
        self._stats_fresh = False
        self.opt_g.load_state_dict(ckpt["optimizers"]["generator"])
        self.opt_d.load_state_dict(ckpt["optimizers"]["discriminator"])
        # Both entries were checked by load_checkpoint (checkpoint.py: _check_gan_state).
        ada = ckpt.get("ada")
        if ada is not None:
            self.ada_p, self._ada_sum, self._ada_n = float(ada["p"]), float(ada["sum"]), int(ada["n"])
        anchor = ckpt.get("lecam")
        self._lecam_anchor = None if anchor is None else (float(anchor[0]), float(anchor[1]))


TRAINERS = {"vae": VAETrainer, "gan": GANTrainer}

