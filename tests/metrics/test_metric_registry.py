"""Metric registry: names, lookup errors, and the registered functions' contract."""

from __future__ import annotations

import numpy as np
import pytest

from fundus_cli.errors import FundusError
from fundus_cli.metrics.fid import frechet_distance
from fundus_cli.metrics.registry import available_metrics, compute_metrics, resolve_metrics


def test_builtins_are_listed() -> None:
    assert {"fid", "kid", "prdc"} <= set(available_metrics())


def test_resolve_keeps_order_and_drops_duplicates() -> None:
    assert list(resolve_metrics(" KID, fid ,kid")) == ["kid", "fid"]


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(FundusError, match=r"unknown metric foo; valid metrics: .*fid.*kid.*prdc"):
        resolve_metrics("fid,foo")
    with pytest.raises(FundusError, match="empty"):
        resolve_metrics(" , ")


def test_registered_functions_return_named_floats() -> None:
    rng = np.random.default_rng(0)
    real, fake = rng.standard_normal((40, 8)), rng.standard_normal((30, 8)) + 0.5
    out = compute_metrics(resolve_metrics("fid,kid,prdc"), real, fake, seed=0)
    assert set(out) == {"fid", "kid", "precision", "recall", "density", "coverage"}
    assert all(isinstance(v, float) for v in out.values())
    assert out["fid"] == frechet_distance(real, fake)
