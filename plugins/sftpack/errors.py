"""Errors that reach the user as one clear line (the CLI prints them and exits non-zero)."""

from __future__ import annotations


class SftpackError(Exception):
    """A user-facing error: the message names the file, line and field and says what to do."""


class RowError(SftpackError):
    """One input row is invalid."""

    def __init__(self, source: str, where: str, field: str | None, problem: str):
        self.source, self.where, self.field, self.problem = source, where, field, problem
        field_part = f", field '{field}'" if field else ""
        super().__init__(f"{source}: {where}{field_part}: {problem}")
