"""`data/ingest-report.json`, written by `fundus ingest`: what was read, kept, rejected and why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fundus_cli.schemas import Artefact

INGEST_REPORT = Artefact(format="fundus-cli ingest report", version=1, command="fundus ingest")


@dataclass(frozen=True)
class RejectedFile:
    """One photograph left out of the dataset."""

    source: str  # its path inside the raw folder, or its pseudonym under --pseudonymize
    reason: str  # why, in words

    def to_json(self) -> dict[str, str]:
        return {"source": self.source, "reason": self.reason}


def rejected_files(report: dict[str, Any]) -> list[RejectedFile]:
    """The rejected files of a report (the file is untrusted: rows that are not objects are skipped,
    a missing field reads as an empty string)."""
    rows = report.get("rejected")
    out = []
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, dict):
            source, reason = row.get("source"), row.get("reason")
            out.append(RejectedFile(source=source if isinstance(source, str) else "",
                                    reason=reason if isinstance(reason, str) else ""))
    return out
