"""`fundus ingest`'s config and result, their checks, and the options recorded in the files."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


from fundus_cli import __version__
from fundus_cli.data import h5
from fundus_cli.errors import FundusError


STAGING_DIR = ".ingest-staging"


DETECT_MAX_SIDE = 1024  # field-of-view detection needs no more pixels than this


MIN_SIDE = 32


LABELS_FROM_FOLDERS = "folders"


@dataclass(frozen=True)
class IngestConfig:
    raw: Path  # folder of photographs, searched recursively
    out: Path = Path("data")  # where train.h5, holdout.h5 and ingest-report.json go
    size: int = 256  # side of the stored square images, pixels
    labels: str | None = None  # CSV path, "folders" (class subfolders), or None: raw/labels.csv if present
    id_column: str | None = None  # CSV column naming the image (default: recognised names)
    label_column: str | None = None  # CSV column with the class (default: recognised names)
    patient_column: str | None = None  # CSV column with the patient id
    patient_regex: str | None = None  # regex on the file name; group 'patient' or group 1 is the id
    holdout_fraction: float = 0.2  # share of images (by patient) held out, never trained on
    seed: int = 0  # seed of the train/holdout split
    workers: int = 0  # decoding processes; 0 = all cores
    pseudonymize: bool = False  # store salted hashes instead of file names and patient ids
    salt: str | None = None  # salt for --pseudonymize (default: random, saved in the mapping file)
    pseudonym_map: Path | None = None  # where the pseudonym mapping goes (default: <out>/pseudonym-map.csv)
    min_quality: str | None = None  # e.g. "brightness=0.08,sharpness=20"
    dup_threshold: int = 4  # perceptual-hash bits that may differ between near duplicates
    duplicates: str = "keep"  # keep | first | drop-conflicts: what to do with copies of one photograph
    force: bool = False  # overwrite existing outputs
    reduced_decode: bool = True  # decode JPEGs at reduced scale when the target is small


@dataclass
class IngestResult:
    train: Path
    holdout: Path
    report: Path
    n_train: int
    n_holdout: int
    n_found: int
    n_rejected: int
    n_duplicate_groups: int
    class_names: tuple[str, ...]
    counts: dict[str, dict[str, int]]  # split -> class name -> images
    notes: list[str] = field(default_factory=list)
    pseudonym_map: Path | None = None
    seconds: float = 0.0
    resumed_images: int = 0
    n_label_conflicts: int = 0  # duplicate groups whose copies carry different labels
    n_patient_conflicts: int = 0  # duplicate groups whose copies carry different patient ids
    n_dropped_duplicates: int = 0  # copies left out by --duplicates first / drop-conflicts


def staging_key(cfg: IngestConfig) -> dict[str, Any]:
    return {"size": cfg.size, "reduced_decode": cfg.reduced_decode, "schema": h5.SCHEMA_VERSION,
            "fundus_cli": __version__, "raw": str(cfg.raw.resolve())}


DUPLICATE_POLICIES = ("keep", "first", "drop-conflicts")


def check_config(cfg: IngestConfig) -> None:
    raw = Path(cfg.raw)
    if not raw.exists():
        raise FundusError(f"{raw}: folder not found. Give the folder that holds the photographs.")
    if not raw.is_dir():
        raise FundusError(f"{raw} is a file, not a folder. Give the folder that holds the photographs.")
    if not 32 <= cfg.size <= 4096:
        raise FundusError(f"--size {cfg.size}: choose a side between 32 and 4096 pixels (default 256).")
    if not 0.0 <= cfg.holdout_fraction < 1.0:
        raise FundusError(f"--holdout-fraction {cfg.holdout_fraction}: choose a value in [0, 1) (default 0.2).")
    if cfg.workers < 0:
        raise FundusError(f"--workers {cfg.workers}: give 0 (all cores) or a positive number.")
    if cfg.duplicates not in DUPLICATE_POLICIES:
        raise FundusError(f"--duplicates {cfg.duplicates}: choose one of {', '.join(DUPLICATE_POLICIES)}.")
    if not 0 <= cfg.dup_threshold <= 32:
        raise FundusError(f"--dup-threshold {cfg.dup_threshold}: choose 0..32 bits (default 4).")
    if cfg.labels not in (None, LABELS_FROM_FOLDERS) and not Path(cfg.labels).is_file():
        raise FundusError(f"{cfg.labels}: labels file not found. Give a CSV file, or --labels folders "
                          "to take classes from subfolder names.")


def options_for_file(cfg: IngestConfig) -> dict[str, Any]:
    opts = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    opts["salt"] = None  # the salt would let anyone test guesses of patient names
    if cfg.pseudonymize:
        for k in ("raw", "labels", "pseudonym_map"):
            opts[k] = "(pseudonymized)" if opts[k] else None
    return opts
