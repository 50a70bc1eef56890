"""The importable API: one function per command, typed configs in, result dataclasses out.

Everything here raises `FundusError` for problems the user can fix and never prints;
`fundus_cli.cli` is a thin layer that parses options and calls these functions.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from fundus_cli.commands.audit import AuditConfig, AuditResult
    from fundus_cli.commands.ingest import IngestConfig, IngestResult
    from fundus_cli.data.phantoms import PhantomResult
    from fundus_cli.commands.demo import DemoConfig, DemoResult
    from fundus_cli.commands.evaluate import EvaluateConfig, EvaluateResult
    from fundus_cli.commands.report import ReportResult
    from fundus_cli.commands.sample import SampleConfig, SampleResult
    from fundus_cli.commands.train import TrainConfig, TrainResult

__all__ = ["AuditConfig", "AuditResult", "audit_privacy", "DemoConfig", "DemoResult", "EvaluateConfig",
           "EvaluateResult", "evaluate", "IngestConfig", "IngestResult", "SampleConfig", "SampleResult", "TrainConfig",
           "TrainResult", "describe", "ingest", "phantoms", "sample", "train", "train_plan", "report", "demo"]

# Config and result classes by the module that defines them. They are reached through this
# module's __getattr__ so that `import fundus_cli.api` (and `fundus --help`) stays free of torch,
# h5py and scipy, which the defining modules import at their top.
_LAZY = {
    "AuditConfig": "fundus_cli.commands.audit", "AuditResult": "fundus_cli.commands.audit",
    "DemoConfig": "fundus_cli.commands.demo", "DemoResult": "fundus_cli.commands.demo",
    "EvaluateConfig": "fundus_cli.commands.evaluate", "EvaluateResult": "fundus_cli.commands.evaluate",
    "IngestConfig": "fundus_cli.commands.ingest", "IngestResult": "fundus_cli.commands.ingest",
    "SampleConfig": "fundus_cli.commands.sample", "SampleResult": "fundus_cli.commands.sample",
    "TrainConfig": "fundus_cli.commands.train", "TrainResult": "fundus_cli.commands.train",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def ingest(config: IngestConfig) -> IngestResult:
    """Read a folder of photographs into `train.h5`, `holdout.h5` and `ingest-report.json`."""
    from fundus_cli.commands.ingest import ingest as run

    return run(config)


def train(config: TrainConfig, *, log: Callable[[str], None] = lambda s: None) -> TrainResult:
    """Train a VAE or GAN on a dataset file; checkpoints, metrics and sample grids go to the run folder."""
    from fundus_cli.commands.train import train as run

    return run(config, log=log)


def train_plan(config: TrainConfig) -> dict[str, Any]:
    """The fully resolved configuration that `train` would use (for --dry-run), without training."""
    from fundus_cli.commands.train import plan

    return plan(config)


def sample(config: SampleConfig) -> SampleResult:
    """Generate synthetic images from a checkpoint into a dataset file of the ingest schema."""
    from fundus_cli.commands.sample import sample as run

    return run(config)


def evaluate(config: EvaluateConfig) -> EvaluateResult:
    """Realism (FID/KID/PRDC with CIs and a real-vs-real baseline, fundus statistics) and usefulness."""
    from fundus_cli.commands.evaluate import evaluate as run

    return run(config)


def audit_privacy(config: AuditConfig) -> AuditResult:
    """Nearest-neighbour memorization audit of synthetic images against the training set (AUDIT.md)."""
    from fundus_cli.commands.audit import audit_privacy as run

    return run(config)


def report(source: Path, *, out: Path | None = None) -> ReportResult:
    """One self-contained HTML page (`report.html`) for a project, demo, run or report folder."""
    from fundus_cli.commands.report import write_report

    return write_report(source, out=out)


def demo(config: DemoConfig, *, log: Callable[[str], None] = lambda s: None) -> DemoResult:
    """The whole pipeline on built-in phantoms in one folder, ending in its report.html (`fundus demo`)."""
    from fundus_cli.commands.demo import run_demo

    return run_demo(config, log=log)


def phantoms(out_dir: Path, *, n: int = 200, seed: int = 0, overwrite: bool = False) -> PhantomResult:
    """Write `n` synthetic fundus-like photographs and `labels.csv`: the built-in demo and test data."""
    from fundus_cli.commands.phantoms import make_phantoms

    return make_phantoms(out_dir, n=n, seed=seed, overwrite=overwrite)


def describe(path: Path, *, verify: bool = False) -> dict[str, Any]:
    """What a fundus-cli file holds, as a JSON-able dict (`fundus info`)."""
    from fundus_cli.commands.info import describe as run

    return run(path, verify=verify)
