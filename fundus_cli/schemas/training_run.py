"""A training run's `config.json` and `metrics.jsonl`, written by `fundus train` into runs/<arch>/.

config.json is one object: format, format_version, fundus_cli_version, arch, train_config (the
resolved TrainConfig), model_config, device, world_size, dataset (path, fingerprint, images,
class_names, stored_size).

metrics.jsonl has one object a line, every `log_every` steps: format, format_version, step, the
trainer's losses, images_per_s, lr, time. Every line carries the format, so that a line read on
its own (`tail -f`, a resumed run's truncated log) still says what it is.

Old files: before fundus-cli stamped them, config.json had no `format` and metrics.jsonl's lines
had no `format`; both are read as version 1 (the same content: version 1 only added the fields).
A config.json without `format` counts as one when it has `arch`, `train_config` and
`model_config`, the keys every fundus-cli has written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fundus_cli.errors import FundusError
from fundus_cli.schemas import Artefact

RUN_CONFIG = Artefact(format="fundus-cli training run", version=1, command="fundus train")
METRICS = Artefact(format="fundus-cli training metrics", version=1, command="fundus train")

_UNSTAMPED_CONFIG_KEYS = {"arch", "train_config", "model_config"}


def write_config(path: Path, body: dict[str, Any]) -> Path:
    """config.json, stamped with its format, written atomically."""
    return RUN_CONFIG.write(path, body)


def is_config(obj: Any) -> bool:
    """Whether `obj` is a run's config.json, stamped or written before the stamp."""
    return RUN_CONFIG.matches(obj) or (isinstance(obj, dict) and "format" not in obj
                                       and _UNSTAMPED_CONFIG_KEYS <= obj.keys())


def config_problem(obj: Any, path: Path) -> str | None:
    """Why `obj` cannot be read as a run's config.json, or None when it can."""
    if isinstance(obj, dict) and "format" not in obj and _UNSTAMPED_CONFIG_KEYS <= obj.keys():
        return None  # from before the stamp: version 1
    return RUN_CONFIG.problem(obj, path)


def read_config(path: Path) -> dict[str, Any]:
    """A run's config.json; FundusError naming the file when it is not one this fundus-cli reads."""
    from fundus_cli.schemas import read_json

    obj = read_json(path)
    if (why := config_problem(obj, path)) is not None:
        raise FundusError(why)
    return obj


def metrics_line(row: dict[str, Any]) -> str:
    """One metrics.jsonl line (with its newline) for `row` (step, losses, ...)."""
    return json.dumps({"format": METRICS.format, "format_version": METRICS.version, **row}) + "\n"


def read_metrics(text: str, path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl. A line that is not a JSON object is skipped (a crash can leave a
    half-written last line); a line of another format or a newer version is a FundusError."""
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict):
            continue
        if "format" in row and (why := METRICS.problem(row, path)) is not None:
            raise FundusError(why)
        rows.append(row)
    return rows
