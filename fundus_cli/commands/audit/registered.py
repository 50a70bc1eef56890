"""Matches confirmed on a closer look: perceptual-hash matches and registered-distance flags whose
fine detail is the training image's; and the registered distance's own audit (``privacy.register``)."""

from __future__ import annotations


from typing import Any

import numpy as np

from fundus_cli.commands.audit.config import AuditConfig
from fundus_cli.commands.audit.embed import Side, Spill, Views, _view_candidates, read_side
from fundus_cli.data import h5
from fundus_cli.data.quality import DUP_CORRELATION, detail_signature
from fundus_cli.privacy import register as rg
from fundus_cli.privacy import neighbours as nb
from fundus_cli.privacy import stats as st
from fundus_cli.privacy.decision import Thresholds


def confirm_hash_matches(bits: np.ndarray, index: np.ndarray, flipped: np.ndarray, synth: h5.DatasetReader,
                          train: h5.DatasetReader, max_bits: int) -> tuple[np.ndarray, int]:
    """Hash matches that a fine-detail comparison does not confirm are set beyond any threshold.

    A 64-bit hash of smooth, similar-looking fundus images collides: distinct phantoms come
    within 4 bits for ~0.7 % of pairs, which made null audits FAIL. The same confirmation as
    ingest's duplicate grouping (correlation of high-passed disc centres) separates real
    copies (>= 0.98 after JPEG, resizing, noise, blur) from look-alikes (0.37-0.72).
    """
    bits = bits.copy()
    rejected = 0
    for i in np.flatnonzero(bits <= max_bits):
        s_img = synth.images(int(i), int(i) + 1)[0]
        if flipped[i]:
            s_img = s_img[:, ::-1]
        t_img = train.images(int(index[i]), int(index[i]) + 1)[0]
        if float((detail_signature(np.ascontiguousarray(s_img)) * detail_signature(t_img)).mean()) < DUP_CORRELATION:
            bits[i] = 65
            rejected += 1
    return bits, rejected


def audit_registered(cfg: AuditConfig, results: list[st.EmbeddingAudit], *, settings: st.AuditSettings,
                      mask: np.ndarray, max_shift: int, s_side: Side, h_side: Side | None,
                      train: h5.DatasetReader, pix: Spill, own: Spill | None, lrn: Spill | None,
                      views: Views | None, groups: np.ndarray, chunk: int, device: Any,
                      notes: list[str]) -> st.EmbeddingAudit:
    """The registered distance (``privacy.register``): every synthetic and calibration image
    re-ranks the same kinds of candidates by the same procedure, so that the conformal
    p-values stay calibrated."""
    by = {r.name: r for r in results}
    sources = [by[n] for n in ("pixel", "learned") if n in by] or list(by.values())
    k = cfg.register_k
    loo = h_side is None
    cal_rows = sources[0].calibration_rows if loo else None
    if loo:
        assert cal_rows is not None
        cal_side = read_side(train, cal_rows, mask=mask, encoder=None, chunk=chunk, device=device, hashes=False,
                              what="leave-one-out images", views=views)
    else:
        cal_side = h_side
    n_s = len(s_side.pixels)
    cand = np.concatenate([np.concatenate([r.synthetic.index[:, :k], r.calibration_near.index[:, :k]])
                           for r in sources], 1)
    dedupe = np.where(groups[:, 1] >= 0, groups[:, 1], -1 - np.arange(len(groups)))
    if views is not None:
        assert lrn is not None and s_side.views is not None and cal_side.views is not None
        exclude = None
        if loo:  # a training image used as a query must not find itself, its duplicates or its patient
            exclude = (np.concatenate([np.full((n_s, 3), -1, np.int64), groups[cal_rows]]), groups)
        cand = np.concatenate([cand, _view_candidates(views, np.concatenate([s_side.views, cal_side.views]), lrn,
                                                      chunk=chunk, dedupe=dedupe, exclude=exclude, device=device)], 1)
    elif "learned" not in by and max_shift > 2:
        notes.append("registered distance without the learned embedding: its candidates come from "
                     f"{'+'.join(r.name for r in sources)} alone, which rarely find copies moved by more than 2 px")
    assert own is not None
    chunks = ((a, rows, own.read(a, a + len(rows)).astype(bool)) for a, rows in pix.chunks(chunk))
    d, i, f, sh = rg.registered_nearest(rg.Registrar(mask, max_shift=max_shift),
                                        np.concatenate([s_side.pixels, cal_side.pixels]), cand, chunks, k=k,
                                        groups=dedupe)
    near = nb.Nearest(distance=d, index=i, flipped=f, part=np.zeros(i.shape, np.int32), shift=sh)
    return st.audit_nearest("registered", synthetic=near.take(slice(0, n_s)), calibration=near.take(slice(n_s, None)),
                            calibration_kind="leave-one-out" if loo else "holdout", calibration_rows=cal_rows,
                            settings=settings)


def confirm_registered(r: st.EmbeddingAudit, synth: h5.DatasetReader, train: h5.DatasetReader, th: Thresholds,
                        working_size: int) -> np.ndarray:
    """Per synthetic image: the registered distance flags it and its fine detail, moved back
    by the registered shift, is the training image's (the hash rule's confirmation)."""
    match = np.zeros(len(r.p_values), bool)
    assert r.synthetic.shift is not None
    for s in np.flatnonzero(r.flagged(ratio=th.ratio)):
        t = int(r.synthetic.index[s, 0])
        corr = rg.detail_correlation(synth.images(int(s), int(s) + 1)[0], train.images(t, t + 1)[0],
                                     shift=(int(r.synthetic.shift[s, 0, 0]), int(r.synthetic.shift[s, 0, 1])),
                                     flipped=bool(r.synthetic.flipped[s, 0]), working_size=working_size)
        match[s] = corr >= DUP_CORRELATION
    return match
