"""`fundus report`: options -> config -> `api` call -> summary on stderr, result on stdout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fundus_cli import api
from fundus_cli.cli.app import JsonOpt, command, emit, say, styled


@command("report", "Project/demo folder -> one self-contained report.html.  e.g. fundus report . --out report.html")
def report_cmd(
    folder: Annotated[Path, typer.Argument(help="A project or demo folder (data/, runs/, reports/), or one of its "
                                                "data, run or report folders.")] = Path("."),
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="HTML file to write (default FOLDER/report.html); "
                                                "rewritten each time: it is a view of the other files.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Put everything the other commands wrote into one HTML page that opens offline in any browser
    (images embedded, no scripts): real vs synthetic images per class, the realism table beside the
    real-vs-real baseline, usefulness, fundus statistics, the privacy verdict with its evidence,
    training curves and samples, and the provenance of every file. Parts not made yet are named in
    the page with the command that makes them.

    Example: fundus report . --out report.html
    """
    r = api.report(folder, out=out)
    say(f"read  {folder} ({r.datasets} datasets, {r.runs} runs, {r.evaluations} evaluations, {r.audits} audits)")
    for line in r.missing:
        say(styled("not there yet:", "yellow", f" {line}"))
    if r.verdict is not None:
        # The exit code stays 0 whatever the verdicts: the report is a view; audit-privacy is the gate.
        say(f"most severe privacy verdict here: {r.verdict}")
    say(f"wrote {r.out}")
    emit(r.out, {"report": r.out, "datasets": r.datasets, "runs": r.runs, "evaluations": r.evaluations,
                  "audits": r.audits, "verdict": r.verdict, "verdicts": r.verdicts, "missing": r.missing}, as_json)
