"""`fundus demo --quick`: every step end to end, the printed commands, reruns and resumption."""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fundus_cli.cli import app
from fundus_cli.commands.demo import DemoConfig, DemoResult, run_demo
from fundus_cli.errors import FundusError

STEPS = ["phantoms", "ingest", "train vae", "train gan", "sample vae", "sample gan", "evaluate vae", "evaluate gan",
         "audit-privacy vae", "audit-privacy gan", "report"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoResult, list[str]]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("demo") / "my demo"  # a space: the printed commands must quote it
    lines: list[str] = []
    try:
        r = run_demo(DemoConfig(out=out, quick=True, archs=("vae", "gan"), device="cpu"), log=lines.append)
    finally:
        torch.set_num_threads(threads)
    return out, r, lines


def _commands(lines: list[str], out: Path) -> list[list[str]]:
    prefix = f"$ cd {shlex.quote(str(out))} && fundus "
    return [shlex.split(line[len(prefix):]) for line in lines if line.startswith(prefix)]


def test_quick_demo_runs_every_step(demo: tuple[Path, DemoResult, list[str]]) -> None:
    out, r, lines = demo
    assert r.report == out / "report.html" and r.summary == out / "demo.json"
    summary = json.loads(r.summary.read_text())
    assert summary["status"] == "finished" and summary["settings"]["quick"] is True
    assert [s["name"] for s in summary["steps"]] == STEPS
    assert all(s["status"] == "ran" and s["seconds"] > 0 for s in summary["steps"])
    assert summary["seconds"] >= sum(s["seconds"] for s in summary["steps"][:-1])
    for arch in ("vae", "gan"):
        for f in (f"runs/{arch}/checkpoint.pt", f"data/synthetic-{arch}.h5", f"reports/evaluate-{arch}/report.json",
                  f"reports/audit-privacy-{arch}/report.json", f"reports/audit-privacy-{arch}/nearest-pairs.png"):
            assert (out / f).is_file(), f
    # Each step's command was printed before it ran, then its time.
    assert len(_commands(lines, out)) == len(STEPS)
    for step in STEPS[:-1]:
        assert any(line.strip().startswith(f"{step}: ") and line.strip().endswith(" s") for line in lines), step
    # The verdicts are those of the audit reports, whatever they are (FAIL does not stop the demo).
    for arch in ("vae", "gan"):
        audit = json.loads((out / f"reports/audit-privacy-{arch}/report.json").read_text())
        assert r.verdicts[arch] == audit["decision"]["status"] == summary["verdicts"][arch]


def test_printed_commands_are_what_ran(demo: tuple[Path, DemoResult, list[str]]) -> None:
    out, _, lines = demo
    group = typer.main.get_command(app)
    parsed = {}
    for argv in _commands(lines, out):
        name, args = argv[0], argv[1:]
        ctx = group.commands[name].make_context(name, list(args))  # unknown options or bad values raise here
        parsed.setdefault(name, []).append(ctx.params)
    assert parsed["phantoms"][0]["n"] == 60 and parsed["ingest"][0]["size"] == 32
    # The options printed are the settings recorded in the files the steps wrote.
    for params in parsed["train"]:
        cfg = json.loads((out / "runs" / params["arch"].value / "config.json").read_text())["train_config"]
        assert (cfg["steps"], cfg["size"], cfg["batch"], cfg["width"], cfg["conditional"], cfg["preset"]) == \
            (params["steps"], params["size"], params["batch"], params["width"], True, params["preset"].value)
    for params in parsed["evaluate"]:
        rep = json.loads((out / params["out"] / "report.json").read_text())
        assert Path(rep["inputs"]["synthetic"]["path"]) == out / params["synthetic"]
        assert (rep["settings"]["n_boot"], rep["settings"]["usefulness_steps"]) == \
            (params["n_boot"], params["usefulness_steps"])
        assert rep["usefulness"]["seeds"] == params["usefulness_seeds"] == 1
    for params in parsed["audit-privacy"]:
        rep = json.loads((out / params["out"] / "report.json").read_text())
        assert rep["settings"]["config"]["encoder_steps"] == params["encoder_steps"]
    assert parsed["report"][0]["folder"] == Path(".")


def test_report_holds_the_numbers_of_the_reports(demo: tuple[Path, DemoResult, list[str]]) -> None:
    out, r, _ = demo
    page = r.report.read_text(encoding="utf-8")
    for arch in ("vae", "gan"):
        ev = json.loads((out / f"reports/evaluate-{arch}/report.json").read_text())
        o = ev["realism"]["overall"]
        for side in ("synthetic", "baseline_train"):
            for v in o[side].values():
                assert f"{v['value']:.4g} <span class=ci>[{v['ci_low']:.3g}, {v['ci_high']:.3g}]" in page
        for v in ev["usefulness"]["scenarios"].values():
            b = v["balanced_accuracy"]
            assert f"{b['value']:.3f} <span class=ci>[{b['ci_low']:.2f}, {b['ci_high']:.2f}]" in page
        for v in ev["fundus_statistics"]["synthetic_vs_real"].values():
            assert f"<td>{v:.4g}</td>" in page
        audit = json.loads((out / f"reports/audit-privacy-{arch}/report.json").read_text())
        status = audit["decision"]["status"]
        assert f"<span class='badge {status}'>{status}</span>" in page
        for e in audit["embeddings"].values():
            assert f"<td>{e['dcr_synthetic_median']:.4g}</td>" in page
            m = e["membership"]  # null when too few training images are left to draw members from
            assert m is None or f"{m['auc']:.3f} <span class=ci>[{m['ci_low']:.2f}, {m['ci_high']:.2f}]" in page
        for fp in (ev["inputs"]["synthetic"]["fingerprint"], ev["features"]["fingerprint"]):
            assert fp[:12] in page
    # Per-class grids, training curves and samples, embedded; nothing is fetched.
    for name in ("amd", "diabetic_retinopathy", "healthy"):
        assert f"synthetic<br><b>{name}</b>" in page and f"real (holdout)<br><b>{name}</b>" in page
    # per model: 6 grid rows, 2 evaluate and 2 audit figures; per run: loss curves and 2 sample grids
    assert page.count("data:image/png;base64,") == 2 * (6 + 2 + 2) + 2 * (1 + 2)
    assert "http://" not in page and "https://" not in page
    assert "fundus evaluate --synthetic data/synthetic-gan.h5" in page  # the demo's steps and commands


def test_rerun_skips_finished_steps(demo: tuple[Path, DemoResult, list[str]]) -> None:
    out, first, _ = demo
    lines: list[str] = []
    r = run_demo(DemoConfig(out=out, quick=True, archs=("vae", "gan"), device="cpu"), log=lines.append)
    statuses = [s["status"] for s in r.steps]
    assert statuses == ["skipped"] * (len(STEPS) - 1) + ["ran"]
    assert sum("[skip]" in line for line in lines) == len(STEPS) - 1
    assert r.verdicts == first.verdicts  # read back from the audit reports


def test_other_settings_or_other_files_are_refused(demo: tuple[Path, DemoResult, list[str]], tmp_path: Path) -> None:
    out, _, _ = demo
    with pytest.raises(FundusError, match=r"other settings \(n_photos: 60 -> 70"):
        run_demo(DemoConfig(out=out, quick=True, archs=("vae", "gan"), n_photos=70))
    (tmp_path / "notes.txt").write_text("mine")
    res = CliRunner().invoke(app, ["demo", str(tmp_path), "--quick"])
    assert res.exit_code == 2 and "not a demo folder" in res.stderr and "--force" in res.stderr
    assert not (tmp_path / "demo.json").exists()
    res = CliRunner().invoke(app, ["demo", str(tmp_path / "new"), "--n-photos", "20"])
    assert res.exit_code == 2 and "--n-photos 20" in res.stderr
    assert "skips finished steps" in " ".join(CliRunner().invoke(app, ["demo", "--help"]).stdout.split())


def test_interrupted_training_resumes_and_a_failed_audit_does_not_stop_the_demo(
        demo: tuple[Path, DemoResult, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    out, _, _ = demo
    # Make runs/vae look interrupted at step 2 of 4 (as Ctrl-C leaves it).
    run = out / "runs" / "vae"
    for step in (3, 4):
        (run / f"checkpoint-{step:08d}.pt").unlink()
    shutil.copyfile(run / "checkpoint-00000002.pt", run / "checkpoint.tmp")
    os.replace(run / "checkpoint.tmp", run / "checkpoint.pt")
    from fundus_cli.commands import audit as audit_cmd

    real_audit = audit_cmd.audit_privacy

    def failing_audit(cfg):  # type: ignore[no-untyped-def]
        r = real_audit(cfg)
        report = json.loads(r.report.read_text())
        report["decision"] |= {"status": "FAIL", "exit_code": 1, "reasons": ["forced by the test"]}
        r.report.write_text(json.dumps(report))
        r.decision, r.exit_code = "FAIL", 1
        return r

    monkeypatch.setattr(audit_cmd, "audit_privacy", failing_audit)
    import torch

    torch.set_num_threads(1)
    res = CliRunner().invoke(app, ["demo", str(out), "--quick", "--archs", "gan,VAE", "--device", "cpu"])
    assert res.exit_code == 0, res.stderr
    assert res.stdout.strip() == str(out / "report.html")
    assert "train --arch vae" in res.stderr and "--resume" in res.stderr
    assert "privacy audit of the VAE samples: FAIL" in res.stderr
    steps = {s["name"]: s for s in json.loads((out / "demo.json").read_text())["steps"]}
    assert steps["train vae"]["status"] == "resumed"
    # What depends on the resumed run is stale and made again; the GAN's chain is untouched.
    for name in ("sample vae", "evaluate vae", "audit-privacy vae"):
        assert steps[name]["status"] == "ran" and steps[name]["command"].endswith("--force"), name
    for name in ("phantoms", "ingest", "train gan", "sample gan", "evaluate gan", "audit-privacy gan"):
        assert steps[name]["status"] == "skipped", name
    assert sorted(int(p.stem.split("-")[1]) for p in run.glob("checkpoint-*.pt")) == [2, 3, 4]
    page = (out / "report.html").read_text()
    assert "<span class='badge FAIL'>FAIL</span>" in page and "forced by the test" in page


def test_the_default_demo_is_the_gan_alone_and_archs_choose() -> None:
    from fundus_cli.commands.demo import _State, _steps, settings_of

    def names(cfg: DemoConfig) -> list[str]:
        return [st.name for st in _steps(cfg, settings_of(cfg), lambda s: None, _State(cfg, settings_of(cfg)))]

    assert names(DemoConfig()) == ["phantoms", "ingest", "train gan", "sample gan", "evaluate gan",
                                   "audit-privacy gan"]
    assert settings_of(DemoConfig())["archs"] == ["gan"]
    both = names(DemoConfig(archs=(" GAN", "vae")))  # any order and case; the VAE's steps come first
    assert both == STEPS[:-1]
    evaluate = next(st for st in _steps(DemoConfig(), settings_of(DemoConfig()), lambda s: None,
                                        _State(DemoConfig(), {})) if st.name == "evaluate gan")
    assert evaluate.argv[-2:] == ["--usefulness-seeds", "1"]
    for bad in (("gan", "diffusion"), (), ("",)):
        with pytest.raises(FundusError, match="--archs"):
            settings_of(DemoConfig(archs=bad))
    res = CliRunner().invoke(app, ["demo", "unused", "--archs", "vae,flow"])
    assert res.exit_code == 2 and "--archs vae,flow" in res.stderr and "vae, gan" in res.stderr
