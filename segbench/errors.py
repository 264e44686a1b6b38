"""Errors a user can cause: the CLI prints their message as one line and exits with code 2."""

from __future__ import annotations

import difflib
import sys


class UserError(Exception):
    """A mistake in the user's input (suite, flags, environment) with a message that says what to do."""


def did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def warn(message: str) -> None:
    """One line on stderr: something was skipped or left alone, and the run goes on."""
    print(f"segbench: warning: {' '.join(str(message).split())}", file=sys.stderr)
