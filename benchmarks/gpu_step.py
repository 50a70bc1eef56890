"""Where a GAN training step's time goes on a CUDA GPU: `--preset large` at 256 px, bf16, with
the discriminator's inputs on and off, timed side by side on random images (no data loading),
then the top kernels of one configuration under torch.profiler.

    python benchmarks/gpu_step.py [--steps 20] [--size 256]   # needs a CUDA GPU (benchmarks/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from fundus_cli.training.config import TrainConfig, hyperparameters, model_config, resolve
from fundus_cli.training.trainers import TRAINERS


def trainer(size: int, **settings: object) -> tuple[object, TrainConfig]:
    device = torch.device("cuda")
    cfg = TrainConfig(arch="gan", preset="large", size=size, conditional=True, device="cuda", **settings)  # type: ignore[arg-type]
    cfg = resolve(cfg, stored_size=size, n_images=413, n_classes=2, device=device)
    fov = torch.ones(size, size)
    t = TRAINERS["gan"](model_config(cfg, 2), hyperparameters(cfg), device=device, fov_mask=fov,
                        amp=cfg.amp, channels_last=True)
    return t, cfg


def timed(t: object, cfg: TrainConfig, steps: int) -> float:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(cfg.batch, 3, cfg.size, cfg.size, device="cuda") * 2 - 1
    y = torch.randint(0, 2, (cfg.batch,), device="cuda")
    for i in range(3):
        t.step(x, y, i + 1, gen)  # type: ignore[attr-defined]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        t.step(x, y, i + 4, gen)  # type: ignore[attr-defined]
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=256)
    a = ap.parse_args()
    variants = {"current defaults": {}, "vessel 0": {"vessel": 0.0}, "vessel 0, detail 0": {"vessel": 0.0, "detail": 0.0},
                "no DiffAugment": {"diffaugment": ""}}
    for name, settings in variants.items():
        t, cfg = trainer(a.size, **settings)
        s = timed(t, cfg, a.steps)
        print(f"{name:22s} batch {cfg.batch}: {s * 1000:7.1f} ms/step, {cfg.batch / s:7.1f} images/s", flush=True)
    t, cfg = trainer(a.size)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(cfg.batch, 3, cfg.size, cfg.size, device="cuda") * 2 - 1
    y = torch.randint(0, 2, (cfg.batch,), device="cuda")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        for i in range(16):  # one R1 step among them (r1_every)
            t.step(x, y, i + 1, gen)  # type: ignore[attr-defined]
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))
    print(f"settings: {dataclasses.asdict(cfg)}")


if __name__ == "__main__":
    main()
