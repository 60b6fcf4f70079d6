"""Errors that speak to the user: which file, which row, which column, what was expected."""
from __future__ import annotations


class MkmsrError(Exception):
    """Base class of every error mkmsr raises on purpose."""


class ConfigError(MkmsrError, ValueError):
    """A setting is out of range, unknown, or inconsistent with another one."""


class DataError(MkmsrError, ValueError):
    """Bad input data.

    ``row`` is the 1-based data row (the header is not counted, so row 1 is the file's
    second line for a CSV with a header); ``column`` is the column name as the file spells it.
    """

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None,
                 column: str | None = None, expected: str | None = None):
        self.file, self.row, self.column, self.expected = file, row, column, expected
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        text = (", ".join(where) + ": " if where else "") + message
        if expected:
            text += f" (expected {expected})"
        super().__init__(text)


class TrainingDiverged(MkmsrError, RuntimeError):
    """The model's loss or scores became NaN/inf during training."""
