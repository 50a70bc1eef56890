"""`fundus report`: one self-contained HTML page built from the files of a project folder."""

from __future__ import annotations

import base64
import html
import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from fundus_cli.cli import app
from fundus_cli.data import h5
from fundus_cli.errors import FundusError
from fundus_cli.commands.report import write_report

EVIL = "<script>alert('x')</script>"
EVIL_IMG = "<img src=x onerror=alert(1)>"
METRICS = ("fid", "kid", "precision", "recall", "density", "coverage")


def _ci(rng: np.random.Generator, scale: float) -> dict[str, float]:
    v = float(rng.uniform(0.1, 1.0) * scale)
    return {"value": v, "ci_low": v * 0.8123, "ci_high": v * 1.2345}


def _fingerprint(path: Path) -> str:
    with h5.open_dataset(path) as r:
        return r.info.fingerprint


def _evaluate_report(root: Path, seed: int) -> dict:
    """An evaluate report.json of the real format, with numbers that appear nowhere else."""
    rng = np.random.default_rng(seed)
    inputs = {name: {"path": f"data/{file}", "fingerprint": _fingerprint(root / "data" / file), "images": 5}
              for name, file in (("real", "holdout.h5"), ("synthetic", "synthetic.h5"), ("train", "train.h5"))}

    def block() -> dict:
        return {"n_real": 3, "n_compared": 8, "synthetic": {m: _ci(rng, 50) for m in METRICS},
                "baseline_train": {m: _ci(rng, 5) for m in METRICS},
                "distinguishable": {m: bool(i % 2) for i, m in enumerate(METRICS)}}

    scenarios = {s: {"train_images": int(rng.integers(5, 50)), **{m: _ci(rng, 1) for m in
                                                                  ("accuracy", "balanced_accuracy", "macro_auc")}}
                 for s in ("real", "synthetic", "real+synthetic", "real25", "real25+synthetic")}
    stats = ("vessel_density", "sharpness", "disc_brightness", "colour_emd")
    return {
        "format": "fundus-cli evaluate report", "fundus_cli_version": "0.1.0",
        "settings": {"n_boot": 10, "seed": 0, "out": EVIL}, "inputs": inputs,
        "features": {"name": "random", "fingerprint": "ab" * 32, "dim": 960},
        "realism": {"overall": block(), "per_class": {"healthy": block(), EVIL: {"skipped": EVIL_IMG}}},
        "fundus_statistics": {"synthetic_vs_real": {k: float(rng.uniform(1, 99)) for k in stats},
                              "train_vs_real": {k: float(rng.uniform(1, 99)) for k in stats},
                              "means": {w: {k: float(rng.uniform(1, 99)) for k in stats[:3]}
                                        for w in ("real", "synthetic", "train")}},
        "usefulness": {"scenarios": scenarios, "summary": {"tstr_over_trtr_balanced_accuracy": 0.87654}},
        "notes": [f"note {EVIL_IMG}"], "figures": [],
    }


def _audit_report(root: Path, status: str) -> dict:
    inputs = {name: {"path": f"data/{file}", "fingerprint": _fingerprint(root / "data" / file), "count": 5}
              for name, file in (("train", "train.h5"), ("holdout", "holdout.h5"), ("synthetic", "synthetic.h5"))}
    inputs["holdout"] |= {"used": 3, "excluded": 0}
    emb = {"dcr_synthetic_median": 0.613579, "dcr_calibration_median": 0.246802, "dcr_share": 0.4321,
           "memorization": {"rate": 0.0625, "p_exact": 0.0123}, "z_u": {"z": -3.21}, "c_t": {"c_t": -1.11},
           "membership": {"auc": 0.77777, "ci_low": 0.61234, "ci_high": 0.93456}, "n_flagged": 2}
    return {
        "format": "fundus-cli privacy audit report", "format_version": 1, "fundus_cli_version": "0.1.0",
        "decision": {"status": status, "exit_code": 1, "reasons": [f"pixel: Z_U -3.21 {EVIL}"],
                     "warnings": ["learned: p = 0.03"], "n_flagged": 2, "confirmed_copies": [3]},
        "inputs": inputs, "calibration": "holdout", "embeddings": {"pixel": emb},
        "thresholds": {"z_fail": -3.0}, "settings": {"config": {"seed": 0}},
        "learned_encoder": {"weights_sha256": "cd" * 32}, "notes": [], "artefacts": [],
    }


@pytest.fixture
def project(tiny_data: Path, tiny_runs: dict[str, Path], tmp_path: Path) -> Path:
    """data/ (tiny ingest + 8 samples of the tiny conditional GAN), runs/gan, and report files."""
    from fundus_cli.commands.sample import SampleConfig, sample

    root = tmp_path / "proj"
    shutil.copytree(tiny_data, root / "data")
    shutil.copytree(tiny_runs["gan"].parent, root / "runs" / "gan")
    sample(SampleConfig(run=root / "runs" / "gan", n=8, out=root / "data" / "synthetic.h5", device="cpu"))
    ev = root / "reports" / "evaluate"
    ev.mkdir(parents=True)
    (ev / "report.json").write_text(json.dumps(_evaluate_report(root, 1)))
    (ev / "grids.png").write_text(f"not a png {EVIL}")  # untrusted: never embedded
    au = root / "reports" / "audit-privacy"
    au.mkdir(parents=True)
    (au / "report.json").write_text(json.dumps(_audit_report(root, "FAIL")))
    ok, png = cv2.imencode(".png", np.full((20, 30, 3), 200, np.uint8))
    (au / "nearest-pairs.png").write_bytes(png.tobytes())
    with open(au / "flagged.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["synthetic_index", "train_index", "train_source", "embedding", "distance", "ratio", "p_value",
                    "confirmed"])
        w.writerow([3, 1, EVIL_IMG, "pixel", 0.1, 0.5, 0.01, "true"])
    return root


def _html(root: Path) -> str:
    r = write_report(root)
    assert r.out == root / "report.html" and not (root / "report.html.tmp").exists()
    return r.out.read_text(encoding="utf-8")


def test_every_number_of_the_reports_is_on_the_page(project: Path) -> None:
    page = _html(project)
    ev = json.loads((project / "reports/evaluate/report.json").read_text())
    for block in (ev["realism"]["overall"], ev["realism"]["per_class"]["healthy"]):
        for side in ("synthetic", "baseline_train"):
            for v in block[side].values():
                assert f"{v['value']:.4g} <span class=ci>[{v['ci_low']:.3g}, {v['ci_high']:.3g}]" in page
    for v in ev["usefulness"]["scenarios"].values():
        for m in ("accuracy", "balanced_accuracy", "macro_auc"):
            assert f"{v[m]['value']:.3f} <span class=ci>[{v[m]['ci_low']:.2f}, {v[m]['ci_high']:.2f}]" in page
        assert f"<td>{v['train_images']}</td>" in page
    fs = ev["fundus_statistics"]
    for part in ("synthetic_vs_real", "train_vs_real"):
        for v in fs[part].values():
            assert f"<td>{v:.4g}</td>" in page
    for who in fs["means"].values():
        for v in who.values():
            assert f"<td>{v:.4g}</td>" in page
    assert "<b>0.877</b>" in page  # usefulness summary, .3f
    # The privacy verdict with its reasons and the evidence figure.
    assert "<span class='badge FAIL'>FAIL</span>" in page
    assert "Z_U -3.21" in page and "0.778 <span class=ci>[0.61, 0.93]</span>" in page and "<td>-3.21</td>" in page
    ok, png = cv2.imencode(".png", np.full((20, 30, 3), 200, np.uint8))
    assert base64.b64encode(png.tobytes()).decode() in page
    # Provenance: the fingerprints of the files, the checkpoint's, the training steps.
    for name in ("train.h5", "holdout.h5", "synthetic.h5"):
        assert _fingerprint(project / "data" / name)[:12] in page
    assert "step 3 of 3" in page and "(= data/train.h5)" in page


def test_the_page_is_self_contained(project: Path) -> None:
    page = _html(project)
    assert page.count("data:image/png;base64,") >= 8  # grids per class x 2, loss curve, samples, nearest pairs
    assert "http://" not in page and "https://" not in page and "file:" not in page
    tags = re.findall(r"<[a-zA-Z][^>]*>", page)  # text from files is escaped, so these are the page's own
    for tag in tags:
        assert not re.search(r"\b(?:href|action|srcset|url)\b", tag), tag[:200]
        if re.search(r"\bsrc\s*=", tag):
            assert re.search(r"""\bsrc\s*=\s*['"]data:image/png;base64,""", tag), tag[:200]
    assert sum(t.startswith("<img") for t in tags) >= 8
    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page


def test_strings_from_files_are_escaped(project: Path, tmp_path: Path) -> None:
    # A dataset whose class names, sources and patients are markup.
    with h5.open_dataset(project / "data" / "holdout.h5") as r:
        recs = [r.record(i) for i in range(len(r))]
    with h5.DatasetWriter(project / "data" / "evil.h5", image_size=32, split="train",
                          class_names=[EVIL, 'a&b"c']) as w:
        for i, rec in enumerate(recs):
            rec.label, rec.source, rec.patient = i % 2, EVIL_IMG, EVIL
            w.append(rec)
    run_cfg = project / "runs" / "gan" / "config.json"
    cfg = json.loads(run_cfg.read_text())
    cfg["device"] = EVIL
    run_cfg.write_text(json.dumps(cfg))
    page = _html(project)
    assert "<script" not in page.lower()
    assert "<img src=x" not in page and "onerror=alert(1)>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page  # class name, reasons, notes, settings
    assert "&lt;img src=x onerror=alert(1)&gt;" in page  # flagged.csv source, notes
    assert "a&amp;b&quot;c" in page
    assert base64.b64encode(b"not a png").decode()[:8] not in page


def test_missing_parts_are_stated_not_errors(project: Path) -> None:
    shutil.rmtree(project / "reports" / "audit-privacy")
    res = CliRunner().invoke(app, ["report", str(project), "--out", str(project / "r.html"), "--json"])
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["report"] == str(project / "r.html") and summary["audits"] == 0 and summary["verdicts"] == {}
    assert any(m.startswith("privacy audit of data/synthetic.h5") for m in summary["missing"])
    page = (project / "r.html").read_text()
    assert "No privacy audit of this set yet" in page and "fundus audit-privacy --synthetic data/synthetic.h5" in page
    assert "<span class='badge none'>no audit</span>" in page
    # Without the evaluation either, the page still shows the images and says what to run.
    shutil.rmtree(project / "reports")
    page = _html(project)
    assert "Not evaluated yet" in page and "real (holdout)" in page


def test_one_folder_of_the_layout_on_its_own(project: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["report", str(project / "reports" / "evaluate"), "--out", str(tmp_path / "e.html")])
    assert res.exit_code == 0, res.stderr
    assert res.stdout.strip() == str(tmp_path / "e.html")
    page = (tmp_path / "e.html").read_text()
    v = json.loads((project / "reports/evaluate/report.json").read_text())["realism"]["overall"]["synthetic"]["kid"]
    assert f"{v['value']:.4g}" in page and "No training runs" in page
    # No dataset files here, so the grids would come from grids.png, which is not a PNG: refused.
    assert "No images to show" in page and base64.b64encode(b"not a png").decode()[:8] not in page
    page = write_report(project / "runs" / "gan", out=tmp_path / "run.html").out.read_text()
    assert "step 3 of 3" in page and "No dataset files" in page


def test_a_folder_with_nothing_to_report_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    for folder in ("empty", "other", "absent"):
        res = CliRunner().invoke(app, ["report", str(tmp_path / folder)])
        assert res.exit_code == 2, res.output
        assert str(tmp_path / folder) in res.stderr and "fundus" in res.stderr
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    with pytest.raises(FundusError, match="fundus demo"):
        write_report(tmp_path / "empty")
    assert not (tmp_path / "empty" / "report.html").exists()


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def test_renders_in_a_headless_browser(project: Path, tmp_path: Path) -> None:
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        pytest.skip(f"no headless browser found (looked for {', '.join(BROWSERS)}); apt-get install chromium")
    page = write_report(project).out
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1400",
                    f"--screenshot={shot}", page.resolve().as_uri()], capture_output=True, timeout=120, check=False)
    img = cv2.imread(str(shot))
    assert img is not None, f"{browser} wrote no screenshot"
    assert img.shape[:2] == (1400, 1280)
    assert img.std() > 20  # not a blank page
    # The inline CSS applied: the header's dark blue band and the red FAIL badge are drawn.
    header = img[5:40, 5:1275].reshape(-1, 3).astype(int)
    assert (np.abs(header - [95, 58, 31]).sum(1) < 30).mean() > 0.5  # #1f3a5f in BGR
    red = np.abs(img.reshape(-1, 3).astype(int) - [30, 38, 179]).sum(1) < 30  # #b3261e in BGR
    assert red.sum() > 100


def _audit_of(root: Path, file: str, status: str) -> dict:
    rep = _audit_report(root, status)
    rep["inputs"]["synthetic"]["path"] = f"data/{file}"
    rep["decision"] |= {"exit_code": {"PASS": 0, "FAIL": 1}[status],
                        "reasons": [f"3 confirmed copies in {file}"] if status == "FAIL" else [],
                        "warnings": []}
    return rep


@pytest.mark.parametrize("leaky_audit", ["audit-leaky", "audit-z-leaky"])
def test_at_a_glance_never_hides_a_fail(project: Path, leaky_audit: str) -> None:
    # Two synthetic files from one checkpoint: leaky.h5 is a copy of synthetic.h5 edited in place, so it
    # even keeps the same fingerprint attribute (the case of issue 14). Its audit FAILs; the other PASSes.
    shutil.copy(project / "data" / "synthetic.h5", project / "data" / "leaky.h5")
    assert _fingerprint(project / "data" / "leaky.h5") == _fingerprint(project / "data" / "synthetic.h5")
    (project / "reports" / "audit-privacy" / "report.json").write_text(
        json.dumps(_audit_of(project, "synthetic.h5", "PASS")))
    (project / "reports" / leaky_audit).mkdir()
    (project / "reports" / leaky_audit / "report.json").write_text(json.dumps(_audit_of(project, "leaky.h5", "FAIL")))
    res = CliRunner().invoke(app, ["report", str(project), "--json"])
    assert res.exit_code == 0, res.stderr  # a view, not a gate
    summary = json.loads(res.stdout)
    assert summary["verdict"] == "FAIL"
    assert summary["verdicts"] == {"data/leaky.h5": "FAIL", "data/synthetic.h5": "PASS"}
    page = (project / "report.html").read_text()
    header = page[page.index("<header>"):page.index("</header>")]
    assert "<span class='badge FAIL'>FAIL</span>" in header and "data/leaky.h5" in header
    assert "PASS" not in header
    glance = page[page.index("<h2>At a glance</h2>"):]
    glance = glance[:glance.index("</section>")]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", glance)[1:]  # after the header row
    assert len(rows) == 3  # the model, then one row per file
    assert "GAN model from runs/gan" in rows[0] and "<span class='badge FAIL'>FAIL</span>" in rows[0]
    by_file = {re.search(r"class=member>([^<]*)<", r).group(1): r for r in rows[1:]}
    assert "<span class='badge FAIL'>FAIL</span>" in by_file["data/leaky.h5"]
    assert "<span class='badge PASS'>PASS</span>" in by_file["data/synthetic.h5"]
    # Each file's section shows its own audit only.
    sections = re.findall(r"<section><h2>GAN model from runs/gan: (data/[a-z]+\.h5)</h2>(.*?)</section>", page)
    assert {f: ("3 confirmed copies" in body) for f, body in sections} == {"data/leaky.h5": True,
                                                                              "data/synthetic.h5": False}


def test_severity_order_and_reports_on_files_not_here(project: Path) -> None:
    from fundus_cli.commands.report.project import most_severe

    assert most_severe(["PASS", "WARN", "INCONCLUSIVE"]) == "INCONCLUSIVE"
    assert most_severe(["WARN", "FAIL", "INCONCLUSIVE", "PASS"]) == "FAIL"
    assert most_severe(["PASS", "WARN"]) == "WARN" and most_severe([]) is None
    assert most_severe(["PASS", "SOMETHING NEW"]) == "SOMETHING NEW"  # unknown: never summarised as PASS
    # An audit of a file that is no longer here still counts, and so does one of an older version of
    # a file that has since been rewritten (its fingerprint differs).
    gone = _audit_of(project, "synthetic.h5", "FAIL")
    gone["inputs"]["synthetic"] |= {"path": "data/gone.h5", "fingerprint": "0" * 64}
    (project / "reports" / "audit-gone").mkdir()
    (project / "reports" / "audit-gone" / "report.json").write_text(json.dumps(gone))
    old = _audit_of(project, "synthetic.h5", "PASS")
    old["inputs"]["synthetic"]["fingerprint"] = "1" * 64
    (project / "reports" / "audit-privacy" / "report.json").write_text(json.dumps(old))
    r = write_report(project)
    assert r.verdict == "FAIL"
    assert r.verdicts == {"data/gone.h5 (file not here)": "FAIL",
                          "data/synthetic.h5 (changed since it was reported on)": "PASS"}
    page = r.out.read_text()
    assert "data/synthetic.h5 (changed since it was reported on)" in page


def test_rejected_files_are_named(raw_copy: Path, tmp_path: Path) -> None:
    # A real ingest with files it must reject: the report's table names each of them (issue 12, item 13).
    from fundus_cli.commands.ingest import IngestConfig, ingest

    (raw_copy / "broken-photo.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (raw_copy / "empty-scan.png").write_bytes(b"")
    out = tmp_path / "proj" / "data"
    ingest(IngestConfig(raw=raw_copy, out=out, size=32, workers=1, holdout_fraction=0.25))
    rejected = json.loads((out / "ingest-report.json").read_text())["rejected"]
    assert {r["source"] for r in rejected} >= {"broken-photo.jpg", "empty-scan.png"}
    page = write_report(tmp_path / "proj").out.read_text()
    table = page[page.index("rejected files</summary>"):]
    table = table[:table.index("</table>")]
    cells = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td></tr>", table)
    assert len(cells) == len(rejected)
    assert {name for name, _ in cells} == {r["source"] for r in rejected}
    assert all(reason for _, reason in cells)


def test_a_short_run_is_called_under_trained(project: Path, tmp_path: Path) -> None:
    import torch

    from fundus_cli.commands.sample import SampleConfig, sample

    ckpt = torch.load(project / "runs" / "gan" / "checkpoint.pt", weights_only=True)
    ckpt["train_config"]["steps"] = 4000  # stopped at step 3 of a planned 4000
    short = project / "runs" / "gan" / "checkpoint.pt"
    short.unlink()
    torch.save(ckpt, short)
    cfg_path = project / "runs" / "gan" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["train_config"]["steps"] = 4000
    cfg_path.write_text(json.dumps(cfg))
    sample(SampleConfig(checkpoint=short, n=8, out=project / "data" / "synthetic.h5", device="cpu", force=True))
    page = _html(project)
    said = "under-trained checkpoint: step 3 of 4000 planned (0.1%)"
    glance = page[page.index("<h2>At a glance</h2>"):]
    assert said in glance[:glance.index("</section>")]
    section = page[page.index("<h2>GAN model from runs/gan: data/synthetic.h5</h2>"):]
    assert said in section[:section.index("<h3>")]
    runs = page[page.index("<h2>Training runs</h2>"):]
    assert said in runs and "step 3 of 4000" in runs
    # A finished run says nothing of the kind.
    cfg["train_config"]["steps"] = 3
    cfg_path.write_text(json.dumps(cfg))
    ckpt["train_config"]["steps"] = 3
    short.unlink()
    torch.save(ckpt, short)
    sample(SampleConfig(checkpoint=short, n=8, out=project / "data" / "synthetic.h5", device="cpu", force=True))
    assert "under-trained" not in _html(project)


def test_verdicts_and_statistics_in_plain_words(project: Path) -> None:
    from fundus_cli.commands.report.privacy import _PLAIN_PRIVACY
    from fundus_cli.commands.report.sections import _PLAIN_REALISM

    audit = project / "reports" / "audit-privacy" / "report.json"
    rep = _audit_report(project, "INCONCLUSIVE")
    rep["decision"] |= {"exit_code": 3, "reasons": [], "warnings": [],
                        "inconclusive": ["with 12 holdout images the smallest possible p-value is 1/13 = 0.077"],
                        "min_holdout": 19, "min_synthetic": None, "tests_run": ["data-copying test Z_U"],
                        "summary": "The audit cannot decide: with 12 holdout images ... Give it at least 19."}
    audit.write_text(json.dumps(rep))
    page = _html(project)
    assert "INCONCLUSIVE: with 12 holdout images the smallest possible p-value is 1/13 = 0.077" in page
    assert "To decide, the audit needs at least 19 usable holdout images." in page
    assert "not run (no tau_alpha)" not in page
    rep["embeddings"]["pixel"]["memorization"] = {"rate": 0.0, "p_exact": 1.0, "tau": None}
    audit.write_text(json.dumps(rep))
    page = _html(project)
    assert "<span class=warn>not run (no tau_alpha)</span>" in page and "0 <span class=ci>(p = 1)" not in page
    assert "The audit cannot decide: with 12 holdout images ... Give it at least 19." in page
    assert "not a sign that sharing is safe" in page
    for _, sentence in _PLAIN_PRIVACY:
        assert html.escape(sentence) in page
    for sentence in _PLAIN_REALISM.values():
        assert html.escape(sentence) in page
    # A PASS lists the tests that ran.
    rep["decision"] |= {"status": "PASS", "exit_code": 0, "inconclusive": [], "min_holdout": None,
                        "tests_run": ["copy test per synthetic image (pixel)", "membership-inference test"]}
    audit.write_text(json.dumps(rep))
    page = _html(project)
    assert "Tests that ran, each able to fail at its threshold:" in page
    assert "<li>copy test per synthetic image (pixel)</li><li>membership-inference test</li>" in page


def test_withheld_usefulness_is_not_shown_as_a_number(project: Path) -> None:
    path = project / "reports" / "evaluate" / "report.json"
    ev = json.loads(path.read_text())
    assert "<b>0.877</b>" in _html(project)
    ev["usefulness"]["withheld_reason"] = ("the classifier cannot learn this task from these images at this size "
                                           f"{EVIL}")
    path.write_text(json.dumps(ev))
    page = _html(project)
    assert "0.877" not in page and "0.88" not in page  # neither the summary nor the glance's ratio
    assert "Usefulness cannot be judged, so the ratio and gains are withheld" in page
    assert "withheld <span class=ci>(the classifier cannot learn this task" in page
    assert "<script" not in page.lower()
    for junk in (None, 3, {"reason": 5}, ""):  # written by another version: read defensively
        ev["usefulness"]["withheld_reason"] = junk
        path.write_text(json.dumps(ev))
        assert "<b>0.877</b>" in _html(project)


def test_per_class_audit_is_shown(project: Path) -> None:
    audit = project / "reports" / "audit-privacy" / "report.json"
    rep = _audit_report(project, "FAIL")
    rep["per_class"] = {"classes": ["healthy", EVIL], "multiplicity": "Holm over 3 per-class tests",
                        "not_tested": [], "tests": {
                            "healthy": {"pixel": {"n_synthetic": 31, "n_calibration": 29, "skipped": None,
                                                  "memorization": {"rate": 0.4321, "p_adjusted": 0.000123},
                                                  "z_u": {"z": -4.56, "p_adjusted": 0.0000789}}},
                            EVIL: {"pixel": {"n_synthetic": 7, "n_calibration": 12, "memorization": None,
                                             "z_u": {"z": -1.23, "p_adjusted": 0.3}, "skipped": "12 holdout images"}}}}
    audit.write_text(json.dumps(rep))
    page = _html(project)
    part = page[page.index("<h4>Per class</h4>"):]
    part = part[:part.index("</table>")]
    assert "Holm over 3 per-class tests" in part and "<td>31</td>" in part and "<td>29</td>" in part
    assert "0.4321 <span class=ci>(adjusted p = 0.000123)" in part and "-4.56 <span class=ci>(adjusted p = 7.89e-05)" in part
    assert "12 holdout images" in part and "<script" not in part
    rep["per_class"] = None
    audit.write_text(json.dumps(rep))
    assert "<h4>Per class</h4>" not in _html(project)
