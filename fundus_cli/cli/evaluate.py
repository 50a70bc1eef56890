"""`fundus evaluate`: options -> config -> `api` call -> summary on stderr, result on stdout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from fundus_cli import api, progress
from fundus_cli.cli.app import JsonOpt, command, emit, err, notes, state
from fundus_cli.cli.options import OverwriteReport, ReportFolder


@command("evaluate", "Realism and usefulness -> reports/evaluate/.  e.g. fundus evaluate")
def evaluate_cmd(
    real: Annotated[Path, typer.Option(help="Real images never trained on.")] = Path("data/holdout.h5"),
    synthetic: Annotated[Path, typer.Option(help="Synthetic images from `fundus sample`.")] = Path("data/synthetic.h5"),
    train: Annotated[Path, typer.Option(help="Real training images (the real-vs-real baseline; usefulness).")] = Path("data/train.h5"),
    out: ReportFolder = Path("reports/evaluate"),
    features: Annotated[str, typer.Option(help="Feature space: fundus (colour, detail by scale, vessels, texture; "
                                          "sees missing vessels), random (fixed random CNN, offline), inception (the "
                                          "standard FID Inception-v3, comparable numbers; needs --weights), classifier "
                                          "(the usefulness classifier trained on the labelled --train set).")] = "fundus",
    weights: Annotated[Optional[Path], typer.Option(help="--features inception: the weights file "
                                                    "pt_inception-2015-12-05-6726825d.pth (default: "
                                                    "$FUNDUS_INCEPTION_WEIGHTS).")] = None,
    metrics: Annotated[str, typer.Option(help="Comma-separated realism metrics: fid, kid, prdc.")] = "fid,kid,prdc",
    size: Annotated[Optional[int], typer.Option(help="Compare at this image size (default: the smallest input).")] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap replicates for confidence intervals.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed for subsets and bootstraps.")] = 0,
    usefulness: Annotated[bool, typer.Option(help="Train-on-synthetic/test-on-real classifiers (needs labels).")] = True,
    usefulness_steps: Annotated[int, typer.Option(help="Training steps of each usefulness classifier (at least).")] = 300,
    usefulness_seeds: Annotated[int, typer.Option(help="Training seeds per usefulness scenario (paired gains "
                                                  "average over them).")] = 3,
    force: OverwriteReport = False,
    as_json: JsonOpt = False,
) -> None:
    """Measure synthetic images against real ones: FID, KID, precision/recall/density/coverage with
    bootstrap CIs beside the real-vs-real baseline, per class; fundus statistics (colour, vessels,
    sharpness, optic disc); and, with labels, whether a classifier trained on them works on real data.

    Example: fundus evaluate --synthetic data/synthetic.h5 --out reports/evaluate
    """
    cfg = api.EvaluateConfig(real=real, synthetic=synthetic, train=train, out=out, features=features,
                             weights=weights, metrics=metrics, size=size, n_boot=n_boot, seed=seed,
                             usefulness=usefulness, usefulness_steps=usefulness_steps,
                             usefulness_seeds=usefulness_seeds, force=force)
    progress.set_lines(not state["quiet"])  # one line per stage on stderr, also in logs
    r = api.evaluate(cfg)
    if not state["quiet"]:
        notes(r.notes)
        o = r.realism["overall"]
        table = Table(title=f"realism: {o['n_compared']} synthetic (or real training) vs {o['n_real']} images of {real}, 95 % CI", title_justify="left")
        for col in ("metric", "synthetic", "real train (baseline)", "told apart?"):
            table.add_column(col)
        for k, v in o["synthetic"].items():
            b = o.get("baseline_train", {}).get(k)
            table.add_row(k, f"{v['value']:.4g} [{v['ci_low']:.3g}, {v['ci_high']:.3g}]",
                          f"{b['value']:.4g} [{b['ci_low']:.3g}, {b['ci_high']:.3g}]" if b else "-",
                          ("yes" if o["distinguishable"][k] else "no") if b else "-")
        err.print(table)
        if r.usefulness:
            t2 = Table(title="usefulness: classifier tested on the real holdout", title_justify="left")
            for col in ("trained on", "images", "accuracy", "balanced accuracy", "macro AUC"):
                t2.add_column(col)
            for name, v in r.usefulness["scenarios"].items():
                t2.add_row(name, str(v["train_images"]), *(
                    f"{v[m]['value']:.3f} [{v[m]['ci_low']:.2f}, {v[m]['ci_high']:.2f}]"
                    for m in ("accuracy", "balanced_accuracy", "macro_auc")))
            err.print(t2)
        err.print(f"read  {real}, {synthetic}" + (f", {train}" if train.exists() else ""))
        err.print(f"wrote {r.report}\n      " + "\n      ".join(str(f) for f in r.figures))
    emit(r.report, {"report": r.report, "realism": {k: v["value"] for k, v in r.realism["overall"]["synthetic"].items()},
                     "usefulness": r.usefulness["summary"] if r.usefulness else None}, as_json)
