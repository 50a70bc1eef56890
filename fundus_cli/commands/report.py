"""`fundus report`: one self-contained HTML page for a project, a demo or a single artefact folder.

The page is for a clinician collaborator: it opens in any browser without a network or
JavaScript (images are base64 PNG data URIs, the CSS is inline) and puts together what the
other commands wrote: real vs synthetic images per class, the realism and usefulness tables,
the fundus statistics, the privacy verdict with its evidence, and the provenance of every
artefact (fingerprints, versions, settings, training steps and time).

Every number on the page is read from the report files, datasets and run folders; nothing is
recomputed except the image grids, which are drawn from the dataset files. Everything read
from a file is untrusted text: it is HTML-escaped, and only files that start with the PNG
signature are embedded as images.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import platform
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from fundus_cli import __version__
from fundus_cli.schemas import Artefact, audit_report
from fundus_cli.schemas.audit_report import AUDIT_REPORT, VERDICTS
from fundus_cli.schemas.demo_record import DEMO_RECORD
from fundus_cli.schemas.evaluate_report import EVALUATE_REPORT
from fundus_cli.schemas.ingest_report import INGEST_REPORT, rejected_files
from fundus_cli.errors import FundusError
from fundus_cli.fsio import sha256_file, write_text_atomic
from fundus_cli.training_length import shortfall

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_IMAGE_BYTES = 20 << 20  # a PNG larger than this is named, not embedded (keeps the page openable)
MAX_JSON_BYTES = 50 << 20
PER_CLASS = 8  # images per row of the real-vs-synthetic grids
FLAGGED_ROWS = 20  # rows of flagged.csv shown
DISPLAY_TILE = 120  # images smaller than this (px) are shown enlarged without smoothing

_MEANING = {
    "PASS": "Every test that could have found copying ran, and none did: no evidence that the synthetic images "
            "copy training photographs more than chance.",
    "WARN": "A test is borderline: look at the closest pairs below before sharing these images.",
    "FAIL": "Copies of training photographs, or a synthetic set closer to the training photographs than chance "
            "allows, were found: do not share these synthetic images as they are.",
    "INCONCLUSIVE": "The audit could not decide (no holdout photographs, or too few for its tests to be able to "
                    "fail): this is not a sign that sharing is safe.",
}

# One sentence per statistic for a reader who is not a statistician; the numbers stay in the tables.
_PLAIN_PRIVACY = (
    ("median distance", "how far a typical synthetic image is from its most similar training photograph, beside "
                        "the same for real photographs the model never saw (what \"not copied\" looks like)."),
    ("memorization rate", "the share of synthetic images closer to a training photograph than nearly all new "
                          "photographs are; about alpha (5 % by default) is expected by chance."),
    ("Z_U", "do the synthetic images, as a group, sit closer to the training photographs than new photographs do? "
            "Around 0 is normal; -3 or below fails."),
    ("C_T", "the same question asked inside groups of similar-looking photographs, so that one region cannot hide "
            "copying in another; -3 or below fails."),
    ("DCR share", "the share of synthetic images nearer to a training photograph than to a new one, with equally "
                  "many of each; 50 % means no preference."),
    ("membership AUC", "how well someone holding the synthetic images could tell which patients were in the "
                       "training set: 0.5 means not at all, 1 means always."),
    ("flagged", "synthetic images much closer to one training photograph than to any other: candidate copies, "
                "shown below with their training photograph."),
)
_PLAIN_REALISM = {
    "fid": "how different the synthetic and real images look overall, in the features of a network (0 = the same)",
    "kid": "the same question as FID, less biased for small sets (0 = the same)",
    "precision": "the share of synthetic images that look like some real image (realism)",
    "recall": "the share of real images that some synthetic image looks like (variety)",
    "density": "like precision, counting how many real images each synthetic image resembles (about 1 for real "
               "images)",
    "coverage": "the share of real images with a synthetic image close by (variety)",
}
_PLAIN_FUNDUS = {
    "vessel_density": "how much of the picture is blood vessel",
    "sharpness": "how crisp the fine detail is",
    "disc_brightness": "how bright the optic disc is",
    "colour_emd": "how the colours are spread",
}


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


# --------------------------------------------------------------------------- what is in the folder


@dataclass
class _Dataset:
    path: Path
    info: Any  # h5.DatasetInfo
    label_counts: dict[str, int]


@dataclass
class _Json:
    path: Path
    data: dict[str, Any]


@dataclass
class _Run:
    dir: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    checkpoint_sha256: str | None
    step: int | None


@dataclass
class _SynthSet:
    """One synthetic dataset file and the reports made on it. A report whose file is not here (or has
    changed since) gets a set of its own, so that its verdict is still shown and counted."""

    key: str  # the file's resolved path, or "fingerprint|recorded path" for a file that is not here
    path: str  # the file's path, or as recorded in the report
    dataset: _Dataset | None
    evaluations: list[_Json] = field(default_factory=list)
    audits: list[_Json] = field(default_factory=list)
    changed: bool = False  # the recorded file is here but its fingerprint differs: the reports describe an older file


@dataclass
class _Project:
    root: Path
    datasets: list[_Dataset] = field(default_factory=list)
    runs: list[_Run] = field(default_factory=list)
    evaluations: list[_Json] = field(default_factory=list)
    audits: list[_Json] = field(default_factory=list)
    ingest: _Json | None = None
    demo: _Json | None = None
    problems: list[str] = field(default_factory=list)  # files that could not be read, and why


def _read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            problems.append(f"{path}: larger than {MAX_JSON_BYTES >> 20} MB, not read")
            return None
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(f"{path}: not readable as JSON ({e})")
        return None
    return obj if isinstance(obj, dict) else None


def _readable(artefact: Artefact, data: dict[str, Any], path: Path, problems: list[str]) -> bool:
    """Whether `data` is a file of this kind that this version reads; a newer one is named in problems."""
    if not artefact.matches(data):
        return False
    why = artefact.problem(data, path)
    if why is not None:
        problems.append(why)
    return why is None


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def discover(root: Path) -> _Project:
    """Find the project layout's files in `root`, or `root` itself being one of its folders
    (data/, runs/, a run, reports/, one report folder)."""
    from fundus_cli.data import h5

    proj = _Project(root=root)
    for p in sorted({*root.glob("*.h5"), *(root / "data").glob("*.h5")}):
        try:
            with h5.open_dataset(p) as r:
                labels = r.labels()
                counts = {name: int((labels == i).sum()) for i, name in enumerate(r.info.class_names)}
                if (labels < 0).any():
                    counts["unknown"] = int((labels < 0).sum())
                proj.datasets.append(_Dataset(p, r.info, counts))
        except FundusError as e:
            proj.problems.append(str(e))

    run_dirs = [root, *_subdirs(root), *_subdirs(root / "runs")]
    seen: set[Path] = set()
    for d in run_dirs:
        if d.resolve() in seen or not ((d / "config.json").is_file() or (d / "checkpoint.pt").is_file()):
            continue
        seen.add(d.resolve())
        proj.runs.append(_read_run(d, proj.problems))

    candidates = [root / "report.json", *(d / "report.json" for d in _subdirs(root)),
                  *(d / "report.json" for d in _subdirs(root / "reports"))]
    seen = set()
    for p in candidates:
        if not p.is_file() or p.resolve() in seen:
            continue
        seen.add(p.resolve())
        data = _read_json(p, proj.problems)
        if data is None:
            continue
        for artefact, found in ((EVALUATE_REPORT, proj.evaluations), (AUDIT_REPORT, proj.audits)):
            if _readable(artefact, data, p, proj.problems):
                found.append(_Json(p, data))
    for p in (root / "ingest-report.json", root / "data" / "ingest-report.json"):
        if p.is_file() and (data := _read_json(p, proj.problems)) and _readable(INGEST_REPORT, data, p, proj.problems):
            proj.ingest = _Json(p, data)
            break
    if (root / "demo.json").is_file() and (data := _read_json(root / "demo.json", proj.problems)) \
            and _readable(DEMO_RECORD, data, root / "demo.json", proj.problems):
        proj.demo = _Json(root / "demo.json", data)
    return proj


def _read_run(d: Path, problems: list[str]) -> _Run:
    config = _read_json(d / "config.json", problems) if (d / "config.json").is_file() else None
    metrics: list[dict[str, Any]] = []
    if (d / "metrics.jsonl").is_file():
        for line in (d / "metrics.jsonl").read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                metrics.append(row)
    ckpt = d / "checkpoint.pt"
    # The newest numbered checkpoint names the step that checkpoint.pt holds (it is a link to it).
    steps = [int(p.stem.split("-")[1]) for p in d.glob("checkpoint-*.pt") if p.stem.split("-")[1].isdigit()]
    step = max(steps) if steps else (_num(metrics[-1].get("step")) if metrics else None)
    return _Run(dir=d, config=config or {}, metrics=metrics,
                checkpoint_sha256=sha256_file(ckpt) if ckpt.is_file() else None,
                step=None if step is None else int(step))


# --------------------------------------------------------------------------- formatting helpers


def _e(x: Any) -> str:
    """Any value from a file, as safe HTML text."""
    return html.escape("" if x is None else str(x), quote=True)


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(float(x)) else None


def _f(x: Any, spec: str = ".4g") -> str:
    n = _num(x)
    return "-" if n is None else _e(format(n, spec))


def _i(x: Any) -> str:
    """A count: digits without a decimal point, or '-'."""
    n = _num(x)
    return "-" if n is None else (_e(str(int(n))) if n.is_integer() else _f(n))


def _ci(d: Any, value: str = ".4g", bounds: str = ".3g") -> str:
    """'value [low, high]' of a {value, ci_low, ci_high} dict (the CLI's format)."""
    if not isinstance(d, dict) or _num(d.get("value")) is None:
        return "-"
    return (f"{_f(d.get('value'), value)} <span class=ci>[{_f(d.get('ci_low'), bounds)}, "
            f"{_f(d.get('ci_high'), bounds)}]</span>")


def _get(d: Any, *keys: Any) -> Any:
    for k in keys:
        if isinstance(d, dict):
            d = d.get(k)
        elif isinstance(d, list) and isinstance(k, int) and -len(d) <= k < len(d):
            d = d[k]
        else:
            return None
    return d


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else []


def _short(fp: Any) -> str:
    s = _e(fp) if isinstance(fp, str) else "-"
    return f"<code title='{s}'>{s[:12]}</code>" if len(s) > 12 else f"<code>{s}</code>"


def _table(header: list[str], rows: list[list[str]], *, cls: str = "") -> str:
    """header: plain text (escaped here); rows: cells that are already HTML."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv(d: dict[str, Any]) -> str:
    rows = [[f"<code>{_e(k)}</code>", _e(json.dumps(v, default=str)) if isinstance(v, (dict, list)) else _e(v)]
            for k, v in d.items()]
    return _table(["setting", "value"], rows, cls="kv")


def _details(summary: str, body: str) -> str:
    return f"<details><summary>{_e(summary)}</summary>{body}</details>"


def _cmd(text: str) -> str:
    return f"<code class=cmd>{_e(text)}</code>"


def _png(data: bytes, alt: str, *, style: str = "") -> str:
    return (f"<img alt='{_e(alt)}' style='{style}' src='data:image/png;base64,"
            f"{base64.b64encode(data).decode('ascii')}'>")


def _png_file(path: Path, alt: str) -> str | None:
    """An existing PNG figure embedded, or None (absent, not a PNG, too large)."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_IMAGE_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    return _png(data, alt) if data.startswith(PNG_SIGNATURE) else None


def _figure(img: str | None, caption: str, missing: str) -> str:
    if img is None:
        return f"<p class=missing>{_e(missing)}</p>"
    return f"<figure>{img}<figcaption>{_e(caption)}</figcaption></figure>"


def _rel(path: Any, root: Path) -> str:
    """A path shown relative to the reported folder when it is a file inside it; a recorded path
    that is not there (it was relative to another working directory) is shown as recorded."""
    if not isinstance(path, str):
        return "-"
    try:
        p = Path(path)
        if p.exists():
            return str(p.resolve().relative_to(root.resolve()))
    except (ValueError, OSError):
        pass
    return path


def _grid_png(images: np.ndarray) -> str:
    """A row of images as one PNG."""
    import cv2

    from fundus_cli.images import grid_image

    pad = 2
    grid = grid_image(images, nrow=len(images), pad=pad)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV only fails here on a broken build
        raise RuntimeError("OpenCV could not encode a PNG")
    # Every row is as wide as its share of PER_CLASS images, so tiles line up across rows at any
    # window width; small images are enlarged without blurring.
    style = f"width:{100 * len(images) / PER_CLASS:.2f}%;" + ("image-rendering:pixelated;"
                                                              if images.shape[1] < DISPLAY_TILE else "")
    return _png(buf.tobytes(), "image grid", style=style)


# --------------------------------------------------------------------------- sections


def _synthetic_sets(p: _Project) -> list[_SynthSet]:
    """One set per synthetic dataset file, each with the reports made on that very file.

    Reports are matched by the path they record and checked by fingerprint; the fingerprint alone
    decides only when it names one file here. Two files can share a fingerprint (a copy edited in
    place keeps its attributes), and merging them would let one file's PASS hide the other's FAIL."""
    files: dict[str, _SynthSet] = {}
    for d in p.datasets:
        if d.info.kind == "synthetic":
            key = str(d.path.resolve())
            files[key] = _SynthSet(key, str(d.path), d)
    others: dict[str, _SynthSet] = {}
    for kind, items in (("evaluations", p.evaluations), ("audits", p.audits)):
        for j in items:
            fp = _get(j.data, "inputs", "synthetic", "fingerprint")
            path = _get(j.data, "inputs", "synthetic", "path")
            target, changed = _match_file(j, fp, path, files, p.root)
            if target is None:
                key = f"{fp}|{path}"
                target = others.setdefault(key, _SynthSet(key, path if isinstance(path, str) else "?", None,
                                                          changed=changed))
            getattr(target, kind).append(j)
    return sorted(files.values(), key=lambda s: s.path) + sorted(others.values(), key=lambda s: s.path)


def _match_file(j: _Json, fp: Any, path: Any, files: dict[str, _SynthSet], root: Path) -> tuple[_SynthSet | None, bool]:
    """The dataset file a report was made on, and whether the recorded file is here but has changed."""
    by_path = None
    if isinstance(path, str) and path:
        # The recorded path is relative to where the command ran: usually the project folder, which
        # holds reports/<name>/report.json.
        for base in (root, j.path.parent.parent.parent, Path.cwd()):
            try:
                key = str((base / path).resolve())
            except (OSError, ValueError, RuntimeError):
                continue
            if key in files:
                by_path = files[key]
                break
    if by_path is not None:
        assert by_path.dataset is not None
        if not isinstance(fp, str) or by_path.dataset.info.fingerprint == fp:
            return by_path, False
        return None, True
    same = [s for s in files.values() if s.dataset is not None and isinstance(fp, str)
            and s.dataset.info.fingerprint == fp]
    if len(same) > 1 and isinstance(path, str):
        same = [s for s in same if Path(s.path).name == Path(path).name]
    return (same[0] if len(same) == 1 else None), False


def _dataset_by_fp(p: _Project, fp: Any) -> _Dataset | None:
    return next((d for d in p.datasets if isinstance(fp, str) and d.info.fingerprint == fp), None)


def _run_of(s: _SynthSet, p: _Project) -> _Run | None:
    prov = s.dataset.info.provenance if s.dataset is not None else {}
    fp = prov.get("checkpoint_fingerprint") if isinstance(prov, dict) else None
    return next((r for r in p.runs if r.checkpoint_sha256 and r.checkpoint_sha256 == fp), None)


def _checkpoint_note(s: _SynthSet, p: _Project) -> str | None:
    """The under-trained warning for the checkpoint a synthetic file was sampled from: its step
    against the planned steps that the file records, or else its run's config.json, or else the
    note its audit recorded."""
    prov = _dict(s.dataset.info.provenance) if s.dataset is not None else {}
    planned = prov.get("planned_steps")
    run = _run_of(s, p)
    if not isinstance(planned, int) and run is not None:
        planned = _dict(run.config.get("train_config")).get("steps")
    if (note := shortfall(prov.get("step"), planned)) is not None:
        return note
    return next((n for a in s.audits if isinstance(n := _get(a.data, "checkpoint", "note"), str) and n), None)


def _file_name(s: _SynthSet, p: _Project) -> str:
    if s.dataset is None:
        return f"{_rel(s.path, p.root)} (" + ("changed since it was reported on" if s.changed
                                               else "file not here") + ")"
    return _rel(s.path, p.root)


def _model_name(s: _SynthSet, p: _Project) -> str:
    prov = s.dataset.info.provenance if s.dataset is not None else {}
    arch = prov.get("arch") if isinstance(prov, dict) else None
    run = _run_of(s, p)
    what = f"{str(arch).upper()} model" if isinstance(arch, str) else "synthetic images of unknown origin"
    return what + (f" from {_rel(str(run.dir), p.root)}" if run else "")


def _set_title(s: _SynthSet, p: _Project) -> str:
    return f"{_model_name(s, p)}: {_file_name(s, p)}"


def _verdict(audit: _Json | None) -> str | None:
    return audit_report.verdict(audit.data) if audit else None


# FAIL > INCONCLUSIVE > WARN > PASS; a status this version does not know ranks as INCONCLUSIVE:
# the page cannot say it is safe.
_SEVERITY = {"PASS": 0, "WARN": 1, "INCONCLUSIVE": 2, "FAIL": 3}


def _worst(statuses: Any) -> str | None:
    """The most severe of some verdicts (None: no verdict at all)."""
    found = [v for v in statuses if isinstance(v, str)]
    return max(found, key=lambda v: _SEVERITY.get(v, 2)) if found else None


def _set_verdict(s: _SynthSet) -> str | None:
    """A file audited more than once (other settings, other folders) shows its most severe verdict."""
    return _worst(_verdict(a) for a in s.audits)


def _badge(status: str | None) -> str:
    if status is None:
        return "<span class='badge none'>no audit</span>"
    cls = status if status in VERDICTS else "none"
    return f"<span class='badge {cls}'>{_e(status)}</span>"


def _groups(sets: list[_SynthSet], p: _Project) -> list[tuple[str, list[_SynthSet]]]:
    """Synthetic files grouped by the model (checkpoint) they were sampled from, in first-seen order."""
    groups: dict[str, tuple[str, list[_SynthSet]]] = {}
    for s in sets:
        prov = s.dataset.info.provenance if s.dataset is not None else {}
        fp = prov.get("checkpoint_fingerprint") if isinstance(prov, dict) else None
        key = fp if isinstance(fp, str) else f"file:{s.key}"
        groups.setdefault(key, (_model_name(s, p), []))[1].append(s)
    return list(groups.values())


def _glance(p: _Project, sets: list[_SynthSet]) -> str:
    if not sets:
        return ""
    body = []
    for model, members in _groups(sets, p):
        worst = _worst(_set_verdict(s) for s in members)
        n_audited = sum(1 for s in members if s.audits)
        summary = (f"most severe of {len(members)} files" if len(members) > 1 else "1 file")
        if n_audited < len(members):
            summary += f"; {len(members) - n_audited} not audited"
        short = next((n for s in members if (n := _checkpoint_note(s, p))), None)
        warn = f"<br><span class=bad>{_e(short)}</span>" if short else ""
        body.append(f"<tr class=group><td colspan=4><b>{_e(model)}</b> <span class=ci>({_e(summary)})</span>{warn}"
                    f"</td><td>{_badge(worst)}</td></tr>")
        for s in members:
            ev = s.evaluations[-1] if s.evaluations else None
            au = s.audits[-1] if s.audits else None
            told = _dict(_get(ev.data, "realism", "overall", "distinguishable")) if ev else {}
            realism = (f"{sum(1 for v in told.values() if v is True)} of {len(told)} metrics tell them apart"
                       if told else ("evaluated, no baseline" if ev else "not evaluated"))
            tstr = _get(ev.data, "usefulness", "summary", "tstr_over_trtr_balanced_accuracy") if ev else None
            withheld = _withheld(ev) if ev else None
            n = (s.dataset.info.count if s.dataset else _get(ev.data, "inputs", "synthetic", "images") if ev
                 else _get(au.data, "inputs", "synthetic", "count") if au else None)
            cells = [f"<span class=member>{_e(_file_name(s, p))}</span>", _i(n), _e(realism),
                     f"withheld <span class=ci>({_e(withheld)})</span>" if withheld else _f(tstr, ".2f"),
                     _badge(_set_verdict(s))]
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{_e(h)}</th>" for h in (
        "synthetic dataset file, by model", "images", "realism vs real holdout",
        "usefulness (synthetic / real balanced accuracy)", "privacy"))
    return ("<section><h2>At a glance</h2><p>One row per synthetic dataset file; a model's row shows the most "
            "severe privacy verdict of its files (FAIL, then INCONCLUSIVE, WARN, PASS).</p>"
            f"<table class=glance><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></section>")


def _headline(sets: list[_SynthSet], p: _Project) -> str:
    """The folder's most severe privacy verdict, for the page header."""
    worst = _worst(_set_verdict(s) for s in sets)
    if worst is None:
        return ("<p class=headline>Privacy: <span class='badge none'>no audit</span> no synthetic file here has "
                "been audited yet.</p>" if sets else "")
    which = [_file_name(s, p) for s in sets if _set_verdict(s) == worst]
    audited = sum(1 for s in sets if s.audits)
    return (f"<p class=headline>Most severe privacy verdict in this folder: {_badge(worst)} "
            f"{_e(', '.join(which))} ({len(which)} of {audited} audited synthetic "
            f"file{'s' if audited != 1 else ''}). {_e(_MEANING.get(worst, ''))}</p>")


def _datasets_section(p: _Project) -> str:
    if not p.datasets:
        return ("<section><h2>Datasets</h2><p class=missing>No dataset files (data/*.h5) here. "
                f"Make them with {_cmd('fundus ingest RAW_DIR')}.</p></section>")
    rows = []
    for d in p.datasets:
        i = d.info
        counts = ", ".join(f"{_e(k)}: {_i(v)}" for k, v in d.label_counts.items()) or "unlabelled"
        rows.append([_e(_rel(str(d.path), p.root)), _e(i.split), _e(i.kind), _i(i.count),
                     f"{_i(i.image_size)} px", counts, _e("yes" if i.pseudonymized else "no")])
    out = ["<section><h2>Datasets</h2>",
           _table(["file", "split", "kind", "images", "size", "images per class", "pseudonymised"], rows)]
    if p.ingest is not None:
        g = p.ingest.data
        rej = rejected_files(g)
        out.append(f"<p>Ingest ({_e(_rel(str(p.ingest.path), p.root))}): {_i(_get(g, 'input', 'images_found'))} "
                   f"photographs found, {_i(_get(g, 'counts', 'accepted'))} accepted, "
                   f"{_i(_get(g, 'counts', 'rejected'))} rejected, "
                   f"{_i(len(_list(_get(g, 'duplicates', 'groups'))))} duplicate groups, "
                   f"{_i(_get(g, 'counts', 'patients'))} patients; the split into training and holdout is "
                   "by patient.</p>")
        if rej:
            out.append(_details(f"{len(rej)} rejected files", _table(
                ["file", "reason"], [[_e(r.source or "(not recorded)"), _e(r.reason)] for r in rej[:200]])))
    out.append("</section>")
    return "".join(out)


def _grids(s: _SynthSet, p: _Project) -> str:
    ev = s.evaluations[-1] if s.evaluations else None
    real = _dataset_by_fp(p, _get(ev.data, "inputs", "real", "fingerprint")) if ev else None
    real = real or next((d for d in p.datasets if d.info.split == "holdout" and d.info.kind == "real"), None)
    if s.dataset is not None and real is not None:
        try:
            return _grids_from_files(real, s.dataset, p.root)
        except FundusError as e:
            p.problems.append(str(e))
    if ev is not None:
        img = _png_file(ev.path.parent / "grids.png", "real and synthetic images")
        if img is not None:
            return _figure(img, "real holdout (left) and synthetic (right) images, per class (from "
                           f"{_rel(str(ev.path.parent / 'grids.png'), p.root)})", "")
    return "<p class=missing>No images to show: the synthetic and real holdout dataset files are not here.</p>"


def _grids_from_files(real: _Dataset, synth: _Dataset, root: Path) -> str:
    from fundus_cli.data import h5

    with h5.open_dataset(real.path) as r, h5.open_dataset(synth.path) as s:
        rl, sl = r.labels(), s.labels()
        names = r.info.class_names
        labelled = len(names) >= 2 and s.info.class_names == names and (sl >= 0).all() and (rl >= 0).all()
        groups = ([(name, np.flatnonzero(rl == c)[:PER_CLASS], np.flatnonzero(sl == c)[:PER_CLASS])
                   for c, name in enumerate(names)] if labelled
                  else [("all images", np.arange(min(PER_CLASS, len(r))), np.arange(min(PER_CLASS, len(s))))])
        cells = []
        for name, ri, si in groups:
            for reader, idx, what in ((r, ri, "real (holdout)"), (s, si, "synthetic")):
                body = _grid_png(reader.take_images(idx)) if len(idx) else "<span class=missing>no images</span>"
                cells.append(f"<div class=lab>{_e(what)}<br><b>{_e(name)}</b></div><div>{body}</div>")
    note = ("one pair of rows per class" if labelled else "unlabelled, or the classes differ")
    return (f"<p>First {PER_CLASS} images of each class in {_e(_rel(str(real.path), root))} (real, never trained on) "
            f"and {_e(_rel(str(synth.path), root))} ({note}).</p><div class=rows>{''.join(cells)}</div>")


def _realism(ev: _Json) -> str:
    realism = _dict(ev.data.get("realism"))
    out = []
    blocks = [("all images", _dict(realism.get("overall")))] + [
        (f"class {k}", v) for k, v in _dict(realism.get("per_class")).items()]
    for name, b in blocks:
        if not isinstance(b, dict):
            continue
        if "skipped" in b:
            out.append(f"<p><b>{_e(name)}</b>: no per-class numbers ({_e(b['skipped'])}).</p>")
            continue
        syn, base, told = _dict(b.get("synthetic")), _dict(b.get("baseline_train")), _dict(b.get("distinguishable"))
        rows = []
        for k, v in syn.items():
            t = told.get(k)
            verdict = ("<span class=bad>yes</span>" if t is True else "<span class=good>no</span>" if t is False
                       else "-")
            better = "lower is better" if k in ("fid", "kid") else "higher is better"
            rows.append([f"<b>{_e(k)}</b> <span class=ci>({_e(better)})</span>", _ci(v), _ci(base.get(k)), verdict])
        out.append(f"<h4>{_e(name)}: {_i(b.get('n_compared'))}"
                   f" synthetic images vs {_i(b.get('n_real'))}"
                   " real holdout images</h4>")
        out.append(_table(["metric", "synthetic vs real holdout (95 % CI)",
                           "real training vs real holdout: the baseline (95 % CI)", "told apart?"], rows))
    named = [k for k in _PLAIN_REALISM if any(k in _dict(_dict(b).get("synthetic")) for _, b in blocks)]
    if named:
        out.append("<ul class=plain>" + "".join(f"<li><b>{_e(k)}</b>: {_e(_PLAIN_REALISM[k])}.</li>" for k in named)
                   + "<li><b>told apart</b>: the synthetic number's interval does not overlap the one of real "
                     "training images, so the difference is more than chance at this sample size.</li></ul>")
    return "".join(out)


def _usefulness(ev: _Json, root: Path) -> str:
    u = ev.data.get("usefulness")
    if not isinstance(u, dict):
        return ("<p class=missing>No usefulness test: it needs labels on the training, holdout and synthetic sets "
                f"(train with {_cmd('fundus train --conditional')}).</p>")
    names = {"real": "real training images", "synthetic": "synthetic images only",
             "real+synthetic": "real + synthetic", "real25": "25 % of the real images",
             "real25+synthetic": "25 % of the real images + synthetic"}
    rows = [[_e(names.get(k, k)), _i(_get(v, "train_images")),
             *(_ci(_get(v, m), ".3f", ".2f") for m in ("accuracy", "balanced_accuracy", "macro_auc"))]
            for k, v in _dict(u.get("scenarios")).items()]
    summ = _dict(u.get("summary"))
    said = {"tstr_over_trtr_balanced_accuracy": "balanced accuracy trained on synthetic / trained on real",
            "augmentation_gain_balanced_accuracy": "change in balanced accuracy from adding the synthetic images to "
                                                   "all real images",
            "augmentation_gain_25pct_balanced_accuracy": "change in balanced accuracy from adding them to 25 % of the "
                                                         "real images"}
    lines = [f"<li>{_e(said.get(k, k.replace('_', ' ')))}: <b>{_f(v, '.3f')}</b></li>" for k, v in summ.items()
             if isinstance(k, str)]
    withheld = _withheld(ev)
    if withheld:
        # The ratio and gains compare against a classifier that learned nothing: not shown, so that
        # no one quotes them.
        lines = [f"<li class=bad>Usefulness cannot be judged, so the ratio and gains are withheld: "
                 f"{_e(withheld)}</li>"]
    return ("<p>A small classifier with a fixed recipe is trained on each set of images and tested on the real "
            "holdout. Synthetic images are useful when training on them comes close to training on real images, "
            "or when adding them helps.</p>"
            + _table(["trained on", "images", "accuracy (95 % CI)", "balanced accuracy", "macro AUC"], rows)
            + (f"<ul>{''.join(lines)}</ul>" if lines else ""))


def _withheld(ev: _Json) -> str | None:
    """Why `fundus evaluate` withheld the usefulness ratio and gains (e.g. the classifier trained on
    real images is at chance), wherever a version of the report puts it; None when not withheld."""
    u = _dict(ev.data.get("usefulness"))
    for v in (u.get("withheld_reason"), u.get("withheld"), _get(u, "withheld", "reason"),
              _get(u, "summary", "withheld_reason")):
        if isinstance(v, str) and v.strip():
            return v
    return None


def _fundus_stats(ev: _Json) -> str:
    fs = _dict(ev.data.get("fundus_statistics"))
    syn, base = _dict(fs.get("synthetic_vs_real")), _dict(fs.get("train_vs_real"))
    means = _dict(fs.get("means"))
    rows = []
    for k, v in syn.items():
        rows.append([_e(k.replace("_", " ")), _f(v), _f(base.get(k)),
                     *(_f(_get(means, who, k)) for who in ("real", "synthetic", "train"))])
    if not rows:
        return "<p class=missing>No fundus statistics in this report.</p>"
    img = _png_file(ev.path.parent / "fundus-stats.png", "distributions of the fundus statistics")
    return ("<p>Distances (Wasserstein-1) between the distributions over images of colour, vessel density, "
            "sharpness and optic-disc brightness; the synthetic distance should be close to the real-vs-real "
            "baseline.</p>"
            + _table(["statistic", "synthetic vs real holdout", "real training vs real holdout (baseline)",
                      "mean: real holdout", "mean: synthetic", "mean: real training"], rows)
            + ("<ul class=plain>" + "".join(f"<li><b>{_e(k.replace('_', ' '))}</b>: {_e(_PLAIN_FUNDUS[k])}; a "
                                             "synthetic distance far above the baseline means it differs.</li>"
                                             for k in syn if k in _PLAIN_FUNDUS) + "</ul>")
            + (_figure(img, "distributions inside the field of view", "") if img else ""))


def _privacy(s: _SynthSet, p: _Project) -> str:
    if not s.audits:
        return (f"<p class=missing>No privacy audit of this set yet. Run "
                f"{_cmd(f'fundus audit-privacy --synthetic {_rel(s.path, p.root)} --out reports/audit-privacy')}"
                ".</p>")
    out = []
    for a in s.audits:
        d = a.data
        dec = _dict(d.get("decision"))
        status = _verdict(a)
        inputs = _dict(d.get("inputs"))
        hold = _dict(inputs.get("holdout"))
        said = dec.get("summary")
        out.append(f"<div class=verdict>{_badge(status)} <span>{_e(_MEANING.get(status or '', ''))}</span></div>")
        if isinstance(said, str) and said:
            out.append(f"<p class=plainverdict>{_e(said)}</p>")
        ck = _get(d, "checkpoint", "note")
        if isinstance(ck, str) and ck:
            out.append(f"<p class=bad>{_e(ck)}</p>")
        out.append(f"<p>Audit {_e(_rel(str(a.path), p.root))}: {_i(_get(inputs, 'synthetic', 'count'))} synthetic "
                   f"vs {_i(_get(inputs, 'train', 'count'))} training images, calibrated on "
                   f"{_e(d.get('calibration'))}"
                   + (f" ({_i(hold.get('used'))} holdout images used, {_i(hold.get('excluded'))} excluded as "
                      "duplicates of training images or training patients)" if hold else "")
                   + f"; {_i(dec.get('n_flagged'))} flagged, "
                   f"{_i(len(_list(dec.get('confirmed_copies'))))} confirmed copies.</p>")
        reasons = [f"<li class=bad>FAIL: {_e(r)}</li>" for r in _list(dec.get("reasons"))]
        warns = [f"<li class=warn>WARN: {_e(w)}</li>" for w in _list(dec.get("warnings"))]
        unsure = [f"<li class=warn>INCONCLUSIVE: {_e(w)}</li>" for w in _list(dec.get("inconclusive"))]
        if reasons or warns or unsure:
            out.append(f"<ul>{''.join(reasons + unsure + warns)}</ul>")
        need = [f"{_i(dec.get(k))} {what}" for k, what in (("min_holdout", "usable holdout images"),
                                                         ("min_synthetic", "synthetic images"))
                if _num(dec.get(k)) is not None]
        if need:
            out.append(f"<p class=warn>To decide, the audit needs at least {' and '.join(need)}.</p>")
        ran = _list(dec.get("tests_run"))
        if ran:
            out.append(f"<p>Tests that ran, each able to fail at its threshold:</p>"
                       f"<ul>{''.join(f'<li>{_e(t)}</li>' for t in ran)}</ul>")
        rows = []
        for name, e in _dict(d.get("embeddings")).items():
            mem, zu, ct, mi = (_dict(_get(e, k)) for k in ("memorization", "z_u", "c_t", "membership"))
            rows.append([_e(name), _f(_get(e, "dcr_synthetic_median")), _f(_get(e, "dcr_calibration_median")),
                         # No tau_alpha (too small a holdout): a rate of 0 would read as "nothing memorised".
                         "<span class=warn>not run (no tau_alpha)</span>" if "tau" in mem and mem["tau"] is None else
                         f"{_f(mem.get('rate'))} <span class=ci>(p = {_f(mem.get('p_exact'), '.3g')})</span>",
                         _f(zu.get("z"), ".3g"), _f(ct.get("c_t"), ".3g"), _f(_get(e, "dcr_share"), ".3g"),
                         _ci({"value": mi.get("auc"), "ci_low": mi.get("ci_low"), "ci_high": mi.get("ci_high")},
                             ".3f", ".2f"), _i(_get(e, "n_flagged"))])
        if rows:
            out.append(_table(["embedding", "median distance: synthetic to nearest training",
                               "median distance: holdout to nearest training", "memorization rate",
                               "Z_U (<= -3 fails)", "C_T (<= -3 fails)", "DCR share",
                               "membership AUC (95 % CI)", "flagged"], rows))
            out.append("<ul class=plain>" + "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in _PLAIN_PRIVACY)
                       + "</ul>")
        out.append(_per_class(_dict(d.get("per_class"))))
        pairs = _png_file(a.path.parent / "nearest-pairs.png", "closest synthetic/training pairs")
        out.append(_figure(pairs, "closest synthetic/training pairs (flagged first) beside the closest "
                           "holdout/training pairs, with their difference", "No nearest-pairs.png beside the audit."))
        dist = _png_file(a.path.parent / "distances.png", "distance distributions")
        if dist:
            out.append(_figure(dist, "distances to the nearest training image: synthetic vs holdout", ""))
        out.append(_flagged(a.path.parent / "flagged.csv"))
        out.append(_details("thresholds and settings of this audit",
                            _kv(_dict(d.get("thresholds"))) + _kv(_dict(_get(d, "settings", "config")))))
        notes = [f"<li>{_e(n)}</li>" for n in _list(d.get("notes"))]
        if notes:
            out.append(f"<p>Notes:</p><ul>{''.join(notes)}</ul>")
    return "".join(out)


def _flagged(path: Path) -> str:
    if not path.is_file():
        return ""
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error):
        return ""
    if not rows:
        return "<p>No synthetic image was flagged.</p>"
    cols = ("synthetic_index", "train_index", "train_source", "embedding", "distance", "ratio", "p_value", "confirmed")
    body = [[_e(r.get(c, "")) for c in cols] for r in rows[:FLAGGED_ROWS]]
    more = f" (first {FLAGGED_ROWS} of {len(rows)})" if len(rows) > FLAGGED_ROWS else ""
    return _details(f"{len(rows)} flagged synthetic images{more}", _table(list(cols), body))


def _per_class(pc: dict[str, Any]) -> str:
    """The per-class memorization tests of a labelled audit (absent for unlabelled sets)."""
    tests = _dict(pc.get("tests"))
    if not tests:
        return ""
    rows = []
    for cls, by_emb in tests.items():
        for emb, t in _dict(by_emb).items():
            mem, zu = _dict(_get(t, "memorization")), _dict(_get(t, "z_u"))
            rows.append([_e(cls), _e(emb), _i(_get(t, "n_synthetic")), _i(_get(t, "n_calibration")),
                         (f"{_f(mem.get('rate'))} <span class=ci>(adjusted p = {_f(mem.get('p_adjusted'), '.3g')})"
                          "</span>") if mem else "-",
                         (f"{_f(zu.get('z'), '.3g')} <span class=ci>(adjusted p = {_f(zu.get('p_adjusted'), '.3g')})"
                          "</span>") if zu else "-",
                         _e(_get(t, "skipped") or "")])
    return ("<h4>Per class</h4><p>The same memorization tests within each class: a conditional model copies first "
            "where it has few photographs to learn from. Many classes mean many tests, so each p-value is adjusted "
            f"for their number ({_e(pc.get('multiplicity'))}) before the thresholds apply. A class too small to "
            "test on its own is named; the whole-set tests above still include it.</p>"
            + _table(["class", "embedding", "synthetic", "holdout", "memorization rate", "Z_U", "not tested"], rows))


def _synthetic_section(s: _SynthSet, p: _Project) -> str:
    out = [f"<section><h2>{_e(_set_title(s, p))}</h2>"]
    if (short := _checkpoint_note(s, p)) is not None:
        out.append(f"<p class=bad>{_e(short)}.</p>")
    out += ["<h3>Real and synthetic images</h3>", _grids(s, p)]
    if not s.evaluations:
        out.append("<h3>Realism</h3><p class=missing>Not evaluated yet. Run "
                   f"{_cmd(f'fundus evaluate --synthetic {_rel(s.path, p.root)} --out reports/evaluate')}.</p>")
    for ev in s.evaluations:
        out.append(f"<h3>Realism <span class=ci>({_e(_rel(str(ev.path), p.root))})</span></h3>")
        out.append("<p>Features of a fixed random network compared between the synthetic images and real images the "
                   "model never saw, beside the same comparison for real training images (what a perfect generator "
                   "would reach). <i>Told apart</i>: the synthetic interval does not overlap the baseline's, so the "
                   "difference is beyond chance at this sample size.</p>")
        out.append(_realism(ev))
        img = _png_file(ev.path.parent / "metrics.png", "realism metrics")
        if img:
            out.append(_figure(img, "realism metrics with 95 % CIs", ""))
        out.append("<h3>Usefulness</h3>" + _usefulness(ev, p.root))
        out.append("<h3>Fundus statistics</h3>" + _fundus_stats(ev))
        notes = [f"<li>{_e(n)}</li>" for n in _list(ev.data.get("notes"))]
        if notes:
            out.append(f"<p>Notes:</p><ul>{''.join(notes)}</ul>")
    out.append("<h3>Privacy</h3>" + _privacy(s, p))
    out.append("</section>")
    return "".join(out)


def _training_time(metrics: list[dict[str, Any]]) -> float | None:
    """Seconds of training: metrics' `time` restarts from 0 on each resume, so sum the segments."""
    total, last = 0.0, None
    for m in metrics:
        t = _num(m.get("time"))
        if t is None:
            continue
        if last is not None and t < last:
            total += last
        last = t
    return None if last is None else total + last


def _duration(secs: float | None) -> str:
    if secs is None:
        return "-"
    return f"{_f(secs, '.1f')} s" if secs < 120 else f"{_f(secs / 60, '.1f')} min"


def _runs_section(p: _Project) -> str:
    if not p.runs:
        return ("<section><h2>Training runs</h2><p class=missing>No training runs (runs/*/) here. Train one with "
                f"{_cmd('fundus train --arch gan --conditional')}.</p></section>")
    out = ["<section><h2>Training runs</h2>"]
    for r in p.runs:
        tc = _dict(r.config.get("train_config"))
        secs = _training_time(r.metrics)
        speeds = [v for m in r.metrics if (v := _num(m.get("images_per_s"))) is not None]
        arch = r.config.get("arch", tc.get("arch"))
        out.append(f"<h3>{_e(_rel(str(r.dir), p.root))}: {_e(str(arch).upper() if arch else '?')}</h3>")
        facts = [f"step {_i(r.step)} of "
                 f"{_i(tc.get('steps'))}",
                 f"training time {_duration(secs)}",
                 f"median speed {_f(float(np.median(speeds)), '.1f') + ' images/s' if speeds else '-'}",
                 f"preset {_e(tc.get('preset'))}, {_i(tc.get('size'))}"
                 f" px, batch {_e(tc.get('batch'))}, conditional: {_e(tc.get('conditional'))}",
                 f"device {_e(r.config.get('device'))}"]
        if r.metrics:
            last = {k: v for k, v in r.metrics[-1].items() if k not in ("step", "time", "lr", "images_per_s")}
            facts.append("last losses: " + ", ".join(f"{_e(k)} = {_f(v)}" for k, v in last.items()))
        out.append("<ul>" + "".join(f"<li>{x}</li>" for x in facts) + "</ul>")
        if (short := shortfall(r.step, tc.get("steps"))) is not None:
            out.append(f"<p class=bad>{_e(short)}.</p>")
        loss = _png_file(r.dir / "loss.png", "loss curves")
        if loss is None and r.metrics and (r.dir / "metrics.jsonl").is_file():
            loss = _loss_from_metrics(r.dir / "metrics.jsonl", str(arch))
        out.append(_figure(loss, "loss curves (metrics.jsonl)", "No loss curves yet (no loss.png or metrics.jsonl)."))
        grids = sorted(r.dir.glob("samples-*.png"))
        shown = [g for g in (grids[:1] + grids[-1:] if len(grids) > 1 else grids)]
        cells = [f"<figure>{img}<figcaption>{_e(g.name)}</figcaption></figure>"
                 for g in shown if (img := _png_file(g, g.name)) is not None]
        if cells:
            out.append("<p>Samples from fixed latent vectors, first and last grid of the run:</p>"
                       f"<div class=pairs>{''.join(cells)}</div>")
        out.append(_details("training settings", _kv(tc) + _kv(_dict(r.config.get("model_config")))))
    out.append("</section>")
    return "".join(out)


def _loss_from_metrics(metrics: Path, arch: str) -> str | None:
    from fundus_cli.plots import plot_losses

    with tempfile.TemporaryDirectory() as tmp:
        png = plot_losses(metrics, Path(tmp) / "loss.png", title=f"{arch} training")
        return _png_file(png, "loss curves") if png else None


def _provenance(p: _Project) -> str:
    train_sets = {d.info.fingerprint: d for d in p.datasets if d.info.split == "train"}
    rows = []
    for d in p.datasets:
        i = d.info
        prov = i.provenance if isinstance(i.provenance, dict) else {}
        made = (f"sampled from checkpoint {_short(prov.get('checkpoint_fingerprint'))} ({_e(prov.get('arch'))}, step "
                f"{_e(prov.get('step'))}, seed {_e(prov.get('seed'))})" if i.kind == "synthetic" else "ingest")
        rows.append([_e(_rel(str(d.path), p.root)), _short(i.fingerprint), made, _e(i.fundus_cli_version),
                     _e(i.created)])
    for r in p.runs:
        ds = _dict(r.config.get("dataset"))
        fp = ds.get("fingerprint")
        match = "" if not train_sets else (
            f" <span class=good>(= {_e(_rel(str(train_sets[fp].path), p.root))})</span>" if fp in train_sets
            else " <span class=bad>(not a training set here)</span>")
        rows.append([_e(_rel(str(r.dir / "checkpoint.pt"), p.root)), _short(r.checkpoint_sha256),
                     f"trained on {_short(fp)}{match}", _e(r.config.get("fundus_cli_version")), "-"])
    for ev in p.evaluations:
        rows.append([_e(_rel(str(ev.path), p.root)), "-",
                     f"features: {_e(_get(ev.data, 'features', 'name'))} network {_short(_get(ev.data, 'features', 'fingerprint'))}",
                     _e(ev.data.get("fundus_cli_version")), "-"])
    for a in p.audits:
        rows.append([_e(_rel(str(a.path), p.root)), "-",
                     f"learned embedding weights {_short(_get(a.data, 'learned_encoder', 'weights_sha256'))}",
                     _e(a.data.get("fundus_cli_version")), "-"])
    out = ["<section><h2>Provenance</h2><p>Every file records the SHA-256 fingerprints of what it was made from; "
           "hover a fingerprint for all 64 digits.</p>",
           _table(["artefact", "fingerprint", "made from", "fundus-cli", "created"], rows, cls="prov")]
    for ev in p.evaluations:
        out.append(_details(f"settings of {_rel(str(ev.path), p.root)}", _kv(_dict(ev.data.get("settings")))))
    if p.demo is not None:
        steps = _list(p.demo.data.get("steps"))
        drows = [[_e(_get(s, "name")), _cmd(str(_get(s, "command") or "")), _e(_get(s, "status")),
                  _f(_get(s, "seconds"), ".1f")] for s in steps if isinstance(s, dict)]
        out.append(f"<h3>Demo steps ({_e(_rel(str(p.demo.path), p.root))})</h3>"
                   f"<p>Each step is a command you can rerun or change in this folder; total "
                   f"{_duration(_num(p.demo.data.get('seconds')))}.</p>"
                   + _table(["step", "command", "status", "seconds"], drows))
    env = {"fundus-cli (this report)": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "torch", "h5py"):
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    out.append("<p class=ci>Report made by " + ", ".join(f"{_e(k)} {_e(v)}" for k, v in env.items()) + ".</p>")
    if p.problems:
        out.append("<h3>Files that could not be read</h3><ul>"
                   + "".join(f"<li>{_e(x)}</li>" for x in p.problems) + "</ul>")
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


def render(p: _Project) -> tuple[str, dict[str, str], list[str]]:
    """The page, the privacy verdict per synthetic file (its most severe), and the parts that are missing."""
    sets = _synthetic_sets(p)
    missing = []
    if not p.datasets:
        missing.append("datasets: run `fundus ingest RAW_DIR`")
    if not p.runs:
        missing.append("training runs: run `fundus train`")
    for s in sets:
        if not s.evaluations:
            missing.append(f"evaluation of {_rel(s.path, p.root)}: run `fundus evaluate --synthetic {s.path}`")
        if not s.audits:
            missing.append(f"privacy audit of {_rel(s.path, p.root)}: run `fundus audit-privacy --synthetic {s.path}`")
    if not sets and p.datasets:
        missing.append("synthetic images: run `fundus sample`")
    verdicts = {_file_name(s, p): v for s in sets if (v := _set_verdict(s))}
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"<header><h1>Synthetic fundus photographs: report</h1><p>{_e(p.root.resolve())} &middot; made {_e(now)} "
            f"by fundus-cli {_e(__version__)}</p>{_headline(sets, p)}</header><main>"]
    if missing:
        body.append("<section><h2>Not here yet</h2><ul>" + "".join(f"<li>{_e(m)}</li>" for m in missing)
                    + "</ul></section>")
    body.append(_glance(p, sets))
    body.append(_datasets_section(p))
    if not sets:
        body.append("<section><h2>Synthetic images</h2><p class=missing>No synthetic images here yet. Make them "
                    f"with {_cmd('fundus sample --n 1000')}.</p></section>")
    body.extend(_synthetic_section(s, p) for s in sets)
    body.append(_runs_section(p))
    body.append(_provenance(p))
    body.append("</main>")
    page = ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            # No request may leave the page: images are data URIs and nothing else is loaded.
            "<meta http-equiv=Content-Security-Policy content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<title>fundus-cli report: {_e(p.root.name or p.root.resolve().name)}</title>"
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
    worst = _worst(verdicts.values())
    out_path = Path(out) if out is not None else root / "report.html"
    if out_path.is_dir():
        raise FundusError(f"--out {out_path} is a folder; give the path of the .html file to write.")
    write_text_atomic(out_path, page)
    return ReportResult(out=out_path, root=root, datasets=len(p.datasets), runs=len(p.runs),
                        evaluations=len(p.evaluations), audits=len(p.audits), verdicts=verdicts, verdict=worst,
                        missing=missing)
