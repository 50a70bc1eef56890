"""`fundus audit-privacy`: do the synthetic images copy training patients' images more than chance?

The calibrated nearest-neighbour audit of AUDIT.md, put together from ``privacy/``:
every image is prepared inside one common field-of-view disc (``preprocess``), embedded
(``embeddings``: masked pixels, their 4 x 4 tiled variant, an encoder trained on the
training set only), compared with the training set under flips (``stats.nearest`` over
``knn``), calibrated on holdout-to-training distances (``stats.audit_embedding``) and
judged (``decision.decide``): PASS / WARN (exit 0), FAIL (exit 1), INCONCLUSIVE (exit 3,
no holdout and not accepted).

The fourth "embedding", ``registered`` (``register``), finds copies moved by up to
``max_shift`` px, which all the others miss beyond a few pixels: each synthetic and each
calibration image re-ranks a few candidate training images (the pixel and learned
embeddings' nearest, and the learned nearest of eight shifted views of the image) by the
pixel distance minimised over shifts and flips, and gets its p-value and ratio from those
distances. A registered flag whose fine detail matches the training image at the found
shift counts as a confirmed copy, as a confirmed perceptual-hash match does.

Memory does not grow with the training set. Its images are read ``chunk`` at a time:
one pass for the common mask, one for the encoder's (capped) training sample, and one
that prepares every image once and spills the prepared pixels and learned features to a
scratch folder inside ``out``, which the statistics then stream from on each of their
passes. What is held in memory is proportional to the synthetic set and the holdout
(capped at ``max_holdout``): they are the queries of every search.

Writes ``report.json`` (byte-identical for the same inputs, settings and seed: no times,
sorted keys, floats rounded to 6 significant digits), ``flagged.csv``, ``nearest-pairs.png``
and ``distances.png``, each atomically. "Same" includes the device and torch's thread count:
the learned encoder's weights (and their hash in the report) depend on the order of
floating-point sums, which those change.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fundus_cli.data import h5
from fundus_cli.data.quality import DUP_CORRELATION, detail_signature, phash
from fundus_cli.errors import FundusError
from fundus_cli.fsio import write_csv_atomic, write_text_atomic
from fundus_cli.privacy import preprocess as pp
from fundus_cli.privacy import stats as st
from fundus_cli import training_length
from fundus_cli.privacy.decision import Decision, Flag, Thresholds, decide, explain
from fundus_cli.privacy import per_class
from fundus_cli.privacy import register as rg
from fundus_cli.privacy.embeddings import (EncoderConfig, LearnedEncoder, Vectors, learned_embedding,
                                           pixel_embedding, tiled_embedding, train_encoder)
from fundus_cli.schemas.audit_report import AUDIT_REPORT
from fundus_cli.progress import track

EMBEDDINGS = ("pixel", "tiled", "learned", "registered")  # in the order they are computed and reported
SIGNIFICANT = 6  # digits kept of every float in report.json and flagged.csv
FLAGGED_COLUMNS = ("synthetic_index", "synthetic_source", "train_index", "train_source", "train_patient",
                   "embedding", "distance", "flipped", "ratio", "p_value", "confirmed", "flagged_in", "phash_bits",
                   "shift_dy", "shift_dx", "registered_match")
_PAIRS = 6  # rows of nearest-pairs.png
_SEED_HOLDOUT = 21  # sub-seed of the holdout subsample (beyond max_holdout)
_SEED_VIEWS = 22  # sub-seed of the training sample that the view search's projection is fitted on
_VIEW_DIMS = 64  # principal axes of the learned features used by the view search
_VIEW_FIT = 5000  # training images (one per duplicate group) the projection is fitted on
_VIEW_K = 4  # candidates per shifted view


@dataclass(frozen=True)
class AuditConfig:
    train: Path = Path("data/train.h5")  # real images the generator was trained on
    holdout: Path | None = Path("data/holdout.h5")  # real images it never saw; None or absent: leave-one-out
    #                                                  calibration, reported INCONCLUSIVE unless accept_no_holdout
    synthetic: Path = Path("data/synthetic.h5")  # the images to audit (`fundus sample`)
    out: Path = Path("reports/audit-privacy")  # report folder
    embeddings: str = "pixel,tiled,learned,registered"  # comma-separated, from EMBEDDINGS
    size: int = pp.DEFAULT_SIZE  # working size in px: images are compared at size x size
    seed: int = 0  # encoder training, member sampling, k-means cells, bootstrap, holdout subsample
    encoder_steps: int = EncoderConfig.steps  # training steps of the learned embedding
    accept_no_holdout: bool = False  # accept leave-one-out calibration (PASS/WARN instead of INCONCLUSIVE)
    max_holdout: int = 10000  # holdout images used for calibration (seeded subsample beyond; bounds memory)
    max_shift: int | None = None  # registered distance: largest shift searched, px at the working size
    #                               (None: size // 8, i.e. 8 px at 64 px)
    register_k: int = 8  # registered distance: candidates per query from each of pixel and learned, and
    #                      the neighbours its ratio test averages
    # Statistics and decision thresholds (AUDIT.md's defaults; the report states the ones used).
    alpha: float = st.AuditSettings.alpha  # tau = alpha-quantile of dcr(holdout); chance memorization rate
    ratio: float = Thresholds.ratio  # ratio test: r below this marks an image much closer to one training image
    ratio_k: int = st.AuditSettings.ratio_k  # neighbours averaged by the ratio test
    confirm_in: int = Thresholds.confirm_in  # embeddings that must flag an image for a confirmed copy
    phash_bits: int = Thresholds.phash_bits  # perceptual hashes this close: copy (synthetic), excluded (holdout)
    z_fail: float = Thresholds.z_fail  # Z_U or C_T at or below: FAIL
    memorization_p_fail: float = Thresholds.memorization_p_fail  # memorization test p below this ...
    memorization_excess_fail: float = Thresholds.memorization_excess_fail  # ... with m - alpha at least this: FAIL
    memorization_test: str = Thresholds.memorization_test  # exact (rank-based) or binomial
    membership_ci_fail: float = Thresholds.membership_ci_fail  # membership AUC lower 95 % bound above: FAIL
    warn_p: float = Thresholds.warn_p  # any test below this: WARN
    possible_copy_ratio: float = Thresholds.possible_copy_ratio  # image flagged in too few embeddings: WARN below
    n_boot: int = st.AuditSettings.n_boot  # bootstrap rounds of the membership AUC interval
    chunk: int = 2048  # training images read and embedded at a time (memory vs per-pass overhead)
    device: str = "auto"  # auto | cpu | cuda: encoder and nearest-neighbour search
    force: bool = False  # overwrite an existing report


@dataclass
class AuditResult:
    decision: str  # PASS | WARN | FAIL | INCONCLUSIVE
    exit_code: int  # 0 | 0 | 1 | 3
    out: Path
    report: Path
    flagged_csv: Path
    figures: list[Path]
    reasons: list[str]  # what made it FAIL
    warnings: list[str]  # what made it WARN
    calibration: str  # "holdout" or "leave-one-out"
    n_train: int
    n_synthetic: int
    n_holdout_used: int  # after exclusions and the max_holdout cap; 0 without a holdout
    n_holdout_excluded: int  # duplicates of training images or training patients
    n_flagged: int  # rows of flagged.csv
    confirmed: list[int]  # synthetic indices of confirmed copies
    embeddings: dict[str, dict[str, Any]]  # per embedding: the statistics as in report.json
    encoder_sha256: str | None
    notes: list[str] = field(default_factory=list)
    inputs: list[Path] = field(default_factory=list)
    summary: str = ""  # the verdict in plain words (decision.explain)
    inconclusive: list[str] = field(default_factory=list)  # why it cannot decide (INCONCLUSIVE)
    tests_run: list[str] = field(default_factory=list)  # tests that ran with the power to fail
    min_holdout: int | None = None  # usable holdout images every test needs, when short of them
    checkpoint_note: str | None = None  # the synthetic images come from an under-trained checkpoint


def audit_privacy(cfg: AuditConfig) -> AuditResult:
    names = parse_embeddings(cfg.embeddings)
    thresholds, settings = _check_config(cfg)
    out = Path(cfg.out)
    report_path = out / "report.json"
    if report_path.exists() and not cfg.force:
        raise FundusError(f"{report_path} already exists. Use --force to overwrite it, or --out for another folder.")
    from fundus_cli.device import resolve_device

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
        _check_inputs(cfg, train, synth, hold, notes)
        out.mkdir(parents=True, exist_ok=True)
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".audit-scratch-", dir=out)))
        return _run(cfg, names, thresholds, settings, device, train, synth, hold, scratch, notes)


def _confirm_hash_matches(bits: np.ndarray, index: np.ndarray, flipped: np.ndarray, synth: h5.DatasetReader,
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


def parse_embeddings(text: str) -> tuple[str, ...]:
    """"pixel,tiled" -> ("pixel", "tiled") in EMBEDDINGS order; unknown names are an error."""
    asked = [t.strip() for t in str(text).split(",") if t.strip()]
    unknown = [t for t in asked if t not in EMBEDDINGS]
    if unknown or not asked:
        raise FundusError(f"--embeddings {text!r}: {'unknown ' + ', '.join(unknown) if unknown else 'none given'}; "
                          f"valid: {', '.join(EMBEDDINGS)}")
    names = tuple(e for e in EMBEDDINGS if e in asked)
    if names == ("registered",):
        raise FundusError("--embeddings registered re-ranks the nearest training images that another embedding "
                          "finds; give pixel or learned too (e.g. pixel,learned,registered)")
    return names


# --------------------------------------------------------------------------- checks


def _check_config(cfg: AuditConfig) -> tuple[Thresholds, st.AuditSettings]:
    if cfg.size < 16:
        raise FundusError(f"--size {cfg.size}: the audit needs a working size of at least 16 px (default 64)")
    if cfg.chunk < 1 or cfg.max_holdout < 1 or cfg.encoder_steps < 0 or cfg.ratio_k < 1 or cfg.n_boot < 0 \
            or cfg.register_k < 1:
        raise FundusError("--chunk, --max-holdout, --ratio-k and --register-k must be positive; --encoder-steps and "
                          "--n-boot must not be negative")
    if cfg.max_shift is not None and not 0 <= cfg.max_shift < cfg.size // 2:
        raise FundusError(f"--max-shift {cfg.max_shift}: must be between 0 and {cfg.size // 2 - 1} px at the "
                          f"{cfg.size} px working size")
    for name in ("alpha", "memorization_p_fail", "warn_p"):
        if not 0.0 < getattr(cfg, name) < 1.0:
            raise FundusError(f"--{name.replace('_', '-')} must be between 0 and 1, got {getattr(cfg, name)}")
    thresholds = Thresholds(ratio=cfg.ratio, possible_copy_ratio=cfg.possible_copy_ratio, confirm_in=cfg.confirm_in,
                            phash_bits=cfg.phash_bits, z_fail=cfg.z_fail, memorization_p_fail=cfg.memorization_p_fail,
                            memorization_excess_fail=cfg.memorization_excess_fail,
                            membership_ci_fail=cfg.membership_ci_fail, warn_p=cfg.warn_p,
                            memorization_test=cfg.memorization_test)
    settings = st.AuditSettings(alpha=cfg.alpha, ratio_k=cfg.ratio_k, n_boot=cfg.n_boot, seed=cfg.seed)
    return thresholds, settings


def _check_inputs(cfg: AuditConfig, train: h5.DatasetReader, synth: h5.DatasetReader,
                  hold: h5.DatasetReader | None, notes: list[str]) -> None:
    if train.info.kind != "real":
        raise FundusError(f"{cfg.train} holds synthetic images (kind={train.info.kind}); --train must be the real "
                          "training set the generator learned from (data/train.h5 from `fundus ingest`)")
    if hold is not None and hold.info.kind != "real":
        raise FundusError(f"{cfg.holdout} holds synthetic images; --holdout must be real images the generator "
                          "never saw (data/holdout.h5 from `fundus ingest`)")
    if len(train) < 2:
        raise FundusError(f"{cfg.train} holds {len(train)} image(s); the audit needs at least 2 training images")
    if len(synth) == 0:
        raise FundusError(f"{cfg.synthetic} holds no images; make some with `fundus sample`")
    if hold is not None and len(hold) == 0:
        raise FundusError(f"{cfg.holdout} holds no images; give a holdout with images, or none (--holdout none) "
                          "to calibrate leave-one-out")
    if hold is not None and hold.info.fingerprint == train.info.fingerprint:
        raise FundusError(f"{cfg.holdout} has the same content as {cfg.train}; the holdout must be images the "
                          "generator never saw")
    if synth.info.kind != "synthetic":
        notes.append(f"{cfg.synthetic} is marked as real images (kind=real): audited as if synthetic")
    if synth.info.fingerprint == train.info.fingerprint:
        notes.append(f"{cfg.synthetic} has the same content as {cfg.train}: every image is a copy")
    made_from = synth.info.provenance.get("dataset_fingerprint")
    if isinstance(made_from, str) and made_from != train.info.fingerprint:
        notes.append(f"{cfg.synthetic} was sampled from a model trained on another dataset (fingerprint "
                     f"{made_from[:12]}...) than {cfg.train} ({train.info.fingerprint[:12]}...): check --train")
    for r in (train, synth, hold):
        if r is not None and r.info.image_size < cfg.size:
            notes.append(f"{r.path} stores {r.info.image_size} px images, upscaled to the {cfg.size} px working size")


# --------------------------------------------------------------------------- the audit


class _Rows:
    """``rows[a:b]`` -> read(a, b): lets train_encoder slice a dataset file like an array."""

    def __init__(self, read: Callable[[int, int], np.ndarray], n: int) -> None:
        self._read, self._n = read, n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, sl: slice) -> np.ndarray:
        start, stop, _ = sl.indices(self._n)
        return self._read(start, stop)


class _Spill:
    """float32 rows written once to a scratch file and read back by plain reads (not a memory
    map, whose touched pages would count as the process's memory)."""

    def __init__(self, path: Path, width: int, dtype: Any = np.float32) -> None:
        self.path, self.width, self.n, self.dtype = path, width, 0, np.dtype(dtype)
        self._file: Any = open(path, "wb")  # noqa: SIM115 - closed by finish()

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        assert rows.ndim == 2 and rows.shape[1] == self.width
        self._file.write(rows.tobytes())
        self.n += len(rows)

    def finish(self) -> None:
        self._file.close()

    def read(self, start: int, stop: int) -> np.ndarray:
        stop = min(stop, self.n)
        count = max(0, stop - start) * self.width
        rows = np.fromfile(self.path, dtype=self.dtype, count=count, offset=start * self.width * self.dtype.itemsize)
        return rows.reshape(-1, self.width)

    def take(self, rows: np.ndarray) -> np.ndarray:
        return np.stack([self.read(int(r), int(r) + 1)[0] for r in rows]) if len(rows) else \
            np.zeros((0, self.width), self.dtype)

    def chunks(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        for a in range(0, self.n, size):
            yield a, self.read(a, a + size)


@dataclass
class _Side:
    """The synthetic or holdout images in memory, prepared once for every embedding."""

    rows: np.ndarray  # rows of the file
    pixels: np.ndarray  # float32 (n, 3 * mask pixels): preprocess.prepare inside the common mask
    learned: Vectors | None
    phash: np.ndarray | None  # uint64 (n,), computed from the images (a file's own column is not trusted)
    phash_flipped: np.ndarray | None
    views: np.ndarray | None = None  # float32 (n, views, dims): shifted views in the projected learned embedding


def _unflatten(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked pixel rows back to prepared images (zeros outside the mask, as prepare leaves them)."""
    x = np.zeros((len(pixels), *mask.shape, 3), np.float32)
    x[:, mask] = pixels.reshape(len(pixels), -1, 3)
    return x


def _vectors(name: str, pixels: np.ndarray, mask: np.ndarray, learned: Vectors | None) -> Vectors:
    if name == "learned":
        assert learned is not None
        return learned
    x = _unflatten(pixels, mask)
    return pixel_embedding(x, mask) if name == "pixel" else tiled_embedding(x, mask)


def _read_side(reader: h5.DatasetReader, rows: np.ndarray, *, mask: np.ndarray, encoder: LearnedEncoder | None,
               chunk: int, device: Any, hashes: bool, what: str,
               views: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> _Side:
    pixels, learned, hs, hfs, vs = [], [], [], [], []
    with track(f"reading {what}", len(rows)) as advance:
        for a in range(0, len(reader), chunk):
            b = min(a + chunk, len(reader))
            sel = rows[(rows >= a) & (rows < b)] - a
            if len(sel) == 0:
                continue
            imgs, fov = reader.images(a, b)[sel], reader.fov_masks(a, b)[sel]
            x = pp.prepare(imgs, fov, mask=mask)
            pixels.append(x[:, mask].reshape(len(x), -1))
            if encoder is not None:
                learned.append(learned_embedding(encoder, imgs, fov, device=device))
            if hashes:
                hs.append(np.array([phash(i) for i in imgs], dtype=np.uint64))
                hfs.append(pp.flipped_phashes(imgs))
            if views is not None:
                vs.append(views(imgs, fov))
            advance(len(sel))
    return _Side(rows=rows, pixels=np.concatenate(pixels), learned=Vectors.concat(learned) if learned else None,
                 phash=np.concatenate(hs) if hashes else None, phash_flipped=np.concatenate(hfs) if hashes else None,
                 views=np.concatenate(vs) if views is not None else None)


@dataclass(frozen=True)
class _Views:
    """Shifted views of query images in the learned embedding, projected on its principal
    axes: the registered distance's candidates for copies moved too far for the embeddings'
    own searches (on phantoms the learned embedding ranked the source of an 8 px shifted
    copy first for 9 % of them, one of its views for all)."""

    encoder: LearnedEncoder
    offsets: list[tuple[int, int]]  # px at the working size
    projection: rg.Projection
    working_size: int
    device: Any

    def __call__(self, images: np.ndarray, fov: np.ndarray) -> np.ndarray:
        """uint8 images (n, S, S, 3) and their masks -> float32 (n, views, dims)."""
        s = images.shape[1]
        out = []
        for dy, dx in self.offsets:
            moved = rg.shift_images(images, round(dy * s / self.working_size), round(dx * s / self.working_size))
            v = learned_embedding(self.encoder, moved, fov, flips=False, device=self.device)
            out.append(self.projection(v.parts[0]))
        return np.stack(out, 1)


def _view_embedder(cfg: AuditConfig, names: tuple[str, ...], encoder: LearnedEncoder | None, lrn: _Spill | None,
                   t_dups: np.ndarray, n_t: int, max_shift: int, device: Any) -> _Views | None:
    offsets = rg.view_offsets(max_shift)
    if "registered" not in names or encoder is None or lrn is None or not offsets:
        return None
    rows = st.sample_train(n_t, _VIEW_FIT, dup_groups=t_dups, seed=cfg.seed, stream=_SEED_VIEWS)
    projection = rg.fit_projection(lrn.take(rows)[:, :encoder.model.feature_dim], dims=_VIEW_DIMS)
    return _Views(encoder=encoder, offsets=offsets, projection=projection, working_size=cfg.size, device=device)


def _view_candidates(views: _Views, q_views: np.ndarray, lrn: _Spill, *, chunk: int, dedupe: np.ndarray,
                     exclude: tuple[np.ndarray, np.ndarray] | None, device: Any) -> np.ndarray:
    """Training rows nearest to each view of each query (n, views * _VIEW_K), the mirrored
    training images included (a view near a mirrored training image is a mirrored copy)."""
    n, n_views, dims = q_views.shape
    flat = np.ascontiguousarray(q_views.reshape(n * n_views, dims))
    d = lrn.width // 2

    def chunks() -> Iterator[tuple[int, Vectors]]:
        for a, rows in lrn.chunks(chunk):
            yield a, Vectors(parts=(views.projection(rows[:, :d]), views.projection(rows[:, d:])))

    excl = None if exclude is None else (np.repeat(exclude[0], n_views, axis=0), exclude[1])
    near = st.nearest(Vectors(parts=(flat, flat)), chunks, k=_VIEW_K, exclude=excl, dedupe=dedupe, device=str(device))
    return near.index.reshape(n, n_views * _VIEW_K)


def _audit_registered(cfg: AuditConfig, results: list[st.EmbeddingAudit], *, settings: st.AuditSettings,
                      mask: np.ndarray, max_shift: int, s_side: _Side, h_side: _Side | None,
                      train: h5.DatasetReader, pix: _Spill, own: _Spill | None, lrn: _Spill | None,
                      views: _Views | None, groups: np.ndarray, chunk: int, device: Any,
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
        cal_side = _read_side(train, cal_rows, mask=mask, encoder=None, chunk=chunk, device=device, hashes=False,
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
    near = st.Nearest(distance=d, index=i, flipped=f, part=np.zeros(i.shape, np.int32), shift=sh)
    return st.audit_nearest("registered", synthetic=near.take(slice(0, n_s)), calibration=near.take(slice(n_s, None)),
                            calibration_kind="leave-one-out" if loo else "holdout", calibration_rows=cal_rows,
                            settings=settings)


def _confirm_registered(r: st.EmbeddingAudit, synth: h5.DatasetReader, train: h5.DatasetReader, th: Thresholds,
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


def _run(cfg: AuditConfig, names: tuple[str, ...], thresholds: Thresholds, settings: st.AuditSettings,
         device: Any, train: h5.DatasetReader, synth: h5.DatasetReader, hold: h5.DatasetReader | None,
         scratch: Path, notes: list[str]) -> AuditResult:
    out = Path(cfg.out)
    chunk = cfg.chunk
    n_t = len(train)
    t_sources, t_patients = train.sources(), train.patients()
    t_dups = train.dup_groups().astype(np.int64)
    t_hash = train.phashes()

    mask = pp.common_mask((train.fov_masks(a, min(a + chunk, n_t)) for a in range(0, n_t, chunk)), size=cfg.size)

    encoder = None
    if "learned" in names:
        with track("training the learned embedding", None, unit="run"):
            encoder = train_encoder(_Rows(train.images, n_t), _Rows(train.fov_masks, n_t), mask=mask,
                                    config=EncoderConfig(seed=cfg.seed, steps=cfg.encoder_steps), device=device,
                                    chunk=chunk)

    # Training images: prepared once, spilled to scratch, streamed from there on every pass.
    pix = _Spill(scratch / "train-pixels.f32", 3 * int(mask.sum()))
    lrn = _Spill(scratch / "train-learned.f32", 2 * encoder.model.feature_dim) if encoder is not None else None
    # The registered distance leaves out the parts of a training image outside its own field of view.
    own = _Spill(scratch / "train-fov.u8", int(mask.sum()), np.uint8) if "registered" in names else None
    with track("embedding training images", n_t) as advance:
        for a in range(0, n_t, chunk):
            b = min(a + chunk, n_t)
            imgs, fov = train.images(a, b), train.fov_masks(a, b)
            x = pp.prepare(imgs, fov, mask=mask)
            pix.append(x[:, mask].reshape(len(x), -1))
            if lrn is not None:
                v = learned_embedding(encoder, imgs, fov, device=device)
                lrn.append(np.concatenate([v.parts[0], v.flipped[0]], 1))
            if own is not None:
                own.append(pp.resize_masks(fov, cfg.size)[:, mask])
            advance(b - a)
    for spill in (pix, lrn, own):
        if spill is not None:
            spill.finish()
    max_shift = cfg.size // 8 if cfg.max_shift is None else cfg.max_shift
    views = _view_embedder(cfg, names, encoder, lrn, t_dups, n_t, max_shift, device)

    def train_chunks(name: str) -> st.Chunks:
        def gen() -> Iterator[tuple[int, Vectors]]:
            if name == "learned":
                assert lrn is not None
                for a, rows in lrn.chunks(chunk):
                    d = rows.shape[1] // 2
                    yield a, Vectors(parts=(np.ascontiguousarray(rows[:, :d]),),
                                     flipped=(np.ascontiguousarray(rows[:, d:]),), names=("learned",))
            else:
                for a, rows in pix.chunks(chunk):
                    yield a, _vectors(name, rows, mask, None)
        return gen

    # Holdout hygiene: duplicates of training images and training patients make chance look closer.
    overlap = None
    h_side = None
    if hold is not None:
        h_sources, h_patients = hold.sources(), hold.patients()
        h_flipped = np.concatenate([pp.flipped_phashes(hold.images(a, a + chunk)) for a in range(0, len(hold), chunk)])

        def same_photograph(h: int, t: int, mirrored: bool) -> bool:
            img = hold.images(h, h + 1)[0]
            img = np.ascontiguousarray(img[:, ::-1]) if mirrored else img
            return float((detail_signature(img) * detail_signature(train.images(t, t + 1)[0])).mean()) \
                >= DUP_CORRELATION

        overlap = st.holdout_overlap(hold.phashes(), t_hash, holdout_phash_flipped=h_flipped, confirm=same_photograph,
                                     holdout_patients=h_patients, train_patients=t_patients, max_bits=cfg.phash_bits)
        if overlap.unconfirmed:
            notes.append(f"holdout: {overlap.unconfirmed} image(s) with a perceptual hash within {cfg.phash_bits} bits "
                         "of a training image's were kept: their fine detail differs (look-alikes, not duplicates)")
        keep = np.nonzero(overlap.keep)[0]
        if len(keep) == 0:
            raise FundusError(f"every image of {cfg.holdout} duplicates a training image or belongs to a training "
                              "patient; give a holdout split by patient (`fundus ingest` makes one), or none")
        if len(keep) > cfg.max_holdout:
            rng = np.random.default_rng([cfg.seed, _SEED_HOLDOUT])
            keep = np.sort(rng.choice(keep, cfg.max_holdout, replace=False))
            notes.append(f"holdout: {cfg.max_holdout} of {int(overlap.keep.sum())} usable images used for the "
                         "calibration (seeded subsample; --max-holdout)")
        h_side = _read_side(hold, keep, mask=mask, encoder=encoder, chunk=chunk, device=device, hashes=False,
                            what="holdout", views=views)
    s_side = _read_side(synth, np.arange(len(synth)), mask=mask, encoder=encoder, chunk=chunk, device=device,
                        hashes=True, what="synthetic images", views=views)

    primary = "pixel" if "pixel" in names else names[0]
    groups = st.train_groups(t_dups, t_patients, n_t)
    results: list[st.EmbeddingAudit] = []
    reference: list[tuple[int, int, bool, float]] = []  # (query row, training row, flipped, distance)
    with track("auditing", len(names), unit="embedding") as advance:
        for name in names:
            if name == "registered":
                results.append(_audit_registered(
                    cfg, results, settings=settings, mask=mask, max_shift=max_shift, s_side=s_side, h_side=h_side,
                    train=train, pix=pix, own=own, lrn=lrn, views=views, groups=groups, chunk=chunk,
                    device=device, notes=notes))
                advance()
                continue
            s_vec = _vectors(name, s_side.pixels, mask, s_side.learned)
            h_vec = None if h_side is None else _vectors(name, h_side.pixels, mask, h_side.learned)
            r = st.audit_embedding(name, train=train_chunks(name), synthetic=s_vec, holdout=h_vec, n_train=n_t,
                                   dup_groups=t_dups, patients=t_patients, settings=settings, device=str(device))
            results.append(r)
            if name == primary:
                reference = _reference_pairs(r, h_vec, train_chunks(name), groups, device)
            del s_vec, h_vec
            advance()

    s_bits, s_index, s_flipped = pp.phash_nearest(s_side.phash, t_hash, flipped=s_side.phash_flipped)
    s_bits, unconfirmed_hashes = _confirm_hash_matches(s_bits, s_index, s_flipped, synth, train, cfg.phash_bits)
    if unconfirmed_hashes:
        notes.append(f"{unconfirmed_hashes} perceptual-hash matches within {cfg.phash_bits} bits were not the same "
                     "photograph on a closer look (fine-detail correlation below "
                     f"{DUP_CORRELATION}): not counted as copies")
    registered_match = None
    if "registered" in names:
        registered_match = _confirm_registered(results[-1], synth, train, thresholds, cfg.size)
    classes, class_names = _class_tests(results, train, synth, hold, h_side, settings, thresholds)
    if class_names is None and len(synth.info.class_names) >= 2:
        notes.append("per-class tests skipped: the training, holdout and synthetic sets do not share the same "
                     "class names, or some synthetic images are unlabelled")
    decision = decide(results, phash_bits=s_bits, phash_index=s_index, phash_flipped=s_flipped,
                      registered_match=registered_match, accept_leave_one_out=cfg.accept_no_holdout,
                      thresholds=thresholds, min_cell_synthetic=settings.min_cell_synthetic, classes=classes)

    s_sources = synth.sources()
    summary = explain(decision, results, train_names=t_sources)
    checkpoint = training_length.from_provenance(synth.info.provenance)
    if checkpoint["note"]:
        notes.append(f"{cfg.synthetic}: {checkpoint['note']}")
    report_path = out / "report.json"
    # An old report beside new figures would describe another audit; report.json is written last,
    # so after a crash there is no report rather than a stale one.
    report_path.unlink(missing_ok=True)
    flagged_path = out / "flagged.csv"
    _write_flagged(flagged_path, decision, s_sources, t_sources, t_patients)

    from fundus_cli.privacy.figures import DistancePanel, distance_histograms, nearest_pairs

    by_name = {r.name: r for r in results}
    s_pairs = _synthetic_pairs(decision, by_name[primary], thresholds, mask, s_side, synth, train, pix, t_sources)
    calibrated_on = "holdout" if hold is not None else "leave-one-out"
    cal_name = "holdout" if hold is not None else "training (leave-one-out)"
    r_pairs = _reference_display(reference, mask, hold if hold is not None else train, h_side, train, pix,
                                 t_sources, primary)
    figures = [
        nearest_pairs(s_pairs, r_pairs, out / "nearest-pairs.png",
                      reference_name="holdout (reference)" if hold is not None else "training, left out (reference)",
                      title=f"closest synthetic/training pairs (flagged first; {primary} distance) beside the "
                            f"closest {'holdout' if hold is not None else 'leave-one-out training'}/training pairs "
                            f"- audit: {decision.status}"),
        distance_histograms([DistancePanel(name=r.name, synthetic=r.synthetic.dcr, calibration=r.calibration_dcr,
                                           calibration_name=cal_name,
                                           tau=r.memorization.tau, alpha=r.memorization.alpha,
                                           subtitle=f"Z_U = {r.data_copying.z:.2f}, m = {r.memorization.rate:.3f}, "
                                                    f"flagged {int(r.flagged(ratio=thresholds.ratio).sum())}")
                             for r in results], out / "distances.png"),
    ]

    excluded = _excluded_holdout(overlap, h_sources, h_patients, t_sources) if overlap is not None else []
    embeddings = {r.name: _canonical(r.summary() | {
        "n_flagged": int(r.flagged(ratio=thresholds.ratio).sum()),
        "dcr_synthetic_min": float(np.min(r.synthetic.dcr)),
        "ratio_synthetic_min": float(np.nanmin(r.ratio)) if np.isfinite(r.ratio).any() else None,
    }) for r in results}
    report = AUDIT_REPORT.stamp({
        "decision": {"status": decision.status, "exit_code": decision.exit_code, "summary": summary,
                     "reasons": list(decision.reasons), "warnings": list(decision.warnings),
                     "inconclusive": list(decision.inconclusive), "tests_run": list(decision.tests_run),
                     "min_holdout": decision.min_holdout, "min_synthetic": decision.min_synthetic,
                     "n_flagged": len(decision.flags), "confirmed_copies": list(decision.confirmed)},
        "checkpoint": checkpoint,
        "inputs": {
            "train": _input(train, cfg.train),
            "holdout": None if hold is None else _input(hold, cfg.holdout) | {
                "used": int(len(h_side.rows)), "excluded": len(excluded)},
            "synthetic": _input(synth, cfg.synthetic),
        },
        "calibration": calibrated_on,
        "holdout_excluded": excluded,
        "settings": {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()
                       if k not in ("out", "force", "device")},
            "device": str(device.type),
            "embeddings": list(names),
            "working_size": cfg.size,
            "mask": {"pixels": int(mask.sum()), "coverage": pp.DEFAULT_COVERAGE, "shrink": pp.DEFAULT_SHRINK},
            "statistics": settings.__dict__,
            "registration": None if "registered" not in names else {
                "max_shift": max_shift, "candidates_per_source": cfg.register_k,
                "view_shifts": [list(v) for v in rg.view_offsets(max_shift)] if views is not None else [],
                "view_candidates": _VIEW_K if views is not None else 0, "view_dims": _VIEW_DIMS,
                "confirm_detail_correlation": DUP_CORRELATION},
            "encoder": None if encoder is None else encoder.config.to_dict(),
        },
        "thresholds": thresholds.to_dict(),
        "learned_encoder": None if encoder is None else {
            "weights_sha256": encoder.weights_sha256, "feature_dim": encoder.model.feature_dim,
            "steps": len(encoder.losses), "loss_first": encoder.losses[0] if encoder.losses else None,
            "loss_last": encoder.losses[-1] if encoder.losses else None},
        "embeddings": embeddings,
        "per_class": None if class_names is None else _canonical({
            "classes": list(class_names),
            "multiplicity": f"Holm over {len(decision.class_adjusted)} per-class tests",
            "not_tested": list(decision.classes_not_tested),
            "tests": per_class.summary(classes, decision.class_adjusted)}),
        "perceptual_hash": {"min_bits": int(s_bits.min()), "n_within_threshold": int((s_bits <= cfg.phash_bits).sum())},
        "notes": notes,
        "artefacts": ["report.json", flagged_path.name, *[f.name for f in figures]],
    })
    write_text_atomic(report_path, dumps_report(report))
    return AuditResult(
        decision=decision.status, exit_code=decision.exit_code, out=out, report=report_path, flagged_csv=flagged_path,
        figures=figures, reasons=list(decision.reasons), warnings=list(decision.warnings), calibration=calibrated_on,
        n_train=n_t, n_synthetic=len(synth), n_holdout_used=0 if h_side is None else len(h_side.rows),
        n_holdout_excluded=len(excluded), n_flagged=len(decision.flags), confirmed=list(decision.confirmed),
        embeddings=embeddings, encoder_sha256=None if encoder is None else encoder.weights_sha256, notes=notes,
        inputs=[Path(cfg.train), Path(cfg.synthetic)] + ([Path(cfg.holdout)] if hold is not None else []),
        summary=summary, inconclusive=list(decision.inconclusive), tests_run=list(decision.tests_run),
        min_holdout=decision.min_holdout, checkpoint_note=checkpoint.get("note"))


def _class_tests(results: list[st.EmbeddingAudit], train: h5.DatasetReader, synth: h5.DatasetReader,
                 hold: h5.DatasetReader | None, h_side: _Side | None, settings: st.AuditSettings,
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


def _input(reader: h5.DatasetReader, path: Path | None) -> dict[str, Any]:
    i = reader.info
    return {"path": str(path), "fingerprint": i.fingerprint, "count": i.count, "image_size": i.image_size,
            "kind": i.kind, "split": i.split}


def _excluded_holdout(overlap: st.HoldoutOverlap, h_sources: list[str], h_patients: list[str],
                      t_sources: list[str]) -> list[dict[str, Any]]:
    rows = []
    for i in np.nonzero(~overlap.keep)[0]:
        dup = int(overlap.duplicate_of[i])
        mirrored = dup >= 0 and overlap.duplicate_flipped is not None and bool(overlap.duplicate_flipped[i])
        why = ([f"duplicate of a training image{' (mirrored)' if mirrored else ''}"] if dup >= 0 else []) + \
              (["patient also in training"] if overlap.shared_patient[i] else [])
        rows.append({"holdout_index": int(i), "source": h_sources[i], "patient": h_patients[i],
                     "reason": "; ".join(why),
                     "train_index": dup if dup >= 0 else None, "train_source": t_sources[dup] if dup >= 0 else None,
                     "phash_bits": int(overlap.duplicate_bits[i]) if dup >= 0 else None,
                     "mirrored": mirrored if dup >= 0 else None})
    return rows


# --------------------------------------------------------------------------- flagged.csv


def _fmt(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    if isinstance(x, (float, np.floating)):
        f = _round(float(x))
        return "" if f is None else repr(f)
    return str(x)


def _write_flagged(path: Path, decision: Decision, s_sources: list[str], t_sources: list[str],
                   t_patients: list[str]) -> None:
    rows: list[list[str]] = [list(FLAGGED_COLUMNS)]
    for f in decision.flags:
        row = f.row() | {"synthetic_source": s_sources[f.synthetic], "train_source": t_sources[f.train_index],
                         "train_patient": t_patients[f.train_index]}
        rows.append([_fmt(row[c]) for c in FLAGGED_COLUMNS])
    write_csv_atomic(path, rows)  # neutralises spreadsheet formulas in names and patient ids


# --------------------------------------------------------------------------- report.json


def _round(x: float) -> float | None:
    if not math.isfinite(x):
        return None
    return float(f"{x:.{SIGNIFICANT}g}") + 0.0  # + 0.0 turns -0.0 into 0.0


def _canonical(x: Any) -> Any:
    """JSON-able, with every float rounded the same way (NaN and infinities become null)."""
    if isinstance(x, dict):
        return {str(k): _canonical(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_canonical(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return _round(float(x))
    if x is None or isinstance(x, str):
        return x
    raise TypeError(f"cannot put {type(x).__name__} into the report")


def dumps_report(report: dict[str, Any]) -> str:
    """The canonical text of a report: sorted keys, rounded floats, no NaN."""
    return json.dumps(_canonical(report), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


# --------------------------------------------------------------------------- figures' data


def _reference_pairs(r: st.EmbeddingAudit, h_vec: Vectors | None, train: st.Chunks, groups: np.ndarray,
                     device: Any) -> list[tuple[int, int, bool, float]]:
    """The calibration images closest to the training set, with their nearest training image:
    holdout rows (of the used holdout), or training rows (leave-one-out)."""
    order = np.argsort(r.calibration_dcr, kind="stable")[:_PAIRS]
    if h_vec is not None:
        near = st.nearest(h_vec.take(order), train, k=1, device=str(device))
        queries = order
    else:
        assert r.calibration_rows is not None
        rows = r.calibration_rows[order]
        sorted_rows = np.sort(rows)
        q = st.gather(train, sorted_rows).take(np.searchsorted(sorted_rows, rows))
        near = st.nearest(q, train, k=1, exclude=(groups[rows], groups), device=str(device))
        queries = rows
    return [(int(qr), int(near.index[i, 0]), bool(near.flipped[i, 0]), float(near.dcr[i]))
            for i, qr in enumerate(queries) if near.index[i, 0] >= 0]


def _diff(query: np.ndarray, train: np.ndarray, mask: np.ndarray, flipped: bool,
          shift: tuple[int, int] | None = None) -> np.ndarray:
    q = _unflatten(query[None], mask)
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
    d = np.abs(q[0] - _unflatten(train[None], mask)[0]).mean(-1)
    return np.where(valid, d, np.nan)


def _short(text: str, n: int = 26) -> str:
    return text if len(text) <= n else "..." + text[-(n - 3):]


def _synthetic_pairs(decision: Decision, r: st.EmbeddingAudit, th: Thresholds, mask: np.ndarray, side: _Side,
                     synth: h5.DatasetReader, train: h5.DatasetReader, pix: _Spill, t_sources: list[str]) -> list:
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


def _reference_display(reference: list[tuple[int, int, bool, float]], mask: np.ndarray,
                       ref_reader: h5.DatasetReader, side: _Side | None, train: h5.DatasetReader,
                       pix: _Spill, t_sources: list[str], emb: str) -> list:
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
