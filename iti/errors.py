"""The one error type for bad input: scripts turn it into one line on stderr and exit code 2."""
import sys
from contextlib import contextmanager


class UsageError(Exception):
    """Bad input from the user: the message says what was wrong and what to run instead."""


@contextmanager
def exit_on_usage_error():
    try:
        yield
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
