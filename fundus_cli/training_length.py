"""Is a checkpoint far short of its planned training length?

A checkpoint saved after 25 of 4,000 planned steps samples images that say little about the
model: its audit, evaluation and report describe an unfinished run. `sample`, `audit-privacy`
and `report` say so wherever such a checkpoint is used, from the step and planned steps that
the checkpoint stores (and that `fundus sample` copies into the synthetic file's provenance).
"""

from __future__ import annotations

from typing import Any

UNDERTRAINED_SHARE = 0.5  # a checkpoint below this share of its planned steps is called under-trained


def _int(x: Any) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) else None


def shortfall(step: Any, planned: Any) -> str | None:
    """A plain sentence when step is far below planned; None when it is not (or either is unknown)."""
    step, planned = _int(step), _int(planned)
    if step is None or planned is None or planned <= 0 or step < 0 or step >= UNDERTRAINED_SHARE * planned:
        return None
    return (f"under-trained checkpoint: step {step} of {planned} planned ({step / planned:.1%}); images from it "
            "show an unfinished model, so its realism, usefulness and privacy results may not hold for the trained "
            "one (finish it with `fundus train --resume`)")


def from_provenance(provenance: Any) -> dict[str, Any]:
    """{step, planned_steps, note} of a synthetic dataset's provenance (untrusted: read defensively)."""
    prov = provenance if isinstance(provenance, dict) else {}
    step, planned = _int(prov.get("step")), _int(prov.get("planned_steps"))
    return {"step": step, "planned_steps": planned, "note": shortfall(step, planned)}
