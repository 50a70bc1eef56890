"""`reports/evaluate/report.json`, written by `fundus evaluate`: realism, fundus statistics, usefulness."""

from __future__ import annotations

from fundus_cli.schemas import Artefact

EVALUATE_REPORT = Artefact(format="fundus-cli evaluate report", version=1, command="fundus evaluate")
