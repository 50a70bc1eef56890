"""`fundus phantoms`: built-in fundus-like photographs and labels.csv (the demo and test data).

The renderer is `data/phantoms.py`; this module is the command around it.
"""

from __future__ import annotations

from pathlib import Path

from fundus_cli.data.phantoms import PhantomResult, write_phantoms
from fundus_cli.errors import FundusError
from fundus_cli.progress import track


def make_phantoms(out_dir: Path, *, n: int = 200, seed: int = 0, overwrite: bool = False) -> PhantomResult:
    """Write `n` photographs and `labels.csv` into `out_dir`, with a progress bar."""
    if n < 1:
        raise FundusError(f"--n {n}: ask for at least one image.")
    with track("phantoms", n) as advance:
        return write_phantoms(Path(out_dir), n=n, seed=seed, on_progress=advance, overwrite=overwrite)
