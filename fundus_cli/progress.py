"""The one progress-bar helper. The CLI switches it on; library code only calls `track`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

_enabled = False


def set_enabled(flag: bool) -> None:
    global _enabled
    _enabled = flag


def enabled() -> bool:
    return _enabled


@contextlib.contextmanager
def track(description: str, total: int | None, *, unit: str = "img") -> Iterator[Callable[..., None]]:
    """Yield `advance(n=1, **fields)`; shows a bar on stderr with a rate in `unit`/s when enabled.

    Extra keyword fields (e.g. loss=0.12) are shown after the bar.
    """
    if not _enabled:
        yield lambda n=1, **fields: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    class _Rate(TextColumn):
        def render(self, task):  # type: ignore[no-untyped-def]
            speed = task.finished_speed or task.speed
            from rich.text import Text
            return Text(f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s", style="cyan")

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(""),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields: object) -> None:
            info = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            bar.update(task, advance=n, **({"info": info} if fields else {}))

        yield advance


_lines = False


def set_lines(flag: bool) -> None:
    """Plain progress lines on stderr for long stages, also when stderr is not a terminal (logs, jobs)."""
    global _lines
    _lines = flag


def line(text: str) -> None:
    """One progress line on stderr when the CLI switched lines on (`set_lines`)."""
    if _lines:
        import sys

        print(text, file=sys.stderr, flush=True)
