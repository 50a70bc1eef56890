"""Options that several commands take with the same name, help and meaning (their defaults stay with
each command)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ReportFolder = Annotated[Path, typer.Option("--out", "-o", help="Report folder.")]
OverwriteReport = Annotated[bool, typer.Option("--force", help="Overwrite an existing report.")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
