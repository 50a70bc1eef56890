"""fundus-cli: synthetic retinal fundus photographs, checked for realism, usefulness and privacy."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fundus-cli")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from fundus_cli.errors import FundusError

__all__ = ["FundusError", "__version__"]
