"""The data of nearest-pairs.png: the closest synthetic/training pairs (flagged first) and the
calibration's closest pairs as the reference."""

from __future__ import annotations


from typing import Any

import numpy as np

from fundus_cli.commands.audit.embed import Side, Spill, unflatten
from fundus_cli.data import h5
from fundus_cli.privacy import preprocess as pp
from fundus_cli.privacy import neighbours as nb
from fundus_cli.privacy import stats as st
from fundus_cli.privacy.decision import Decision, Flag, Thresholds
from fundus_cli.privacy.embeddings import Vectors


_PAIRS = 6  # rows of nearest-pairs.png


def reference_pairs(r: st.EmbeddingAudit, h_vec: Vectors | None, train: nb.Chunks, groups: np.ndarray,
                     device: Any) -> list[tuple[int, int, bool, float]]:
    """The calibration images closest to the training set, with their nearest training image:
    holdout rows (of the used holdout), or training rows (leave-one-out)."""
    order = np.argsort(r.calibration_dcr, kind="stable")[:_PAIRS]
    if h_vec is not None:
        near = nb.nearest(h_vec.take(order), train, k=1, device=str(device))
        queries = order
    else:
        assert r.calibration_rows is not None
        rows = r.calibration_rows[order]
        sorted_rows = np.sort(rows)
        q = nb.gather(train, sorted_rows).take(np.searchsorted(sorted_rows, rows))
        near = nb.nearest(q, train, k=1, exclude=(groups[rows], groups), device=str(device))
        queries = rows
    return [(int(qr), int(near.index[i, 0]), bool(near.flipped[i, 0]), float(near.dcr[i]))
            for i, qr in enumerate(queries) if near.index[i, 0] >= 0]


def _diff(query: np.ndarray, train: np.ndarray, mask: np.ndarray, flipped: bool,
          shift: tuple[int, int] | None = None) -> np.ndarray:
    q = unflatten(query[None], mask)
    if flipped:
        q = pp.flip(q)
    valid = mask
    if shift is not None and any(shift):
        # The registered match: the query at x + shift against the training image at x.
        dy, dx = shift
        s = mask.shape[0]
        moved, inside = np.zeros_like(q), np.zeros_like(mask)
        ys, yd = slice(max(dy, 0), s + min(dy, 0)), slice(max(-dy, 0), s - max(dy, 0))
        xs, xd = slice(max(dx, 0), s + min(dx, 0)), slice(max(-dx, 0), s - max(dx, 0))
        moved[:, yd, xd], inside[yd, xd] = q[:, ys, xs], mask[ys, xs]
        q, valid = moved, mask & inside
    d = np.abs(q[0] - unflatten(train[None], mask)[0]).mean(-1)
    return np.where(valid, d, np.nan)


def _short(text: str, n: int = 26) -> str:
    return text if len(text) <= n else "..." + text[-(n - 3):]


def synthetic_pairs(decision: Decision, r: st.EmbeddingAudit, th: Thresholds, mask: np.ndarray, side: Side,
                     synth: h5.DatasetReader, train: h5.DatasetReader, pix: Spill, t_sources: list[str]) -> list:
    from fundus_cli.privacy.figures import Pair

    flags: list[Flag] = sorted(decision.flags, key=lambda f: (not f.confirmed, f.ratio if f.ratio is not None else -1.0,
                                                                 f.synthetic))
    chosen: list[tuple[int, int, bool, str, Flag | None]] = []
    for f in flags[:_PAIRS]:
        chosen.append((f.synthetic, f.train_index, f.flipped, f.embedding, f))
    seen = {c[0] for c in chosen}
    for s in np.argsort(r.synthetic.dcr, kind="stable"):
        if len(chosen) >= _PAIRS:
            break
        if int(s) not in seen:
            chosen.append((int(s), int(r.synthetic.index[s, 0]), bool(r.synthetic.flipped[s, 0]), r.name, None))
    pairs = []
    for s, t, flipped, emb, flag in chosen:
        shift = flag.shift if flag is not None and emb == "registered" else None
        img = synth.take_images([s])[0]
        if flipped:
            img = np.ascontiguousarray(img[:, ::-1])
        if flag is not None:
            state = "CONFIRMED copy" if flag.confirmed else "flagged"
            dist, ratio, p = flag.distance, flag.ratio, flag.p_value
        else:
            state, dist, ratio, p = "", float(r.synthetic.dcr[s]), float(r.ratio[s]), float(r.p_values[s])
        what = (emb + ("" if dist is None else f" d = {dist:.3g}") + ("" if ratio is None else f", r = {ratio:.2f}")
                + ("" if p is None else f"\np = {p:.2g}"))
        pairs.append(Pair(query=img, train=train.take_images([t])[0],
                          diff=_diff(side.pixels[s], pix.take(np.array([t]))[0], mask, flipped, shift),
                          query_title=(f"synthetic #{s}{' (mirrored)' if flipped else ''}"
                                       + (f", moved {shift[0]}, {shift[1]} px" if shift else "")
                                       + (f"\n{state}" if state else "")),
                          train_title=f"training #{t}\n{_short(t_sources[t])}", diff_title=what))
    return pairs


def reference_display(reference: list[tuple[int, int, bool, float]], mask: np.ndarray,
                       ref_reader: h5.DatasetReader, side: Side | None, train: h5.DatasetReader,
                       pix: Spill, t_sources: list[str], emb: str) -> list:
    """Pairs for the reference half of nearest-pairs.png: holdout images (``side``, whose
    query numbers index ``side.rows``) or, without a holdout, left-out training images."""
    from fundus_cli.privacy.figures import Pair

    pairs = []
    for q, t, flipped, dist in reference:
        if side is not None:
            file_row = int(side.rows[q])
            q_pixels, label = side.pixels[q], f"holdout #{file_row}"
        else:
            file_row = q
            q_pixels, label = pix.take(np.array([q]))[0], f"training #{q} (left out)"
        img = ref_reader.take_images([file_row])[0]
        if flipped:
            img = np.ascontiguousarray(img[:, ::-1])
        pairs.append(Pair(query=img, train=train.take_images([t])[0],
                          diff=_diff(q_pixels, pix.take(np.array([t]))[0], mask, flipped),
                          query_title=f"{label}{' (mirrored)' if flipped else ''}",
                          train_title=f"training #{t}\n{_short(t_sources[t])}", diff_title=f"{emb} d = {dist:.3g}"))
    return pairs
