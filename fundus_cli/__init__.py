"""fundus-cli: synthetic retinal fundus photographs, checked for realism, usefulness and privacy."""

from __future__ import annotations

from functools import cache

from fundus_cli.errors import FundusError

__all__ = ["FundusError", "__version__"]


@cache
def _version() -> str:
    # importlib.metadata costs ~0.1-0.3 s to import; read only when a version is written or printed,
    # so that `fundus --help` does not pay for it.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fundus-cli")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+unknown"


def __getattr__(name: str) -> str:
    if name == "__version__":
        return _version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
