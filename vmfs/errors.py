"""Expected failures: what a user can fix, reported by the CLI as one line, never a traceback."""

from __future__ import annotations


class VmfsError(Exception):
    """A runtime failure the user can act on (missing file, bad trace, missing tool): exit 1."""

    exit_code = 1


class UsageError(VmfsError):
    """A bad command line (wrong or conflicting options, out-of-range values): exit 2."""

    exit_code = 2
