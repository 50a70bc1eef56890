"""The whole page: training runs, provenance, the style sheet, and `write_report`."""

from __future__ import annotations

import platform
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from fundus_cli import __version__
from fundus_cli.commands.report.html import (as_dict, as_list, cmd, details, esc, figure, fmt, fmt_int, get, kv, num,
                                             png_file, rel, short_fp, table)
from fundus_cli.commands.report.project import Project, discover, file_name, most_severe, set_verdict, synthetic_sets
from fundus_cli.commands.report.sections import datasets_section, glance, headline, synthetic_section
from fundus_cli.errors import FundusError
from fundus_cli.fsio import write_text_atomic
from fundus_cli.training_length import shortfall


@dataclass
class ReportResult:
    out: Path  # the HTML file
    root: Path  # the folder reported on
    datasets: int
    runs: int
    evaluations: int
    audits: int
    verdicts: dict[str, str]  # synthetic dataset (path) -> its most severe privacy verdict
    verdict: str | None = None  # the most severe privacy verdict in the folder (None: nothing audited)
    missing: list[str] = field(default_factory=list)  # parts not there yet, with the command that makes them


def _training_time(metrics: list[dict[str, Any]]) -> float | None:
    """Seconds of training: metrics' `time` restarts from 0 on each resume, so sum the segments."""
    total, last = 0.0, None
    for m in metrics:
        t = num(m.get("time"))
        if t is None:
            continue
        if last is not None and t < last:
            total += last
        last = t
    return None if last is None else total + last


def _duration(secs: float | None) -> str:
    if secs is None:
        return "-"
    return f"{fmt(secs, '.1f')} s" if secs < 120 else f"{fmt(secs / 60, '.1f')} min"


def _runs_section(p: Project) -> str:
    if not p.runs:
        return ("<section><h2>Training runs</h2><p class=missing>No training runs (runs/*/) here. Train one with "
                f"{cmd('fundus train --arch gan --conditional')}.</p></section>")
    out = ["<section><h2>Training runs</h2>"]
    for r in p.runs:
        tc = as_dict(r.config.get("train_config"))
        secs = _training_time(r.metrics)
        speeds = [v for m in r.metrics if (v := num(m.get("images_per_s"))) is not None]
        arch = r.config.get("arch", tc.get("arch"))
        out.append(f"<h3>{esc(rel(str(r.dir), p.root))}: {esc(str(arch).upper() if arch else '?')}</h3>")
        facts = [f"step {fmt_int(r.step)} of "
                 f"{fmt_int(tc.get('steps'))}",
                 f"training time {_duration(secs)}",
                 f"median speed {fmt(float(np.median(speeds)), '.1f') + ' images/s' if speeds else '-'}",
                 f"preset {esc(tc.get('preset'))}, {fmt_int(tc.get('size'))}"
                 f" px, batch {esc(tc.get('batch'))}, conditional: {esc(tc.get('conditional'))}",
                 f"device {esc(r.config.get('device'))}"]
        if r.metrics:
            last = {k: v for k, v in r.metrics[-1].items() if k not in ("step", "time", "lr", "images_per_s")}
            facts.append("last losses: " + ", ".join(f"{esc(k)} = {fmt(v)}" for k, v in last.items()))
        out.append("<ul>" + "".join(f"<li>{x}</li>" for x in facts) + "</ul>")
        if (short := shortfall(r.step, tc.get("steps"))) is not None:
            out.append(f"<p class=bad>{esc(short)}.</p>")
        loss = png_file(r.dir / "loss.png", "loss curves")
        if loss is None and r.metrics and (r.dir / "metrics.jsonl").is_file():
            loss = _loss_from_metrics(r.dir / "metrics.jsonl", str(arch))
        out.append(figure(loss, "loss curves (metrics.jsonl)", "No loss curves yet (no loss.png or metrics.jsonl)."))
        grids = sorted(r.dir.glob("samples-*.png"))
        shown = [g for g in (grids[:1] + grids[-1:] if len(grids) > 1 else grids)]
        cells = [f"<figure>{img}<figcaption>{esc(g.name)}</figcaption></figure>"
                 for g in shown if (img := png_file(g, g.name)) is not None]
        if cells:
            out.append("<p>Samples from fixed latent vectors, first and last grid of the run:</p>"
                       f"<div class=pairs>{''.join(cells)}</div>")
        out.append(details("training settings", kv(tc) + kv(as_dict(r.config.get("model_config")))))
    out.append("</section>")
    return "".join(out)


def _loss_from_metrics(metrics: Path, arch: str) -> str | None:
    from fundus_cli.plots import plot_losses

    with tempfile.TemporaryDirectory() as tmp:
        png = plot_losses(metrics, Path(tmp) / "loss.png", title=f"{arch} training")
        return png_file(png, "loss curves") if png else None


def _provenance(p: Project) -> str:
    train_sets = {d.info.fingerprint: d for d in p.datasets if d.info.split == "train"}
    rows = []
    for d in p.datasets:
        i = d.info
        prov = i.provenance if isinstance(i.provenance, dict) else {}
        made = (f"sampled from checkpoint {short_fp(prov.get('checkpoint_fingerprint'))} "
                f"({esc(prov.get('arch'))}, step "
                f"{esc(prov.get('step'))}, seed {esc(prov.get('seed'))})" if i.kind == "synthetic" else "ingest")
        rows.append([esc(rel(str(d.path), p.root)), short_fp(i.fingerprint), made, esc(i.fundus_cli_version),
                     esc(i.created)])
    for r in p.runs:
        ds = as_dict(r.config.get("dataset"))
        fp = ds.get("fingerprint")
        match = "" if not train_sets else (
            f" <span class=good>(= {esc(rel(str(train_sets[fp].path), p.root))})</span>" if fp in train_sets
            else " <span class=bad>(not a training set here)</span>")
        rows.append([esc(rel(str(r.dir / "checkpoint.pt"), p.root)), short_fp(r.checkpoint_sha256),
                     f"trained on {short_fp(fp)}{match}", esc(r.config.get("fundus_cli_version")), "-"])
    for ev in p.evaluations:
        rows.append([esc(rel(str(ev.path), p.root)), "-",
                     f"features: {esc(get(ev.data, 'features', 'name'))} network "
                     f"{short_fp(get(ev.data, 'features', 'fingerprint'))}",
                     esc(ev.data.get("fundus_cli_version")), "-"])
    for a in p.audits:
        rows.append([esc(rel(str(a.path), p.root)), "-",
                     f"learned embedding weights {short_fp(get(a.data, 'learned_encoder', 'weights_sha256'))}",
                     esc(a.data.get("fundus_cli_version")), "-"])
    out = ["<section><h2>Provenance</h2><p>Every file records the SHA-256 fingerprints of what it was made from; "
           "hover a fingerprint for all 64 digits.</p>",
           table(["artefact", "fingerprint", "made from", "fundus-cli", "created"], rows, cls="prov")]
    for ev in p.evaluations:
        out.append(details(f"settings of {rel(str(ev.path), p.root)}", kv(as_dict(ev.data.get("settings")))))
    if p.demo is not None:
        steps = as_list(p.demo.data.get("steps"))
        drows = [[esc(get(s, "name")), cmd(str(get(s, "command") or "")), esc(get(s, "status")),
                  fmt(get(s, "seconds"), ".1f")] for s in steps if isinstance(s, dict)]
        out.append(f"<h3>Demo steps ({esc(rel(str(p.demo.path), p.root))})</h3>"
                   f"<p>Each step is a command you can rerun or change in this folder; total "
                   f"{_duration(num(p.demo.data.get('seconds')))}.</p>"
                   + table(["step", "command", "status", "seconds"], drows))
    env = {"fundus-cli (this report)": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "torch", "h5py"):
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    out.append("<p class=ci>Report made by " + ", ".join(f"{esc(k)} {esc(v)}" for k, v in env.items()) + ".</p>")
    if p.problems:
        out.append("<h3>Files that could not be read</h3><ul>"
                   + "".join(f"<li>{esc(x)}</li>" for x in p.problems) + "</ul>")
    out.append("</section>")
    return "".join(out)


_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;margin:0;background:#f4f5f7;
color:#1d232a;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px}
header{background:#1f3a5f;color:#fff;padding:22px 28px}
header h1{margin:0 0 4px;font-size:1.6em}header p{margin:0;opacity:.85}
section{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:6px 22px 18px;margin:18px 0}
h2{font-size:1.3em;border-bottom:2px solid #e6e9ee;padding-bottom:6px}h3{margin-top:22px}h4{margin:14px 0 6px}
table{border-collapse:collapse;margin:8px 0 12px;font-size:.92em;max-width:100%}
th,td{border:1px solid #d5d9df;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5}td{font-variant-numeric:tabular-nums}
table.kv td,table.prov td{word-break:break-all}
.ci{color:#5b6570;font-size:.9em}.good{color:#1b7f3b;font-weight:600}.bad{color:#b3261e;font-weight:600}
.warn{color:#8a5a00}.missing{color:#6b5900;background:#fff8e1;border-left:4px solid #e0b400;padding:6px 10px}
.badge{display:inline-block;padding:3px 12px;border-radius:12px;font-weight:700;color:#fff;background:#777}
.badge.PASS{background:#1b7f3b}.badge.WARN{background:#c77c00}.badge.FAIL{background:#b3261e}
.badge.INCONCLUSIVE{background:#6b6f76}.badge.none{background:#9aa0a6}
.verdict{font-size:1.15em;margin:10px 0}.verdict .badge{font-size:1.05em;margin-right:8px}
figure{margin:8px 0 14px}figure img{max-width:100%;height:auto;border:1px solid #e1e4e8}
figcaption{font-size:.88em;color:#4a535c}
.pairs{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:4px 24px}
.pairs figure{margin:4px 0}
.rows{display:grid;grid-template-columns:130px minmax(0,1fr);gap:6px 12px;align-items:center;margin-bottom:12px}
.rows img{height:auto;display:block}.lab{font-size:.9em;color:#4a535c;text-align:right;overflow-wrap:anywhere}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em}
code.cmd{background:#f0f2f5;padding:1px 5px;border-radius:4px}
details{margin:6px 0}summary{cursor:pointer;color:#1f3a5f}
header p.headline{margin-top:10px;opacity:1;font-size:1.1em}header .badge{margin-right:6px}
tr.group td{background:#f7f8fa}ul.plain{font-size:.9em;color:#3a434c}
p.plainverdict{font-size:1.05em;background:#f7f8fa;border-left:4px solid #1f3a5f;padding:6px 10px}span.member{padding-left:18px;display:inline-block}
"""


def render(p: Project) -> tuple[str, dict[str, str], list[str]]:
    """The page, the privacy verdict per synthetic file (its most severe), and the parts that are missing."""
    sets = synthetic_sets(p)
    missing = []
    if not p.datasets:
        missing.append("datasets: run `fundus ingest RAW_DIR`")
    if not p.runs:
        missing.append("training runs: run `fundus train`")
    for s in sets:
        if not s.evaluations:
            missing.append(f"evaluation of {rel(s.path, p.root)}: run `fundus evaluate --synthetic {s.path}`")
        if not s.audits:
            missing.append(f"privacy audit of {rel(s.path, p.root)}: run `fundus audit-privacy --synthetic {s.path}`")
    if not sets and p.datasets:
        missing.append("synthetic images: run `fundus sample`")
    verdicts = {file_name(s, p): v for s in sets if (v := set_verdict(s))}
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"<header><h1>Synthetic fundus photographs: report</h1><p>{esc(p.root.resolve())} &middot; made {esc(now)} "
            f"by fundus-cli {esc(__version__)}</p>{headline(sets, p)}</header><main>"]
    if missing:
        body.append("<section><h2>Not here yet</h2><ul>" + "".join(f"<li>{esc(m)}</li>" for m in missing)
                    + "</ul></section>")
    body.append(glance(p, sets))
    body.append(datasets_section(p))
    if not sets:
        body.append("<section><h2>Synthetic images</h2><p class=missing>No synthetic images here yet. Make them "
                    f"with {cmd('fundus sample --n 1000')}.</p></section>")
    body.extend(synthetic_section(s, p) for s in sets)
    body.append(_runs_section(p))
    body.append(_provenance(p))
    body.append("</main>")
    page = ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            # No request may leave the page: images are data URIs and nothing else is loaded.
            "<meta http-equiv=Content-Security-Policy content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<title>fundus-cli report: {esc(p.root.name or p.root.resolve().name)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")
    return page, verdicts, missing


def write_report(source: Path, *, out: Path | None = None) -> ReportResult:
    """Write the HTML report for the project (or demo, or single artefact) folder `source`."""
    root = Path(source)
    if not root.exists():
        raise FundusError(f"{root}: no such folder. Give a project folder (with data/, runs/, reports/), a demo "
                          "folder from `fundus demo`, or one of its run or report folders.")
    if not root.is_dir():
        raise FundusError(f"{root} is a file; give the folder that holds it (e.g. the project folder, or "
                          f"{root.parent}).")
    p = discover(root)
    if not (p.datasets or p.runs or p.evaluations or p.audits or p.ingest):
        raise FundusError(f"{root}: found nothing to report (no data/*.h5, runs/*/, reports/evaluate*/report.json "
                          "or reports/audit-privacy*/report.json). Run `fundus demo "
                          f"{root}` for a complete example, or in a project folder `fundus ingest RAW_DIR`, "
                          "`fundus train`, `fundus sample`, `fundus evaluate` and `fundus audit-privacy` first.")
    page, verdicts, missing = render(p)
    worst = most_severe(verdicts.values())
    out_path = Path(out) if out is not None else root / "report.html"
    if out_path.is_dir():
        raise FundusError(f"--out {out_path} is a folder; give the path of the .html file to write.")
    write_text_atomic(out_path, page)
    return ReportResult(out=out_path, root=root, datasets=len(p.datasets), runs=len(p.runs),
                        evaluations=len(p.evaluations), audits=len(p.audits), verdicts=verdicts, verdict=worst,
                        missing=missing)
