"""`reports/audit-privacy/report.json`, written by `fundus audit-privacy`: the verdict and its evidence."""

from __future__ import annotations

from typing import Any

from fundus_cli.schemas import Artefact

AUDIT_REPORT = Artefact(format="fundus-cli privacy audit report", version=1, command="fundus audit-privacy")
VERDICTS = ("PASS", "WARN", "FAIL", "INCONCLUSIVE")


def verdict(report: Any) -> str | None:
    """The audit's decision as written (one of VERDICTS, or a word a newer version wrote, which
    readers must not take for a pass), or None when the report has none."""
    decision = report.get("decision") if isinstance(report, dict) else None
    status = decision.get("status") if isinstance(decision, dict) else None
    return status if isinstance(status, str) else None
