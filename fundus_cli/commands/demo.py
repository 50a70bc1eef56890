"""`fundus demo`: the whole pipeline on built-in phantom photographs, inside one folder.

phantoms -> ingest -> train a conditional GAN (and, with `archs`, a VAE; `--preset demo`) ->
sample from each -> evaluate each -> audit each for privacy -> report.html. Each step calls the module of one
command (`fundus_cli.commands.*`), in this process, and first tells `log` the equivalent shell command, so that
any step can be rerun or changed by hand in the demo folder.

Running it again continues: a step whose outputs exist and are newer than its inputs is
skipped (the way `make` decides), an interrupted training run resumes from its checkpoint,
and a stale output (older than an input that was remade) is made again. `demo.json` records
the settings, every step with its command, status and seconds, and the verdicts; a folder
holding a demo with other settings, or other files, is refused unless `force`, which redoes
every step.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fundus_cli.errors import FundusError
from fundus_cli.schemas import audit_report, demo_record, read_json
from fundus_cli.schemas.demo_record import DEMO_RECORD

if TYPE_CHECKING:
    from fundus_cli.commands.report import ReportResult

SUMMARY = "demo.json"
ARCHS = ("vae", "gan")
# The GAN alone by default: with the VAE as well the demo took 34 minutes on an idle 2-core
# machine (VAE training 607 s, GAN 544 s, each evaluation ~320 s, each audit ~100 s), and the
# VAE's demo samples are blotchy discs without vessels (its audit PASSes since the local latent;
# before it, it FAILed them as blurred averages of training images); `archs` adds it back.
DEFAULT_ARCHS = ("gan",)
MIN_PHOTOS = 60  # below this the holdout (a fifth) is too small for evaluate's PRDC intervals
# --quick: a smoke test of every step in about a minute; the models learn nothing useful.
# One ingest worker: starting a process pool costs more than decoding 60 small JPEGs.
QUICK = {"n_photos": MIN_PHOTOS, "size": 32, "workers": 1, "steps": 4, "batch": 8, "width": 8, "n_sample": 48,
         "n_boot": 10, "usefulness_steps": 20, "usefulness_seeds": 1, "encoder_steps": 5}
# None: the command's own default (for training: the demo preset's).
# One usefulness seed instead of evaluate's three: the 15 classifiers were ~290 of an evaluation's
# ~320 s (the paired gains' intervals then hold the test images' variation only, not the seeds').
FULL = {"n_photos": 200, "size": 64, "workers": None, "steps": None, "batch": None, "width": None, "n_sample": 200,
        "n_boot": None, "usefulness_steps": None, "usefulness_seeds": 1, "encoder_steps": None}


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("demo")  # folder for everything the demo makes
    n_photos: int | None = None  # phantom photographs (default 200; 60 with quick)
    size: int | None = None  # image size for ingest and training (default 64; 32 with quick)
    quick: bool = False  # tiny settings: every step in about a minute, for tests and a first look
    archs: tuple[str, ...] = DEFAULT_ARCHS  # generators to train and judge: gan, vae or both
    seed: int = 0  # phantoms, split, training, sampling, evaluation and audit seed
    device: str = "auto"  # auto | cpu | cuda, for training, sampling and the audit
    force: bool = False  # redo every step (and accept a folder with other files or settings)


@dataclass
class DemoResult:
    out: Path
    report: Path  # out/report.html
    summary: Path  # out/demo.json
    verdicts: dict[str, str]  # arch -> privacy verdict
    steps: list[dict[str, Any]]  # name, command, status (ran | resumed | skipped), seconds
    seconds: float


@dataclass
class _Step:
    name: str
    argv: list[str]  # the command after `fundus`, run in the demo folder
    inputs: list[str]  # files (relative to the demo folder) the step reads
    outputs: list[str]  # files it writes; all present and newer than the inputs = done
    run: Callable[[bool], Any]  # run(force) -> the api function's result
    resumable: bool = False  # training: a checkpoint short of its steps is resumed, not redone


@dataclass
class _State:
    cfg: DemoConfig
    settings: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    verdicts: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)


def settings_of(cfg: DemoConfig) -> dict[str, Any]:
    """The resolved settings that define the demo's files (device and force do not)."""
    base = QUICK if cfg.quick else FULL
    n_photos = cfg.n_photos if cfg.n_photos is not None else base["n_photos"]
    size = cfg.size if cfg.size is not None else base["size"]
    if n_photos < MIN_PHOTOS:
        raise FundusError(f"--n-photos {n_photos}: the demo needs at least {MIN_PHOTOS} photographs (a fifth are "
                          "held out, and evaluate needs at least 12 holdout images).")
    if size not in (32, 64, 128, 256):
        raise FundusError(f"--size {size}: the models train at 32, 64, 128 or 256 px.")
    return base | {"n_photos": n_photos, "size": size, "quick": cfg.quick, "seed": cfg.seed,
                   "archs": list(_archs(cfg.archs))}


def _archs(archs: tuple[str, ...]) -> tuple[str, ...]:
    """The generators named in `archs`, in the demo's order (VAE first)."""
    names = [a.strip().lower() for a in archs if a.strip()]
    unknown = [a for a in names if a not in ARCHS]
    if unknown or not names:
        raise FundusError(f"--archs {','.join(names) or '(none)'}: name one or both of {', '.join(ARCHS)}, "
                          "comma-separated (e.g. --archs vae,gan).")
    return tuple(a for a in ARCHS if a in names)


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _done(out: Path, step: _Step) -> bool:
    outs = [_mtime(out / p) for p in step.outputs]
    if any(t is None for t in outs):
        return False
    ins = [t for p in step.inputs if (t := _mtime(out / p)) is not None]
    return not ins or min(outs) >= max(ins)  # type: ignore[type-var]


def _training_left(run_dir: Path) -> bool:
    """Whether the run's checkpoint is short of its planned steps (an interrupted run)."""
    import json

    from fundus_cli.training.checkpoint import list_numbered

    try:
        planned = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["train_config"]["steps"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    numbered = list_numbered(run_dir)
    return bool(numbered) and int(numbered[-1].stem.split("-")[1]) < int(planned)


def _check_folder(cfg: DemoConfig, settings: dict[str, Any]) -> None:
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise FundusError(f"{out} is a file; give a folder for the demo.")
    if not out.is_dir() or not any(out.iterdir()) or cfg.force:
        return
    summary = out / SUMMARY
    if not summary.is_file():
        raise FundusError(f"{out} is not empty and holds no {SUMMARY}, so it is not a demo folder. Choose a new or "
                          "empty folder, or add --force to write the demo into it.")
    try:
        record = read_json(summary)
        before = demo_record.settings(record) or ({} if isinstance(record, dict) else None)
    except (OSError, FundusError):
        before = None
    if before != settings:
        diff = ", ".join(f"{k}: {before.get(k)!r} -> {v!r}" for k, v in settings.items()
                         if isinstance(before, dict) and before.get(k) != v) or f"unreadable {summary}"
        raise FundusError(f"{out} holds a demo made with other settings ({diff}). Run with the same options to "
                          "continue it, add --force to redo every step with the new ones, or choose another folder.")


TRAIN_H5, HOLDOUT_H5 = "data/train.h5", "data/holdout.h5"

# The other commands' modules are imported inside the functions below (not at the top) so that
# `fundus demo --help` stays light, and called through their module so that a test can replace one.


def _steps(cfg: DemoConfig, s: dict[str, Any], log: Callable[[str], None], state: _State) -> list[_Step]:
    """Every step of the demo, in order, with its command line, inputs, outputs and api call."""
    dev = [] if cfg.device == "auto" else ["--device", cfg.device]
    return [*_data_steps(cfg, s), *_train_steps(cfg, s, log, dev), *_sample_steps(cfg, s, dev),
            *_evaluate_steps(cfg, s), *_audit_steps(cfg, s, state, dev)]


def _data_steps(cfg: DemoConfig, s: dict[str, Any]) -> list[_Step]:
    from fundus_cli.commands import ingest as ingest_cmd
    from fundus_cli.commands import phantoms as phantoms_cmd

    out, seed = Path(cfg.out), cfg.seed
    return [
        _Step("phantoms", ["phantoms", "raw", "--n", str(s["n_photos"]), "--seed", str(seed)], [], ["raw/labels.csv"],
              lambda force: phantoms_cmd.make_phantoms(out / "raw", n=s["n_photos"], seed=seed, overwrite=force)),
        _Step("ingest", ["ingest", "raw", "--size", str(s["size"]), "--seed", str(seed),
                         *([] if s["workers"] is None else ["--workers", str(s["workers"])])], ["raw/labels.csv"],
              [TRAIN_H5, HOLDOUT_H5, "data/ingest-report.json"],
              lambda force: ingest_cmd.ingest(ingest_cmd.IngestConfig(
                  raw=out / "raw", out=out / "data", size=s["size"], seed=seed, workers=s["workers"] or 0,
                  force=force))),
    ]


def _train_steps(cfg: DemoConfig, s: dict[str, Any], log: Callable[[str], None], dev: list[str]) -> list[_Step]:
    from fundus_cli.commands import train as train_cmd

    out, seed = Path(cfg.out), cfg.seed
    extra: list[str] = []
    for flag, key in (("--steps", "steps"), ("--batch", "batch"), ("--width", "width")):
        if s[key] is not None:
            extra += [flag, str(s[key])]
    steps = []
    for arch in s["archs"]:
        def train(force: bool, arch: str = arch) -> Any:
            resume = not force and _training_left(out / "runs" / arch)
            return train_cmd.train(train_cmd.TrainConfig(
                data=out / TRAIN_H5, arch=arch, out=out / "runs" / arch, preset="demo", size=s["size"],
                steps=s["steps"], batch=s["batch"], width=s["width"], seed=seed, device=cfg.device, conditional=True,
                resume=resume, force=force), log=log)

        steps.append(_Step(f"train {arch}", ["train", "--arch", arch, "--preset", "demo", "--conditional", "--size",
                                             str(s["size"]), *extra, "--seed", str(seed), *dev],
                           [TRAIN_H5], [f"runs/{arch}/checkpoint.pt"], train, resumable=True))
    return steps


def _sample_steps(cfg: DemoConfig, s: dict[str, Any], dev: list[str]) -> list[_Step]:
    from fundus_cli.commands import sample as sample_cmd

    out, seed = Path(cfg.out), cfg.seed
    steps = []
    for arch in s["archs"]:
        syn = f"data/synthetic-{arch}.h5"
        steps.append(_Step(
            f"sample {arch}", ["sample", "--run", f"runs/{arch}", "--n", str(s["n_sample"]), "--out", syn,
                               "--seed", str(seed), *dev],
            [f"runs/{arch}/checkpoint.pt"], [syn],
            lambda force, arch=arch, syn=syn: sample_cmd.sample(sample_cmd.SampleConfig(
                run=out / "runs" / arch, n=s["n_sample"], out=out / syn, seed=seed, device=cfg.device, force=force))))
    return steps


def _evaluate_steps(cfg: DemoConfig, s: dict[str, Any]) -> list[_Step]:
    from fundus_cli.commands import evaluate as evaluate_cmd

    out, seed = Path(cfg.out), cfg.seed
    steps = []
    for arch in s["archs"]:
        syn = f"data/synthetic-{arch}.h5"
        rep = f"reports/evaluate-{arch}"
        opts = {"n_boot": s["n_boot"], "usefulness_steps": s["usefulness_steps"],
                "usefulness_seeds": s["usefulness_seeds"]}
        argv = ["evaluate", "--synthetic", syn, "--out", rep, "--seed", str(seed)]
        for k, v in opts.items():
            argv += [] if v is None else [f"--{k.replace('_', '-')}", str(v)]
        steps.append(_Step(
            f"evaluate {arch}", argv, [HOLDOUT_H5, syn, TRAIN_H5], [f"{rep}/report.json"],
            lambda force, syn=syn, rep=rep, opts=opts: evaluate_cmd.evaluate(evaluate_cmd.EvaluateConfig(
                real=out / HOLDOUT_H5, synthetic=out / syn, train=out / TRAIN_H5, out=out / rep, seed=seed,
                force=force, **{k: v for k, v in opts.items() if v is not None}))))
    return steps


def _audit_steps(cfg: DemoConfig, s: dict[str, Any], state: _State, dev: list[str]) -> list[_Step]:
    from fundus_cli.commands import audit as audit_cmd

    out, seed = Path(cfg.out), cfg.seed
    steps = []
    for arch in s["archs"]:
        syn = f"data/synthetic-{arch}.h5"
        rep = f"reports/audit-privacy-{arch}"
        enc = [] if s["encoder_steps"] is None else ["--encoder-steps", str(s["encoder_steps"])]

        def audit(force: bool, arch: str = arch, syn: str = syn, rep: str = rep) -> Any:
            extra_cfg = {} if s["encoder_steps"] is None else {"encoder_steps": s["encoder_steps"]}
            r = audit_cmd.audit_privacy(audit_cmd.AuditConfig(
                train=out / TRAIN_H5, holdout=out / HOLDOUT_H5, synthetic=out / syn, out=out / rep, seed=seed,
                device=cfg.device, force=force, **extra_cfg))
            state.verdicts[arch] = r.decision
            return r

        steps.append(_Step(f"audit-privacy {arch}", ["audit-privacy", "--synthetic", syn, "--out", rep, "--seed",
                                                     str(seed), *enc, *dev],
                           [TRAIN_H5, HOLDOUT_H5, syn], [f"{rep}/report.json"], audit))
    return steps


def _write_summary(state: _State, status: str) -> Path:
    out = Path(state.cfg.out)
    path = out / SUMMARY
    DEMO_RECORD.write(path, {
        "status": status,
        "settings": state.settings, "device": state.cfg.device, "steps": state.steps,
        "seconds": round(time.perf_counter() - state.started, 3), "verdicts": state.verdicts,
        "report": "report.html"})
    return path


def _run_step(step: _Step, state: _State, log: Callable[[str], None]) -> None:
    """Skip the step when its outputs are newer than its inputs, else run (or resume) it, and record it."""
    cfg, out = state.cfg, Path(state.cfg.out)
    cd = f"cd {shlex.quote(str(out))} && "
    command = "fundus " + shlex.join(step.argv)
    resume = (step.resumable and not cfg.force and _done(out, step)
              and _training_left(out / Path(step.outputs[0]).parent))
    if not cfg.force and _done(out, step) and not resume:
        log(f"[skip] {step.name}: done ({', '.join(step.outputs)} newer than its inputs). To redo it: "
            f"{cd}{command} --force")
        state.steps.append({"name": step.name, "command": command, "status": "skipped", "seconds": 0.0})
        if step.name.startswith("audit-privacy"):
            arch = step.name.split()[-1]
            if (v := _verdict_from_file(out / step.outputs[0])) is not None:
                state.verdicts[arch] = v
        return
    # Remake an output that exists but is stale (or everything under --force); phantoms
    # writes only into a fresh folder, so a partial raw/ (no labels.csv yet) is redone too.
    force = cfg.force or (not resume and (any((out / p).exists() for p in step.outputs)
                                          or (step.name == "phantoms" and (out / "raw").exists())))
    shown = command + (" --resume" if resume else " --force" if force else "")
    log(f"$ {cd}{shown}")
    t0 = time.perf_counter()
    try:
        result = step.run(force)
    except FundusError as e:
        raise FundusError(f"demo step '{step.name}' ({shown}): {e}") from None
    secs = time.perf_counter() - t0
    if getattr(result, "interrupted", False):
        state.steps.append({"name": step.name, "command": shown, "status": "interrupted",
                            "seconds": round(secs, 3)})
        _write_summary(state, "interrupted")
        raise KeyboardInterrupt
    state.steps.append({"name": step.name, "command": shown, "status": "resumed" if resume else "ran",
                        "seconds": round(secs, 3)})
    log(f"  {step.name}: {secs:.1f} s")
    if step.name.startswith("audit-privacy"):
        arch = step.name.split()[-1]
        log(f"  privacy audit of data/synthetic-{arch}.h5: {state.verdicts.get(arch)}"
            + (" (the demo goes on; report.html shows why)" if state.verdicts.get(arch) == "FAIL" else ""))
    _write_summary(state, "running")


def _report(state: _State, log: Callable[[str], None]) -> ReportResult:
    """The last step, always run: report.html is a view of the other files."""
    from fundus_cli.commands.report import write_report

    out = Path(state.cfg.out)
    log(f"$ cd {shlex.quote(str(out))} && fundus report . --out report.html")
    t0 = time.perf_counter()
    rep = write_report(out, out=out / "report.html")
    secs = time.perf_counter() - t0
    log(f"  report: {secs:.1f} s")
    state.steps.append({"name": "report", "command": "fundus report . --out report.html", "status": "ran",
                        "seconds": round(secs, 3)})
    return rep


def _verdict_from_file(report: Path) -> str | None:
    try:
        return audit_report.verdict(read_json(report))
    except (OSError, FundusError):
        return None


def run_demo(cfg: DemoConfig, *, log: Callable[[str], None] = lambda s: None) -> DemoResult:
    settings = settings_of(cfg)
    _check_folder(cfg, settings)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    state = _State(cfg=cfg, settings=settings)
    _write_summary(state, "running")
    try:
        for step in _steps(cfg, settings, log, state):
            _run_step(step, state, log)
        _write_summary(state, "finished")
        rep = _report(state, log)
    except KeyboardInterrupt:
        _write_summary(state, "interrupted")
        raise
    except BaseException:
        _write_summary(state, "failed")
        raise
    summary = _write_summary(state, "finished")
    return DemoResult(out=out, report=rep.out, summary=summary, verdicts=dict(state.verdicts),
                      steps=list(state.steps), seconds=time.perf_counter() - state.started)

