"""`<demo>/demo.json`, written by `fundus demo`: its settings, every step with its command, status
and seconds, and the privacy verdicts."""

from __future__ import annotations

from typing import Any

from fundus_cli.schemas import Artefact

DEMO_RECORD = Artefact(format="fundus-cli demo summary", version=1, command="fundus demo")


def settings(record: Any) -> dict[str, Any] | None:
    """The settings that made the demo's files, or None when the record has none."""
    s = record.get("settings") if isinstance(record, dict) else None
    return s if isinstance(s, dict) else None
