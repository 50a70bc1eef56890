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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fundus_cli.data.dataset import ImageSource, prefetch
from fundus_cli.errors import FundusError
from fundus_cli.fsio import write_text_atomic
from fundus_cli.images import save_grid
from fundus_cli.progress import enabled as progress_enabled
from fundus_cli.progress import track
from fundus_cli.schemas.training_run import metrics_line, write_config
from fundus_cli.training import checkpoint as ckpt_mod
from fundus_cli.training import distributed
from fundus_cli.training.batches import batch_indices, disc_sides, to_device
from fundus_cli.training.config import (TrainConfig, config_from_json, config_to_json, default_batch,
                                        hyperparameters, model_config, resolve, resume_config)
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
    resume_ckpt = _resume_checkpoint(cfg, d, info, run_dir)
    if resume_ckpt is not None:
        cfg = resume_config(cfg, config_from_json(resume_ckpt["train_config"]), run_dir)
    cfg = _resolved(cfg, info, d, device, log)
    mconf = resume_ckpt["model_config"] if resume_ckpt is not None else model_config(cfg, len(info.class_names))

    torch.manual_seed(cfg.seed)
    source = ImageSource(cfg.data, size=cfg.size, cache=cfg.cache)
    try:
        run = _start(cfg, d, device, info, run_dir, mconf, source, resume_ckpt, log)
        return _run_steps(run)
    finally:
        source.close()


def _resume_checkpoint(cfg: TrainConfig, d: distributed.Dist, info: Any, run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint that --resume continues (checked against --arch and the data), else None."""
    resume_ckpt = _prepare_run_dir(cfg, run_dir) if d.main or cfg.resume else None
    distributed.barrier(d)
    if resume_ckpt is None and cfg.resume:
        resume_ckpt = ckpt_mod.load_checkpoint(run_dir / ckpt_mod.LATEST)
    if resume_ckpt is None:
        return None
    if resume_ckpt["arch"] != cfg.arch:
        raise FundusError(f"{run_dir / ckpt_mod.LATEST} is a {resume_ckpt['arch']} checkpoint; it cannot resume "
                          f"--arch {cfg.arch}. Use --arch {resume_ckpt['arch']} or another --out.")
    if resume_ckpt["dataset_fingerprint"] != info.fingerprint and not cfg.force:
        raise FundusError(f"{run_dir / ckpt_mod.LATEST} was trained on other data (fingerprint "
                          f"{resume_ckpt['dataset_fingerprint'][:12]}) than {cfg.data} "
                          f"({info.fingerprint[:12]}). Resume with the same dataset, or add --force to "
                          "continue training on this one.")
    return resume_ckpt


def _resolved(cfg: TrainConfig, info: Any, d: distributed.Dist, device: torch.device,
              log: Callable[[str], None]) -> TrainConfig:
    """`resolve` against the data and the device, saying so when a small dataset shrinks the batch."""
    asked_batch = cfg.batch
    cfg = resolve(cfg, stored_size=info.image_size, n_images=info.count, n_classes=len(info.class_names),
                  device=device, world=d.world)
    if asked_batch is None and cfg.batch < default_batch(cfg):
        log(f"batch {cfg.batch} instead of the preset's {default_batch(cfg)}: {cfg.data} holds {info.count} images")
    assert cfg.steps is not None and cfg.batch is not None and cfg.size is not None
    return cfg


@dataclass
class _Run:
    """One run's fixed parts, shared by its steps."""

    cfg: TrainConfig
    d: distributed.Dist
    device: torch.device
    info: Any  # the dataset's h5.DatasetInfo
    run_dir: Path
    mconf: dict[str, Any]
    source: ImageSource
    trainer: Any  # a trainer of training/trainers.py
    gen: torch.Generator  # all the loop's randomness (its state is in the checkpoint)
    start: int  # the first step to run
    channels_last: bool
    labels: np.ndarray | None  # per image, when conditional
    disc_left: np.ndarray | None  # per image, when the model learns one disc orientation
    class_counts: list[int]
    grid_z: torch.Tensor  # fixed latents for the sample grids: the same picture positions across the run
    grid_y: torch.Tensor | None
    log: Callable[[str], None]

    def payload(self, step: int) -> dict[str, Any]:
        """The checkpoint at `step` (without the format fields that save_checkpoint adds)."""
        cfg = self.cfg
        return {"arch": cfg.arch, "model_config": self.mconf, "train_config": config_to_json(cfg), "step": step,
                "rng": _gather_rng(self.gen, self.d), "dataset_fingerprint": self.info.fingerprint,
                "dataset_path": str(cfg.data), "class_names": list(self.info.class_names), "image_size": cfg.size,
                "class_counts": self.class_counts, **self.trainer.state()}


def _start(cfg: TrainConfig, d: distributed.Dist, device: torch.device, info: Any, run_dir: Path,
           mconf: dict[str, Any], source: ImageSource, resume_ckpt: dict[str, Any] | None,
           log: Callable[[str], None]) -> _Run:
    """The trainer (when resuming: its state, the random generator's and the step), config.json written."""
    assert cfg.steps is not None
    fov = torch.from_numpy((source.fov_frequency >= 0.5).astype(np.float32))
    channels_last = device.type == "cuda"
    trainer = TRAINERS[cfg.arch](mconf, hyperparameters(cfg), device=device, fov_mask=fov, ddp=d.enabled,
                                 amp=cfg.amp, channels_last=channels_last, compile=cfg.compile)
    if cfg.compile:
        log("torch.compile: the first step compiles the networks (about 1.5 minutes on an H200 with an empty "
            "cache), and that time counts towards --minutes")
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
        _write_config(cfg, d, device, info, run_dir, mconf)
        _truncate_metrics(run_dir / "metrics.jsonl", start)
    n_classes = len(info.class_names)
    grid_gen = torch.Generator().manual_seed(cfg.seed + 9973)
    return _Run(cfg=cfg, d=d, device=device, info=info, run_dir=run_dir, mconf=mconf, source=source,
                trainer=trainer, gen=gen, start=start, channels_last=channels_last,
                labels=source.labels if cfg.conditional else None,
                disc_left=disc_sides(source) if mconf.get("orient", False) else None,
                # kept so that `sample --class-balance training` can match the training data's shares
                class_counts=[int((source.labels == c).sum()) for c in range(n_classes)],
                grid_z=torch.randn(64, trainer.latent_dim, generator=grid_gen).to(device),
                grid_y=(torch.arange(64) % n_classes).to(device) if cfg.conditional else None, log=log)


def _write_config(cfg: TrainConfig, d: distributed.Dist, device: torch.device, info: Any, run_dir: Path,
                  mconf: dict[str, Any]) -> None:
    """config.json: the resolved settings, before the first step."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir / "config.json", {
        "arch": cfg.arch, "train_config": config_to_json(cfg),
        "model_config": mconf, "device": str(device), "world_size": d.world,
        "dataset": {"path": str(cfg.data), "fingerprint": info.fingerprint, "images": info.count,
                    "class_names": list(info.class_names), "stored_size": info.image_size},
    })


@dataclass
class _Progress:
    """What the steps of a run have done so far."""

    step: int
    t_start: float = field(default_factory=time.perf_counter)
    # CPU time divided by threads: "minutes of this machine" even when other work shares it,
    # which makes equal-budget comparisons fair (benchmarks/quality.py).
    cpu_start: float = field(default_factory=time.process_time)
    window: list[tuple[float, int]] = field(default_factory=list)  # (seconds, images) per step
    metrics: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    announced: bool = False
    # no bar (stderr is not a terminal, e.g. a cluster log): a line a minute instead, whose
    # time left follows the measured rate (the first estimate can be off by 1.5-3x)
    progress_bar: bool = field(default_factory=progress_enabled)
    last_line: float = field(default_factory=time.perf_counter)
    grid_path: Path | None = None


def _run_steps(run: _Run) -> TrainResult:
    """The steps from `run.start`, stopping early on Ctrl-C/SIGTERM or a time budget, then the loss plot."""
    cfg, d = run.cfg, run.d
    assert cfg.steps is not None and cfg.batch is not None
    steps_left = range(run.start, cfg.steps)
    batches = prefetch(run.source, (batch_indices(s, n=run.source.n, batch=cfg.batch, seed=cfg.seed, rank=d.rank,
                                                  world=d.world) for s in steps_left))
    prog = _Progress(step=run.start)
    with _StopFlag() as stop, track(f"train {cfg.arch}", cfg.steps - run.start, unit="step") as advance:
        metrics_file = open(run.run_dir / "metrics.jsonl", "a") if d.main else None
        try:
            for step in steps_left:
                done = _one_step(run, prog, step, batches)
                if done % cfg.log_every == 0 or done == cfg.steps:
                    _log_metrics(run, prog, done, metrics_file, advance)
                advance(1)
                stopping = distributed.any_rank(stop.set or _out_of_time(cfg, prog), d, run.device)
                _snapshot(run, prog, done, stopping)
                prog.step = done
                if stopping:
                    prog.interrupted = stop.set and done < cfg.steps
                    break
        finally:
            if metrics_file is not None:
                metrics_file.close()
    return _result(run, prog)


def _one_step(run: _Run, prog: _Progress, step: int, batches: Iterator[np.ndarray]) -> int:
    """One optimisation step on the batch of `step`, timed with the wait for its images; returns the steps done."""
    cfg, d = run.cfg, run.d
    assert cfg.steps is not None and cfg.batch is not None
    idx = batch_indices(step, n=run.source.n, batch=cfg.batch, seed=cfg.seed, rank=d.rank, world=d.world)
    t0 = time.perf_counter()
    images = next(batches)
    x, y = to_device(images, None if run.labels is None else run.labels[idx], device=run.device,
                      mirror=cfg.mirror, gen=run.gen, channels_last=run.channels_last,
                      disc_left=None if run.disc_left is None else run.disc_left[idx])
    prog.metrics = run.trainer.step(x, y, step, run.gen)
    done = step + 1
    prog.window.append((time.perf_counter() - t0, x.shape[0] * d.world))
    if not prog.announced and len(prog.window) == 5:
        per_step = float(np.median([w[0] for w in prog.window]))
        run.log(f"about {per_step * (cfg.steps - done) / 60:.1f} min for the remaining "
                f"{cfg.steps - done} steps ({per_step:.2f} s/step on {run.device})")
        prog.announced = True
    if not prog.progress_bar and d.main and time.perf_counter() - prog.last_line > PROGRESS_EVERY_S:
        prog.last_line = time.perf_counter()
        run.log(_progress_line(cfg, done, prog.window))
    return done


def _log_metrics(run: _Run, prog: _Progress, done: int, metrics_file: Any, advance: Callable[..., None]) -> None:
    """A metrics.jsonl line (the mean over processes of the last step) and the progress bar's figures."""
    cfg = run.cfg
    secs = sum(w[0] for w in prog.window[-cfg.log_every:])
    imgs = sum(w[1] for w in prog.window[-cfg.log_every:])
    m = distributed.mean_over_ranks(prog.metrics, run.d, run.device)
    line = {"step": done, **{k: round(v, 6) for k, v in m.items()},
            "images_per_s": round(imgs / secs, 2) if secs > 0 else None, "lr": cfg.lr,
            "time": round(time.perf_counter() - prog.t_start, 3)}
    if metrics_file is not None:
        metrics_file.write(metrics_line(line))
        metrics_file.flush()
    advance(0, **{k: v for k, v in m.items() if k in ("loss", "d_loss", "g_loss")},
            img_s=imgs / secs if secs > 0 else 0.0)


def _out_of_time(cfg: TrainConfig, prog: _Progress) -> bool:
    """Whether --minutes (wall clock) or max_cpu_minutes (CPU time per torch thread) is spent."""
    return (cfg.max_minutes is not None and time.perf_counter() - prog.t_start > 60 * cfg.max_minutes) or (
        cfg.max_cpu_minutes is not None
        and (time.process_time() - prog.cpu_start) / torch.get_num_threads() > 60 * cfg.max_cpu_minutes)


def _snapshot(run: _Run, prog: _Progress, done: int, stopping: bool) -> None:
    """The sample grid and the checkpoint when one is due (and always at the last step)."""
    cfg = run.cfg
    assert cfg.sample_every is not None and cfg.snapshot_every is not None
    if run.d.main and (done % cfg.sample_every == 0 or done == cfg.steps or stopping):
        prog.grid_path = run.run_dir / f"samples-{done:08d}.png"
        save_grid(run.trainer.sample(run.grid_z, run.grid_y), prog.grid_path, nrow=8)
    if done % cfg.snapshot_every == 0 or done == cfg.steps or stopping:
        payload = run.payload(done)  # every process takes part (the random states are gathered)
        if run.d.main:
            ckpt_mod.save_checkpoint(run.run_dir, payload, keep=cfg.keep)


def _result(run: _Run, prog: _Progress) -> TrainResult:
    """The loss plot (of a run that was not interrupted) and the summary."""
    seconds = time.perf_counter() - prog.t_start
    loss_plot = None
    if run.d.main and not prog.interrupted:
        from fundus_cli.plots import plot_losses

        loss_plot = plot_losses(run.run_dir / "metrics.jsonl", run.run_dir / "loss.png",
                                title=f"{run.cfg.arch} training")
    total_imgs = sum(w[1] for w in prog.window)
    assert run.cfg.steps is not None
    return TrainResult(run_dir=run.run_dir, checkpoint=run.run_dir / ckpt_mod.LATEST, step=prog.step,
                       steps=run.cfg.steps, seconds=seconds, images_per_second=total_imgs / max(seconds, 1e-9),
                       interrupted=prog.interrupted, last_metrics=prog.metrics, grid=prog.grid_path,
                       loss_plot=loss_plot)


PROGRESS_EVERY_S = 60.0


def _progress_line(cfg: TrainConfig, done: int, window: list[tuple[float, int]]) -> str:
    """'train gan: step 300/1500 (20 %), 41.2 images/s, about 7.5 min left' from the last 50 steps,
    leaving out a run's first step while later ones are there: with --compile it holds the
    compilation (95 s on an H200, against 0.2 s for the steps after it), which otherwise made the
    first lines say 0.7 images/s and thousands of minutes left."""
    recent = window[max(1, len(window) - 50):] or window  # the last 50, the first step only when alone
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
