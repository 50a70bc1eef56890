"""A checkpoint from someone else must not be able to run code (DESIGN rule 3)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fundus_cli.errors import FundusError
from fundus_cli.training.checkpoint import FORMAT, load_checkpoint


class _Payload:
    """Unpickling this calls os.system: what a hostile pickled checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_object_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": FORMAT, "format_version": 2, "models": {"g": _Payload(marker)}}, path)
    with pytest.raises(FundusError) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value) and "not a readable fundus-cli checkpoint" in str(e.value)
    assert not marker.exists()
    # The file really does run code under a plain pickle load: the check above is not vacuous.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_plain_tensors_without_the_format_marker_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(FundusError, match="no format marker"):
        load_checkpoint(path)
    with pytest.raises(FundusError, match="no checkpoint there"):
        load_checkpoint(tmp_path / "absent.pt")
