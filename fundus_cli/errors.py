"""The one exception type that library code raises for anything the user can fix."""

from __future__ import annotations


class FundusError(Exception):
    """A problem with the user's input or environment.

    The message names the file involved and the fix; the CLI prints it as one line on
    stderr and exits with code 2. Anything else that escapes is a bug in fundus-cli.
    """
