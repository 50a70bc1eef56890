"""Checkpoints: state_dicts and JSON-able settings, never pickled code.

A checkpoint is a dict of tensors and plain Python values, saved with `torch.save` and read
with `torch.load(weights_only=True)`, which refuses anything that could run code. So a
checkpoint from a colleague is as safe to open as a JSON file.

    format            "fundus-cli checkpoint"
    format_version    CHECKPOINT_VERSION
    fundus_cli_version
    arch              "vae" | "gan"
    model_config      dict (see fundus_cli.models)
    train_config      dict (the resolved TrainConfig)
    models            {name: state_dict}          e.g. {"generator": ..., "discriminator": ...}
    ema               {name: state_dict}          exponential moving averages (used for sampling)
    optimizers        {name: optimizer state_dict}
    step              int
    rng               {name: ByteTensor}          generator states, for an exact resume
    dataset_fingerprint, dataset_path, class_names, image_size
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from fundus_cli import __version__
from fundus_cli.errors import FundusError
from fundus_cli.fsio import commit_tmp, tmp_path_for

FORMAT = "fundus-cli checkpoint"
CHECKPOINT_VERSION = 1
LATEST = "checkpoint.pt"
_NUMBERED = re.compile(r"^checkpoint-(\d{8})\.pt$")

REQUIRED = ("format", "format_version", "fundus_cli_version", "arch", "model_config", "train_config", "models",
            "step", "dataset_fingerprint", "class_names", "image_size")


def numbered_name(step: int) -> str:
    return f"checkpoint-{step:08d}.pt"


def save_checkpoint(run_dir: Path, payload: dict[str, Any], *, keep: int) -> Path:
    """Write checkpoint-<step>.pt atomically, point checkpoint.pt at it, keep the last `keep`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "format_version": CHECKPOINT_VERSION, "fundus_cli_version": __version__, **payload}
    numbered = run_dir / numbered_name(int(payload["step"]))
    tmp = tmp_path_for(numbered)
    try:
        torch.save(payload, tmp)
        commit_tmp(tmp, numbered)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # checkpoint.pt is a hard link to the newest numbered file (no second copy on disk);
    # linking to a temporary name and renaming keeps the switch atomic.
    latest_tmp = tmp_path_for(run_dir / LATEST)
    latest_tmp.unlink(missing_ok=True)
    try:
        os.link(numbered, latest_tmp)
    except OSError:  # file systems without hard links
        import shutil

        shutil.copyfile(numbered, latest_tmp)
    commit_tmp(latest_tmp, run_dir / LATEST)
    for old in list_numbered(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return numbered


def list_numbered(run_dir: Path) -> list[Path]:
    """Numbered checkpoints of a run, oldest first."""
    found = [(int(m.group(1)), p) for p in run_dir.glob("checkpoint-*.pt") if (m := _NUMBERED.match(p.name))]
    return [p for _, p in sorted(found)]


def load_checkpoint(path: Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint; any problem is a FundusError naming the file."""
    path = Path(path)
    if path.is_dir():
        path = path / LATEST
    if not path.exists():
        raise FundusError(f"{path}: no checkpoint there. Train one with `fundus train`, or give the path of a "
                          "checkpoint.pt file.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated files, pickles with code, anything else torch rejects
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FundusError(f"{path}: not a readable fundus-cli checkpoint ({first[:200]}). It may be truncated "
                          "or not a checkpoint; use another one (runs/<arch>/checkpoint-*.pt).") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise FundusError(f"{path}: not a fundus-cli checkpoint (no format marker).")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise FundusError(f"{path}: checkpoint lacks {', '.join(missing)}; it is damaged or from an unknown tool.")
    if ckpt["format_version"] != CHECKPOINT_VERSION:
        raise FundusError(f"{path}: checkpoint format {ckpt['format_version']} (fundus-cli "
                          f"{ckpt['fundus_cli_version']}); this fundus-cli reads format {CHECKPOINT_VERSION}. "
                          f"Use fundus-cli {ckpt['fundus_cli_version']} or train again.")
    if not isinstance(ckpt["models"], dict) or not isinstance(ckpt["model_config"], dict):
        raise FundusError(f"{path}: checkpoint has malformed model entries.")
    return ckpt
