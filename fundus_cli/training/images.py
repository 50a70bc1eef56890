"""Old home of the image helpers, kept only as a re-export.

`training/loop.py` and `benchmarks/quality.py` import from here and are being rewritten by
another change this session; once they import `fundus_cli.images` and `fundus_cli.plots`,
delete this file.
"""

from __future__ import annotations

from fundus_cli.images import grid_image, save_grid, to_uint8, write_png
from fundus_cli.plots import plot_losses

__all__ = ["grid_image", "plot_losses", "save_grid", "to_uint8", "write_png"]
