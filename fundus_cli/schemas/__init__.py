"""The JSON artefacts the commands write, one module each: its format name, version, writer and
typed readers. Other modules read these files only through them (issue 13), so that a key
renamed on one side cannot silently blank a column on the other.

    ingest_report.py    data/ingest-report.json            fundus ingest
    evaluate_report.py  reports/evaluate/report.json       fundus evaluate
    audit_report.py     reports/audit-privacy/report.json  fundus audit-privacy
    demo_record.py      <demo>/demo.json                   fundus demo
    training_run.py     runs/<arch>/config.json, metrics.jsonl  fundus train

The HDF5 dataset's schema is `data/h5/`; the checkpoint's is `training/checkpoint.py`.

Files written before `format_version` existed (fundus-cli 0.1.0: ingest, evaluate and demo
files carried only `format`; a run's config.json and metrics.jsonl neither, see
training_run.py) are read as version 1: their content is the same, version 1 only
added the field. A file with a newer version than this fundus-cli reads is refused with the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fundus_cli.errors import FundusError
from fundus_cli.fsio import write_json_atomic

MAX_JSON_BYTES = 50 << 20  # a report larger than this is not one fundus-cli wrote; do not read it into memory


@dataclass(frozen=True)
class Artefact:
    """One kind of JSON file: `format` names it, `format_version` says which shape it has."""

    format: str  # the value of the file's "format" key
    version: int  # the version this fundus-cli writes and reads
    command: str  # the command that writes it, for the fix in error messages

    def stamp(self, body: dict[str, Any]) -> dict[str, Any]:
        """`body` with format, format_version and fundus_cli_version first."""
        from fundus_cli import __version__

        return {"format": self.format, "format_version": self.version, "fundus_cli_version": __version__, **body}

    def write(self, path: Path, body: dict[str, Any]) -> Path:
        """Write `body` stamped with this format, atomically."""
        write_json_atomic(path, self.stamp(body))
        return path

    def matches(self, obj: Any) -> bool:
        """Whether `obj` says it is this kind of file (whatever its version)."""
        return isinstance(obj, dict) and obj.get("format") == self.format

    def problem(self, obj: Any, path: Path) -> str | None:
        """Why `obj` cannot be read as this artefact, or None when it can."""
        if not self.matches(obj):
            found = obj.get("format") if isinstance(obj, dict) else None
            return (f"{path}: not a {self.format} (its format is {found!r}); give the file that `{self.command}` "
                    "wrote.")
        version = obj.get("format_version", 1)  # absent: written before the field existed, same content
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            return (f"{path}: format_version {version!r} is not a version number; the file was altered. "
                    f"Re-run `{self.command}`.")
        if version > self.version:
            return (f"{path}: {self.format} version {version}, newer than this fundus-cli reads ({self.version}). "
                    f"Upgrade fundus-cli, or re-run `{self.command}` with this one.")
        return None

    def check(self, obj: Any, path: Path) -> dict[str, Any]:
        """`obj` when it is a readable file of this kind; else FundusError naming the file and the fix."""
        if (why := self.problem(obj, path)) is not None:
            raise FundusError(why)
        return obj

    def load(self, path: Path) -> dict[str, Any]:
        """Read and check one file of this kind."""
        return self.check(read_json(path), path)


def read_json(path: Path) -> Any:
    """A JSON file's content; FundusError naming the file when it is too large or not JSON."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise FundusError(f"{path}: larger than {MAX_JSON_BYTES >> 20} MB, not a fundus-cli report.")
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FundusError(f"{path}: not valid JSON ({e}).") from None
