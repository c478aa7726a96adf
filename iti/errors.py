"""The one error type for bad input: scripts turn it into one line on stderr and exit code 2, and so
are faults of the storage a user is to fix (a full disk, a read-only or forbidden path)."""
import errno
import re
import sys
from contextlib import contextmanager


class UsageError(Exception):
    """Bad input from the user: the message says what was wrong and what to run instead."""


_STORAGE_REMEDIES = {
    errno.ENOSPC: "free some space there or write elsewhere",
    errno.EDQUOT: "free some of your quota or write elsewhere",
    errno.EROFS: "that file system is read-only: write elsewhere",
    errno.EACCES: "check its permissions or use another path",
    errno.ENAMETOOLONG: "use shorter names (a model or dataset name becomes part of file names)",
}


# Characters that end a line for a terminal or for str.splitlines (C0 and C1 controls, the Unicode line and
# paragraph separators): a path or value holding one is shown escaped, so a message stays one line.
_LINE_BREAKING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def print_error(message: str) -> None:
    """The one place messages about bad input are printed: `error: ...` on one line of stderr, every character that
    could break or hide a line written as its escape (a newline as \\n)."""
    escaped = _LINE_BREAKING.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), message)
    print(f"error: {escaped}", file=sys.stderr)


@contextmanager
def exit_on_usage_error():
    try:
        yield
    except UsageError as err:
        print_error(str(err))
        sys.exit(2)
    except OSError as err:
        if err.errno not in _STORAGE_REMEDIES:
            raise
        print_error(f"{err.strerror}{f': {err.filename}' if err.filename else ''}; {_STORAGE_REMEDIES[err.errno]}")
        sys.exit(2)
