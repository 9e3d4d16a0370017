"""Errors raised on bad input.

Every problem with user-supplied data (a trace file, a profile, a parameter) is an
:class:`InputError` that says *where* (file, line, field) and *what was expected*.
The CLI turns it into one line on stderr and exit status 2; library users can catch
it and read the parts.
"""

from __future__ import annotations

from os import PathLike


class InputError(ValueError):
    """Bad input, located as precisely as the data allows.

    Parameters
    ----------
    message
        What is wrong and what was expected, e.g. ``"got -3; expected an integer
        >= 1"``.
    file
        The file the data came from, if any.
    line
        1-based line number in ``file`` (the header is line 1 of a CSV).
    field
        Column, key or parameter name.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | PathLike[str] | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = None if file is None else str(file)
        self.line = line
        self.field = field
        super().__init__(str(self))

    def located(
        self,
        *,
        file: str | PathLike[str] | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> InputError:
        """Return a copy with the location parts that are still unknown filled in."""
        return InputError(
            self.message,
            file=self.file if self.file is not None else file,
            line=self.line if self.line is not None else line,
            field=self.field if self.field is not None else field,
        )

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file if self.line is None else f"{self.file}:{self.line}"
            where += ": "
        elif self.line is not None:
            where = f"line {self.line}: "
        what = f"field '{self.field}': " if self.field is not None else ""
        return f"{where}{what}{self.message}"
