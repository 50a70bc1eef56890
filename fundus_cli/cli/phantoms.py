"""`fundus phantoms`: options -> config -> `api` call -> summary on stderr, result on stdout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fundus_cli import api
from fundus_cli.cli.app import JsonOpt, command, emit, say


@command("phantoms", "Write built-in demo photographs + labels.csv.  e.g. fundus phantoms raw --n 200")
def phantoms_cmd(
    out_dir: Annotated[Path, typer.Argument(help="Folder to create (must be empty or absent).")] = Path("raw"),
    n: Annotated[int, typer.Option("--n", help="Number of photographs.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same images.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty folder.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Generate realistic fundus-like photographs (healthy, diabetic retinopathy, AMD; left and right
    eyes of each patient) with labels.csv, so every command can be tried without real data.

    Example: fundus phantoms raw --n 200 --seed 0
    """
    result = api.phantoms(out_dir, n=n, seed=seed, overwrite=force)
    say(f"wrote {result.n_images} photographs and {result.labels_csv}")
    emit(out_dir, {"out_dir": str(out_dir), "images": result.n_images, "labels": str(result.labels_csv)}, as_json)
