"""`fundus train`: the training loop shared by the VAE and the GAN.

The loop reads batches (in memory or streamed from HDF5), runs the trainer's step, logs to
metrics.jsonl, writes sample grids from fixed seeds, and writes checkpoints atomically.
It stops cleanly on SIGINT with a checkpoint at the current step, and `--resume` continues
exactly: all randomness is drawn from generators whose state is in the checkpoint, and the
order of the data is a function of the seed and the step alone.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fundus_cli import __version__
from fundus_cli.data.dataset import CACHE_CHOICES, ImageSource, prefetch
from fundus_cli.errors import FundusError
from fundus_cli.fsio import write_json_atomic, write_text_atomic
from fundus_cli.progress import enabled as progress_enabled
from fundus_cli.progress import track
from fundus_cli.training import checkpoint as ckpt_mod
from fundus_cli.training import distributed
from fundus_cli.training.images import save_grid
from fundus_cli.training.orientation import disc_on_left
from fundus_cli.training.trainers import TRAINERS

ARCHS = ("vae", "gan")
PRESETS = ("demo", "default", "large")
AMP_CHOICES = ("auto", "off", "bf16", "fp16")

# Settings per preset; "steps_cpu"/"steps_gpu" make the default run length suit the device.
# "gan" holds the GAN's own batch, learning rate and DiffAugment policy. The demo GAN was tuned
# by looking at sample grids after 300 CPU-seconds on 160 phantoms at 64 px: batch 16 (twice
# the steps for the time), lr 5e-4 (sharper optic discs than 2e-4), cutout only (translation
# slowed the learning of detail, colour jitter flattened the colour variety; over a few
# minutes the discriminator has no time to overfit 100+ images anyway).
_LONG_AUG = "color,translation,cutout"  # DiffAugment's policy for small data (Zhao et al. 2020)
_PRESET_VALUES: dict[str, dict[str, Any]] = {
    "demo": {"size": 64, "batch": 32, "width": 16, "latent_dim": 128,
             "gan": {"batch": 16, "lr": 5e-4, "diffaugment": "cutout"},
             "steps_cpu": {"vae": 400, "gan": 1500}, "steps_gpu": {"vae": 3000, "gan": 5000}},
    "default": {"size": 64, "size_gpu": 128, "batch": 32, "width": 32, "width_gpu": 64, "latent_dim": 128,
                "gan": {"batch": 32, "lr": 2e-4, "diffaugment": _LONG_AUG},
                "steps_cpu": {"vae": 4000, "gan": 6000}, "steps_gpu": {"vae": 30000, "gan": 50000}},
    "large": {"size": 256, "batch": 64, "width": 64, "latent_dim": 256,
              "gan": {"batch": 64, "lr": 2e-4, "diffaugment": _LONG_AUG},
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
    # GAN
    gan_loss: str = "hinge"  # hinge | nonsaturating
    discriminator: str = "strided"  # strided (learns detail fast) | resnet
    patch_head: bool = False  # discriminator also judges 10x10-pixel neighbourhoods
    upsample: str = "bilinear"  # generator upsampling: bilinear | nearest (blocky on short runs)
    detail: float = 2.0  # GAN: discriminator also sees the image's high-pass copy times this (0 = off)
    ada_target: float = 0.0  # adaptive augmentation: target E[sign D(real)] (0 = fixed policy)
    lr_d: float | None = None  # discriminator learning rate (default: lr)
    r1_gamma: float = 0.1  # R1 penalty weight on reals (0 = off)
    r1_every: int = 4  # lazy R1: apply every k steps, scaled by k
    diffaugment: str | None = None  # DiffAugment policy ("" = off; default: by preset)
    ema_decay: float = 0.999  # generator EMA decay (ramped up at the start)


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    step: int
    steps: int
    seconds: float
    images_per_second: float
    interrupted: bool = False
    last_metrics: dict[str, float] = field(default_factory=dict)
    grid: Path | None = None
    loss_plot: Path | None = None


def config_to_json(cfg: TrainConfig) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}


# Settings added after runs were saved, with the behaviour those runs had, so that a resumed
# run's config.json says what its networks do.
ADDED_SETTINGS: dict[str, Any] = {"upsample": "nearest", "detail": 0.0}


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
    p = _PRESET_VALUES[cfg.preset]
    gpu = device.type == "cuda"
    size = cfg.size or min(p.get("size_gpu", p["size"]) if gpu else p["size"], stored_size)
    if size not in (32, 64, 128, 256):
        raise FundusError(f"--size {size}: the networks train at 32, 64, 128 or 256 px.")
    if size > stored_size:
        raise FundusError(f"--size {size} is larger than the {stored_size} px stored in {cfg.data}; "
                          f"use --size {stored_size} or less, or ingest with a larger --size.")
    gp = p["gan"] if cfg.arch == "gan" else {}
    if n_images < world:
        raise FundusError(f"{cfg.data} holds {n_images} images, fewer than the {world} processes; ingest more "
                          "images.")
    batch = cfg.batch or _default_batch(cfg)
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
    if cfg.conditional and n_classes < 2:
        raise FundusError(f"--conditional needs labels with at least 2 classes; {cfg.data} has "
                          f"{n_classes}. Ingest with --labels, or train without --conditional.")
    steps_per_epoch = max(1, n_images // (batch * world))
    if cfg.steps is not None and cfg.epochs is not None:
        raise FundusError("give --steps or --epochs, not both.")
    if cfg.epochs is not None:
        steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    else:
        steps = cfg.steps if cfg.steps is not None else p["steps_gpu" if gpu else "steps_cpu"][cfg.arch]
    if steps < 1:
        raise FundusError(f"--steps {steps}: give a positive number of steps.")
    amp = cfg.amp
    if amp == "auto":
        amp = "bf16" if gpu and torch.cuda.is_bf16_supported() else "off"
    if amp != "off" and not gpu:
        raise FundusError(f"--amp {amp} is for CUDA GPUs; on a CPU use --amp off (the default).")
    return replace(
        cfg,
        out=cfg.out or Path("runs") / cfg.arch,
        size=size,
        batch=batch,
        steps=steps,
        lr=cfg.lr or gp.get("lr", 1e-3),
        lr_d=cfg.lr_d or cfg.lr or gp.get("lr", 2e-4),
        diffaugment=cfg.diffaugment if cfg.diffaugment is not None else gp.get("diffaugment", ""),
        width=cfg.width or (p.get("width_gpu", p["width"]) if gpu else p["width"]),
        latent_dim=cfg.latent_dim or p["latent_dim"],
        snapshot_every=cfg.snapshot_every or max(1, steps // 10),
        sample_every=cfg.sample_every or max(1, steps // 5),
        kl_warmup=cfg.kl_warmup if cfg.kl_warmup is not None else steps // 5,
        amp=amp,
    )


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
    if cfg.arch == "gan":
        mc["discriminator"] = cfg.discriminator
        mc["patch_head"] = cfg.patch_head
        mc["upsample"] = cfg.upsample
        mc["detail"] = float(cfg.detail)
    return mc


def hyperparameters(cfg: TrainConfig) -> dict[str, Any]:
    return {"lr": cfg.lr, "lr_d": cfg.lr_d, "beta": cfg.beta, "kl_warmup": cfg.kl_warmup, "recon": cfg.recon,
            "ssim_weight": cfg.ssim_weight, "gan_loss": cfg.gan_loss, "r1_gamma": cfg.r1_gamma,
            "r1_every": cfg.r1_every, "diffaugment": cfg.diffaugment, "ema_decay": cfg.ema_decay,
            "ada_target": cfg.ada_target, "adv_weight": cfg.adv_weight}


def _default_batch(cfg: TrainConfig) -> int:
    p = _PRESET_VALUES[cfg.preset]
    return int((p["gan"] if cfg.arch == "gan" else {}).get("batch", p["batch"]))


def batch_indices(step: int, *, n: int, batch: int, seed: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """The images of `step` for process `rank`: a seeded permutation per epoch, split by rank.

    A function of (seed, step) alone, so a resumed run reads exactly the batches that an
    uninterrupted run would have (and each rank a disjoint share, as DistributedSampler does).
    """
    per_step = batch * world
    steps_per_epoch = max(1, n // per_step)
    epoch, k = divmod(step, steps_per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    start = k * per_step + rank * batch
    return perm[start : start + batch]


class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop finishes its step, saves and stops."""

    def __init__(self) -> None:
        self.set = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.set:  # a second Ctrl-C: the user really means it
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _to_device(images: np.ndarray, labels: np.ndarray | None, *, device: torch.device, mirror: bool,
               gen: torch.Generator, channels_last: bool,
               disc_left: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One batch on the device in [-1, 1]; `disc_left` (the batch's rows of `_disc_sides`) turns
    every optic disc to the right, else `mirror` flips half the images at random."""
    x = torch.from_numpy(images).to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    if disc_left is not None:
        x = torch.where(torch.from_numpy(disc_left).to(device)[:, None, None, None], x.flip(3), x)
    elif mirror:
        flip = (torch.rand(x.shape[0], generator=gen) < 0.5).to(device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = None if labels is None else torch.from_numpy(labels).long().to(device)
    return x, y


def _disc_sides(source: ImageSource, chunk: int = 256) -> np.ndarray:
    """(n,) bool: whether each training image's optic disc lies on the left. Found once per run
    (a function of the image alone): finding it in every batch cost ~15 % of a demo GAN step."""
    sides = [disc_on_left(torch.from_numpy(source.batch(np.arange(i, min(i + chunk, source.n))))
                          .permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)).numpy()
             for i in range(0, source.n, chunk)]
    return np.concatenate(sides) if sides else np.zeros(0, dtype=bool)


def _prepare_run_dir(cfg: TrainConfig, run_dir: Path) -> dict[str, Any] | None:
    """Check the run folder; return the checkpoint to resume from, if any."""
    latest = run_dir / ckpt_mod.LATEST
    if cfg.resume:
        if not latest.exists():
            raise FundusError(f"--resume: {latest} does not exist. Train without --resume to start a run there.")
        return ckpt_mod.load_checkpoint(latest)
    if latest.exists() and not cfg.force:
        raise FundusError(f"{run_dir} already holds a training run ({latest}). Use --resume to continue it, "
                          "--force to start over there, or --out for a new folder.")
    if latest.exists():  # --force: start over, removing the old run's files
        for p in [*run_dir.glob("checkpoint*.pt"), *run_dir.glob("samples-*.png"), run_dir / "metrics.jsonl",
                  run_dir / "loss.png"]:
            p.unlink(missing_ok=True)
    return None


def train(cfg: TrainConfig, *, log: Callable[[str], None] = lambda s: None) -> TrainResult:
    d, device = distributed.setup(cfg.device)
    try:
        return _train(cfg, d, device, log)
    finally:
        distributed.teardown(d)


def _train(cfg: TrainConfig, d: distributed.Dist, device: torch.device, log: Callable[[str], None]) -> TrainResult:
    from fundus_cli.data import h5

    with h5.open_dataset(cfg.data) as r:
        info = r.info
    run_dir = Path(cfg.out) if cfg.out else Path("runs") / cfg.arch
    resume_ckpt = _prepare_run_dir(cfg, run_dir) if d.main or cfg.resume else None
    distributed.barrier(d)
    if resume_ckpt is None and cfg.resume:
        resume_ckpt = ckpt_mod.load_checkpoint(run_dir / ckpt_mod.LATEST)
    if resume_ckpt is not None:
        if resume_ckpt["arch"] != cfg.arch:
            raise FundusError(f"{run_dir / ckpt_mod.LATEST} is a {resume_ckpt['arch']} checkpoint; it cannot resume "
                              f"--arch {cfg.arch}. Use --arch {resume_ckpt['arch']} or another --out.")
        if resume_ckpt["dataset_fingerprint"] != info.fingerprint and not cfg.force:
            raise FundusError(f"{run_dir / ckpt_mod.LATEST} was trained on other data (fingerprint "
                              f"{resume_ckpt['dataset_fingerprint'][:12]}) than {cfg.data} "
                              f"({info.fingerprint[:12]}). Resume with the same dataset, or add --force to "
                              "continue training on this one.")
        cfg = resume_config(cfg, config_from_json(resume_ckpt["train_config"]), run_dir)
    n_classes = len(info.class_names)
    asked_batch = cfg.batch
    cfg = resolve(cfg, stored_size=info.image_size, n_images=info.count, n_classes=n_classes, device=device,
                  world=d.world)
    if asked_batch is None and cfg.batch < _default_batch(cfg):
        log(f"batch {cfg.batch} instead of the preset's {_default_batch(cfg)}: {cfg.data} holds {info.count} images")
    assert cfg.steps is not None and cfg.batch is not None and cfg.size is not None
    mconf = resume_ckpt["model_config"] if resume_ckpt is not None else model_config(cfg, n_classes)

    torch.manual_seed(cfg.seed)
    source = ImageSource(cfg.data, size=cfg.size, cache=cfg.cache)
    try:
        fov = torch.from_numpy((source.fov_frequency >= 0.5).astype(np.float32))
        channels_last = device.type == "cuda"
        trainer = TRAINERS[cfg.arch](mconf, hyperparameters(cfg), device=device, fov_mask=fov, ddp=d.enabled,
                                     amp=cfg.amp, channels_last=channels_last, compile=cfg.compile)
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + d.rank)
        start = 0
        if resume_ckpt is not None:
            trainer.load_state(resume_ckpt)
            gen.set_state(resume_ckpt["rng"][f"rank{d.rank}"] if f"rank{d.rank}" in resume_ckpt["rng"]
                          else resume_ckpt["rng"]["rank0"])
            start = int(resume_ckpt["step"])
            log(f"resuming {run_dir} at step {start} of {cfg.steps}")
        if start >= cfg.steps:
            raise FundusError(f"{run_dir} is already at step {start} of {cfg.steps}. Give a larger --steps to "
                              "train further.")
        if d.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(run_dir / "config.json", {
                "fundus_cli_version": __version__, "arch": cfg.arch, "train_config": config_to_json(cfg),
                "model_config": mconf, "device": str(device), "world_size": d.world,
                "dataset": {"path": str(cfg.data), "fingerprint": info.fingerprint, "images": info.count,
                            "class_names": list(info.class_names), "stored_size": info.image_size},
            })
            _truncate_metrics(run_dir / "metrics.jsonl", start)
        labels = source.labels if cfg.conditional else None
        disc_left = _disc_sides(source) if mconf.get("orient", False) else None
        # Kept so that `sample --class-balance training` can match the training data's shares.
        class_counts = [int((source.labels == c).sum()) for c in range(n_classes)]
        # Fixed latents for the sample grids: the same picture positions across the run.
        grid_gen = torch.Generator().manual_seed(cfg.seed + 9973)
        grid_z = torch.randn(64, trainer.latent_dim, generator=grid_gen).to(device)
        grid_y = (torch.arange(64) % n_classes).to(device) if cfg.conditional else None

        def save_payload(step: int) -> dict[str, Any]:
            rng = _gather_rng(gen, d)
            return {"arch": cfg.arch, "model_config": mconf, "train_config": config_to_json(cfg), "step": step,
                    "rng": rng, "dataset_fingerprint": info.fingerprint, "dataset_path": str(cfg.data),
                    "class_names": list(info.class_names), "image_size": cfg.size, "class_counts": class_counts,
                    **trainer.state()}

        steps_left = range(start, cfg.steps)
        batches = prefetch(source, (batch_indices(s, n=source.n, batch=cfg.batch, seed=cfg.seed, rank=d.rank,
                                                  world=d.world) for s in steps_left))
        t_start = time.perf_counter()
        # CPU time divided by threads: "minutes of this machine" even when other work shares it,
        # which makes equal-budget comparisons fair (benchmarks/quality.py).
        cpu_start = time.process_time()
        window: list[tuple[float, int]] = []
        metrics: dict[str, float] = {}
        step = start
        interrupted = False
        announced = False
        # no bar (stderr is not a terminal, e.g. a cluster log): a line a minute instead, whose
        # time left follows the measured rate (the first estimate can be off by 1.5-3x)
        progress_bar = progress_enabled()
        last_line = time.perf_counter()
        grid_path: Path | None = None
        with _StopFlag() as stop, track(f"train {cfg.arch}", cfg.steps - start, unit="step") as advance:
            metrics_file = open(run_dir / "metrics.jsonl", "a") if d.main else None
            try:
                for step in steps_left:
                    idx = batch_indices(step, n=source.n, batch=cfg.batch, seed=cfg.seed, rank=d.rank, world=d.world)
                    t0 = time.perf_counter()
                    images = next(batches)
                    x, y = _to_device(images, None if labels is None else labels[idx], device=device,
                                      mirror=cfg.mirror, gen=gen, channels_last=channels_last,
                                      disc_left=None if disc_left is None else disc_left[idx])
                    metrics = trainer.step(x, y, step, gen)
                    done = step + 1
                    window.append((time.perf_counter() - t0, x.shape[0] * d.world))
                    if not announced and len(window) == 5:
                        per_step = float(np.median([w[0] for w in window]))
                        log(f"about {per_step * (cfg.steps - done) / 60:.1f} min for the remaining "
                            f"{cfg.steps - done} steps ({per_step:.2f} s/step on {device})")
                        announced = True
                    if not progress_bar and d.main and time.perf_counter() - last_line > PROGRESS_EVERY_S:
                        last_line = time.perf_counter()
                        log(_progress_line(cfg, done, window))
                    if done % cfg.log_every == 0 or done == cfg.steps:
                        secs = sum(w[0] for w in window[-cfg.log_every:])
                        imgs = sum(w[1] for w in window[-cfg.log_every:])
                        m = distributed.mean_over_ranks(metrics, d, device)
                        line = {"step": done, **{k: round(v, 6) for k, v in m.items()},
                                "images_per_s": round(imgs / secs, 2) if secs > 0 else None, "lr": cfg.lr,
                                "time": round(time.perf_counter() - t_start, 3)}
                        if metrics_file is not None:
                            metrics_file.write(json.dumps(line) + "\n")
                            metrics_file.flush()
                        advance(0, **{k: v for k, v in m.items() if k in ("loss", "d_loss", "g_loss")},
                                img_s=imgs / secs if secs > 0 else 0.0)
                    advance(1)
                    out_of_time = (cfg.max_minutes is not None and time.perf_counter() - t_start > 60 * cfg.max_minutes) or (
                        cfg.max_cpu_minutes is not None
                        and (time.process_time() - cpu_start) / torch.get_num_threads() > 60 * cfg.max_cpu_minutes)
                    stopping = distributed.any_rank(stop.set or out_of_time, d, device)
                    if d.main and (done % cfg.sample_every == 0 or done == cfg.steps or stopping):
                        grid_path = run_dir / f"samples-{done:08d}.png"
                        save_grid(trainer.sample(grid_z, grid_y), grid_path, nrow=8)
                    if done % cfg.snapshot_every == 0 or done == cfg.steps or stopping:
                        payload = save_payload(done)
                        if d.main:
                            ckpt_mod.save_checkpoint(run_dir, payload, keep=cfg.keep)
                    step = done
                    if stopping:
                        interrupted = stop.set and done < cfg.steps
                        break
            finally:
                if metrics_file is not None:
                    metrics_file.close()
        seconds = time.perf_counter() - t_start
        loss_plot = None
        if d.main and not interrupted:
            from fundus_cli.training.images import plot_losses

            loss_plot = plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png", title=f"{cfg.arch} training")
        total_imgs = sum(w[1] for w in window)
        return TrainResult(run_dir=run_dir, checkpoint=run_dir / ckpt_mod.LATEST, step=step, steps=cfg.steps,
                           seconds=seconds, images_per_second=total_imgs / max(seconds, 1e-9),
                           interrupted=interrupted, last_metrics=metrics, grid=grid_path, loss_plot=loss_plot)
    finally:
        source.close()


PROGRESS_EVERY_S = 60.0


def _progress_line(cfg: TrainConfig, done: int, window: list[tuple[float, int]]) -> str:
    """'train gan: step 300/1500 (20 %), 41.2 images/s, about 7.5 min left' from the last 50 steps."""
    recent = window[-50:]
    secs = sum(w[0] for w in recent)
    per_step = secs / max(1, len(recent))
    left = per_step * (int(cfg.steps or 0) - done) / 60
    rate = sum(w[1] for w in recent) / secs if secs > 0 else 0.0
    return (f"train {cfg.arch}: step {done}/{cfg.steps} ({100 * done / max(1, int(cfg.steps or 1)):.0f} %), "
            f"{rate:.1f} images/s, about {left:.1f} min left")


def _gather_rng(gen: torch.Generator, d: distributed.Dist) -> dict[str, torch.Tensor]:
    state = gen.get_state()
    if not d.enabled:
        return {"rank0": state}
    import torch.distributed as tdist

    states = [torch.empty_like(state) for _ in range(d.world)]
    tdist.all_gather_object(states, state)  # small byte tensors; gloo and nccl both handle objects
    return {f"rank{i}": s for i, s in enumerate(states)}


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop lines past `step`, so that a resumed run's log reads like an uninterrupted one."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    write_text_atomic(path, "".join(k + "\n" for k in keep))
