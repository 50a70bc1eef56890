"""The audit's config, result and the checks of both before any work starts."""

from __future__ import annotations


import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from fundus_cli.data import h5
from fundus_cli.errors import FundusError
from fundus_cli.privacy import preprocess as pp
from fundus_cli.privacy import stats as st
from fundus_cli.privacy.decision import Thresholds
from fundus_cli.privacy.learned import EncoderConfig
from fundus_cli.progress import line


EMBEDDINGS = ("pixel", "tiled", "learned", "registered")  # in the order they are computed and reported


SIGNIFICANT = 6  # digits kept of every float in report.json and flagged.csv


FLAGGED_COLUMNS = ("synthetic_index", "synthetic_source", "train_index", "train_source", "train_patient",
                   "embedding", "distance", "flipped", "ratio", "p_value", "confirmed", "flagged_in", "phash_bits",
                   "shift_dy", "shift_dx", "registered_match")


SEED_HOLDOUT = 21  # sub-seed of the holdout subsample (beyond max_holdout)


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


def check_config(cfg: AuditConfig) -> tuple[Thresholds, st.AuditSettings]:
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


def check_inputs(cfg: AuditConfig, train: h5.DatasetReader, synth: h5.DatasetReader,
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


@dataclass(frozen=True)
class Audit:
    """What every step of one audit and its report read: its settings, device and open files (and the
    notes the steps add to)."""

    cfg: AuditConfig
    names: tuple[str, ...]  # embeddings, in EMBEDDINGS order
    thresholds: Thresholds
    settings: st.AuditSettings
    device: Any
    train: h5.DatasetReader
    synth: h5.DatasetReader
    hold: h5.DatasetReader | None
    notes: list[str]
    started: float = field(default_factory=time.perf_counter)

    def stage(self, text: str) -> None:
        """One progress line on stderr per stage, with the time so far (also in logs: not a bar)."""
        line(f"audit-privacy: {text} ({time.perf_counter() - self.started:.0f} s)")
