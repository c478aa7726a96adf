"""The one error type for bad input: scripts turn it into one line on stderr and exit code 2, and so
are faults of the storage a user is to fix (a full disk, a read-only or forbidden path)."""
import errno
import sys
from contextlib import contextmanager
from typing import NoReturn


class UsageError(Exception):
    """Bad input from the user: the message says what was wrong and what to run instead."""


_STORAGE_REMEDIES = {
    errno.ENOSPC: "free some space there or write elsewhere",
    errno.EDQUOT: "free some of your quota or write elsewhere",
    errno.EROFS: "that file system is read-only: write elsewhere",
    errno.EACCES: "check its permissions or use another path",
    errno.ENAMETOOLONG: "use shorter names (a model or dataset name becomes part of file names)",
}


@contextmanager
def exit_on_usage_error():
    try:
        yield
    except UsageError as err:
        _exit(str(err))
    except OSError as err:
        if err.errno not in _STORAGE_REMEDIES:
            raise
        where = f": {err.filename}" if err.filename else ""
        _exit(f"{err.strerror}{where}; {_STORAGE_REMEDIES[err.errno]}")


def _exit(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
