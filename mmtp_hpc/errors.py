"""Error types with enough context (file, line, field) to act on."""

from __future__ import annotations


class MMTPError(Exception):
    """Base class for all errors raised deliberately by mmtp_hpc."""


class InputError(MMTPError, ValueError):
    """Malformed or physically impossible input.

    The message always names where the problem is: ``file:line: field: problem``
    when a file and line are known.
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.path = path
        self.line = line
        self.field = field
        self.reason = message
        where = ""
        if path is not None:
            where = str(path)
            if line is not None:
                where += f":{line}"
            where += ": "
        if field is not None:
            where += f"{field}: "
        super().__init__(where + message)
