"""Calibrated memorization statistics of one embedding, end to end (AUDIT.md, "Statistics"),
and the holdout's hygiene.

Notation: T training, H holdout (never trained on), S synthetic. dcr(x) is the distance
from x to its nearest training image, in one embedding (``embeddings.Vectors``), with
flips: d(s, t) = min(d(s, t), d(flip(s), t)).

The building blocks are pure functions of distance arrays in ``copying_tests.py``
(``conformal_p_values``, ``memorization_test``, ``data_copying_z``, ``cell_data_copying``,
``dcr_share``, ``membership_auc``) and ``nearest`` in ``neighbours.py``, the exact search on
top of ``knn``; ``audit_embedding`` runs them all for one embedding. Everything random takes a
seed; the same inputs and seed give identical numbers.

Without a holdout the calibration distances are leave-one-out training-to-training
distances (excluding the image itself, its duplicate group and its patient), which is the
best available stand-in but not an exchangeable one, so the decision calls it inconclusive.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fundus_cli.errors import FundusError
from fundus_cli.privacy.copying_tests import (CellTest, MembershipTest, MemorizationTest, ZTest, cell_data_copying,
                                              conformal_p_values, data_copying_z, dcr_share, fit_cells,
                                              membership_auc, memorization_test, ratio_test)
from fundus_cli.privacy.embeddings import Vectors
from fundus_cli.privacy.neighbours import (SEED_CELLS, SEED_LOO, SEED_MEMBERS, Nearest, TrainVectors, gather,
                                           nearest, sample_train, train_chunks, train_groups)

# --------------------------------------------------------------------------- one embedding, end to end


@dataclass(frozen=True)
class AuditSettings:
    """Statistical settings shared by all embeddings (recorded in the report)."""

    alpha: float = 0.05  # tau_alpha quantile and the memorization test's chance rate
    ratio_k: int = 50  # neighbours averaged by the ratio test (Carlini et al. 2023)
    ratio_scale: float = 0.5  # their alpha: r = dcr / (ratio_scale * mean of the ratio_k nearest)
    n_cells: int = 20  # k-means cells for C_T, reduced to keep >= 10 holdout and min_cell_synthetic per cell
    min_cell_synthetic: int = 20  # cells with fewer synthetic images are skipped
    fit_cells_max: int = 5000  # training images (one per duplicate group) the cells are fitted on
    pca_dims: int = 64  # PCA dimensions before k-means
    n_boot: int = 1000  # bootstrap rounds for the membership AUC interval
    loo_queries: int = 5000  # training images used as leave-one-out calibration without a holdout
    seed: int = 0


@dataclass(frozen=True)
class EmbeddingAudit:
    """Every statistic of one embedding."""

    name: str
    calibration: str  # "holdout" or "leave-one-out"
    synthetic: Nearest  # ratio_k nearest distinct training images of each synthetic image
    calibration_dcr: np.ndarray  # dcr of the holdout images (or the leave-one-out training images)
    calibration_rows: np.ndarray | None  # leave-one-out: which training rows
    p_values: np.ndarray  # conformal, per synthetic image
    ratio: np.ndarray  # Carlini ratio, per synthetic image
    memorization: MemorizationTest
    data_copying: ZTest
    cells: CellTest | None  # None for multi-part (tiled) embeddings, the registered distance, or too few images
    dcr_share: float | None  # None without a holdout (or for the registered distance)
    membership: MembershipTest | None  # None without a holdout (or for the registered distance)
    calibration_near: Nearest | None = None  # the calibration images' nearest training images

    @property
    def min_p(self) -> float:
        """The smallest possible conformal p-value, 1 / (|H| + 1)."""
        return 1.0 / (len(self.calibration_dcr) + 1.0)

    def flagged(self, *, ratio: float = 1.0) -> np.ndarray:
        """Per synthetic image: p-value the smallest possible and ratio below ``ratio``."""
        return (self.p_values <= self.min_p * (1 + 1e-9)) & (self.ratio < ratio)

    def summary(self) -> dict[str, Any]:
        """The set-level numbers, JSON-able, for report.json."""
        mem, z = self.memorization, self.data_copying
        out: dict[str, Any] = {
            "calibration": self.calibration,
            "n_synthetic": int(len(self.p_values)),
            "n_calibration": int(len(self.calibration_dcr)),
            "dcr_synthetic_median": _f(np.median(self.synthetic.dcr)) if len(self.p_values) else None,
            "dcr_calibration_median": _f(np.median(self.calibration_dcr)) if len(self.calibration_dcr) else None,
            "min_p_value": self.min_p,
            "memorization": {"alpha": mem.alpha, "tau": _f(mem.tau), "rank": mem.rank, "n_below": mem.n_below,
                             "rate": mem.rate, "expected": mem.expected, "p_exact": mem.p_exact,
                             "p_binomial": mem.p_binomial},
            "z_u": {"z": z.z, "p": z.p},
            "c_t": None if self.cells is None else {
                "c_t": _f(self.cells.c_t), "p": self.cells.p, "n_cells": self.cells.n_cells,
                "cells_used": self.cells.cells_used},
            "dcr_share": _f(self.dcr_share),
            "membership": None if self.membership is None else {
                "auc": self.membership.auc, "ci_low": self.membership.ci_low, "ci_high": self.membership.ci_high,
                "p": self.membership.p, "n_members": self.membership.n_members,
                "n_nonmembers": self.membership.n_nonmembers, "n_boot": self.membership.n_boot},
        }
        return out


def _f(x: float | None) -> float | None:
    return None if x is None else float(x)

def audit_embedding(name: str, *, train: TrainVectors, synthetic: Vectors, holdout: Vectors | None = None,
                    n_train: int | None = None, dup_groups: np.ndarray | None = None,
                    patients: Sequence[Any] | None = None, settings: AuditSettings = AuditSettings(),
                    device: str = "cpu") -> EmbeddingAudit:
    """All statistics of AUDIT.md for one embedding.

    train: the training vectors, or chunks of them (then ``n_train`` or ``dup_groups`` gives
        the count); chunks must carry flipped parts when the holdout is missing (leave-one-out
        queries are training images) or for the membership test (members are queries).
    holdout: already cleaned of duplicates of training images and of training patients
        (``holdout_overlap``). Without it, calibration is leave-one-out on the training set,
        and the DCR share and membership test are not computed.
    dup_groups / patients: per training image, for exclusions (leave-one-out), for counting
        duplicates once (ratio test, member sampling) and for the cells.
    """
    n_train = _train_count(train, n_train, dup_groups, holdout)
    s_cfg = settings
    groups = train_groups(dup_groups, patients, n_train)
    dedupe = np.where(groups[:, 1] >= 0, groups[:, 1], -1 - np.arange(n_train))  # ungrouped rows: own id
    n_s = len(synthetic)
    rows = _Rows.gather(train, n_train, holdout, len(synthetic.parts) == 1, dup_groups, s_cfg)

    # Calibration queries: the holdout, or training images that may not match themselves,
    # their duplicates or their patient.
    if holdout is not None:
        calib, calib_excl = holdout, np.full((len(holdout), 3), -1, np.int64)
    else:
        assert rows.loo is not None
        calib, calib_excl = rows.of(rows.loo), groups[rows.loo]
    if (synthetic.flipped is None) != (calib.flipped is None):
        # dcr(s) and dcr(h) must be the same kind of minimum, or one side looks closer by construction.
        raise FundusError("the synthetic and the calibration vectors must both carry mirrored images or both "
                          "not; embed the holdout (or the training chunks) with flips too")
    queries = Vectors.concat([synthetic, calib])
    excl = np.concatenate([np.full((n_s, 3), -1, np.int64), calib_excl])
    near = nearest(queries, train, k=s_cfg.ratio_k, exclude=(excl, groups), dedupe=dedupe, device=device)
    near_s = near.take(slice(0, n_s))
    cal_dcr = near.dcr[n_s:]
    if not np.all(np.isfinite(cal_dcr)):
        raise FundusError("some calibration images have no eligible training image (every training image "
                          "shares their patient or duplicate group); the audit cannot calibrate")
    p_values = conformal_p_values(near_s.dcr, cal_dcr)
    ratio = ratio_test(near_s, scale=s_cfg.ratio_scale)
    mem = memorization_test(near_s.dcr, cal_dcr, alpha=s_cfg.alpha)
    z_u = data_copying_z(near_s.dcr, cal_dcr)
    cells = _cells(train, queries, rows, n_s=n_s, n_calibration=len(cal_dcr), exclude=(excl, groups),
                   settings=s_cfg, device=device)
    share, membership = _membership(synthetic, holdout, rows, settings=s_cfg, device=device)
    return EmbeddingAudit(name=name, calibration="holdout" if holdout is not None else "leave-one-out",
                          synthetic=near_s, calibration_dcr=cal_dcr, calibration_rows=rows.loo,
                          p_values=p_values, ratio=ratio, memorization=mem, data_copying=z_u, cells=cells,
                          dcr_share=share,
                          membership=membership, calibration_near=near.take(slice(n_s, None)))


def _train_count(train: TrainVectors, n_train: int | None, dup_groups: np.ndarray | None,
                 holdout: Vectors | None) -> int:
    """How many training images there are; too few, or an empty holdout, is an error."""
    if n_train is None:
        if isinstance(train, Vectors):
            n_train = len(train)
        elif dup_groups is not None:
            n_train = len(dup_groups)
        else:
            raise ValueError("give n_train (or dup_groups) when the training vectors come in chunks")
    if n_train < 2:
        raise FundusError(f"the audit needs at least 2 training images, got {n_train}")
    if holdout is not None and len(holdout) == 0:
        raise FundusError("no usable holdout images are left (all duplicate a training image or share a "
                          "training patient); give another holdout, or none to calibrate leave-one-out")
    return n_train


@dataclass(frozen=True)
class _Rows:
    """The training rows needed as queries or small databases, gathered in one pass."""

    loo: np.ndarray | None  # leave-one-out calibration queries (no holdout)
    members: np.ndarray | None  # the membership test's members (with a holdout)
    fit: np.ndarray | None  # the rows the cells are fitted on (single-part embeddings)
    wanted: np.ndarray
    pool: Vectors | None

    @classmethod
    def gather(cls, train: TrainVectors, n_train: int, holdout: Vectors | None, single: bool,
               dup_groups: np.ndarray | None, s_cfg: AuditSettings) -> _Rows:
        n_cal_target = len(holdout) if holdout is not None else min(s_cfg.loo_queries, n_train)
        loo = None if holdout is not None else sample_train(n_train, n_cal_target, dup_groups=dup_groups,
                                                            seed=s_cfg.seed, stream=SEED_LOO)
        members = None if holdout is None else sample_train(n_train, len(holdout), dup_groups=dup_groups,
                                                            seed=s_cfg.seed, stream=SEED_MEMBERS)
        fit = sample_train(n_train, s_cfg.fit_cells_max, dup_groups=dup_groups, seed=s_cfg.seed,
                           stream=SEED_CELLS) if single else None
        wanted = np.unique(np.concatenate([r for r in (loo, members, fit) if r is not None]
                                          or [np.zeros(0, np.int64)]))
        return cls(loo=loo, members=members, fit=fit, wanted=wanted,
                   pool=gather(train, wanted) if len(wanted) else None)

    def of(self, r: np.ndarray) -> Vectors:
        assert self.pool is not None
        return self.pool.take(np.searchsorted(self.wanted, r))


def _cells(train: TrainVectors, queries: Vectors, rows: _Rows, *, n_s: int, n_calibration: int,
           exclude: tuple[np.ndarray, np.ndarray], settings: AuditSettings, device: str) -> CellTest | None:
    """C_T on k-means cells of the training embedding (single-part embeddings with enough images)."""
    s_cfg = settings
    n_cells = min(s_cfg.n_cells, n_calibration // 10, n_s // max(s_cfg.min_cell_synthetic, 1),
                  len(rows.fit) if rows.fit is not None else 0)
    if n_cells < 1:  # also for multi-part embeddings, which have no rows to fit cells on
        return None
    assert rows.fit is not None
    part = fit_cells(rows.of(rows.fit).parts[0], n_cells=n_cells, seed=s_cfg.seed, dims=s_cfg.pca_dims)
    t_cells = np.concatenate([part.assign(chunk.parts[0]) for _, chunk in train_chunks(train)])
    q_cells = part.assign(queries.parts[0])
    d_in = nearest(queries, train, k=1, exclude=exclude, cells=(q_cells, t_cells), device=device).dcr
    s_ok = np.isfinite(d_in[:n_s])
    c_ok = np.isfinite(d_in[n_s:])
    return cell_data_copying(d_in[:n_s][s_ok], d_in[n_s:][c_ok], cells_synthetic=q_cells[:n_s][s_ok],
                             cells_calibration=q_cells[n_s:][c_ok], n_cells=n_cells,
                             min_synthetic=s_cfg.min_cell_synthetic)


def _membership(synthetic: Vectors, holdout: Vectors | None, rows: _Rows, *, settings: AuditSettings,
                device: str) -> tuple[float | None, MembershipTest | None]:
    """The DCR share and the membership AUC, which need a holdout (else None, None)."""
    if holdout is None or not len(holdout) or not len(synthetic):
        return None, None
    assert rows.members is not None
    members = rows.of(rows.members)
    d_t = nearest(synthetic, members, k=1, device=device).dcr
    d_h = nearest(synthetic, holdout, k=1, device=device).dcr
    share = dcr_share(d_t, d_h)
    d_to_s = nearest(Vectors.concat([members, holdout]), synthetic, k=1, device=device).dcr
    return share, membership_auc(d_to_s[:len(members)], d_to_s[len(members):], n_boot=settings.n_boot,
                                 seed=settings.seed)


def audit_nearest(name: str, *, synthetic: Nearest, calibration: Nearest, calibration_kind: str = "holdout",
                  calibration_rows: np.ndarray | None = None, settings: AuditSettings = AuditSettings()
                  ) -> EmbeddingAudit:
    """The per-image statistics and the set-level tests that need only distances, for a
    distance found without an embedding search (the registered distance, which re-ranks
    other embeddings' candidates): p-values, ratio, memorization, Z_U. ``calibration`` must
    come from the same procedure as ``synthetic``, or the p-values are biased.

    calibration_kind: "holdout" or "leave-one-out" (then ``calibration_rows`` are the
    training rows used as calibration queries)."""
    if calibration_kind not in ("holdout", "leave-one-out"):
        raise ValueError(f"calibration_kind must be 'holdout' or 'leave-one-out', got {calibration_kind!r}")
    cal_dcr = calibration.dcr
    if not np.all(np.isfinite(cal_dcr)):
        raise FundusError(f"{name}: some calibration images have no registered distance to any candidate "
                          "training image; the audit cannot calibrate")
    return EmbeddingAudit(name=name, calibration=calibration_kind, synthetic=synthetic, calibration_dcr=cal_dcr,
                          calibration_rows=calibration_rows, p_values=conformal_p_values(synthetic.dcr, cal_dcr),
                          ratio=ratio_test(synthetic, scale=settings.ratio_scale),
                          memorization=memorization_test(synthetic.dcr, cal_dcr, alpha=settings.alpha),
                          data_copying=data_copying_z(synthetic.dcr, cal_dcr), cells=None, dcr_share=None,
                          membership=None, calibration_near=calibration)


# --------------------------------------------------------------------------- holdout hygiene


@dataclass(frozen=True)
class HoldoutOverlap:
    """Holdout images that would make the calibration unfair, and why."""

    keep: np.ndarray  # bool (H,): usable holdout images
    duplicate_of: np.ndarray  # int64 (H,): training image it duplicates, -1 if none
    duplicate_bits: np.ndarray  # int64 (H,): Hamming distance of their hashes (of the nearest hash if none)
    shared_patient: np.ndarray  # bool (H,): the patient also has training images
    duplicate_flipped: np.ndarray | None = None  # bool (H,): the mirror image is the duplicate
    unconfirmed: int = 0  # hash matches that the fine-detail check rejected (look-alikes, kept)


def holdout_overlap(holdout_phash: np.ndarray, train_phash: np.ndarray, *,
                    holdout_phash_flipped: np.ndarray | None = None,
                    confirm: Callable[[int, int, bool], bool] | None = None,
                    holdout_patients: Sequence[Any] | None = None, train_patients: Sequence[Any] | None = None,
                    max_bits: int = 4, block: int = 2048) -> HoldoutOverlap:
    """Flag holdout images that duplicate a training image or belong to a training patient.

    Either would put a holdout image at distance ~0 from the training set and make real
    copies look like chance. A duplicate is the ingest's (and the synthetic side's) rule: a
    perceptual hash at most ``max_bits`` from a training image's, of the image or of its
    mirror image (``holdout_phash_flipped``, ``preprocess.flipped_phashes``), that
    ``confirm(holdout row, training row, mirrored)`` accepts when given (the fine-detail
    check: a 64-bit hash of smooth fundus photographs collides for look-alikes, and dropping
    a look-alike from the calibration would bias it). Every training image within reach is
    tried, closest hash first, until one is confirmed. Unknown patients ("" or None) never match.
    """
    from fundus_cli.data.quality import hamming_matrix

    h = np.asarray(holdout_phash, dtype=np.uint64)
    t = np.asarray(train_phash, dtype=np.uint64)
    sides = [(h, False)]
    if holdout_phash_flipped is not None:
        hf = np.asarray(holdout_phash_flipped, dtype=np.uint64)
        if hf.shape != h.shape:
            raise FundusError(f"{hf.shape} mirrored hashes for {h.shape} holdout images; give one per image")
        sides.append((hf, True))
    nearest_bits = np.full(len(h), 65, np.int64)
    # Candidate (holdout, training, mirrored, bits) within reach, found block by block.
    cand: list[tuple[int, int, int, int]] = []
    for side, mirrored in sides:
        for a in range(0, len(h), block):
            for b in range(0, len(t), block):
                d = hamming_matrix(side[a:a + block], t[b:b + block]).astype(np.int64)
                nearest_bits[a:a + len(d)] = np.minimum(nearest_bits[a:a + len(d)], d.min(1) if d.size else 65)
                ii, jj = np.nonzero(d <= max_bits)
                cand += [(int(d[i, j]), int(i + a), int(j + b), int(mirrored)) for i, j in zip(ii, jj)]
    dup = np.full(len(h), -1, np.int64)
    bits = nearest_bits.copy()
    flipped = np.zeros(len(h), bool)
    rejected = np.zeros(len(h), bool)
    for nb, i, j, mirrored in sorted(cand, key=lambda c: (c[1], c[0], c[3], c[2])):  # per image: closest first
        if dup[i] >= 0:
            continue
        if confirm is None or confirm(i, j, bool(mirrored)):
            dup[i], bits[i], flipped[i] = j, nb, bool(mirrored)
        else:
            rejected[i] = True
    shared = np.zeros(len(h), bool)
    if holdout_patients is not None and train_patients is not None:
        known = {p for p in train_patients if p is not None and p != ""}
        shared = np.array([p is not None and p != "" and p in known for p in holdout_patients], dtype=bool)
    return HoldoutOverlap(keep=(dup < 0) & ~shared, duplicate_of=dup, duplicate_bits=bits, shared_patient=shared,
                          duplicate_flipped=flipped, unconfirmed=int((rejected & (dup < 0)).sum()))
