"""`fundus audit-privacy`: options -> config -> `api` call -> summary on stderr, result on stdout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from fundus_cli import api, progress
from fundus_cli.cli.app import JsonOpt, command, emit, err, notes, state, styled
from fundus_cli.cli.options import Device, OverwriteReport, ReportFolder


@command("audit-privacy", "Memorization audit; exit 1 on FAIL.  e.g. fundus audit-privacy")
def audit_cmd(
    train: Annotated[Path, typer.Option(help="Images the generator was trained on.")] = Path("data/train.h5"),
    holdout: Annotated[Path, typer.Option(help="Real images it never saw (calibration).")] = Path("data/holdout.h5"),
    synthetic: Annotated[Path, typer.Option(help="Images to audit.")] = Path("data/synthetic.h5"),
    out: ReportFolder = Path("reports/audit-privacy"),
    embeddings: Annotated[str, typer.Option(
        help="Comma-separated: pixel, tiled, learned, registered.")] = "pixel,tiled,learned,registered",
    size: Annotated[int, typer.Option(help="Working size in pixels.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed (encoder, sampling, bootstrap).")] = 0,
    encoder_steps: Annotated[Optional[int], typer.Option(help="Training steps of the learned embedding.")] = None,
    accept_no_holdout: Annotated[bool, typer.Option(
        help="Without a holdout, accept leave-one-out calibration instead of INCONCLUSIVE.")] = False,
    alpha: Annotated[Optional[float], typer.Option(help="Chance memorization rate (tau = alpha-quantile of holdout).")] = None,
    ratio: Annotated[Optional[float], typer.Option(help="Ratio-test threshold (r below it: much closer to one image).")] = None,
    z_fail: Annotated[Optional[float], typer.Option(help="Z_U / C_T at or below this: FAIL.")] = None,
    membership_ci_fail: Annotated[Optional[float], typer.Option(help="Membership AUC lower 95 % bound above this: FAIL.")] = None,
    warn_p: Annotated[Optional[float], typer.Option(help="Any test with p below this: WARN.")] = None,
    device: Device = "auto",
    force: OverwriteReport = False,
    as_json: JsonOpt = False,
) -> None:
    """Do the synthetic images copy training images more than chance? Distances to the nearest
    training image (field-of-view aware, flip invariant; pixel, tiled and learned embeddings, and
    a shift-registered pixel distance that finds copies moved by up to 1/8 of the image) are
    calibrated on holdout images; ratio, data-copying and membership-inference tests decide.
    Exit codes: 0 PASS or WARN, 1 FAIL, 2 bad input, 3 INCONCLUSIVE (no holdout, or too few
    holdout or synthetic images for a test to be able to fail: the output names the size needed), so that
    `fundus audit-privacy && publish` gates a release.

    Example: fundus audit-privacy --synthetic data/synthetic.h5
    """
    overrides = {k: v for k, v in {"encoder_steps": encoder_steps, "alpha": alpha, "ratio": ratio, "z_fail": z_fail,
                                   "membership_ci_fail": membership_ci_fail, "warn_p": warn_p}.items() if v is not None}
    cfg = api.AuditConfig(train=train, holdout=holdout, synthetic=synthetic, out=out, embeddings=embeddings, size=size,
                          seed=seed, accept_no_holdout=accept_no_holdout, device=device, force=force, **overrides)
    progress.set_lines(not state["quiet"])  # one line per stage on stderr, also in logs
    r = api.audit_privacy(cfg)
    if not state["quiet"]:
        notes(r.notes)
        colour = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red", "INCONCLUSIVE": "yellow"}[r.decision]
        err.print(Text.assemble("privacy audit: ", (r.decision, colour), f" ({r.n_synthetic} synthetic vs {r.n_train} training "
                  f"images, calibrated on {r.calibration}; {r.n_flagged} flagged, {len(r.confirmed)} confirmed copies)"),
                  soft_wrap=True)
        for line in r.reasons:
            err.print(styled("  FAIL", "red", f": {line}"), soft_wrap=True)
        for line in r.warnings:
            err.print(styled("  WARN", "yellow", f": {line}"), soft_wrap=True)
        for line in r.inconclusive:
            err.print(styled("  INCONCLUSIVE", "yellow", f": {line}"), soft_wrap=True)
        if r.summary:
            err.print(r.summary, soft_wrap=True)
        err.print(f"wrote {r.report}\n      {r.flagged_csv}\n      " + "\n      ".join(str(f) for f in r.figures))
    emit(r.report, {"decision": r.decision, "exit_code": r.exit_code, "report": r.report,
                     "flagged": r.n_flagged, "confirmed": r.confirmed, "summary": r.summary,
                     "inconclusive": r.inconclusive, "tests_run": r.tests_run, "min_holdout": r.min_holdout},
          as_json)
    if r.exit_code:
        raise typer.Exit(r.exit_code)
