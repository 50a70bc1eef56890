"""The `fundus` app itself: error handling and exit codes, global options, and the output helpers
that every command module of this package uses.

Main outputs (a path, or a JSON line with --json) go to stdout so that `$(fundus ...)`
works in shell scripts; progress, tables and messages go to stderr.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup
from rich.text import Text

from fundus_cli import progress
from fundus_cli.errors import EXIT_INTERNAL, FundusError, from_os_error

# Markup off: paths, class names and messages are user text, and `[/]` or `[left]` in a file name
# must print as written (rich markup would crash on the one and swallow the other). Style comes
# only from Text objects built below.
err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)

EXIT_CODES_HELP = ("Exit codes: 0 success, 1 audit failed, 2 bad input or usage, 3 inconclusive audit, "
                   f"{EXIT_INTERNAL} internal error (a bug: rerun with --debug), 130 interrupted.")


# What running the command again does after Ctrl-C, so that the message never promises a resume
# that does not happen.
_AFTER_INTERRUPT = {
    "ingest": "run the same command again to resume: photographs already decoded are not decoded again.",
    "train": "run the same command again with --resume to continue from the last checkpoint.",
    "sample": "the same command starts over and makes the same images (split a long run with --seed-start and "
              "--n to keep finished parts).",
    "demo": "run the same command again to resume: finished steps are skipped.",
}
_START_OVER = "run the same command again to start over."


def _handle_errors(fn: Callable[..., None], name: str = "") -> Callable[..., None]:
    """Turn every failure into one line on stderr and a documented exit code (a traceback only
    with --debug): FundusError and fixable OS problems (no permission, full disk) -> 2,
    Ctrl-C -> 130, anything else -> EXIT_INTERNAL (a bug), never 1, which means "audit failed".

    Applied to each command rather than around the app, so that it also holds when the
    command is invoked through click directly (typer.testing.CliRunner does that).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.exceptions.TyperException):
            raise
        except FundusError as e:
            if state["debug"]:
                raise
            _fail(str(e), 2)
        except KeyboardInterrupt:
            if state["debug"]:
                raise
            err.print(styled("interrupted", "yellow", ": nothing was left half-written; "
                              + _AFTER_INTERRUPT.get(name, _START_OVER)), soft_wrap=True)
            _exit(130)
        except Exception as e:
            if state["debug"]:
                raise
            mapped = from_os_error(e)
            if mapped is not None:
                _fail(str(mapped), 2)
            first = (str(e).strip().splitlines() or [""])[0][:300]
            _fail(f"internal error ({type(e).__name__}: {first}). This is a bug in fundus-cli; run the same command "
                  "with --debug (fundus --debug ...) for the traceback and report it.", EXIT_INTERNAL)

    return wrapper


def _fail(message: str, code: int) -> None:
    err.print(styled("error:", "bold red", f" {message}"), soft_wrap=True)
    _exit(code)


def _exit(code: int) -> None:
    from fundus_cli.data import h5

    if h5.library_damaged():
        # HDF5 could not close a file whose writes failed (a full disk); its clean-up at
        # interpreter exit would crash (exit 139) after our message. The half-written file is
        # already deleted, so leave at once with the right code.
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(code)
    raise typer.Exit(code) from None


def command(name: str, short_help: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def register(fn: Callable[..., None]) -> Callable[..., None]:
        return app.command(name, short_help=short_help)(_handle_errors(fn, name))

    return register


class _Group(TyperGroup):
    """The app's group, with a help flag that defaults to False as click's flags always did.

    Typer (0.2x) coerces every option value that is not already a bool through a pydantic
    TypeAdapter, built on first use. The group's own -h/--help has no default, so in
    `fundus <cmd> --help` its value is None and building that coercer imports pydantic:
    0.13 s of the ~0.55 s the command's help took (issue 13). The --version flag
    defaults to False for the same reason.
    """

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None and option.default is None:
            option.default = False
        return option


app = typer.Typer(
    cls=_Group,
    name="fundus",
    help="Synthetic retinal fundus photographs from a folder of real ones, checked for realism, usefulness "
    "and privacy.\n\nA project folder uses data/ for datasets, runs/<arch>/ for training runs and reports/ "
    "for reports, so the commands chain with no options:\n\n"
    "  fundus phantoms raw && fundus ingest raw\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)

state: dict[str, Any] = {"debug": False, "quiet": False}


def _version(value: bool) -> None:
    if value:
        from fundus_cli import __version__

        typer.echo(f"fundus-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summary tables.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show a traceback for errors.")] = False,
) -> None:
    state["quiet"] = quiet
    state["debug"] = debug
    progress.set_enabled(not quiet and err.is_terminal)


def styled(label: str, style: str, rest: str = "") -> Text:
    """`label` in `style`, then `rest` verbatim (never read as markup)."""
    return Text.assemble((label, style), rest)


def say(message: str | Text) -> None:
    if not state["quiet"]:
        err.print(message, soft_wrap=True)


def notes(notes: list[str]) -> None:
    for note in notes:
        err.print(styled("note:", "yellow", f" {note}"), soft_wrap=True)


def emit(main_output: Path | str, summary: dict[str, Any], as_json: bool) -> None:
    """The command's result on stdout: its main output path, or one JSON line."""
    if as_json:
        typer.echo(json.dumps(summary, default=str))
    else:
        typer.echo(str(main_output))


JsonOpt = Annotated[bool, typer.Option("--json", help="Print a one-line JSON summary on stdout instead of the path.")]
