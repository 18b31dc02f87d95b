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


class OutputError(MMTPError, OSError):
    """An output file could not be written (disk full, read-only or vanished directory, ...).

    The message names the file and the reason; what was written before stays valid."""

    def __init__(self, message: str, path: str | None = None):
        self.path = path
        message = " ".join(str(message).split())     # HDF5's messages break lines
        self.reason = message
        super().__init__(f"{path}: {message}" if path else message)


class RunAborted(MMTPError):
    """An MD run ended abnormally (non-finite energies, an atom flying off, an output error):
    the message says what happened. ``collective``: every rank raised it at the same point
    (found by a reduction), so they can still end together, write an emergency checkpoint and
    a summary; the command line reports it once."""

    def __init__(self, message: str, collective: bool = False):
        self.collective = collective
        super().__init__(message)


class CollectiveInputError(InputError):
    """An input error every rank of an MPI run raises at the same point (the ranks agreed on it
    first): the command line reports it once and all ranks end normally, without MPI_Abort."""

    collective = True
