"""Realism metrics by name, for `fundus evaluate --metrics fid,kid,prdc`.

Every metric is a pure function of two feature arrays,

    fn(real_feats: (N, D), fake_feats: (M, D), *, seed: int) -> dict[str, float]

returning one or more named values (prdc gives four). Each metric module registers itself
with the decorator below; the built-in modules are imported on first look-up, so asking
for the list never depends on what the caller happened to import before.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np

from fundus_cli.errors import FundusError

MetricFn = Callable[..., dict[str, float]]

METRICS: dict[str, MetricFn] = {}

# Modules whose import fills METRICS with the built-in metrics.
_BUILTIN_MODULES = ("fundus_cli.metrics.fid", "fundus_cli.metrics.kid", "fundus_cli.metrics.prdc")


def register_metric(name: str) -> Callable[[MetricFn], MetricFn]:
    """Decorator: add `fn` to METRICS under `name`."""

    def add(fn: MetricFn) -> MetricFn:
        if name in METRICS and METRICS[name] is not fn:
            raise ValueError(f"metric {name!r} is registered twice")
        METRICS[name] = fn
        return fn

    return add


def available_metrics() -> list[str]:
    """The names `--metrics` accepts, sorted."""
    _load_builtins()
    return sorted(METRICS)


def resolve_metrics(spec: str) -> dict[str, MetricFn]:
    """"fid,kid" -> {"fid": fn, "kid": fn} in the order given; unknown names raise FundusError."""
    _load_builtins()
    names = [s.strip().lower() for s in spec.split(",") if s.strip()]
    if not names:
        raise FundusError(f"--metrics is empty; choose from: {', '.join(sorted(METRICS))}")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise FundusError(f"unknown metric{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                          f"valid metrics: {', '.join(sorted(METRICS))}")
    return {n: METRICS[n] for n in dict.fromkeys(names)}  # duplicates once, order kept


def compute_metrics(metrics: dict[str, MetricFn], real: np.ndarray, fake: np.ndarray, *,
                    seed: int) -> dict[str, float]:
    """Run each metric on the same features and merge their named values."""
    out: dict[str, float] = {}
    for fn in metrics.values():
        out.update(fn(real, fake, seed=seed))
    return out


def _load_builtins() -> None:
    # Imported here, not at the top: the metric modules import this one for the decorator.
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
