"""The page's sections: at a glance, datasets, and per synthetic file the grids, realism,
usefulness and fundus statistics (the privacy part is privacy.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fundus_cli.commands.report.html import (PER_CLASS, as_dict, as_list, badge, cmd, details, esc, figure, fmt, fmt_ci,
                                             fmt_int, get, grid_png, png_file, rel, table)
from fundus_cli.commands.report.privacy import MEANING, privacy_section
from fundus_cli.commands.report.project import (Dataset, JsonFile, Project, SynthSet, checkpoint_note, dataset_by_fp,
                                                file_name, most_severe, set_groups, set_title, set_verdict)
from fundus_cli.errors import FundusError
from fundus_cli.schemas.ingest_report import rejected_files


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


def glance(p: Project, sets: list[SynthSet]) -> str:
    if not sets:
        return ""
    body = []
    for model, members in set_groups(sets, p):
        worst = most_severe(set_verdict(s) for s in members)
        n_audited = sum(1 for s in members if s.audits)
        summary = (f"most severe of {len(members)} files" if len(members) > 1 else "1 file")
        if n_audited < len(members):
            summary += f"; {len(members) - n_audited} not audited"
        short = next((n for s in members if (n := checkpoint_note(s, p))), None)
        warn = f"<br><span class=bad>{esc(short)}</span>" if short else ""
        body.append(f"<tr class=group><td colspan=4><b>{esc(model)}</b> <span class=ci>({esc(summary)})</span>{warn}"
                    f"</td><td>{badge(worst)}</td></tr>")
        for s in members:
            ev = s.evaluations[-1] if s.evaluations else None
            au = s.audits[-1] if s.audits else None
            told = as_dict(get(ev.data, "realism", "overall", "distinguishable")) if ev else {}
            realism = (f"{sum(1 for v in told.values() if v is True)} of {len(told)} metrics tell them apart"
                       if told else ("evaluated, no baseline" if ev else "not evaluated"))
            tstr = get(ev.data, "usefulness", "summary", "tstr_over_trtr_balanced_accuracy") if ev else None
            withheld = _withheld(ev) if ev else None
            n = (s.dataset.info.count if s.dataset else get(ev.data, "inputs", "synthetic", "images") if ev
                 else get(au.data, "inputs", "synthetic", "count") if au else None)
            cells = [f"<span class=member>{esc(file_name(s, p))}</span>", fmt_int(n), esc(realism),
                     f"withheld <span class=ci>({esc(withheld)})</span>" if withheld else fmt(tstr, ".2f"),
                     badge(set_verdict(s))]
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{esc(h)}</th>" for h in (
        "synthetic dataset file, by model", "images", "realism vs real holdout",
        "usefulness (synthetic / real balanced accuracy)", "privacy"))
    return ("<section><h2>At a glance</h2><p>One row per synthetic dataset file; a model's row shows the most "
            "severe privacy verdict of its files (FAIL, then INCONCLUSIVE, WARN, PASS).</p>"
            f"<table class=glance><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></section>")


def headline(sets: list[SynthSet], p: Project) -> str:
    """The folder's most severe privacy verdict, for the page header."""
    worst = most_severe(set_verdict(s) for s in sets)
    if worst is None:
        return ("<p class=headline>Privacy: <span class='badge none'>no audit</span> no synthetic file here has "
                "been audited yet.</p>" if sets else "")
    which = [file_name(s, p) for s in sets if set_verdict(s) == worst]
    audited = sum(1 for s in sets if s.audits)
    return (f"<p class=headline>Most severe privacy verdict in this folder: {badge(worst)} "
            f"{esc(', '.join(which))} ({len(which)} of {audited} audited synthetic "
            f"file{'s' if audited != 1 else ''}). {esc(MEANING.get(worst, ''))}</p>")


def datasets_section(p: Project) -> str:
    if not p.datasets:
        return ("<section><h2>Datasets</h2><p class=missing>No dataset files (data/*.h5) here. "
                f"Make them with {cmd('fundus ingest RAW_DIR')}.</p></section>")
    rows = []
    for d in p.datasets:
        i = d.info
        counts = ", ".join(f"{esc(k)}: {fmt_int(v)}" for k, v in d.label_counts.items()) or "unlabelled"
        rows.append([esc(rel(str(d.path), p.root)), esc(i.split), esc(i.kind), fmt_int(i.count),
                     f"{fmt_int(i.image_size)} px", counts, esc("yes" if i.pseudonymized else "no")])
    out = ["<section><h2>Datasets</h2>",
           table(["file", "split", "kind", "images", "size", "images per class", "pseudonymised"], rows)]
    if p.ingest is not None:
        g = p.ingest.data
        rej = rejected_files(g)
        out.append(f"<p>Ingest ({esc(rel(str(p.ingest.path), p.root))}): {fmt_int(get(g, 'input', 'images_found'))} "
                   f"photographs found, {fmt_int(get(g, 'counts', 'accepted'))} accepted, "
                   f"{fmt_int(get(g, 'counts', 'rejected'))} rejected, "
                   f"{fmt_int(len(as_list(get(g, 'duplicates', 'groups'))))} duplicate groups, "
                   f"{fmt_int(get(g, 'counts', 'patients'))} patients; the split into training and holdout is "
                   "by patient.</p>")
        if rej:
            out.append(details(f"{len(rej)} rejected files", table(
                ["file", "reason"], [[esc(r.source or "(not recorded)"), esc(r.reason)] for r in rej[:200]])))
    out.append("</section>")
    return "".join(out)


def _grids(s: SynthSet, p: Project) -> str:
    ev = s.evaluations[-1] if s.evaluations else None
    real = dataset_by_fp(p, get(ev.data, "inputs", "real", "fingerprint")) if ev else None
    real = real or next((d for d in p.datasets if d.info.split == "holdout" and d.info.kind == "real"), None)
    if s.dataset is not None and real is not None:
        try:
            return _grids_from_files(real, s.dataset, p.root)
        except FundusError as e:
            p.problems.append(str(e))
    if ev is not None:
        img = png_file(ev.path.parent / "grids.png", "real and synthetic images")
        if img is not None:
            return figure(img, "real holdout (left) and synthetic (right) images, per class (from "
                           f"{rel(str(ev.path.parent / 'grids.png'), p.root)})", "")
    return "<p class=missing>No images to show: the synthetic and real holdout dataset files are not here.</p>"


def _grids_from_files(real: Dataset, synth: Dataset, root: Path) -> str:
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
                body = grid_png(reader.take_images(idx)) if len(idx) else "<span class=missing>no images</span>"
                cells.append(f"<div class=lab>{esc(what)}<br><b>{esc(name)}</b></div><div>{body}</div>")
    note = ("one pair of rows per class" if labelled else "unlabelled, or the classes differ")
    return (f"<p>First {PER_CLASS} images of each class in {esc(rel(str(real.path), root))} (real, never trained on) "
            f"and {esc(rel(str(synth.path), root))} ({note}).</p><div class=rows>{''.join(cells)}</div>")


def _realism(ev: JsonFile) -> str:
    realism = as_dict(ev.data.get("realism"))
    out = []
    blocks = [("all images", as_dict(realism.get("overall")))] + [
        (f"class {k}", v) for k, v in as_dict(realism.get("per_class")).items()]
    for name, b in blocks:
        if not isinstance(b, dict):
            continue
        if "skipped" in b:
            out.append(f"<p><b>{esc(name)}</b>: no per-class numbers ({esc(b['skipped'])}).</p>")
            continue
        syn, base = as_dict(b.get("synthetic")), as_dict(b.get("baseline_train"))
        told = as_dict(b.get("distinguishable"))
        rows = []
        for k, v in syn.items():
            t = told.get(k)
            verdict = ("<span class=bad>yes</span>" if t is True else "<span class=good>no</span>" if t is False
                       else "-")
            better = "lower is better" if k in ("fid", "kid") else "higher is better"
            rows.append([f"<b>{esc(k)}</b> <span class=ci>({esc(better)})</span>", fmt_ci(v), fmt_ci(base.get(k)),
                         verdict])
        out.append(f"<h4>{esc(name)}: {fmt_int(b.get('n_compared'))}"
                   f" synthetic images vs {fmt_int(b.get('n_real'))}"
                   " real holdout images</h4>")
        out.append(table(["metric", "synthetic vs real holdout (95 % CI)",
                           "real training vs real holdout: the baseline (95 % CI)", "told apart?"], rows))
    named = [k for k in _PLAIN_REALISM if any(k in as_dict(as_dict(b).get("synthetic")) for _, b in blocks)]
    if named:
        out.append("<ul class=plain>" + "".join(f"<li><b>{esc(k)}</b>: {esc(_PLAIN_REALISM[k])}.</li>" for k in named)
                   + "<li><b>told apart</b>: the synthetic number's interval does not overlap the one of real "
                     "training images, so the difference is more than chance at this sample size.</li></ul>")
    return "".join(out)


def _usefulness(ev: JsonFile, root: Path) -> str:
    u = ev.data.get("usefulness")
    if not isinstance(u, dict):
        return ("<p class=missing>No usefulness test: it needs labels on the training, holdout and synthetic sets "
                f"(train with {cmd('fundus train --conditional')}).</p>")
    names = {"real": "real training images", "synthetic": "synthetic images only",
             "real+synthetic": "real + synthetic", "real25": "25 % of the real images",
             "real25+synthetic": "25 % of the real images + synthetic"}
    rows = [[esc(names.get(k, k)), fmt_int(get(v, "train_images")),
             *(fmt_ci(get(v, m), ".3f", ".2f") for m in ("accuracy", "balanced_accuracy", "macro_auc"))]
            for k, v in as_dict(u.get("scenarios")).items()]
    summ = as_dict(u.get("summary"))
    said = {"tstr_over_trtr_balanced_accuracy": "balanced accuracy trained on synthetic / trained on real",
            "augmentation_gain_balanced_accuracy": "change in balanced accuracy from adding the synthetic images to "
                                                   "all real images",
            "augmentation_gain_25pct_balanced_accuracy": "change in balanced accuracy from adding them to 25 % of the "
                                                         "real images"}
    lines = [f"<li>{esc(said.get(k, k.replace('_', ' ')))}: <b>{fmt(v, '.3f')}</b></li>" for k, v in summ.items()
             if isinstance(k, str)]
    withheld = _withheld(ev)
    if withheld:
        # The ratio and gains compare against a classifier that learned nothing: not shown, so that
        # no one quotes them.
        lines = [f"<li class=bad>Usefulness cannot be judged, so the ratio and gains are withheld: "
                 f"{esc(withheld)}</li>"]
    return ("<p>A small classifier with a fixed recipe is trained on each set of images and tested on the real "
            "holdout. Synthetic images are useful when training on them comes close to training on real images, "
            "or when adding them helps.</p>"
            + table(["trained on", "images", "accuracy (95 % CI)", "balanced accuracy", "macro AUC"], rows)
            + (f"<ul>{''.join(lines)}</ul>" if lines else ""))


def _withheld(ev: JsonFile) -> str | None:
    """Why `fundus evaluate` withheld the usefulness ratio and gains (e.g. the classifier trained on
    real images is at chance), wherever a version of the report puts it; None when not withheld."""
    u = as_dict(ev.data.get("usefulness"))
    for v in (u.get("withheld_reason"), u.get("withheld"), get(u, "withheld", "reason"),
              get(u, "summary", "withheld_reason")):
        if isinstance(v, str) and v.strip():
            return v
    return None


def _fundus_stats(ev: JsonFile) -> str:
    fs = as_dict(ev.data.get("fundus_statistics"))
    syn, base = as_dict(fs.get("synthetic_vs_real")), as_dict(fs.get("train_vs_real"))
    means = as_dict(fs.get("means"))
    rows = []
    for k, v in syn.items():
        rows.append([esc(k.replace("_", " ")), fmt(v), fmt(base.get(k)),
                     *(fmt(get(means, who, k)) for who in ("real", "synthetic", "train"))])
    if not rows:
        return "<p class=missing>No fundus statistics in this report.</p>"
    img = png_file(ev.path.parent / "fundus-stats.png", "distributions of the fundus statistics")
    return ("<p>Distances (Wasserstein-1) between the distributions over images of colour, vessel density, "
            "sharpness and optic-disc brightness; the synthetic distance should be close to the real-vs-real "
            "baseline.</p>"
            + table(["statistic", "synthetic vs real holdout", "real training vs real holdout (baseline)",
                      "mean: real holdout", "mean: synthetic", "mean: real training"], rows)
            + ("<ul class=plain>" + "".join(f"<li><b>{esc(k.replace('_', ' '))}</b>: {esc(_PLAIN_FUNDUS[k])}; a "
                                             "synthetic distance far above the baseline means it differs.</li>"
                                             for k in syn if k in _PLAIN_FUNDUS) + "</ul>")
            + (figure(img, "distributions inside the field of view", "") if img else ""))


def synthetic_section(s: SynthSet, p: Project) -> str:
    out = [f"<section><h2>{esc(set_title(s, p))}</h2>"]
    if (short := checkpoint_note(s, p)) is not None:
        out.append(f"<p class=bad>{esc(short)}.</p>")
    out += ["<h3>Real and synthetic images</h3>", _grids(s, p)]
    if not s.evaluations:
        out.append("<h3>Realism</h3><p class=missing>Not evaluated yet. Run "
                   f"{cmd(f'fundus evaluate --synthetic {rel(s.path, p.root)} --out reports/evaluate')}.</p>")
    for ev in s.evaluations:
        out.append(f"<h3>Realism <span class=ci>({esc(rel(str(ev.path), p.root))})</span></h3>")
        out.append("<p>Features of a fixed random network compared between the synthetic images and real images the "
                   "model never saw, beside the same comparison for real training images (what a perfect generator "
                   "would reach). <i>Told apart</i>: the synthetic interval does not overlap the baseline's, so the "
                   "difference is beyond chance at this sample size.</p>")
        out.append(_realism(ev))
        img = png_file(ev.path.parent / "metrics.png", "realism metrics")
        if img:
            out.append(figure(img, "realism metrics with 95 % CIs", ""))
        out.append("<h3>Usefulness</h3>" + _usefulness(ev, p.root))
        out.append("<h3>Fundus statistics</h3>" + _fundus_stats(ev))
        notes = [f"<li>{esc(n)}</li>" for n in as_list(ev.data.get("notes"))]
        if notes:
            out.append(f"<p>Notes:</p><ul>{''.join(notes)}</ul>")
    out.append("<h3>Privacy</h3>" + privacy_section(s, p))
    out.append("</section>")
    return "".join(out)
