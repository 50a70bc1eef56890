"""The privacy part of a synthetic file's section: the verdict in plain words, its evidence, the
flagged pairs and the per-class tests."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from fundus_cli.commands.report.html import (as_dict, as_list, badge, cmd, details, esc, figure, fmt, fmt_ci, fmt_int,
                                             get, kv, num, png_file, rel, table)
from fundus_cli.commands.report.project import JsonFile, Project, SynthSet, audit_verdict


FLAGGED_ROWS = 20  # rows of flagged.csv shown


MEANING = {
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


def privacy_section(s: SynthSet, p: Project) -> str:
    if not s.audits:
        return (f"<p class=missing>No privacy audit of this set yet. Run "
                f"{cmd(f'fundus audit-privacy --synthetic {rel(s.path, p.root)} --out reports/audit-privacy')}"
                ".</p>")
    return "".join(_one_audit(a, p) for a in s.audits)


def _one_audit(a: JsonFile, p: Project) -> str:
    """One audit of the set: verdict in words, inputs, reasons, tests, numbers per embedding, figures."""
    out: list[str] = []
    d = a.data
    dec = as_dict(d.get("decision"))
    status = audit_verdict(a)
    inputs = as_dict(d.get("inputs"))
    hold = as_dict(inputs.get("holdout"))
    said = dec.get("summary")
    out.append(f"<div class=verdict>{badge(status)} <span>{esc(MEANING.get(status or '', ''))}</span></div>")
    if isinstance(said, str) and said:
        out.append(f"<p class=plainverdict>{esc(said)}</p>")
    ck = get(d, "checkpoint", "note")
    if isinstance(ck, str) and ck:
        out.append(f"<p class=bad>{esc(ck)}</p>")
    out.append(f"<p>Audit {esc(rel(str(a.path), p.root))}: {fmt_int(get(inputs, 'synthetic', 'count'))} synthetic "
               f"vs {fmt_int(get(inputs, 'train', 'count'))} training images, calibrated on "
               f"{esc(d.get('calibration'))}"
               + (f" ({fmt_int(hold.get('used'))} holdout images used, {fmt_int(hold.get('excluded'))} excluded as "
                  "duplicates of training images or training patients)" if hold else "")
               + f"; {fmt_int(dec.get('n_flagged'))} flagged, "
               f"{fmt_int(len(as_list(dec.get('confirmed_copies'))))} confirmed copies.</p>")
    reasons = [f"<li class=bad>FAIL: {esc(r)}</li>" for r in as_list(dec.get("reasons"))]
    warns = [f"<li class=warn>WARN: {esc(w)}</li>" for w in as_list(dec.get("warnings"))]
    unsure = [f"<li class=warn>INCONCLUSIVE: {esc(w)}</li>" for w in as_list(dec.get("inconclusive"))]
    if reasons or warns or unsure:
        out.append(f"<ul>{''.join(reasons + unsure + warns)}</ul>")
    need = [f"{fmt_int(dec.get(k))} {what}" for k, what in (("min_holdout", "usable holdout images"),
                                                     ("min_synthetic", "synthetic images"))
            if num(dec.get(k)) is not None]
    if need:
        out.append(f"<p class=warn>To decide, the audit needs at least {' and '.join(need)}.</p>")
    ran = as_list(dec.get("tests_run"))
    if ran:
        out.append(f"<p>Tests that ran, each able to fail at its threshold:</p>"
                   f"<ul>{''.join(f'<li>{esc(t)}</li>' for t in ran)}</ul>")
    rows = _embedding_rows(d)
    if rows:
        out.append(table(["embedding", "median distance: synthetic to nearest training",
                           "median distance: holdout to nearest training", "memorization rate",
                           "Z_U (<= -3 fails)", "C_T (<= -3 fails)", "DCR share",
                           "membership AUC (95 % CI)", "flagged"], rows))
        out.append("<ul class=plain>" + "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in _PLAIN_PRIVACY)
                   + "</ul>")
    out.append(_per_class(as_dict(d.get("per_class"))))
    pairs = png_file(a.path.parent / "nearest-pairs.png", "closest synthetic/training pairs")
    out.append(figure(pairs, "closest synthetic/training pairs (flagged first) beside the closest "
                       "holdout/training pairs, with their difference", "No nearest-pairs.png beside the audit."))
    dist = png_file(a.path.parent / "distances.png", "distance distributions")
    if dist:
        out.append(figure(dist, "distances to the nearest training image: synthetic vs holdout", ""))
    out.append(_flagged(a.path.parent / "flagged.csv"))
    out.append(details("thresholds and settings of this audit",
                        kv(as_dict(d.get("thresholds"))) + kv(as_dict(get(d, "settings", "config")))))
    notes = [f"<li>{esc(n)}</li>" for n in as_list(d.get("notes"))]
    if notes:
        out.append(f"<p>Notes:</p><ul>{''.join(notes)}</ul>")
    return "".join(out)


def _embedding_rows(d: dict[str, Any]) -> list[list[str]]:
    """The numbers of each embedding: distances, memorization rate, Z_U, C_T, DCR share, membership AUC."""
    rows = []
    for name, e in as_dict(d.get("embeddings")).items():
        mem, zu, ct, mi = (as_dict(get(e, k)) for k in ("memorization", "z_u", "c_t", "membership"))
        rows.append([esc(name), fmt(get(e, "dcr_synthetic_median")), fmt(get(e, "dcr_calibration_median")),
                     # No tau_alpha (too small a holdout): a rate of 0 would read as "nothing memorised".
                     "<span class=warn>not run (no tau_alpha)</span>" if "tau" in mem and mem["tau"] is None else
                     f"{fmt(mem.get('rate'))} <span class=ci>(p = {fmt(mem.get('p_exact'), '.3g')})</span>",
                     fmt(zu.get("z"), ".3g"), fmt(ct.get("c_t"), ".3g"), fmt(get(e, "dcr_share"), ".3g"),
                     fmt_ci({"value": mi.get("auc"), "ci_low": mi.get("ci_low"), "ci_high": mi.get("ci_high")},
                         ".3f", ".2f"), fmt_int(get(e, "n_flagged"))])
    return rows


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
    body = [[esc(r.get(c, "")) for c in cols] for r in rows[:FLAGGED_ROWS]]
    more = f" (first {FLAGGED_ROWS} of {len(rows)})" if len(rows) > FLAGGED_ROWS else ""
    return details(f"{len(rows)} flagged synthetic images{more}", table(list(cols), body))


def _per_class(pc: dict[str, Any]) -> str:
    """The per-class memorization tests of a labelled audit (absent for unlabelled sets)."""
    tests = as_dict(pc.get("tests"))
    if not tests:
        return ""
    rows = []
    for cls, by_emb in tests.items():
        for emb, t in as_dict(by_emb).items():
            mem, zu = as_dict(get(t, "memorization")), as_dict(get(t, "z_u"))
            rows.append([esc(cls), esc(emb), fmt_int(get(t, "n_synthetic")), fmt_int(get(t, "n_calibration")),
                         (f"{fmt(mem.get('rate'))} <span class=ci>(adjusted p = {fmt(mem.get('p_adjusted'), '.3g')})"
                          "</span>") if mem else "-",
                         (f"{fmt(zu.get('z'), '.3g')} <span class=ci>(adjusted p = {fmt(zu.get('p_adjusted'), '.3g')})"
                          "</span>") if zu else "-",
                         esc(get(t, "skipped") or "")])
    return ("<h4>Per class</h4><p>The same memorization tests within each class: a conditional model copies first "
            "where it has few photographs to learn from. Many classes mean many tests, so each p-value is adjusted "
            f"for their number ({esc(pc.get('multiplicity'))}) before the thresholds apply. A class too small to "
            "test on its own is named; the whole-set tests above still include it.</p>"
            + table(["class", "embedding", "synthetic", "holdout", "memorization rate", "Z_U", "not tested"], rows))
