"""`audit_privacy`: the audit as named steps over one `Audit` (settings and open files):
prepare the training set, clean the calibration set, audit each embedding, decide, write."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fundus_cli import training_length
from fundus_cli.commands.audit.config import (Audit, AuditConfig, AuditResult, SEED_HOLDOUT, check_config, check_inputs,
                                              parse_embeddings)
from fundus_cli.commands.audit.embed import Rows, Side, Spill, Views, read_side, vectors, view_embedder
from fundus_cli.commands.audit.pairs import reference_display, reference_pairs, synthetic_pairs
from fundus_cli.commands.audit.record import (ReportInputs, canonical, dumps_report, excluded_holdout, report_body,
                                              write_flagged)
from fundus_cli.commands.audit.registered import audit_registered, confirm_hash_matches, confirm_registered
from fundus_cli.data import h5
from fundus_cli.data.quality import DUP_CORRELATION, detail_signature
from fundus_cli.device import resolve_device
from fundus_cli.errors import FundusError
from fundus_cli.fsio import write_text_atomic
from fundus_cli.privacy import per_class
from fundus_cli.privacy import preprocess as pp
from fundus_cli.privacy import neighbours as nb
from fundus_cli.privacy import stats as st
from fundus_cli.privacy.decision import Decision, Thresholds, decide, explain
from fundus_cli.privacy.embeddings import Vectors
from fundus_cli.privacy.learned import EncoderConfig, LearnedEncoder, learned_embedding, train_encoder
from fundus_cli.progress import track


def audit_privacy(cfg: AuditConfig) -> AuditResult:
    """Audit `cfg.synthetic` against `cfg.train`, calibrated on `cfg.holdout`; write the report folder."""
    names = parse_embeddings(cfg.embeddings)
    thresholds, settings = check_config(cfg)
    out = Path(cfg.out)
    report_path = out / "report.json"
    if report_path.exists() and not cfg.force:
        raise FundusError(f"{report_path} already exists. Use --force to overwrite it, or --out for another folder.")
    device = resolve_device(cfg.device)
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        train = stack.enter_context(h5.open_dataset(Path(cfg.train)))
        synth = stack.enter_context(h5.open_dataset(Path(cfg.synthetic)))
        hold = None
        if cfg.holdout is not None and Path(cfg.holdout).exists():
            hold = stack.enter_context(h5.open_dataset(Path(cfg.holdout)))
        else:
            notes.append(f"no holdout ({cfg.holdout if cfg.holdout is not None else 'none given'}): calibrated on "
                         "leave-one-out training-to-training distances"
                         + ("" if cfg.accept_no_holdout else "; the audit is INCONCLUSIVE without a holdout"))
        check_inputs(cfg, train, synth, hold, notes)
        out.mkdir(parents=True, exist_ok=True)
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".audit-scratch-", dir=out)))
        a = Audit(cfg=cfg, names=names, thresholds=thresholds, settings=settings, device=device, train=train,
                   synth=synth, hold=hold, notes=notes)
        return _run(a, scratch)


@dataclass
class _Training:
    """The training set, prepared once: columns, the common mask, the encoder and the spilled embeddings."""

    sources: list[str]
    patients: list[str]
    dups: np.ndarray
    hashes: np.ndarray
    mask: np.ndarray
    encoder: LearnedEncoder | None
    pix: Spill  # prepared masked pixels
    lrn: Spill | None  # learned features, plain and mirrored
    own: Spill | None  # each image's own field of view (registered distance)
    max_shift: int
    views: Views | None

    def chunks(self, name: str, chunk: int) -> nb.Chunks:
        """The training vectors of embedding `name`, `chunk` rows at a time, streamed from scratch."""
        def gen() -> Iterator[tuple[int, Vectors]]:
            if name == "learned":
                assert self.lrn is not None
                for a, rows in self.lrn.chunks(chunk):
                    d = rows.shape[1] // 2
                    yield a, Vectors(parts=(np.ascontiguousarray(rows[:, :d]),),
                                     flipped=(np.ascontiguousarray(rows[:, d:]),), names=("learned",))
            else:
                for a, rows in self.pix.chunks(chunk):
                    yield a, vectors(name, rows, self.mask, None)
        return gen


@dataclass
class _Calibration:
    """The holdout after its hygiene (None without a holdout: leave-one-out calibration)."""

    side: Side | None = None
    overlap: st.HoldoutOverlap | None = None
    sources: list[str] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)


@dataclass
class _Verdict:
    decision: Decision
    summary: str  # the verdict in plain words
    checkpoint: dict[str, Any]  # training_length.from_provenance of the synthetic file
    classes: list[per_class.ClassTest]
    class_names: tuple[str, ...] | None
    phash_bits: np.ndarray  # per synthetic image: bits to the nearest training hash (unconfirmed: beyond any)


def _run(a: Audit, scratch: Path) -> AuditResult:
    t = _prepare_training(a, scratch)
    a.stage(f"{len(a.train)} training images embedded ({', '.join(a.names)}) at {a.cfg.size} px")
    cal = _calibration(a, t)
    a.stage("calibration: leave-one-out (no holdout)" if cal.side is None else
            f"calibration: {len(cal.side.rows)} holdout images read")
    s_side = read_side(a.synth, np.arange(len(a.synth)), mask=t.mask, encoder=t.encoder, chunk=a.cfg.chunk,
                       device=a.device, hashes=True, what="synthetic images", views=t.views)
    a.stage(f"{len(a.synth)} synthetic images read")
    results, reference = _audit_embeddings(a, t, cal, s_side)
    verdict = _decide(a, t, cal, s_side, results)
    a.stage(f"decision: {verdict.decision.status}")
    result = _write(a, t, cal, s_side, results, reference, verdict)
    a.stage("report, flagged.csv and figures written")
    return result


def _prepare_training(a: Audit, scratch: Path) -> _Training:
    """One pass over the training images: the common mask, the learned encoder, and every image
    prepared and embedded once, spilled to `scratch` for the statistics' passes."""
    cfg, train, chunk = a.cfg, a.train, a.cfg.chunk
    n_t = len(train)
    mask = pp.common_mask((train.fov_masks(i, min(i + chunk, n_t)) for i in range(0, n_t, chunk)), size=cfg.size)
    encoder = None
    if "learned" in a.names:
        with track("training the learned embedding", None, unit="run"):
            encoder = train_encoder(Rows(train.images, n_t), Rows(train.fov_masks, n_t), mask=mask,
                                    config=EncoderConfig(seed=cfg.seed, steps=cfg.encoder_steps), device=a.device,
                                    chunk=chunk)
    # Training images: prepared once, spilled to scratch, streamed from there on every pass.
    pix = Spill(scratch / "train-pixels.f32", 3 * int(mask.sum()))
    lrn = Spill(scratch / "train-learned.f32", 2 * encoder.model.feature_dim) if encoder is not None else None
    # The registered distance leaves out the parts of a training image outside its own field of view.
    own = Spill(scratch / "train-fov.u8", int(mask.sum()), np.uint8) if "registered" in a.names else None
    with track("embedding training images", n_t) as advance:
        for i in range(0, n_t, chunk):
            j = min(i + chunk, n_t)
            imgs, fov = train.images(i, j), train.fov_masks(i, j)
            x = pp.prepare(imgs, fov, mask=mask)
            pix.append(x[:, mask].reshape(len(x), -1))
            if lrn is not None:
                v = learned_embedding(encoder, imgs, fov, device=a.device)
                lrn.append(np.concatenate([v.parts[0], v.flipped[0]], 1))
            if own is not None:
                own.append(pp.resize_masks(fov, cfg.size)[:, mask])
            advance(j - i)
    for spill in (pix, lrn, own):
        if spill is not None:
            spill.finish()
    max_shift = cfg.size // 8 if cfg.max_shift is None else cfg.max_shift
    dups = train.dup_groups().astype(np.int64)
    return _Training(sources=train.sources(), patients=train.patients(), dups=dups, hashes=train.phashes(),
                     mask=mask, encoder=encoder, pix=pix, lrn=lrn, own=own, max_shift=max_shift,
                     views=view_embedder(cfg, a.names, encoder, lrn, dups, n_t, max_shift, a.device))


def _calibration(a: Audit, t: _Training) -> _Calibration:
    """Holdout hygiene: duplicates of training images and training patients make chance look
    closer, so they are left out; the rest (capped at max_holdout) is read and embedded."""
    cfg, hold, train, chunk = a.cfg, a.hold, a.train, a.cfg.chunk
    if hold is None:
        return _Calibration()
    h_sources, h_patients = hold.sources(), hold.patients()
    h_flipped = np.concatenate([pp.flipped_phashes(hold.images(i, i + chunk)) for i in range(0, len(hold), chunk)])

    def same_photograph(h: int, j: int, mirrored: bool) -> bool:
        img = hold.images(h, h + 1)[0]
        img = np.ascontiguousarray(img[:, ::-1]) if mirrored else img
        return float((detail_signature(img) * detail_signature(train.images(j, j + 1)[0])).mean()) \
            >= DUP_CORRELATION

    overlap = st.holdout_overlap(hold.phashes(), t.hashes, holdout_phash_flipped=h_flipped, confirm=same_photograph,
                                 holdout_patients=h_patients, train_patients=t.patients, max_bits=cfg.phash_bits)
    if overlap.unconfirmed:
        a.notes.append(f"holdout: {overlap.unconfirmed} image(s) with a perceptual hash within {cfg.phash_bits} bits "
                       "of a training image's were kept: their fine detail differs (look-alikes, not duplicates)")
    keep = np.nonzero(overlap.keep)[0]
    if len(keep) == 0:
        raise FundusError(f"every image of {cfg.holdout} duplicates a training image or belongs to a training "
                          "patient; give a holdout split by patient (`fundus ingest` makes one), or none")
    if len(keep) > cfg.max_holdout:
        rng = np.random.default_rng([cfg.seed, SEED_HOLDOUT])
        keep = np.sort(rng.choice(keep, cfg.max_holdout, replace=False))
        a.notes.append(f"holdout: {cfg.max_holdout} of {int(overlap.keep.sum())} usable images used for the "
                       "calibration (seeded subsample; --max-holdout)")
    side = read_side(hold, keep, mask=t.mask, encoder=t.encoder, chunk=chunk, device=a.device, hashes=False,
                     what="holdout", views=t.views)
    return _Calibration(side=side, overlap=overlap, sources=h_sources, patients=h_patients)


def _audit_embeddings(a: Audit, t: _Training, cal: _Calibration, s_side: Side
                      ) -> tuple[list[st.EmbeddingAudit], list[tuple[int, int, bool, float]]]:
    """Each embedding's calibrated tests, and the reference pairs of the primary one (for the figure)."""
    n_t = len(a.train)
    primary = "pixel" if "pixel" in a.names else a.names[0]
    groups = nb.train_groups(t.dups, t.patients, n_t)
    results: list[st.EmbeddingAudit] = []
    reference: list[tuple[int, int, bool, float]] = []  # (query row, training row, flipped, distance)
    with track("auditing", len(a.names), unit="embedding") as advance:
        for name in a.names:
            if name == "registered":
                results.append(audit_registered(
                    a.cfg, results, settings=a.settings, mask=t.mask, max_shift=t.max_shift, s_side=s_side,
                    h_side=cal.side, train=a.train, pix=t.pix, own=t.own, lrn=t.lrn, views=t.views, groups=groups,
                    chunk=a.cfg.chunk, device=a.device, notes=a.notes))
                advance()
                a.stage("registered distance audited")
                continue
            s_vec = vectors(name, s_side.pixels, t.mask, s_side.learned)
            h_vec = None if cal.side is None else vectors(name, cal.side.pixels, t.mask, cal.side.learned)
            r = st.audit_embedding(name, train=t.chunks(name, a.cfg.chunk), synthetic=s_vec, holdout=h_vec,
                                   n_train=n_t, dup_groups=t.dups, patients=t.patients, settings=a.settings,
                                   device=str(a.device))
            results.append(r)
            if name == primary:
                reference = reference_pairs(r, h_vec, t.chunks(name, a.cfg.chunk), groups, a.device)
            del s_vec, h_vec
            advance()
            a.stage(f"{name} embedding audited")
    return results, reference


def _decide(a: Audit, t: _Training, cal: _Calibration, s_side: Side,
            results: list[st.EmbeddingAudit]) -> _Verdict:
    """Confirm hash and registered matches, run the per-class tests, and apply the decision rules."""
    cfg, synth, train = a.cfg, a.synth, a.train
    s_bits, s_index, s_flipped = pp.phash_nearest(s_side.phash, t.hashes, flipped=s_side.phash_flipped)
    s_bits, unconfirmed_hashes = confirm_hash_matches(s_bits, s_index, s_flipped, synth, train, cfg.phash_bits)
    if unconfirmed_hashes:
        a.notes.append(f"{unconfirmed_hashes} perceptual-hash matches within {cfg.phash_bits} bits were not the same "
                       "photograph on a closer look (fine-detail correlation below "
                       f"{DUP_CORRELATION}): not counted as copies")
    registered_match = None
    if "registered" in a.names:
        registered_match = confirm_registered(results[-1], synth, train, a.thresholds, cfg.size)
    classes, class_names = _class_tests(results, train, synth, a.hold, cal.side, a.settings, a.thresholds)
    if class_names is None and len(synth.info.class_names) >= 2:
        a.notes.append("per-class tests skipped: the training, holdout and synthetic sets do not share the same "
                       "class names, or some synthetic images are unlabelled")
    decision = decide(results, phash_bits=s_bits, phash_index=s_index, phash_flipped=s_flipped,
                      registered_match=registered_match, accept_leave_one_out=cfg.accept_no_holdout,
                      thresholds=a.thresholds, min_cell_synthetic=a.settings.min_cell_synthetic, classes=classes)
    summary = explain(decision, results, train_names=t.sources)
    checkpoint = training_length.from_provenance(synth.info.provenance)
    if checkpoint["note"]:
        a.notes.append(f"{cfg.synthetic}: {checkpoint['note']}")
    return _Verdict(decision=decision, summary=summary, checkpoint=checkpoint, classes=classes,
                    class_names=class_names, phash_bits=s_bits)


def _write(a: Audit, t: _Training, cal: _Calibration, s_side: Side, results: list[st.EmbeddingAudit],
           reference: list[tuple[int, int, bool, float]], v: _Verdict) -> AuditResult:
    """flagged.csv, the figures, then report.json (last: after a crash there is no report rather
    than a stale one beside new figures)."""
    out = Path(a.cfg.out)
    report_path = out / "report.json"
    report_path.unlink(missing_ok=True)
    flagged_path = out / "flagged.csv"
    write_flagged(flagged_path, v.decision, a.synth.sources(), t.sources, t.patients)
    figures = _figures(a, t, cal, s_side, results, reference, v)
    excluded = excluded_holdout(cal.overlap, cal.sources, cal.patients, t.sources) if cal.overlap is not None else []
    embeddings = {r.name: canonical(r.summary() | {
        "n_flagged": int(r.flagged(ratio=a.thresholds.ratio).sum()),
        "dcr_synthetic_min": float(np.min(r.synthetic.dcr)),
        "ratio_synthetic_min": float(np.nanmin(r.ratio)) if np.isfinite(r.ratio).any() else None,
    }) for r in results}
    record = ReportInputs(audit=a, h_used=0 if cal.side is None else len(cal.side.rows), excluded=excluded,
                          mask=t.mask, max_shift=t.max_shift, views=t.views is not None, encoder=t.encoder)
    report = report_body(record, decision=v.decision, summary=v.summary, checkpoint=v.checkpoint,
                         embeddings=embeddings, classes=v.classes, class_names=v.class_names,
                         phash_bits=v.phash_bits, notes=a.notes,
                         artefacts=["report.json", flagged_path.name, *[f.name for f in figures]])
    write_text_atomic(report_path, dumps_report(report))
    d = v.decision
    return AuditResult(
        decision=d.status, exit_code=d.exit_code, out=out, report=report_path, flagged_csv=flagged_path,
        figures=figures, reasons=list(d.reasons), warnings=list(d.warnings), calibration=record.calibrated_on,
        n_train=len(a.train), n_synthetic=len(a.synth), n_holdout_used=record.h_used,
        n_holdout_excluded=len(excluded), n_flagged=len(d.flags), confirmed=list(d.confirmed),
        embeddings=embeddings, encoder_sha256=None if t.encoder is None else t.encoder.weights_sha256,
        notes=a.notes,
        inputs=[Path(a.cfg.train), Path(a.cfg.synthetic)] + ([Path(a.cfg.holdout)] if a.hold is not None else []),
        summary=v.summary, inconclusive=list(d.inconclusive), tests_run=list(d.tests_run),
        min_holdout=d.min_holdout, checkpoint_note=v.checkpoint.get("note"))


def _figures(a: Audit, t: _Training, cal: _Calibration, s_side: Side, results: list[st.EmbeddingAudit],
             reference: list[tuple[int, int, bool, float]], v: _Verdict) -> list[Path]:
    """nearest-pairs.png (the closest synthetic/training pairs beside the calibration's) and distances.png."""
    from fundus_cli.privacy.figures import DistancePanel, distance_histograms, nearest_pairs

    out, hold, th = Path(a.cfg.out), a.hold, a.thresholds
    primary = "pixel" if "pixel" in a.names else a.names[0]
    by_name = {r.name: r for r in results}
    s_pairs = synthetic_pairs(v.decision, by_name[primary], th, t.mask, s_side, a.synth, a.train, t.pix, t.sources)
    cal_name = "holdout" if hold is not None else "training (leave-one-out)"
    r_pairs = reference_display(reference, t.mask, hold if hold is not None else a.train, cal.side, a.train, t.pix,
                                t.sources, primary)
    return [
        nearest_pairs(s_pairs, r_pairs, out / "nearest-pairs.png",
                      reference_name="holdout (reference)" if hold is not None else "training, left out (reference)",
                      title=f"closest synthetic/training pairs (flagged first; {primary} distance) beside the "
                            f"closest {'holdout' if hold is not None else 'leave-one-out training'}/training pairs "
                            f"- audit: {v.decision.status}"),
        distance_histograms([DistancePanel(name=r.name, synthetic=r.synthetic.dcr, calibration=r.calibration_dcr,
                                           calibration_name=cal_name,
                                           tau=r.memorization.tau, alpha=r.memorization.alpha,
                                           subtitle=f"Z_U = {r.data_copying.z:.2f}, m = {r.memorization.rate:.3f}, "
                                                    f"flagged {int(r.flagged(ratio=th.ratio).sum())}")
                             for r in results], out / "distances.png"),
    ]


def _class_tests(results: list[st.EmbeddingAudit], train: h5.DatasetReader, synth: h5.DatasetReader,
                 hold: h5.DatasetReader | None, h_side: Side | None, settings: st.AuditSettings,
                 th: Thresholds) -> tuple[list[per_class.ClassTest], tuple[str, ...] | None]:
    """Per-class tests when every set carries the same two or more classes and every synthetic
    image has one (a conditional model's samples); else none, and None for the class names."""
    names = synth.info.class_names
    s_labels = synth.labels()
    if (len(names) < 2 or train.info.class_names != names or (hold is not None and hold.info.class_names != names)
            or (s_labels < 0).any()):
        return [], None
    t_labels = train.labels()
    h_labels = hold.labels()[h_side.rows] if hold is not None and h_side is not None else None
    cal = [h_labels if r.calibration == "holdout" else
           (t_labels[r.calibration_rows] if r.calibration_rows is not None else None) for r in results]
    return per_class.class_tests(results, synthetic_labels=s_labels, calibration_labels=cal, class_names=names,
                                 alpha=settings.alpha, z_fail=th.z_fail), tuple(names)
