"""The JSON artefacts' schema modules: stamped on write, checked on read, and the one place
where the writer and the readers meet (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from fundus_cli import __version__
from fundus_cli.errors import FundusError
from fundus_cli.schemas import audit_report, demo_record
from fundus_cli.schemas.audit_report import AUDIT_REPORT
from fundus_cli.schemas.demo_record import DEMO_RECORD
from fundus_cli.schemas.evaluate_report import EVALUATE_REPORT
from fundus_cli.schemas.ingest_report import INGEST_REPORT, RejectedFile, rejected_files

ALL = (INGEST_REPORT, EVALUATE_REPORT, AUDIT_REPORT, DEMO_RECORD)


@pytest.mark.parametrize("artefact", ALL, ids=lambda a: a.format)
def test_written_files_carry_format_and_version_and_read_back(artefact, tmp_path: Path) -> None:
    path = artefact.write(tmp_path / "report.json", {"notes": ["x"]})
    obj = json.loads(path.read_text())
    assert list(obj)[:3] == ["format", "format_version", "fundus_cli_version"]
    assert (obj["format"], obj["format_version"], obj["fundus_cli_version"]) == (artefact.format, 1, __version__)
    assert artefact.load(path) == obj
    assert len({a.format for a in ALL}) == len(ALL)  # no two artefacts can be taken for each other


def test_a_file_from_before_format_version_reads_as_version_1(tmp_path: Path) -> None:
    # fundus-cli 0.1.0 wrote ingest, evaluate and demo files with `format` only: the documented read path.
    path = tmp_path / "ingest-report.json"
    path.write_text(json.dumps({"format": INGEST_REPORT.format, "rejected": [{"source": "a.jpg", "reason": "r"}]}))
    assert rejected_files(INGEST_REPORT.load(path)) == [RejectedFile("a.jpg", "r")]


@pytest.mark.parametrize("body, words", [
    ({"format": "fundus-cli ingest report", "format_version": 2}, ["version 2", "newer", "Upgrade fundus-cli"]),
    ({"format": "fundus-cli ingest report", "format_version": "1"}, ["not a version number", "fundus ingest"]),
    ({"format": "fundus-cli evaluate report"}, ["not a fundus-cli ingest report", "fundus ingest"]),
    ({"rejected": []}, ["not a fundus-cli ingest report"]),
])
def test_unreadable_files_are_refused_with_the_file_and_the_fix(body, words, tmp_path: Path) -> None:
    path = tmp_path / "ingest-report.json"
    path.write_text(json.dumps(body))
    with pytest.raises(FundusError) as e:
        INGEST_REPORT.load(path)
    assert str(path) in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_not_json_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text("{not json")
    with pytest.raises(FundusError, match="not valid JSON"):
        EVALUATE_REPORT.load(path)


def test_rejected_rows_round_trip_and_hostile_rows_are_skipped() -> None:
    rows = [RejectedFile("sub/a.jpg", "not an image"), RejectedFile("b.png", "below --min-quality")]
    report = INGEST_REPORT.stamp({"rejected": [r.to_json() for r in rows] + [["x"], {"source": 3}]})
    assert rejected_files(report) == [*rows, RejectedFile("", "")]
    assert rejected_files({"rejected": "nonsense"}) == [] and rejected_files({}) == []


def test_the_html_report_shows_the_rejected_files_the_ingest_report_wrote(tmp_path: Path) -> None:
    # The bug of issue 13: the page read `path`/`file`, ingest wrote `source`, the column was empty.
    # Written here through the schema's writer, read by the page through the schema's reader.
    from fundus_cli.commands.report.project import Dataset, JsonFile, Project
    from fundus_cli.commands.report.sections import datasets_section

    rows = [RejectedFile("scans/broken-photo.jpg", "not an image"), RejectedFile("empty.png", "too small")]
    path = INGEST_REPORT.write(tmp_path / "ingest-report.json", {"rejected": [r.to_json() for r in rows],
                                                                 "counts": {"rejected": 2}})
    info = SimpleNamespace(split="train", kind="real", count=3, image_size=32, pseudonymized=False)
    project = Project(root=tmp_path, datasets=[Dataset(tmp_path / "train.h5", info, {})],
                      ingest=JsonFile(path, INGEST_REPORT.load(path)))
    page = datasets_section(project)
    table = page[page.index("2 rejected files"):]
    assert "<td>scans/broken-photo.jpg</td><td>not an image</td>" in table
    assert "<td>empty.png</td><td>too small</td>" in table and "(not recorded)" not in table


def test_audit_verdict_and_demo_settings_readers() -> None:
    assert audit_report.verdict(AUDIT_REPORT.stamp({"decision": {"status": "FAIL"}})) == "FAIL"
    # A word from a newer version is passed on (readers rank it as not safe), junk is None.
    assert audit_report.verdict({"decision": {"status": "MAYBE"}}) == "MAYBE"
    assert audit_report.verdict({"decision": ["FAIL"]}) is None and audit_report.verdict(None) is None
    assert demo_record.settings(DEMO_RECORD.stamp({"settings": {"size": 32}})) == {"size": 32}
    assert demo_record.settings({"settings": [1]}) is None


def test_the_html_report_names_a_report_from_a_newer_version_instead_of_misreading_it(tmp_path: Path) -> None:
    from fundus_cli.commands.report.project import discover

    for name, artefact, version in (("evaluate", EVALUATE_REPORT, 2), ("audit-privacy", AUDIT_REPORT, 1)):
        (tmp_path / "reports" / name).mkdir(parents=True)
        (tmp_path / "reports" / name / "report.json").write_text(json.dumps(
            artefact.stamp({}) | {"format_version": version}))
    project = discover(tmp_path)
    assert not project.evaluations and len(project.audits) == 1
    assert any("evaluate" in p and "version 2, newer" in p for p in project.problems), project.problems
