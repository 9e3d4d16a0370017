"""Vectorised parsing and checking of trace columns, with errors located in the file.

Every reader turns raw columns (strings or numbers from pandas, pyarrow or json)
into typed NumPy arrays here. The rules:

* coerce the whole column at once (``pandas.to_numeric(errors="coerce")``), then
  locate the *first* bad entry with ``numpy.flatnonzero`` -- no Python loop over
  rows, so a million-row trace is checked in milliseconds;
* an integer column accepts integers and integral floats (``12`` and ``12.0``);
  anything else (``12.5``, ``abc``, an empty field, ``nan``) is an error;
* the error names the file, the 1-based line (or, for Parquet, the 1-based row,
  in the message), the field, what was found and what was expected.

A :class:`RowLocator` maps row ``k`` of the parsed table to its line in the file;
readers subset it together with the rows they drop, so positions stay right.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from lsched.errors import InputError
from lsched.instance import Instance

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: Integers beyond 2**53 do not survive a float64; reject them in float columns.
_EXACT_FLOAT_INT = 2.0**53


@dataclass(frozen=True)
class RowLocator:
    """Where each parsed row came from.

    Parameters
    ----------
    file
        The file, as given by the user.
    lines
        1-based position of each row: its line (CSV, JSONL) or its row (Parquet).
    unit
        ``"line"`` when positions are text lines (reported in ``InputError.line``),
        ``"row"`` when they are table rows (reported in the message).
    """

    file: str
    lines: IntArray
    unit: str = "line"

    @classmethod
    def consecutive(
        cls, file: str, first: int, n: int, unit: str = "line"
    ) -> RowLocator:
        """Rows ``0..n-1`` at consecutive positions starting at ``first``."""
        return cls(file, np.arange(first, first + n, dtype=np.int64), unit)

    def subset(self, keep: npt.NDArray[np.bool_]) -> RowLocator:
        return RowLocator(self.file, self.lines[keep], self.unit)

    def error(self, k: int, field: str | None, message: str) -> InputError:
        """An :class:`InputError` about row ``k`` (0-based position in the table)."""
        position = int(self.lines[k])
        if self.unit == "line":
            return InputError(message, file=self.file, line=position, field=field)
        return InputError(f"row {position}: {message}", file=self.file, field=field)


def _found(raw: Any, k: int) -> str:
    value = raw[k]
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


def _as_numbers(raw: npt.ArrayLike) -> tuple[np.ndarray, FloatArray | IntArray]:
    """Return ``(raw values, numbers)``: numbers are NaN where ``raw`` is not one."""
    values = raw.to_numpy() if isinstance(raw, pd.Series) else np.asarray(raw)
    if values.dtype.kind in "iuf":
        return values, values
    if values.dtype.kind == "b":
        # a JSON true/false is not a count; make every entry "not a number"
        return values, np.full(len(values), np.nan)
    series = pd.Series(values, dtype=object, copy=False)
    is_bool = series.map(type).to_numpy() == bool  # noqa: E721  (exact type test)
    numbers = pd.to_numeric(series, errors="coerce").to_numpy(
        dtype=np.float64, copy=True
    )
    numbers[is_bool] = np.nan
    return values, numbers


def _exact_integers(values: np.ndarray) -> IntArray | None:
    """Integers held as Python ints or decimal strings, converted without a detour
    through float64 (which would round beyond 2**53); ``None`` if not all are."""
    kinds = set(map(type, values)) if values.dtype.kind == "O" else {str}
    try:
        if kinds == {int}:
            return np.array(values.tolist(), dtype=np.int64)
        if kinds == {str}:
            text = values.astype(str)
            # only plain decimal digits; anything else takes the checked path
            if np.all(np.char.isdigit(np.char.lstrip(text, "+-"))):
                return text.astype(np.int64)
    except (OverflowError, ValueError):
        pass
    return None


def integer_column(raw: npt.ArrayLike, field: str, rows: RowLocator) -> IntArray:
    """Parse an integer column; integral floats are accepted, nothing else.

    Raises
    ------
    InputError
        At the first entry that is not an integer.
    """
    values = raw.to_numpy() if isinstance(raw, pd.Series) else np.asarray(raw)
    if values.dtype.kind in "OU":
        exact = _exact_integers(values)
        if exact is not None:
            return exact
    values, numbers = _as_numbers(values)
    if numbers.dtype.kind in "iu":
        return numbers.astype(np.int64, copy=False)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(numbers) | (numbers != np.floor(numbers))
        bad |= np.abs(numbers) > _EXACT_FLOAT_INT
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise rows.error(k, field, f"got {_found(values, k)}; expected an integer")
    return numbers.astype(np.int64)


def float_column(raw: npt.ArrayLike, field: str, rows: RowLocator) -> FloatArray:
    """Parse a float column (``inf`` parses; NaN and text do not).

    Raises
    ------
    InputError
        At the first entry that is not a number.
    """
    values, numbers = _as_numbers(raw)
    numbers = numbers.astype(np.float64, copy=False)
    bad = np.isnan(numbers)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise rows.error(k, field, f"got {_found(values, k)}; expected a number")
    return numbers


def string_column(raw: npt.ArrayLike, field: str, rows: RowLocator) -> np.ndarray:
    """Check a string column has no missing entries (``None``/NaN from Parquet)."""
    values = raw.to_numpy(dtype=object) if isinstance(raw, pd.Series) else raw
    values = np.asarray(values, dtype=object)
    bad = pd.isna(values)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise rows.error(k, field, f"got {_found(values, k)}; expected a string")
    return values


def require(
    bad: npt.NDArray[np.bool_],
    values: np.ndarray,
    field: str,
    rows: RowLocator,
    expected: str,
    hint: str = "",
) -> None:
    """Raise at the first ``bad`` entry: ``got <value>; expected <expected>``."""
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise rows.error(
            k, field, f"got {_found(values, k)}; expected {expected}{hint}"
        )


def require_nondecreasing(
    numbers: np.ndarray, field: str, rows: RowLocator, shown: np.ndarray | None = None
) -> None:
    """Raise at the first entry smaller than its predecessor.

    ``shown`` holds the values as the file wrote them (e.g. timestamp strings), for
    the message; ``numbers`` is what is compared.
    """
    if len(numbers) > 1:
        drops = np.diff(numbers) < 0
        if drops.any():
            k = int(np.flatnonzero(drops)[0]) + 1
            text = numbers if shown is None else shown
            raise rows.error(
                k,
                field,
                f"got {_found(text, k)}, before the previous request's "
                f"{_found(text, k - 1)}; expected non-decreasing times "
                "(sort the trace by time first)",
            )


def subset_csr(
    offsets: IntArray, values: IntArray, keep: npt.NDArray[np.bool_]
) -> tuple[IntArray, IntArray]:
    """Keep the rows of a CSR (``offsets``, ``values``) table where ``keep`` is true."""
    starts = offsets[:-1][keep]
    lengths = (offsets[1:] - offsets[:-1])[keep]
    new_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    # position j of kept row r reads values[starts[r] + j]: one gather for all rows
    within = np.arange(new_offsets[-1], dtype=np.int64) - np.repeat(
        new_offsets[:-1], lengths
    )
    return new_offsets, values[np.repeat(starts, lengths) + within]


_FAILED_HINT = (
    " (a zero-token row is a failed request: pass drop_failed=True, "
    "or --drop-failed, to drop such rows)"
)


def build_instance(
    columns: dict[str, np.ndarray],
    rows: RowLocator,
    metadata: dict[str, Any],
    *,
    hashes: tuple[IntArray, IntArray] | None = None,
    drop_failed: bool = False,
    time_field: str = "arrival_s",
    field_names: dict[str, str] | None = None,
) -> tuple[Instance, int]:
    """Drop failed rows, check every domain with located errors, build an Instance.

    Parameters
    ----------
    columns
        Typed columns by :class:`~lsched.instance.Instance` field name;
        ``arrival_s``, ``prompt_tokens`` and ``output_tokens`` are required.
    rows
        Where each row came from.
    metadata
        ``name``, ``source``, ``family``, ``seed``, ``params`` of the instance.
    hashes
        Prefix block hashes as CSR ``(offsets, values)``, or ``None``.
    drop_failed
        Drop rows whose prompt or output length is exactly 0 (failed requests)
        instead of raising.
    time_field, field_names
        The file's names for the columns, used in error messages.

    Returns
    -------
    (Instance, number of rows dropped as failed)
    """
    names = dict(field_names or {})
    names.setdefault("arrival_s", time_field)
    dropped = 0
    if drop_failed:
        failed = (columns["prompt_tokens"] == 0) | (columns["output_tokens"] == 0)
        dropped = int(failed.sum())
        if dropped:
            keep = ~failed
            columns = {name: column[keep] for name, column in columns.items()}
            rows = rows.subset(keep)
            if hashes is not None:
                hashes = subset_csr(*hashes, keep)
    if len(columns["arrival_s"]) == 0:
        raise InputError(
            "no requests left"
            + (f" after dropping {dropped} failed rows" if dropped else "")
            + "; expected at least one request",
            file=rows.file,
        )
    a = columns["arrival_s"]
    name = names.get("arrival_s", "arrival_s")
    require(~np.isfinite(a), a, name, rows, "a finite time")
    require(a < 0, a, name, rows, "a time >= 0")
    require_nondecreasing(a, name, rows)
    # report the earliest bad row over all length columns, not column by column
    firsts = [
        (int(np.flatnonzero(column < 1)[0]), field)
        for field in ("prompt_tokens", "output_tokens", "predicted_output_tokens")
        if (column := columns.get(field)) is not None and np.any(column < 1)
    ]
    if firsts:
        k, field = min(firsts)
        column = columns[field]
        failed = column[k] == 0 and field != "predicted_output_tokens"
        raise rows.error(
            k,
            names.get(field, field),
            f"got {column[k]}; expected an integer >= 1"
            + (_FAILED_HINT if failed else ""),
        )
    for field in ("ttft_deadline_s", "tpot_deadline_s"):
        if field in columns:
            column = columns[field]
            require(~(column > 0), column, names.get(field, field), rows, "seconds > 0")
    try:
        instance = Instance(
            **columns,
            prefix_hash_offsets=None if hashes is None else hashes[0],
            prefix_hash_values=None if hashes is None else hashes[1],
            **metadata,
        )
    except InputError as exc:  # anything the checks above did not anticipate
        raise exc.located(file=rows.file) from None
    return instance, dropped
