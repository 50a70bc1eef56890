"""`fundus train`'s settings: TrainConfig, its presets, and how a config is resolved against the
data and the device, resumed from a checkpoint, and stored in config.json and the checkpoint.

Kept apart from the loop so that checkpoint.py (which validates a stored train_config) and
the commands can read it without the loop.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from fundus_cli.data.dataset import CACHE_CHOICES
from fundus_cli.errors import FundusError
from fundus_cli.models.registry import ARCHITECTURES, architecture

ARCHS = tuple(ARCHITECTURES)
PRESETS = ("demo", "default", "large")
AMP_CHOICES = ("auto", "off", "bf16", "fp16")

# Settings per preset; "steps_cpu"/"steps_gpu" make the default run length suit the device.
# Under an architecture's name: its own batch, learning rate and DiffAugment policy (over the
# preset's); steps_* must name every architecture. The demo GAN was tuned by looking at sample grids after 300 CPU-seconds on 160 phantoms at 64 px: batch 16 (twice
# the steps for the time), lr 5e-4 (sharper optic discs than 2e-4), and no DiffAugment: over a
# few minutes the discriminator has no time to overfit 100+ images, translation slowed the
# learning of detail, colour jitter flattened the colour variety, and cutout (the earlier
# choice) cost vessels and variety. 10 CPU-minutes on 413 IDRiD photographs at 64 px, two seeds:
# recall 0.44/0.61 with cutout -> 0.74/0.71 without, vessel-density distance 0.016/0.016 ->
# 0.0136/0.0144, mean vessel fraction 0.0116/0.0098 -> 0.0122/0.0114 (real 0.026), KID mixed;
# 5 CPU-minutes on the demo's phantoms: vessel-density distance 0.035 -> 0.009.
# "over_64": an architecture's settings above 64 px, over the ones before. The demo GAN's lr 5e-4
# was tuned at 64 px; at 128 px (IDRiD, 413 photographs, 120 CPU-minutes, one seed, sampled with
# standing statistics) it collapsed to look-alike samples with wormy streaks (recall 0.00, KID
# 1.27 x1e-3, audit FAIL), and lr 2e-4 kept their variety (recall 0.42, KID 0.86, colour
# distance 9.0 -> 4.0, audit PASS) but drew half the real vessel fraction (0.033 vs 0.066).
# LeCam (GAN, weight 0.1) up to 64 px, off above: at 64 px (413 IDRiD photographs, 30 CPU-minutes,
# two seeds) it lowered KID and the classifier-feature KID; at 128 px (120 CPU-minutes, with the
# vessel map at 8) the samples collapsed to one look-alike with a ghost disc on both sides by
# step 1,500 (recall 0.18 at the end against 0.43 without it; KID 0.38 against 1.57 x1e-3).
# ADA (ada_target 0.6) in the presets that augment: with _LONG_AUG on every image the D never told
# reals from fakes (hinge loss 2.0, D(real) = D(fake)) and the samples collapsed to one orange disc,
# at 256 px on an H200 (large, 1,141 steps) and at 64 px on a CPU (large's and default's settings);
# default at 64 px, 20 CPU-minutes on IDRiD, fixed -> ADA: recall 0.00 -> 0.25, KID 2.55 -> 0.56 x1e-3.
# The demo GAN at 64 px gives its D the Hessian line strength instead of the top-hat (vessel_lines
# 28, vessel 0; more vessels and sharpness at the real baseline's on two seeds, KID excess +0.25:
# models/d_inputs.py has the figures), and no high-pass copy (detail 0; three seeds: vessel distance
# 0.0058 / 0.0076 / 0.0084 -> 0.0064 / 0.0064 / 0.0068, mean KID excess 0.30 -> 0.20, a tenth more
# steps; benchmarks/RESULTS.md). Not measured above 64 px or in the other presets, which keep both.
STRIDED_D_INPUTS = {"detail": 2.0, "vessel": 8.0, "vessel_lines": 0.0}  # the strided D's input gains (models/d_inputs.py says why)
_LONG_AUG = "color,translation,cutout"  # DiffAugment's policy for small data (Zhao et al. 2020)
_PRESET_VALUES: dict[str, dict[str, Any]] = {
    "demo": {"size": 64, "batch": 32, "width": 16, "latent_dim": 128,
             "gan": {"batch": 16, "lr": 5e-4, "diffaugment": "", "lecam": 0.1, "detail": 0.0, "vessel": 0.0,
                     "vessel_lines": 28.0},
             "over_64": {"gan": {"lr": 2e-4, "lecam": 0.0, **STRIDED_D_INPUTS}},  # the D's usual inputs again
             "steps_cpu": {"vae": 400, "gan": 1500}, "steps_gpu": {"vae": 3000, "gan": 5000}},
    "default": {"size": 64, "size_gpu": 128, "batch": 32, "width": 32, "width_gpu": 64, "latent_dim": 128,
                "gan": {"batch": 32, "lr": 2e-4, "diffaugment": _LONG_AUG, "ada_target": 0.6, "lecam": 0.1},
                "over_64": {"gan": {"lecam": 0.0}},
                "steps_cpu": {"vae": 4000, "gan": 6000}, "steps_gpu": {"vae": 30000, "gan": 50000}},
    "large": {"size": 256, "batch": 64, "width": 64, "latent_dim": 256,
              "gan": {"batch": 64, "lr": 2e-4, "diffaugment": _LONG_AUG, "ada_target": 0.6, "lecam": 0.1},
              "over_64": {"gan": {"lecam": 0.0}},
              "steps_cpu": {"vae": 20000, "gan": 30000}, "steps_gpu": {"vae": 100000, "gan": 150000}},
}


@dataclass(frozen=True)
class TrainConfig:
    data: Path = Path("data/train.h5")  # dataset from `fundus ingest`
    arch: str = "vae"  # vae | gan
    out: Path | None = None  # run folder; default runs/<arch>
    preset: str = "default"  # demo (a few CPU minutes) | default | large (GPU)
    size: int | None = None  # training resolution (power of two, 32..256, <= stored size)
    steps: int | None = None  # optimisation steps (default: by preset and device)
    epochs: float | None = None  # alternative to steps: passes over the data
    max_minutes: float | None = None  # stop (with a checkpoint) after this much wall-clock time
    max_cpu_minutes: float | None = None  # ... or after this much process CPU time / torch threads
    batch: int | None = None  # images per step (per process under torchrun)
    lr: float | None = None  # learning rate (GAN: generator and discriminator)
    width: int | None = None  # network width at full resolution
    latent_dim: int | None = None  # size of z
    seed: int = 0  # everything random derives from it
    device: str = "auto"  # auto | cpu | cuda
    conditional: bool = False  # condition on the labels (so `sample --label` works)
    mirror: bool = True  # use the mirror symmetry of left and right eyes (see orient)
    orient: bool = True  # with mirror: turn every optic disc to the right (else random flips)
    cache: str = "auto"  # auto | memory | stream
    snapshot_every: int | None = None  # steps between checkpoints (default: ~10 per run)
    sample_every: int | None = None  # steps between sample grids (default: ~5 per run)
    log_every: int = 10  # steps between metrics.jsonl lines
    keep: int = 3  # numbered checkpoints to keep
    amp: str = "auto"  # mixed precision: auto (bf16 on a GPU that has it) | off | bf16 | fp16
    compile: bool = False  # torch.compile the networks
    resume: bool = False  # continue from <out>/checkpoint.pt
    force: bool = False  # overwrite an existing run / resume despite a mismatch
    # VAE
    beta: float = 1.0  # KL weight after warm-up
    kl_warmup: int | None = None  # steps of linear KL warm-up (default: a fifth of the run)
    recon: str = "l1"  # l1 | l2
    ssim_weight: float = 0.2  # share of (1 - SSIM) in the reconstruction loss
    adv_weight: float = 0.5  # adversarial term (patch discriminator), relative to the reconstruction's (0 = off)
    local_latent: int = 8  # VAE: channels of a spatial latent on the 8x8 grid beside the global z (0 = off)
    line_weight: float = 1.0  # VAE: weight of the L1 between the reconstruction's and the photograph's vessel-line maps (0 = off)
    # GAN
    gan_loss: str = "hinge"  # hinge | nonsaturating
    discriminator: str = "strided"  # strided (learns detail fast) | resnet
    patch_head: bool = False  # discriminator also judges 10x10-pixel neighbourhoods
    upsample: str = "bilinear"  # generator upsampling: bilinear | nearest (blocky on short runs)
    detail: float | None = None  # GAN: strided D also sees the image's high-pass copy times this (0 = off; default 2, 0 in the demo preset at 64 px)
    vessel: float | None = None  # GAN: strided D also sees the green channel's dark thin lines times this (0 = off; default 8, 0 in the demo preset at 64 px)
    vessel_lines: float | None = None  # GAN: strided D also sees the green channel's Hessian line strength times this (0 = off; default 28 in the demo preset at 64 px, else 0)
    ada_target: float | None = None  # adaptive augmentation: target E[sign D(real)] (0 = fixed policy; default: by preset)
    lecam: float | None = None  # GAN: LeCam regularisation of D, its weight (0 = off; default: by preset and size)
    lr_d: float | None = None  # discriminator learning rate (default: lr)
    r1_gamma: float = 0.1  # R1 penalty weight on reals (0 = off)
    r1_every: int = 4  # lazy R1: apply every k steps, scaled by k
    diffaugment: str | None = None  # DiffAugment policy ("" = off; default: by preset)
    ema_decay: float = 0.999  # generator EMA decay (ramped up at the start)



def config_to_json(cfg: TrainConfig) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}


# Settings added after runs were saved, with the behaviour those runs had, so that a resumed
# run's config.json says what its networks do.
ADDED_SETTINGS: dict[str, Any] = {"line_weight": 0.0, "local_latent": 0, "vessel_lines": 0.0, "upsample": "nearest", "detail": 0.0, "vessel": 0.0, "lecam": 0.0, "ada_target": 0.0}


def config_from_json(d: dict[str, Any]) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(d) - known
    if unknown:
        raise FundusError(f"unknown training settings {sorted(unknown)} in a checkpoint or config file")
    values = {**ADDED_SETTINGS, **d}
    for key in ("data", "out"):
        if values.get(key) is not None:
            values[key] = Path(values[key])
    return TrainConfig(**values)


def resolve(cfg: TrainConfig, *, stored_size: int, n_images: int, n_classes: int, device: torch.device,
            world: int = 1) -> TrainConfig:
    """Fill every None from the preset, the data and the device; validate."""
    _check_choices(cfg)
    p = _PRESET_VALUES[cfg.preset]
    gpu = device.type == "cuda"
    size = _size(cfg, p, gpu, stored_size)
    gp = _arch_values(cfg, size)
    batch = _batch(cfg, n_images, world, size)
    if cfg.conditional and n_classes < 2:
        raise FundusError(f"--conditional needs labels with at least 2 classes; {cfg.data} has "
                          f"{n_classes}. Ingest with --labels, or train without --conditional.")
    steps = _steps(cfg, p, gpu, steps_per_epoch=max(1, n_images // (batch * world)))
    return replace(
        cfg,
        out=cfg.out or Path("runs") / cfg.arch,
        size=size,
        batch=batch,
        steps=steps,
        lr=cfg.lr or gp.get("lr", 1e-3),
        lr_d=cfg.lr_d or cfg.lr or gp.get("lr", 2e-4),
        diffaugment=cfg.diffaugment if cfg.diffaugment is not None else gp.get("diffaugment", ""),
        lecam=cfg.lecam if cfg.lecam is not None else gp.get("lecam", 0.0),
        # the strided D's input channels: off by default for the resnet D, which has none
        **{name: getattr(cfg, name) if getattr(cfg, name) is not None
           else gp.get(name, default) * (cfg.discriminator == "strided") for name, default in STRIDED_D_INPUTS.items()},
        ada_target=cfg.ada_target if cfg.ada_target is not None else gp.get("ada_target", 0.0),
        width=cfg.width or (p.get("width_gpu", p["width"]) if gpu else p["width"]),
        latent_dim=cfg.latent_dim or p["latent_dim"],
        snapshot_every=cfg.snapshot_every or max(1, steps // 10),
        sample_every=cfg.sample_every or max(1, steps // 5),
        kl_warmup=cfg.kl_warmup if cfg.kl_warmup is not None else steps // 5,
        amp=_amp(cfg, gpu),
    )


def _check_choices(cfg: TrainConfig) -> None:
    """Every option that takes one of a few names has one of them."""
    if cfg.arch not in ARCHS:
        raise FundusError(f"--arch {cfg.arch!r}: choose one of {', '.join(ARCHS)}.")
    if cfg.preset not in PRESETS:
        raise FundusError(f"--preset {cfg.preset!r}: choose one of {', '.join(PRESETS)}.")
    if cfg.amp not in AMP_CHOICES:
        raise FundusError(f"--amp {cfg.amp!r}: choose one of {', '.join(AMP_CHOICES)}.")
    if cfg.cache not in CACHE_CHOICES:
        raise FundusError(f"--cache {cfg.cache!r}: choose one of {', '.join(CACHE_CHOICES)}.")
    if cfg.recon not in ("l1", "l2"):
        raise FundusError(f"--recon {cfg.recon!r}: choose l1 or l2.")
    if cfg.gan_loss not in ("hinge", "nonsaturating"):
        raise FundusError(f"--gan-loss {cfg.gan_loss!r}: choose hinge or nonsaturating.")
    if cfg.discriminator not in ("strided", "resnet"):
        raise FundusError(f"--discriminator {cfg.discriminator!r}: choose strided or resnet.")
    for name in STRIDED_D_INPUTS:
        value = getattr(cfg, name)
        if value is not None and not 0 <= value < math.inf:  # also refuses NaN
            raise FundusError(f"{name} {value!r}: give a finite gain >= 0 (0 = off).")
    if not 0 <= cfg.line_weight < math.inf:  # also refuses NaN
        raise FundusError(f"line_weight {cfg.line_weight!r}: give a finite weight >= 0 (0 = off).")
    if cfg.lecam is not None and not 0 <= cfg.lecam < math.inf:  # also refuses NaN
        raise FundusError(f"lecam {cfg.lecam!r}: give a finite weight >= 0 (0 = off).")
    if cfg.ada_target is not None and not 0 <= cfg.ada_target < 1:  # also refuses NaN
        raise FundusError(f"ada_target {cfg.ada_target!r}: give a target in [0, 1) (0 = a fixed augmentation policy).")


def _size(cfg: TrainConfig, p: dict[str, Any], gpu: bool, stored_size: int) -> int:
    """The training resolution: --size, else the preset's (for the device), at most what the data holds."""
    size = cfg.size or min(p.get("size_gpu", p["size"]) if gpu else p["size"], stored_size)
    if size not in (32, 64, 128, 256):
        raise FundusError(f"--size {size}: the networks train at 32, 64, 128 or 256 px.")
    if size > stored_size:
        raise FundusError(f"--size {size} is larger than the {stored_size} px stored in {cfg.data}; "
                          f"use --size {stored_size} or less, or ingest with a larger --size.")
    return size


def _batch(cfg: TrainConfig, n_images: int, world: int, size: int) -> int:
    """Images per step and process: --batch, else the preset's, shrunk to fit a small dataset."""
    if n_images < world:
        raise FundusError(f"{cfg.data} holds {n_images} images, fewer than the {world} processes; ingest more "
                          "images.")
    batch = cfg.batch or default_batch(cfg, size)
    if cfg.batch is None:
        # the preset's batch is a default, not a request: a small dataset gets a smaller batch
        # (`train` logs it); only an explicit --batch that cannot work is refused
        batch = min(batch, n_images // world)
    if batch < 1:
        raise FundusError(f"--batch {batch}: give a positive batch size.")
    if n_images < batch * world:
        raise FundusError(f"{cfg.data} holds {n_images} images, fewer than one batch of {batch}"
                          f"{f' x {world} processes' if world > 1 else ''}. Use --batch {n_images // world} "
                          "or less, or ingest more images.")
    return batch


def _steps(cfg: TrainConfig, p: dict[str, Any], gpu: bool, *, steps_per_epoch: int) -> int:
    """The run's length: --steps, --epochs, or the preset's for the architecture and the device."""
    if cfg.steps is not None and cfg.epochs is not None:
        raise FundusError("give --steps or --epochs, not both.")
    if cfg.epochs is not None:
        steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    else:
        steps = cfg.steps if cfg.steps is not None else p["steps_gpu" if gpu else "steps_cpu"][cfg.arch]
    if steps < 1:
        raise FundusError(f"--steps {steps}: give a positive number of steps.")
    return steps


def _amp(cfg: TrainConfig, gpu: bool) -> str:
    """Mixed precision: auto is bf16 on a GPU that has it, else off; a CPU refuses any other."""
    amp = cfg.amp
    if amp == "auto":
        amp = "bf16" if gpu and torch.cuda.is_bf16_supported() else "off"
    if amp != "off" and not gpu:
        raise FundusError(f"--amp {amp} is for CUDA GPUs; on a CPU use --amp off (the default).")
    return amp


# Settings that may change when a run resumes: its length, its budget, how it reports and
# where it runs. Every other setting defines the run and comes from the checkpoint.
RESUMABLE = ("steps", "epochs", "max_minutes", "max_cpu_minutes", "snapshot_every", "sample_every", "log_every",
             "keep", "device", "cache", "force", "data", "out", "resume")


def resume_config(given: TrainConfig, saved: TrainConfig, run_dir: Path) -> TrainConfig:
    """The checkpoint's settings with the resumable ones the user gave applied. A setting that
    defines the run, given with a value other than the default and other than the saved one,
    is refused (never silently dropped)."""
    defaults = TrainConfig()
    changed = [f.name for f in fields(TrainConfig) if f.name not in RESUMABLE
               and getattr(given, f.name) != getattr(defaults, f.name)
               and getattr(given, f.name) != getattr(saved, f.name)]
    if changed:
        listing = ", ".join(f"--{n.replace('_', '-')} ({getattr(given, n)!r}, saved {getattr(saved, n)!r})"
                            for n in changed)
        raise FundusError(f"--resume continues {run_dir} with its saved settings; these cannot change: {listing}. "
                          "Drop them, or start a new run with --out (or --force to start over there).")
    applied = {n: getattr(given, n) for n in ("max_minutes", "max_cpu_minutes", "snapshot_every", "sample_every")
               if getattr(given, n) is not None}
    for n in ("log_every", "keep"):
        if getattr(given, n) != getattr(defaults, n):
            applied[n] = getattr(given, n)
    # the saved steps are already resolved (from --epochs too); new --steps or --epochs extend the run
    steps = given.steps or (None if given.epochs is not None else saved.steps)
    return replace(saved, **applied, steps=steps, epochs=None if given.steps else given.epochs,
                   device=given.device, cache=given.cache, resume=True, force=given.force, data=given.data,
                   out=run_dir)


def model_config(cfg: TrainConfig, n_classes: int) -> dict[str, Any]:
    # Both models use the mirror symmetry of left and right eyes by learning one orientation
    # (optic disc on the right) and mirroring half of their samples (training/orientation.py).
    mc: dict[str, Any] = {"image_size": cfg.size, "width": cfg.width, "latent_dim": cfg.latent_dim,
                          "num_classes": n_classes if cfg.conditional else 0, "orient": cfg.mirror and cfg.orient}
    mc.update({name: kind(getattr(cfg, name)) for name, kind in architecture(cfg.arch).train_options.items()})
    return mc


def hyperparameters(cfg: TrainConfig) -> dict[str, Any]:
    return {"lr": cfg.lr, "lr_d": cfg.lr_d, "beta": cfg.beta, "kl_warmup": cfg.kl_warmup, "recon": cfg.recon,
            "ssim_weight": cfg.ssim_weight, "gan_loss": cfg.gan_loss, "r1_gamma": cfg.r1_gamma,
            "r1_every": cfg.r1_every, "diffaugment": cfg.diffaugment, "ema_decay": cfg.ema_decay,
            "ada_target": cfg.ada_target, "adv_weight": cfg.adv_weight, "lecam": cfg.lecam,
            "line_weight": cfg.line_weight}


def _arch_values(cfg: TrainConfig, size: int) -> dict[str, Any]:
    """The preset's settings for the architecture at `size` px: its own, then its "over_64" ones above 64 px."""
    p = _PRESET_VALUES[cfg.preset]
    return {**p.get(cfg.arch, {}), **(p.get("over_64", {}).get(cfg.arch, {}) if size > 64 else {})}


def default_batch(cfg: TrainConfig, size: int | None = None) -> int:
    """The preset's batch for the architecture at `size` px (default: the resolved cfg.size)."""
    size = size if size is not None else cfg.size
    assert size is not None, "default_batch needs a size: pass it, or a resolved config"
    return int(_arch_values(cfg, size).get("batch", _PRESET_VALUES[cfg.preset]["batch"]))
