"""The `fundus` command line: parse options, call one `api` function, print a summary.

Main outputs (a path, or a JSON line with --json) go to stdout so that `$(fundus ...)`
works in shell scripts; progress, tables and messages go to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
import functools
from enum import Enum
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fundus_cli import api, progress
from fundus_cli.errors import EXIT_INTERNAL, FundusError, from_os_error
from fundus_cli.training_length import shortfall

# Markup off: paths, class names and messages are user text, and `[/]` or `[left]` in a file name
# must print as written (rich markup would crash on the one and swallow the other). Style comes
# only from Text objects built below.
err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)

EXIT_CODES_HELP = ("Exit codes: 0 success, 1 audit failed, 2 bad input or usage, 3 inconclusive audit, "
                   f"{EXIT_INTERNAL} internal error (a bug: rerun with --debug), 130 interrupted.")


# What running the command again does after Ctrl-C, so that the message never promises a resume
# that does not happen.
_AFTER_INTERRUPT = {
    "ingest": "run the same command again to resume: photographs already decoded are not decoded again.",
    "train": "run the same command again with --resume to continue from the last checkpoint.",
    "sample": "the same command starts over and makes the same images (split a long run with --seed-start and "
              "--n to keep finished parts).",
    "demo": "run the same command again to resume: finished steps are skipped.",
}
_START_OVER = "run the same command again to start over."


def _handle_errors(fn: Callable[..., None], name: str = "") -> Callable[..., None]:
    """Turn every failure into one line on stderr and a documented exit code (a traceback only
    with --debug): FundusError and fixable OS problems (no permission, full disk) -> 2,
    Ctrl-C -> 130, anything else -> EXIT_INTERNAL (a bug), never 1, which means "audit failed".

    Applied to each command rather than around the app, so that it also holds when the
    command is invoked through click directly (typer.testing.CliRunner does that).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.exceptions.TyperException):
            raise
        except FundusError as e:
            if _state["debug"]:
                raise
            _fail(str(e), 2)
        except KeyboardInterrupt:
            if _state["debug"]:
                raise
            err.print(_styled("interrupted", "yellow", ": nothing was left half-written; "
                              + _AFTER_INTERRUPT.get(name, _START_OVER)), soft_wrap=True)
            _exit(130)
        except Exception as e:
            if _state["debug"]:
                raise
            mapped = from_os_error(e)
            if mapped is not None:
                _fail(str(mapped), 2)
            first = (str(e).strip().splitlines() or [""])[0][:300]
            _fail(f"internal error ({type(e).__name__}: {first}). This is a bug in fundus-cli; run the same command "
                  "with --debug (fundus --debug ...) for the traceback and report it.", EXIT_INTERNAL)

    return wrapper


def _fail(message: str, code: int) -> None:
    err.print(_styled("error:", "bold red", f" {message}"), soft_wrap=True)
    _exit(code)


def _exit(code: int) -> None:
    from fundus_cli.data import h5

    if h5.library_damaged():
        # HDF5 could not close a file whose writes failed (a full disk); its clean-up at
        # interpreter exit would crash (exit 139) after our message. The half-written file is
        # already deleted, so leave at once with the right code.
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(code)
    raise typer.Exit(code) from None


def command(name: str, short_help: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def register(fn: Callable[..., None]) -> Callable[..., None]:
        return app.command(name, short_help=short_help)(_handle_errors(fn, name))

    return register


app = typer.Typer(
    name="fundus",
    help="Synthetic retinal fundus photographs from a folder of real ones, checked for realism, usefulness "
    "and privacy.\n\nA project folder uses data/ for datasets, runs/<arch>/ for training runs and reports/ "
    "for reports, so the commands chain with no options:\n\n"
    "  fundus phantoms raw && fundus ingest raw\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)

_state: dict[str, Any] = {"debug": False, "quiet": False}


def _version(value: bool) -> None:
    if value:
        from fundus_cli import __version__

        typer.echo(f"fundus-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summary tables.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show a traceback for errors.")] = False,
) -> None:
    _state["quiet"] = quiet
    _state["debug"] = debug
    progress.set_enabled(not quiet and err.is_terminal)


def _styled(label: str, style: str, rest: str = "") -> Text:
    """`label` in `style`, then `rest` verbatim (never read as markup)."""
    return Text.assemble((label, style), rest)


def _say(message: str | Text) -> None:
    if not _state["quiet"]:
        err.print(message, soft_wrap=True)


def _notes(notes: list[str]) -> None:
    for note in notes:
        err.print(_styled("note:", "yellow", f" {note}"), soft_wrap=True)


def _emit(main_output: Path | str, summary: dict[str, Any], as_json: bool) -> None:
    """The command's result on stdout: its main output path, or one JSON line."""
    if as_json:
        typer.echo(json.dumps(summary, default=str))
    else:
        typer.echo(str(main_output))


JsonOpt = Annotated[bool, typer.Option("--json", help="Print a one-line JSON summary on stdout instead of the path.")]


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
    _say(f"wrote {result.n_images} photographs and {result.labels_csv}")
    _emit(out_dir, {"out_dir": str(out_dir), "images": result.n_images, "labels": str(result.labels_csv)}, as_json)


@command("ingest", "Folder of photographs -> data/train.h5 + holdout.h5.  e.g. fundus ingest ./raw")
def ingest_cmd(
    raw: Annotated[Path, typer.Argument(help="Folder of JPEG/PNG/TIFF/BMP photographs (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("data"),
    size: Annotated[int, typer.Option(help="Side of the stored square images in pixels (32 or more).")] = 256,
    labels: Annotated[Optional[str], typer.Option(
        help="CSV of labels, or 'folders' to use class subfolder names. Default: RAW/labels.csv if present.")] = None,
    id_column: Annotated[Optional[str], typer.Option(help="CSV column naming the image (default: recognised, "
                                                           "e.g. image, id_code).")] = None,
    label_column: Annotated[Optional[str], typer.Option(help="CSV column with the class (default: recognised, "
                                                              "e.g. label, diagnosis, level).")] = None,
    patient_column: Annotated[Optional[str], typer.Option(help="CSV column with the patient id.")] = None,
    patient_regex: Annotated[Optional[str], typer.Option(
        help="Regex on the file name giving the patient id (group 'patient' or group 1), e.g. '(\\d+)_(left|right)'.")] = None,
    holdout_fraction: Annotated[float, typer.Option(help="Share of images held out, split by patient.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the train/holdout split.")] = 0,
    workers: Annotated[int, typer.Option(help="Decoding processes (0 = all cores).")] = 0,
    pseudonymize: Annotated[bool, typer.Option(
        help="Store salted hashes instead of file names and patient ids; the mapping goes to a separate CSV.")] = False,
    salt: Annotated[Optional[str], typer.Option(help="Salt for --pseudonymize (default: random).")] = None,
    pseudonym_map: Annotated[Optional[Path], typer.Option(
        help="Where the pseudonym mapping goes (default: OUT/pseudonym-map.csv). Keep it with the data owner.")] = None,
    min_quality: Annotated[Optional[str], typer.Option(
        help="Reject images below limits, e.g. 'brightness=0.08,sharpness=20' "
             "(names: brightness, contrast, sharpness, fov_fraction).")] = None,
    dup_threshold: Annotated[int, typer.Option(help="Perceptual-hash bits that may differ between near duplicates.")] = 4,
    duplicates: Annotated[str, typer.Option(
        help="Copies of one photograph: keep (all, and warn when they disagree on label or patient), first (keep one "
             "per photograph), drop-conflicts (leave out every copy of a photograph filed under two labels).")] = "keep",
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Read a folder of fundus photographs into a clean HDF5 dataset: find the field of view, crop and
    resize, measure quality, find duplicates, and split by patient into train and holdout files.

    Example: fundus ingest ./raw --out data --size 256 --patient-regex '(\\d+)_(left|right)'
    """
    cfg = api.IngestConfig(raw=raw, out=out, size=size, labels=labels, id_column=id_column, label_column=label_column,
                           patient_column=patient_column, patient_regex=patient_regex,
                           holdout_fraction=holdout_fraction, seed=seed, workers=workers, pseudonymize=pseudonymize,
                           salt=salt, pseudonym_map=pseudonym_map, min_quality=min_quality,
                           dup_threshold=dup_threshold, duplicates=duplicates, force=force)
    r = api.ingest(cfg)
    if not _state["quiet"]:
        _notes(r.notes)
        table = Table(title=f"ingest: {r.n_found} images found in {raw}", title_justify="left")
        table.add_column("split")
        for name in (*r.class_names, *(["unknown"] if any("unknown" in c for c in r.counts.values()) else [])):
            table.add_column(name, justify="right")
        table.add_column("total", justify="right")
        for split, counts in r.counts.items():
            cols = [str(counts.get(name, 0)) for name in (*r.class_names, "unknown") if
                    name in r.class_names or any("unknown" in c for c in r.counts.values())]
            table.add_row(split, *cols, str(sum(counts.values())))
        err.print(table)
        err.print(f"rejected: {r.n_rejected}   duplicate groups: {r.n_duplicate_groups}   "
                  f"time: {r.seconds:.1f} s" + (f"   resumed: {r.resumed_images}" if r.resumed_images else ""))
        if r.n_label_conflicts or r.n_patient_conflicts:
            err.print(_styled("duplicates:", "bold yellow",
                              f" {r.n_label_conflicts} photographs filed under two labels, {r.n_patient_conflicts} "
                              f"under two patient ids (see 'duplicates' in {r.report})"
                              + (f"; {r.n_dropped_duplicates} copies left out" if r.n_dropped_duplicates else
                                 "; --duplicates drop-conflicts leaves out the mislabelled copies")))
        err.print(f"read  {raw}\nwrote {r.train}\n      {r.holdout}\n      {r.report}")
        if r.pseudonym_map:
            err.print(Text.assemble(f"      {r.pseudonym_map}  ", ("(pseudonym mapping: keep it with the data owner, "
                                    "do not share it with the data)", "bold yellow")), soft_wrap=True)
    _emit(r.train, {"train": r.train, "holdout": r.holdout, "report": r.report, "n_train": r.n_train,
                    "n_holdout": r.n_holdout, "rejected": r.n_rejected, "duplicate_label_conflicts": r.n_label_conflicts,
                    "duplicate_patient_conflicts": r.n_patient_conflicts}, as_json)


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
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    conditional: Annotated[bool, typer.Option(help="Condition on the labels (then `sample --label` works).")] = False,
    mirror: Annotated[bool, typer.Option(help="Use the mirror symmetry of left and right eyes: learn photographs turned so the optic disc is on the right, and mirror half the samples back.")] = True,
    cache: Annotated[str, typer.Option(help="auto, memory or stream (read batches from the file).")] = "auto",
    snapshot_every: Annotated[Optional[int], typer.Option(help="Steps between checkpoints.")] = None,
    sample_every: Annotated[Optional[int], typer.Option(help="Steps between sample grids.")] = None,
    keep: Annotated[int, typer.Option(help="Numbered checkpoints to keep.")] = 3,
    amp: Annotated[str, typer.Option(help="Mixed precision: auto (bf16 on a GPU that has it), off, bf16, fp16.")] = "auto",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the networks (GPU).")] = False,
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
    r = api.train(cfg, log=_say)
    import os

    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    _say(f"read  {data}\nwrote {r.run_dir}/ (checkpoint.pt, metrics.jsonl, samples-*.png"
         + (", loss.png)" if r.loss_plot else ")"))
    _say(f"step {r.step}/{r.steps} in {r.seconds / 60:.1f} min, {r.images_per_second:.1f} images/s; "
         + "  ".join(f"{k}={v:.4g}" for k, v in r.last_metrics.items()))
    if r.interrupted:
        _say(_styled("interrupted", "yellow", f": checkpoint saved at step {r.step}; continue with the same command plus "
                                              "--resume"))
    _emit(r.checkpoint, {"checkpoint": r.checkpoint, "step": r.step, "steps": r.steps, "run_dir": r.run_dir,
                         "interrupted": r.interrupted, "grid": r.grid}, as_json)
    if r.interrupted:
        raise typer.Exit(130)


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
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
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
    _say(f"read  {r.checkpoint} ({r.arch}, step {r.step}" + (f" of {r.planned_steps})" if r.planned_steps else ")"))
    if (short := shortfall(r.step, r.planned_steps)) is not None:
        _say(_styled("warning:", "yellow", f" {short}"))
    _say(f"wrote {r.out} ({r.n} images" + (", " + ", ".join(f"{k}: {v}" for k, v in r.class_counts.items())
                                             if r.class_counts else "") + ")")
    if r.grid:
        _say(f"      {r.grid}")
    if r.png_dir:
        _say(f"      {r.png_dir}/")
    _emit(r.out, {"out": r.out, "n": r.n, "checkpoint": r.checkpoint, "arch": r.arch, "step": r.step,
                  "planned_steps": r.planned_steps, "under_trained": short is not None,
                  "class_counts": r.class_counts}, as_json)


@command("evaluate", "Realism and usefulness -> reports/evaluate/.  e.g. fundus evaluate")
def evaluate_cmd(
    real: Annotated[Path, typer.Option(help="Real images never trained on.")] = Path("data/holdout.h5"),
    synthetic: Annotated[Path, typer.Option(help="Synthetic images from `fundus sample`.")] = Path("data/synthetic.h5"),
    train: Annotated[Path, typer.Option(help="Real training images (the real-vs-real baseline; usefulness).")] = Path("data/train.h5"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("reports/evaluate"),
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
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing report.")] = False,
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
    progress.set_lines(not _state["quiet"])  # one line per stage on stderr, also in logs
    r = api.evaluate(cfg)
    if not _state["quiet"]:
        _notes(r.notes)
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
    _emit(r.report, {"report": r.report, "realism": {k: v["value"] for k, v in r.realism["overall"]["synthetic"].items()},
                     "usefulness": r.usefulness["summary"] if r.usefulness else None}, as_json)


@command("audit-privacy", "Memorization audit; exit 1 on FAIL.  e.g. fundus audit-privacy")
def audit_cmd(
    train: Annotated[Path, typer.Option(help="Images the generator was trained on.")] = Path("data/train.h5"),
    holdout: Annotated[Path, typer.Option(help="Real images it never saw (calibration).")] = Path("data/holdout.h5"),
    synthetic: Annotated[Path, typer.Option(help="Images to audit.")] = Path("data/synthetic.h5"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("reports/audit-privacy"),
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
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing report.")] = False,
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
    r = api.audit_privacy(cfg)
    if not _state["quiet"]:
        _notes(r.notes)
        colour = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red", "INCONCLUSIVE": "yellow"}[r.decision]
        err.print(Text.assemble("privacy audit: ", (r.decision, colour), f" ({r.n_synthetic} synthetic vs {r.n_train} training "
                  f"images, calibrated on {r.calibration}; {r.n_flagged} flagged, {len(r.confirmed)} confirmed copies)"),
                  soft_wrap=True)
        for line in r.reasons:
            err.print(_styled("  FAIL", "red", f": {line}"), soft_wrap=True)
        for line in r.warnings:
            err.print(_styled("  WARN", "yellow", f": {line}"), soft_wrap=True)
        for line in r.inconclusive:
            err.print(_styled("  INCONCLUSIVE", "yellow", f": {line}"), soft_wrap=True)
        if r.summary:
            err.print(r.summary, soft_wrap=True)
        err.print(f"wrote {r.report}\n      {r.flagged_csv}\n      " + "\n      ".join(str(f) for f in r.figures))
    _emit(r.report, {"decision": r.decision, "exit_code": r.exit_code, "report": r.report,
                     "flagged": r.n_flagged, "confirmed": r.confirmed, "summary": r.summary,
                     "inconclusive": r.inconclusive, "tests_run": r.tests_run, "min_holdout": r.min_holdout},
          as_json)
    if r.exit_code:
        raise typer.Exit(r.exit_code)


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
    _say(f"read  {folder} ({r.datasets} datasets, {r.runs} runs, {r.evaluations} evaluations, {r.audits} audits)")
    for line in r.missing:
        _say(_styled("not there yet:", "yellow", f" {line}"))
    if r.verdict is not None:
        # The exit code stays 0 whatever the verdicts: the report is a view; audit-privacy is the gate.
        _say(f"most severe privacy verdict here: {r.verdict}")
    _say(f"wrote {r.out}")
    _emit(r.out, {"report": r.out, "datasets": r.datasets, "runs": r.runs, "evaluations": r.evaluations,
                  "audits": r.audits, "verdict": r.verdict, "verdicts": r.verdicts, "missing": r.missing}, as_json)


@command("demo", "Whole pipeline on built-in photographs -> OUT_DIR/report.html.  e.g. fundus demo demo")
def demo_cmd(
    out_dir: Annotated[Path, typer.Argument(help="Folder for everything the demo makes.")] = Path("demo"),
    n_photos: Annotated[Optional[int], typer.Option(help="Phantom photographs to make [default: 200; 60 with --quick].")] = None,
    size: Annotated[Optional[int], typer.Option(help="Image size in px for ingest and training [default: 64; 32 with "
                                                     "--quick].")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Tiny settings (32 px, a few training steps, few images): "
                                                        "every step in about a minute; the models learn nothing.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of every step.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (training, sampling, audit).")] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Redo every step, also in a folder with other files or a demo "
                                                        "made with other settings.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run the whole pipeline on built-in phantom photographs inside OUT_DIR: phantoms, ingest, train a
    conditional VAE and GAN (--preset demo), sample from each, evaluate each, audit each for privacy,
    and write OUT_DIR/report.html. Before each step it prints the equivalent command (cd OUT_DIR &&
    fundus ...), so any step can be rerun or changed by hand; OUT_DIR/demo.json records the steps,
    their times and the verdicts.

    Running it again skips finished steps (outputs that exist and are newer than their inputs) and
    resumes an interrupted training run, so Ctrl-C loses little. A non-empty folder that is not a demo,
    or a demo made with other settings, is refused unless --force, which redoes every step. A privacy
    audit that FAILs does not stop the demo: the verdict is printed and shown in the report, and the
    exit code stays 0.

    Example: fundus demo demo --n-photos 200 && open demo/report.html
    """
    def log(line: str) -> None:
        if not _state["quiet"]:
            err.print(line, markup=False, highlight=False, soft_wrap=True)

    r = api.demo(api.DemoConfig(out=out_dir, n_photos=n_photos, size=size, quick=quick, seed=seed, device=device,
                                force=force), log=log)
    _say(f"demo finished in {r.seconds / 60:.1f} min; wrote {r.summary}")
    for arch, verdict in r.verdicts.items():
        _say(f"privacy audit of the {arch.upper()} samples: {verdict}")
    _emit(r.report, {"report": r.report, "summary": r.summary, "verdicts": r.verdicts, "seconds": round(r.seconds, 1),
                     "steps": {s["name"]: {"status": s["status"], "seconds": s["seconds"]} for s in r.steps}}, as_json)


def main() -> None:
    app()
