"""The one exception type that library code raises for anything the user can fix."""

from __future__ import annotations

import os


class FundusError(Exception):
    """A problem with the user's input or environment.

    The message names the file involved and the fix; the CLI prints it as one line on
    stderr and exits with code 2. Anything else that escapes is a bug in fundus-cli.
    """


# Exit code for a bug in fundus-cli (an exception nobody foresaw), distinct from 1 (privacy
# audit FAIL) so that `fundus audit-privacy || alert` can tell a copy from a crash. 70 is
# EX_SOFTWARE of sysexits.h.
EXIT_INTERNAL = 70

_OS_PROBLEMS = {
    "ENOSPC": ("no space left on the device", "Free some space, or write elsewhere (e.g. --out)."),
    "EDQUOT": ("disk quota exceeded", "Free some space, or write elsewhere (e.g. --out)."),
    "EFBIG": ("file too large for this file system", "Write elsewhere (e.g. --out)."),
    "EACCES": ("permission denied", "Fix the folder's permissions, or use a folder you can write to (e.g. --out)."),
    "EPERM": ("operation not permitted", "Fix the folder's permissions, or use a folder you can write to "
                                         "(e.g. --out)."),
    "EROFS": ("read-only file system", "Write elsewhere (e.g. --out)."),
}


def _errno_of(e: BaseException) -> int | None:
    import errno
    import re

    if isinstance(e, OSError) and e.errno:
        return e.errno
    # HDF5 reports failed writes as RuntimeError/OSError text: "... errno = 28, error message = ..."
    m = re.search(r"errno = (\d+)", str(e))
    if m and int(m.group(1)) in {getattr(errno, n) for n in _OS_PROBLEMS}:
        return int(m.group(1))
    return None


def _filename_of(e: BaseException) -> str | None:
    import re

    name = getattr(e, "filename", None)
    if name:
        return os.fsdecode(name) if isinstance(name, bytes) else str(name)
    m = re.search(r"(?:file)?name = '([^']*)'", str(e))
    return m.group(1) if m else None


def from_os_error(e: BaseException) -> FundusError | None:
    """The one translation of an operating-system failure the user can fix (no permission, a
    full disk, a read-only mount) into a FundusError naming the folder and the fix; None for
    anything else, which is then a bug."""
    import errno

    code = _errno_of(e)
    name = errno.errorcode.get(code or -1)
    if name not in _OS_PROBLEMS:
        return None
    what, fix = _OS_PROBLEMS[name]
    filename = _filename_of(e)
    if not filename:
        return FundusError(f"{what}. {fix}")
    path = filename[:-4] if filename.endswith(".tmp") else filename
    folder = path if os.path.isdir(path) else (os.path.dirname(path) or ".")
    return FundusError(f"{folder}: {what} (while working on {path}). {fix}")
