"""Reading untrusted dataset files: typed attributes, and refusing data stored outside the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fundus_cli.errors import FundusError


def bad(path: Path, why: str) -> FundusError:
    return FundusError(
        f"{path}: not a valid fundus-cli dataset ({why}). Create it with `fundus ingest` "
        "or `fundus sample`; a file that was interrupted or edited by hand must be made again."
    )


def attr_str(path: Path, attrs: Any, key: str) -> str:
    if key not in attrs:
        raise bad(path, f"attribute '{key}' is missing")
    value = attrs[key]
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        raise bad(path, f"attribute '{key}' is not text")
    return value


def attr_int(path: Path, attrs: Any, key: str) -> int:
    if key not in attrs:
        raise bad(path, f"attribute '{key}' is missing")
    value = attrs[key]
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return int(value)
    raise bad(path, f"attribute '{key}' is not an integer")


def attr_json(path: Path, attrs: Any, key: str, kind: type) -> Any:
    text = attr_str(path, attrs, key)
    if len(text) > 10_000_000:
        raise bad(path, f"attribute '{key}' is implausibly large")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise bad(path, f"attribute '{key}' is not valid JSON: {e}") from None
    if not isinstance(value, kind):
        raise bad(path, f"attribute '{key}' should hold a JSON {kind.__name__}")
    return value


def check_plain_storage(path: Path, f: h5py.File, name: str) -> None:
    """Refuse `name` unless it, and every group on the way to it, is stored inside this file.

    HDF5 can make a dataset read its bytes from elsewhere: an external link to another file,
    a soft link, raw data in external files (`external=`), or a virtual dataset mapping other
    files. Followed blindly, any of them lets a crafted dataset make `fundus report` embed an
    arbitrary local file as image pixels. The writer never makes any of them, so refusing
    them costs nothing legitimate.
    """
    parts = name.split("/")
    group: Any = f
    for i, part in enumerate(parts):
        sub = "/".join(parts[: i + 1])
        link = group.get(part, getlink=True)
        if link is None:
            return  # missing: the caller says so
        if isinstance(link, h5py.ExternalLink):
            raise FundusError(f"{path}: '{sub}' is a link to another file ({link.filename}); fundus-cli reads only "
                              "data stored inside the dataset file itself. Re-create the file with `fundus ingest` "
                              "or `fundus sample`.")
        if not isinstance(link, h5py.HardLink):
            raise FundusError(f"{path}: '{sub}' is a {type(link).__name__} ({getattr(link, 'path', '')}); "
                              "fundus-cli reads only data stored inside the dataset file itself. Re-create the "
                              "file with `fundus ingest` or `fundus sample`.")
        obj = group[part]
        if isinstance(obj, h5py.Dataset):
            if obj.is_virtual:
                raise FundusError(f"{path}: '{sub}' is a virtual dataset (its data comes from other files); "
                                  "fundus-cli reads only data stored inside the dataset file itself. Re-create "
                                  "the file with `fundus ingest` or `fundus sample`.")
            dcpl = obj.id.get_create_plist()
            if dcpl.get_external_count():
                first = dcpl.get_external(0)[0]
                first = first.decode("utf-8", "backslashreplace") if isinstance(first, bytes) else str(first)
                raise FundusError(f"{path}: '{sub}' keeps its data in external files (e.g. {first}); "
                                  "fundus-cli reads only data "
                                  "stored inside the dataset file itself. Re-create the file with `fundus ingest` "
                                  "or `fundus sample`.")
            return
        group = obj
