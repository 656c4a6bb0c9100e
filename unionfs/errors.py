"""Errors that reach the person at the command line.

A `UnionfsError` carries one line of text and an exit code; the CLI prints
``unionfs: error: <text>`` and exits with the code, never a traceback.
"""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class UnionfsError(Exception):
    """A problem the user can act on, described in one line."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class UsageError(UnionfsError):
    """The command line itself is wrong (unknown option, malformed value)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)
