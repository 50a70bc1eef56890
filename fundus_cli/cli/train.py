"""`fundus train`: options -> config -> `api` call -> summary on stderr, result on stdout."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from fundus_cli import api
from fundus_cli.cli.app import JsonOpt, command, emit, say, styled
from fundus_cli.cli.options import Device


class Arch(str, Enum):
    vae = "vae"
    gan = "gan"


class Preset(str, Enum):
    demo = "demo"
    default = "default"
    large = "large"


@command("train", "Train a VAE or GAN -> runs/<arch>/checkpoint.pt.  e.g. fundus train --arch gan")
def train_cmd(
    arch: Annotated[Arch, typer.Option(help="Model: vae (stable, smooth) or gan (sharper, for small datasets).")] = Arch.vae,
    data: Annotated[Path, typer.Option(help="Training dataset from `fundus ingest`.")] = Path("data/train.h5"),
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/<arch>).")] = None,
    preset: Annotated[Preset, typer.Option(help="demo: a few CPU minutes; default; large: for a GPU.")] = Preset.default,
    size: Annotated[Optional[int], typer.Option(help="Training resolution: 32, 64, 128 or 256 (<= stored size).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimisation steps (default: by preset and device).")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Passes over the data, instead of --steps.")] = None,
    minutes: Annotated[Optional[float], typer.Option(help="Stop after this many minutes (with a checkpoint).")] = None,
    batch: Annotated[Optional[int], typer.Option(help="Images per step (per process under torchrun).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate.")] = None,
    width: Annotated[Optional[int], typer.Option(help="Network width (channels at full resolution).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Device = "auto",
    conditional: Annotated[bool, typer.Option(help="Condition on the labels (then `sample --label` works).")] = False,
    mirror: Annotated[bool, typer.Option(help="Use the mirror symmetry of left and right eyes: learn photographs turned so the optic disc is on the right, and mirror half the samples back.")] = True,
    cache: Annotated[str, typer.Option(help="auto, memory or stream (read batches from the file).")] = "auto",
    snapshot_every: Annotated[Optional[int], typer.Option(help="Steps between checkpoints.")] = None,
    sample_every: Annotated[Optional[int], typer.Option(help="Steps between sample grids.")] = None,
    keep: Annotated[int, typer.Option(help="Numbered checkpoints to keep.")] = 3,
    amp: Annotated[str, typer.Option(help="Mixed precision: auto (bf16 on a GPU that has it), off, bf16, fp16.")] = "auto",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the networks (GPU): the first step compiles them (about 1.5 min on an H200, within --minutes); at 256 px then about 1.3x the images/s.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its checkpoint.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Start over in an existing run folder, or resume on other data.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved configuration and exit.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a generative model of fundus photographs. Checkpoints are written atomically every
    --snapshot-every steps; Ctrl-C saves one at the current step, and --resume continues exactly.
    Under `torchrun --nproc_per_node N -m fundus_cli train ...` it trains with DistributedDataParallel.

    Example: fundus train --arch gan --preset demo --conditional
    """
    cfg = api.TrainConfig(data=data, arch=arch.value, out=out, preset=preset.value, size=size, steps=steps,
                          epochs=epochs, max_minutes=minutes, batch=batch, lr=lr, width=width, seed=seed, device=device,
                          conditional=conditional, mirror=mirror, cache=cache, snapshot_every=snapshot_every,
                          sample_every=sample_every, keep=keep, amp=amp, compile=compile, resume=resume, force=force)
    if dry_run:
        typer.echo(json.dumps(api.train_plan(cfg), indent=2))
        return
    r = api.train(cfg, log=say)
    import os

    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    say(f"read  {data}\nwrote {r.run_dir}/ (checkpoint.pt, metrics.jsonl, samples-*.png"
         + (", loss.png)" if r.loss_plot else ")"))
    say(f"step {r.step}/{r.steps} in {r.seconds / 60:.1f} min, {r.images_per_second:.1f} images/s; "
         + "  ".join(f"{k}={v:.4g}" for k, v in r.last_metrics.items()))
    if r.interrupted:
        say(styled("interrupted", "yellow", f": checkpoint saved at step {r.step}; continue with the same command plus "
                                              "--resume"))
    emit(r.checkpoint, {"checkpoint": r.checkpoint, "step": r.step, "steps": r.steps, "run_dir": r.run_dir,
                         "interrupted": r.interrupted, "grid": r.grid}, as_json)
    if r.interrupted:
        raise typer.Exit(130)
