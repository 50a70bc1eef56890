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

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from fundus_cli import __version__
from fundus_cli.errors import FundusError
from fundus_cli.fsio import commit_tmp, tmp_path_for
from fundus_cli.training.config import TrainConfig

FORMAT = "fundus-cli checkpoint"
CHECKPOINT_VERSION = 2  # 2: models learn one disc orientation; GAN/VAE config keys added
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
    need = _tensor_bytes(payload) + (1 << 20)
    _check_space(run_dir, numbered, need)
    try:
        torch.save(payload, tmp)
        commit_tmp(tmp, numbered)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, RuntimeError):
            # torch reports a full disk as "unexpected pos ..." / "file write failed", no errno.
            _check_space(run_dir, numbered, need)
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


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _check_space(run_dir: Path, path: Path, need: int) -> None:
    """Refuse to write a checkpoint that does not fit: a full disk is the user's to fix (exit 2)."""
    import errno
    import shutil

    try:
        free = shutil.disk_usage(run_dir).free
    except OSError:
        return
    if free < need:
        raise OSError(errno.ENOSPC, f"No space left on device ({free / 2**20:.1f} MB free, the checkpoint needs "
                      f"about {need / 2**20:.1f} MB)", str(path))


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
    if ckpt["format_version"] == 1:
        raise FundusError(f"{path}: checkpoint format 1, from before the generators learnt one optic-disc "
                          "orientation (the networks and their settings changed); this fundus-cli reads format "
                          f"{CHECKPOINT_VERSION}. Train again (same command), or sample it with the fundus-cli "
                          "commit that trained it.")
    if ckpt["format_version"] != CHECKPOINT_VERSION:
        raise FundusError(f"{path}: checkpoint format {ckpt['format_version']} (fundus-cli "
                          f"{ckpt['fundus_cli_version']}); this fundus-cli reads format {CHECKPOINT_VERSION}. "
                          f"Use fundus-cli {ckpt['fundus_cli_version']} or train again.")
    _validate_structure(ckpt, path)
    return ckpt


def _damaged(path: Path, what: str) -> FundusError:
    return FundusError(f"{path}: damaged checkpoint ({what}). Use another one (runs/<arch>/checkpoint-*.pt) or "
                       "train again.")


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _validate_structure(ckpt: dict[str, Any], path: Path) -> None:
    """Check every entry that sample, train --resume and info rely on, and that the weights fit the
    network that `model_config` describes, so that a checkpoint with the right marker but wrong
    contents is a clear error here and never a traceback later."""
    _check_fields(ckpt, path)
    _check_states(ckpt, path)
    _check_gan_state(ckpt, path)
    _check_weights_fit(ckpt, path)


def _number(value: Any) -> bool:
    """A finite int or float (bool is an int in Python but not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    """A whole number >= 0 (a step, a number of images); bool is an int in Python but not a count."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_fields(ckpt: dict[str, Any], path: Path) -> None:
    """The architecture is known, and the settings and plain entries have the types their readers expect."""
    from fundus_cli.models.registry import ARCHITECTURES

    arch = ckpt["arch"]
    if arch not in ARCHITECTURES:
        raise _damaged(path, f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    for key in ("model_config", "train_config", "models"):
        if not isinstance(ckpt[key], dict) or not all(isinstance(k, str) for k in ckpt[key]):
            raise _damaged(path, f"'{key}' is not a dictionary")
    step = ckpt["step"]
    if not _count(step):
        raise _damaged(path, "'step' is not a step number")
    if not isinstance(ckpt["class_names"], (list, tuple)) or not all(isinstance(c, str) for c in ckpt["class_names"]):
        raise _damaged(path, "'class_names' is not a list of names")
    if not isinstance(ckpt["image_size"], int) or not isinstance(ckpt["dataset_fingerprint"], str):
        raise _damaged(path, "'image_size' or 'dataset_fingerprint' has the wrong type")
    mc = ckpt["model_config"]
    for key in ("image_size", "latent_dim"):
        if not isinstance(mc.get(key), int) or isinstance(mc.get(key), bool) or mc[key] <= 0:
            raise _damaged(path, f"model_config lacks a positive integer '{key}'")
    unknown = set(ckpt["train_config"]) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise _damaged(path, f"train_config has unknown settings {sorted(unknown)}")


def _check_states(ckpt: dict[str, Any], path: Path) -> None:
    """The weights, optimizer and random-generator states have the shapes that torch loads."""
    for key in ("models", "ema", "optimizers", "rng"):
        if key in ckpt and not isinstance(ckpt[key], dict):
            raise _damaged(path, f"'{key}' is not a dictionary")
    for key in ("models", "ema"):
        for name, state in ckpt.get(key, {}).items():
            if not _is_state_dict(state):
                raise _damaged(path, f"'{key}/{name}' is not a set of named tensors")
    for name, state in ckpt.get("optimizers", {}).items():
        if not (isinstance(state, dict) and isinstance(state.get("state"), dict)
                and isinstance(state.get("param_groups"), list)
                and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in state["param_groups"])):
            raise _damaged(path, f"optimizer state '{name}' is malformed")
    for name, state in ckpt.get("rng", {}).items():
        if not (isinstance(state, torch.Tensor) and state.dtype == torch.uint8):
            raise _damaged(path, f"random-generator state '{name}' is malformed")
    if "optimizers" in ckpt and "rank0" not in ckpt.get("rng", {}):
        raise _damaged(path, "it has optimizer states but no random-generator state 'rank0' to resume from")


def _check_gan_state(ckpt: dict[str, Any], path: Path) -> None:
    """The GAN trainer's own numbers: ADA's probability and its running sign sum, and LeCam's two anchors."""
    ada = ckpt.get("ada")
    if ada is not None and not (isinstance(ada, dict) and _number(ada.get("p")) and 0 <= ada["p"] <= 1
                                and _number(ada.get("sum")) and _count(ada.get("n"))):
        raise _damaged(path, "'ada' is not an augmentation state (p in [0, 1], a finite sum, a count)")
    anchor = ckpt.get("lecam")
    if anchor is not None and not (isinstance(anchor, (list, tuple)) and len(anchor) == 2
                                   and all(_number(a) for a in anchor)):
        raise _damaged(path, "'lecam' is not two finite LeCam anchors")


def _check_weights_fit(ckpt: dict[str, Any], path: Path) -> None:
    """model_config builds the architecture's networks, and every stored state fits the network it is for."""
    from fundus_cli.models.registry import ARCHITECTURES

    arch, spec = ckpt["arch"], ARCHITECTURES[ckpt["arch"]]
    try:
        model = spec.build(ckpt["model_config"])
    except Exception as e:  # the config is untrusted: any way it fails to build is "damaged"
        raise _damaged(path, f"model_config does not build a {arch} ({type(e).__name__}: {str(e)[:200]})") from None
    for name in spec.networks:
        net = spec.network(model, name)
        if name not in ckpt["models"]:
            raise _damaged(path, f"'models' lacks '{name}'")
        for key in ("models", "ema"):
            _check_fit(net, ckpt.get(key, {}).get(name), f"{key}/{name}", path)
        opt = ckpt.get("optimizers", {}).get(name)
        if opt is not None:
            n_saved = sum(len(g["params"]) for g in opt["param_groups"])
            n_params = len(list(net.parameters()))
            if n_saved != n_params:
                raise _damaged(path, f"optimizer state '{name}' is for {n_saved} parameters, the network has "
                                     f"{n_params}")


def _check_fit(net: torch.nn.Module, state: dict[str, Any] | None, what: str, path: Path) -> None:
    """`state` (if any) loads into `net` with every key and shape matching."""
    if state is None:
        return
    try:
        net.load_state_dict(state, strict=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise _damaged(path, f"'{what}' does not fit the network in model_config: {first}") from None
