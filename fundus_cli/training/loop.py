"""`fundus train`: the training loop shared by the VAE and the GAN.

The loop reads batches (in memory or streamed from HDF5), runs the trainer's step, logs to
metrics.jsonl, writes sample grids from fixed seeds, and writes checkpoints atomically.
It stops cleanly on SIGINT with a checkpoint at the current step, and `--resume` continues
exactly: all randomness is drawn from generators whose state is in the checkpoint, and the
order of the data is a function of the seed and the step alone.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fundus_cli import __version__
from fundus_cli.data.dataset import ImageSource, prefetch
from fundus_cli.errors import FundusError
from fundus_cli.fsio import write_json_atomic, write_text_atomic
from fundus_cli.images import save_grid
from fundus_cli.progress import enabled as progress_enabled
from fundus_cli.progress import track
from fundus_cli.training import checkpoint as ckpt_mod
from fundus_cli.training import distributed
from fundus_cli.training.config import (TrainConfig, config_from_json, config_to_json, default_batch,
                                        hyperparameters, model_config, resolve, resume_config)
from fundus_cli.training.orientation import disc_on_left
from fundus_cli.training.trainers import TRAINERS


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
    if asked_batch is None and cfg.batch < default_batch(cfg):
        log(f"batch {cfg.batch} instead of the preset's {default_batch(cfg)}: {cfg.data} holds {info.count} images")
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
            from fundus_cli.plots import plot_losses

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
