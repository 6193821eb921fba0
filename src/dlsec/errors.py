"""The one base class for errors caused by user input.

The CLI turns any :class:`DlsecError` into a single line on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DlsecError(Exception):
    """A user mistake or bad input: reported in one line, never as a traceback."""

    exit_code: int = 2
