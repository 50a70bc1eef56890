"""Training-loop overhead: the real loop from an HDF5 file vs the same steps on tensors in memory.

For the VAE and the GAN at 64 px on this machine it prints, measured side by side in one run:
  compute  images/s of trainer.step() on one batch already in memory (the compute limit)
  loop     images/s of `fundus train` on a dataset file, steady state (data reading, uint8 ->
           float conversion, flips, logging included; from metrics.jsonl), for the in-memory
           cache and for streaming from the file
  overhead 1 - loop / compute (target: at most 10 %)
and the wall-clock time of each run including start-up, checkpoints and sample grids.

Usage: python benchmarks/train.py [--steps 60] [--batch 32] [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fundus_cli.commands.ingest import IngestConfig, ingest
from fundus_cli.data.phantoms import write_phantoms
from fundus_cli.training.config import TrainConfig, hyperparameters, model_config, resolve
from fundus_cli.training.loop import train
from fundus_cli.training.trainers import TRAINERS


def compute_only(cfg: TrainConfig, steps: int) -> float:
    """images/s of the trainer's step on one fixed batch on the CPU (no data pipeline at all)."""
    device = torch.device("cpu")
    rc = resolve(cfg, stored_size=64, n_images=10_000, n_classes=3, device=device)
    trainer = TRAINERS[cfg.arch](model_config(rc, 3), hyperparameters(rc), device=device, fov_mask=None)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(rc.batch, 3, 64, 64, generator=gen) * 2 - 1
    for s in range(3):  # warm-up
        trainer.step(x, None, s, gen)
    t0 = time.perf_counter()
    for s in range(steps):
        trainer.step(x, None, 3 + s, gen)
    return rc.batch * steps / (time.perf_counter() - t0)


def loop(cfg: TrainConfig, steps: int, out: Path, cache: str) -> tuple[float, float]:
    """(steady-state images/s from metrics.jsonl after warm-up, wall-clock seconds)."""
    t0 = time.perf_counter()
    train(TrainConfig(**{**cfg.__dict__, "steps": steps + 3, "out": out, "cache": cache, "log_every": 1,
                         "snapshot_every": 10**9, "sample_every": 10**9}))
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][3:]
    return float(np.median([r["images_per_s"] for r in rows])), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    steps = 6 if args.quick else args.steps
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, 64 px, CPU")
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        write_phantoms(tmp / "raw", n=64 if args.quick else 200, seed=0)
        ingest(IngestConfig(raw=tmp / "raw", out=tmp / "data", size=64))
        for arch in ("vae", "gan"):
            cfg = TrainConfig(data=tmp / "data" / "train.h5", arch=arch, preset="demo", batch=args.batch,
                              device="cpu", force=True)
            # interleave: compute, loop (memory), loop (stream), compute again; report the mean compute
            c1 = compute_only(cfg, steps)
            mem, wall_mem = loop(cfg, steps, tmp / f"run-{arch}-mem", "memory")
            stream, wall_stream = loop(cfg, steps, tmp / f"run-{arch}-stream", "stream")
            c2 = compute_only(cfg, steps)
            compute = (c1 + c2) / 2
            print(f"\n{arch.upper()} (demo width):")
            print(f"  compute only          {compute:7.1f} images/s   (two runs: {c1:.1f}, {c2:.1f})")
            print(f"  loop, in memory       {mem:7.1f} images/s   overhead {100 * (1 - mem / compute):5.1f} %   "
                  f"wall {wall_mem:.1f} s for {steps + 3} steps")
            print(f"  loop, streamed (h5)   {stream:7.1f} images/s   overhead {100 * (1 - stream / compute):5.1f} %   "
                  f"wall {wall_stream:.1f} s for {steps + 3} steps")


if __name__ == "__main__":
    main()
