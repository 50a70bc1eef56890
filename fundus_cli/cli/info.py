"""`fundus info`: options -> config -> `api` call -> summary on stderr, result on stdout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.console import Console

from fundus_cli import api
from fundus_cli.cli.app import command


@command("info", "Describe a dataset, checkpoint or report.  e.g. fundus info data/train.h5")
def info_cmd(
    path: Annotated[Path, typer.Argument(help="A fundus-cli file (.h5 dataset, .pt checkpoint or run folder, .json report).")],
    verify: Annotated[bool, typer.Option("--verify", help="Recompute the content fingerprint.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Describe what a fundus-cli file holds: counts, image size, labels, split, provenance, whether it
    is pseudonymised.

    Example: fundus info data/train.h5 --json
    """
    d = api.describe(path, verify=verify)
    if as_json:
        typer.echo(json.dumps(d, default=str))
        return
    table = Table(show_header=False, title=str(path), title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in d.items():
        if key in ("options", "train_config"):
            continue
        text = json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
        table.add_row(key, text)
    Console(markup=False, highlight=False).print(table)
