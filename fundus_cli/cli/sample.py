"""`fundus sample`: options -> config -> `api` call -> summary on stderr, result on stdout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fundus_cli import api
from fundus_cli.cli.app import JsonOpt, command, emit, say, styled
from fundus_cli.cli.options import Device
from fundus_cli.training_length import shortfall


@command("sample", "Checkpoint -> data/synthetic.h5.  e.g. fundus sample --n 1000")
def sample_cmd(
    checkpoint: Annotated[Optional[Path], typer.Option(help="checkpoint.pt (default: the newest runs/*/checkpoint.pt).")] = None,
    run: Annotated[Optional[Path], typer.Option(help="A run folder, instead of --checkpoint.")] = None,
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 1000,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output dataset.")] = Path("data/synthetic.h5"),
    seed: Annotated[int, typer.Option(help="Seed; sample i depends only on (seed, i).")] = 0,
    seed_start: Annotated[int, typer.Option(help="Index of the first sample, for disjoint shards of one set.")] = 0,
    label: Annotated[Optional[str], typer.Option(help="Only this class (name or index; conditional models).")] = None,
    class_balance: Annotated[str, typer.Option(help="training (the training data's class shares) or uniform.")] = "training",
    truncation: Annotated[Optional[float], typer.Option(help="GAN: scale latents (< 1: less variety, more typical).")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="VAE: scale of the prior (< 1: smoother).")] = None,
    batch: Annotated[int, typer.Option(help="Images per forward pass (keep it fixed across shards).")] = 64,
    device: Device = "auto",
    png_dir: Annotated[Optional[Path], typer.Option(help="Also write one PNG per image here.")] = None,
    grid: Annotated[Optional[Path], typer.Option(help="Also write a grid of the first 64 images (PNG).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Generate synthetic fundus photographs from a trained model (EMA weights) into a dataset file
    that every command reading real data also reads. The same command gives byte-identical images;
    --seed-start splits a large set into shards for a cluster.

    Example: fundus sample --run runs/gan --n 1000 --label diabetic_retinopathy --grid grid.png
    """
    cfg = api.SampleConfig(checkpoint=checkpoint, run=run, n=n, out=out, seed=seed, seed_start=seed_start,
                           label=label, class_balance=class_balance, truncation=truncation,
                           temperature=temperature, batch=batch, device=device, png_dir=png_dir, grid=grid,
                           force=force)
    r = api.sample(cfg)
    say(f"read  {r.checkpoint} ({r.arch}, step {r.step}" + (f" of {r.planned_steps})" if r.planned_steps else ")"))
    if (short := shortfall(r.step, r.planned_steps)) is not None:
        say(styled("warning:", "yellow", f" {short}"))
    say(f"wrote {r.out} ({r.n} images" + (", " + ", ".join(f"{k}: {v}" for k, v in r.class_counts.items())
                                             if r.class_counts else "") + ")")
    if r.grid:
        say(f"      {r.grid}")
    if r.png_dir:
        say(f"      {r.png_dir}/")
    emit(r.out, {"out": r.out, "n": r.n, "checkpoint": r.checkpoint, "arch": r.arch, "step": r.step,
                  "planned_steps": r.planned_steps, "under_trained": short is not None,
                  "class_counts": r.class_counts}, as_json)
