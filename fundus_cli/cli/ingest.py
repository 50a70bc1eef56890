"""`fundus ingest`: options -> config -> `api` call -> summary on stderr, result on stdout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from fundus_cli import api
from fundus_cli.cli.app import JsonOpt, command, emit, err, notes, state, styled


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
    if not state["quiet"]:
        _print_summary(r, raw)
    emit(r.train, {"train": r.train, "holdout": r.holdout, "report": r.report, "n_train": r.n_train,
                    "n_holdout": r.n_holdout, "rejected": r.n_rejected, "duplicate_label_conflicts": r.n_label_conflicts,
                    "duplicate_patient_conflicts": r.n_patient_conflicts}, as_json)


def _print_summary(r: api.IngestResult, raw: Path) -> None:
    """The table of counts per split and class, the duplicates line and the files read and written."""
    notes(r.notes)
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
        err.print(styled("duplicates:", "bold yellow",
                          f" {r.n_label_conflicts} photographs filed under two labels, {r.n_patient_conflicts} "
                          f"under two patient ids (see 'duplicates' in {r.report})"
                          + (f"; {r.n_dropped_duplicates} copies left out" if r.n_dropped_duplicates else
                             "; --duplicates drop-conflicts leaves out the mislabelled copies")))
    err.print(f"read  {raw}\nwrote {r.train}\n      {r.holdout}\n      {r.report}")
    if r.pseudonym_map:
        err.print(Text.assemble(f"      {r.pseudonym_map}  ", ("(pseudonym mapping: keep it with the data owner, "
                                "do not share it with the data)", "bold yellow")), soft_wrap=True)
