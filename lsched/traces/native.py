"""lsched's own trace formats: CSV and Parquet, both lossless.

Every :class:`~lsched.instance.Instance` column, optional ones and prefix hashes
included, and its metadata (name, source, family, seed, params) survive a write and
a read bit for bit: ``read(write(x)) == x``.

CSV layout (UTF-8, ``\\n`` line ends)::

    # lsched {"lsched_trace": 1, "name": ..., "source": ..., "family": ...,
    #         "seed": ..., "params": {...}}          <- line 1, one JSON object
    "arrival_s","prompt_tokens","output_tokens"[,optional columns][,"prefix_hashes"]
    0,812,64,...                                     <- line 3 is request 0

* Floats are written by Arrow's CSV writer in their shortest round-trip form
  (``0.1``, ``5e-324``, ``inf``, ``-0``, ``2``) and read back with the column
  dtypes given (``float64``/``int64``), so they parse bit-identical: ``-0``
  stays ``-0.0`` and ``2`` stays a float. A value that does not parse sends the
  read down a text path where the checks locate it.
* Optional columns appear in :data:`lsched.instance.OPTIONAL_COLUMNS` order and
  only when the instance has them. Header names and string fields (``tenant``,
  ``adapter``, ``prefix_hashes``) are always double-quoted, numbers never, so
  commas, quotes and line breaks in a tenant survive and an empty tenant reads
  back as ``""``.
* ``prefix_hashes`` holds each request's block hashes separated by single spaces
  (an empty field: no hashes).
* The ``# lsched`` line is optional on reading: a plain CSV whose header has
  ``arrival_s,prompt_tokens,output_tokens`` reads with default metadata
  (name = file stem, source = the path). Unknown columns are an error.

Parquet layout: one column per instance column (``float64``/``int64``/``string``),
``prefix_hashes`` as ``large_list<int64>``, and the same JSON metadata object under
the schema metadata key ``b"lsched"``.

Line numbers in errors count CSV records; they equal text lines unless a quoted
tenant contains a line break. Parquet errors give the 1-based row.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from lsched.atomic import atomic_target
from lsched.checks import refuse_nul
from lsched.errors import InputError
from lsched.instance import OPTIONAL_COLUMNS, Instance
from lsched.traces.validate import (
    IntArray,
    RowLocator,
    build_instance,
    float_column,
    integer_column,
    string_column,
)

#: The comment that starts a native CSV file; JSON metadata follows on that line.
CSV_MAGIC = "# lsched"
#: Version of the native layout, written into the metadata object.
FORMAT_VERSION = 1
#: Schema-metadata key of the Parquet layout.
PARQUET_KEY = b"lsched"
REQUIRED = ("arrival_s", "prompt_tokens", "output_tokens")
HASH_COLUMN = "prefix_hashes"
#: Every column a native file may have, in the order they are written.
NATIVE_COLUMNS = (*REQUIRED, *OPTIONAL_COLUMNS, HASH_COLUMN)
_INT_COLUMNS = ("prompt_tokens", "output_tokens", "predicted_output_tokens", "priority")
_FLOAT_COLUMNS = ("arrival_s", "ttft_deadline_s", "tpot_deadline_s")
_STRING_COLUMNS = ("tenant", "adapter")
#: pandas < 3 parses floats with a fast, not always correctly rounded, routine
#: unless asked; pandas 3 rounds correctly by default and deprecates the option.
_ROUND_TRIP: dict[str, Any] = (
    {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}
)


# -- metadata ---------------------------------------------------------------------


def _metadata_json(instance: Instance) -> str:
    record = {"lsched_trace": FORMAT_VERSION, **instance.metadata}
    try:
        # ASCII keeps the line a single line whatever the strings hold
        return json.dumps(record, ensure_ascii=True, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"cannot write the metadata as JSON: {exc}; expected JSON-like values "
            "(dict, list, str, int, float, bool, None)",
            field="params",
        ) from None


def _parse_metadata(text: str, file: str, line: int | None) -> dict[str, Any]:
    """Check the metadata object and return Instance keyword arguments."""

    def bad(message: str, field: str = "metadata") -> InputError:
        return InputError(message, file=file, line=line, field=field)

    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad(f"not JSON ({exc.msg}); expected one JSON object") from None
    if not isinstance(record, dict):
        raise bad(f"got a JSON {type(record).__name__}; expected a JSON object")
    version = record.get("lsched_trace")
    if version != FORMAT_VERSION:
        raise bad(
            f"got lsched_trace={version!r}; expected {FORMAT_VERSION}",
            "lsched_trace",
        )
    expected = {
        "name": (str,),
        "source": (str, type(None)),
        "family": (str, type(None)),
        "seed": (int, type(None)),
        "params": (dict,),
    }
    metadata: dict[str, Any] = {}
    for key, types in expected.items():
        if key not in record:
            raise bad(f"missing key {key!r}; expected {sorted(expected)}", key)
        value = record[key]
        if not isinstance(value, types) or isinstance(value, bool):
            names = " or ".join(
                "null" if t is type(None) else t.__name__ for t in types
            )
            raise bad(f"got {value!r}; expected {names}", key)
        metadata[key] = value
    unknown = set(record) - set(expected) - {"lsched_trace"}
    if unknown:
        raise bad(f"unknown key(s) {sorted(unknown)}; expected {sorted(expected)}")
    return metadata


def _default_metadata(path: Path) -> dict[str, Any]:
    return {
        "name": path.stem,
        "source": str(path),
        "family": None,
        "seed": None,
        "params": {},
    }


def _check_header(names: list[str], file: str, line: int | None) -> None:
    for name in REQUIRED:
        if name not in names:
            raise InputError(
                f"missing column {name!r}; found columns {names}, expected "
                f"{list(REQUIRED)} and optionally {list(NATIVE_COLUMNS[3:])}",
                file=file,
                line=line,
                field=name,
            )
    for name in names:
        if name not in NATIVE_COLUMNS:
            raise InputError(
                f"unknown column {name!r}; expected only {list(NATIVE_COLUMNS)}",
                file=file,
                line=line,
                field=name,
            )


def _typed_columns(raw: dict[str, Any], rows: RowLocator) -> dict[str, np.ndarray]:
    columns: dict[str, np.ndarray] = {}
    for name, values in raw.items():
        if name in _FLOAT_COLUMNS:
            columns[name] = float_column(values, name, rows)
        elif name in _INT_COLUMNS:
            columns[name] = integer_column(values, name, rows)
        elif name in _STRING_COLUMNS:
            columns[name] = string_column(values, name, rows)
    return columns


# -- CSV --------------------------------------------------------------------------


def _join_hashes(offsets: IntArray, values: IntArray) -> pa.Array:
    """Each request's hashes as one space-separated string (vectorised in Arrow)."""
    lists = pa.LargeListArray.from_arrays(
        pa.array(offsets), pa.array(values).cast(pa.string())
    )
    return pc.binary_join(lists, " ")


def _split_hashes(raw: pd.Series, rows: RowLocator) -> tuple[IntArray, IntArray]:
    """Parse space-separated hash lists into CSR ``(offsets, values)``."""
    strings = string_column(raw, HASH_COLUMN, rows)
    trimmed = pc.utf8_trim_whitespace(pa.array(strings, type=pa.string()))
    lists = pc.utf8_split_whitespace(trimmed)
    # an empty field splits into [""]: it has no hashes
    lengths = np.where(
        trimmed.to_numpy(zero_copy_only=False) == "",
        0,
        pc.list_value_length(lists).to_numpy(zero_copy_only=False),
    ).astype(np.int64)
    flat = pc.list_flatten(lists).to_numpy(zero_copy_only=False)
    flat = flat[flat != ""]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, integer_column(flat, HASH_COLUMN, _per_value(rows, offsets))


def _per_value(rows: RowLocator, offsets: IntArray) -> RowLocator:
    """A locator for the flattened values of a CSR column: each at its row's line."""
    row_of_value = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    return RowLocator(rows.file, rows.lines[row_of_value], rows.unit)


def write_csv(instance: Instance, path: str | os.PathLike[str]) -> None:
    """Write ``instance`` as native CSV, atomically (temp file + rename)."""
    arrays: dict[str, pa.Array] = {
        name: pa.array(column) for name, column in instance.columns().items()
    }
    if instance.prefix_hash_offsets is not None:
        assert instance.prefix_hash_values is not None
        arrays[HASH_COLUMN] = _join_hashes(
            instance.prefix_hash_offsets, instance.prefix_hash_values
        )
    header = f"{CSV_MAGIC} {_metadata_json(instance)}\n"
    with atomic_target(path) as temporary, open(temporary, "wb") as stream:
        stream.write(header.encode("ascii"))
        # Arrow's C++ writer (about 7x pandas.to_csv): shortest round-trip floats,
        # every string and header name double-quoted, so any tenant text survives
        pa_csv.write_csv(pa.table(arrays), stream)


def read_csv(
    path: str | os.PathLike[str], *, drop_failed: bool = False
) -> tuple[Instance, int, int]:
    """Read a native CSV trace.

    Returns
    -------
    (instance, rows read, rows dropped as failed)

    Raises
    ------
    InputError
        Bad metadata, a missing or unknown column, or a bad value (located).
    """
    path = Path(path)
    file = str(path)
    try:
        with open(path, encoding="utf-8", newline="") as stream:
            first = stream.readline()
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text; expected a CSV file", file=file) from None
    refuse_nul(path, "a CSV file")  # the parser would end a field at it: 4\0 -> 4
    header_line = 1
    metadata = _default_metadata(path)
    if first.startswith(CSV_MAGIC):
        metadata = _parse_metadata(first[len(CSV_MAGIC) :], file, 1)
        header_line = 2
    strings = {**dict.fromkeys(_STRING_COLUMNS, str), HASH_COLUMN: str}
    exact = {
        **strings,
        **dict.fromkeys(_FLOAT_COLUMNS, "float64"),
        **dict.fromkeys(_INT_COLUMNS, "int64"),
    }
    # the metadata line is JSON, not CSV: start pandas after it (with skiprows
    # pandas would still tokenise it, and a quoted "," in it would eat the header)
    skip = len(first.encode("utf-8")) if header_line == 2 else 0

    def read(dtype: dict[str, Any]) -> pd.DataFrame:
        with open(path, "rb") as stream:
            stream.seek(skip)
            return pd.read_csv(
                stream,
                dtype=dtype,
                keep_default_na=False,
                skip_blank_lines=False,
                encoding="utf-8",
                **_ROUND_TRIP,
            )

    try:
        try:
            # typed read: fast, and "-0" stays -0.0 (inferred it would be int 0)
            frame = read(exact)
        except (ValueError, OverflowError):
            # a bad value somewhere: read as text and let the checks locate it
            frame = read(strings)
    except pd.errors.EmptyDataError:
        raise InputError(
            "no header line; expected 'arrival_s,prompt_tokens,output_tokens,...'",
            file=file,
            line=header_line,
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot parse as CSV: {exc}", file=file) from None
    _check_header([str(c) for c in frame.columns], file, header_line)
    frame = drop_trailing_blank_rows(frame)
    if len(frame) == 0:
        raise InputError(
            "a header but no requests; expected at least one data row",
            file=file,
            line=header_line + 1,
        )
    rows = RowLocator.consecutive(file, header_line + 1, len(frame))
    columns = _typed_columns({c: frame[c] for c in frame.columns}, rows)
    hashes = _split_hashes(frame[HASH_COLUMN], rows) if HASH_COLUMN in frame else None
    instance, dropped = build_instance(
        columns, rows, metadata, hashes=hashes, drop_failed=drop_failed
    )
    return instance, len(frame), dropped


def drop_trailing_blank_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Remove the empty rows that trailing blank lines make.

    Interior blank lines stay, so that they are reported at their line. Only the
    tail is inspected: a loop over the few trailing rows, not over the table.
    """
    end = len(frame)
    while end > 0:
        row = frame.iloc[end - 1]
        if not all(pd.isna(v) or v == "" for v in row.tolist()):
            break
        end -= 1
    return frame if end == len(frame) else frame.iloc[:end]


# -- Parquet ----------------------------------------------------------------------


def write_parquet(
    instance: Instance,
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[bytes, bytes] | None = None,
) -> None:
    """Write ``instance`` as native Parquet, atomically (temp file + rename);
    ``metadata``: further schema-metadata entries (not :data:`PARQUET_KEY`)."""
    arrays: dict[str, pa.Array] = {
        name: pa.array(column) for name, column in instance.columns().items()
    }
    if instance.prefix_hash_offsets is not None:
        assert instance.prefix_hash_values is not None
        arrays[HASH_COLUMN] = pa.LargeListArray.from_arrays(
            pa.array(instance.prefix_hash_offsets),
            pa.array(instance.prefix_hash_values),
        )
    table = pa.table(arrays)
    table = table.replace_schema_metadata(
        {**(metadata or {}), PARQUET_KEY: _metadata_json(instance).encode("ascii")}
    )
    with atomic_target(path) as temporary:
        pq.write_table(table, temporary)


def _list_column(
    column: pa.ChunkedArray, rows: RowLocator
) -> tuple[IntArray, IntArray]:
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not pa.types.is_list(array.type) and not pa.types.is_large_list(array.type):
        raise InputError(
            f"got type {array.type}; expected a list of int64",
            file=rows.file,
            field=HASH_COLUMN,
        )
    nulls = array.is_null().to_numpy(zero_copy_only=False)
    if nulls.any():
        raise rows.error(
            int(np.flatnonzero(nulls)[0]),
            HASH_COLUMN,
            "got null; expected a list of hashes",
        )
    offsets = np.asarray(array.offsets, dtype=np.int64)
    offsets = offsets - offsets[0]  # a sliced array's offsets need not start at 0
    flat = array.flatten()
    if flat.null_count:
        j = int(np.flatnonzero(flat.is_null().to_numpy(zero_copy_only=False))[0])
        k = int(np.searchsorted(offsets, j, side="right")) - 1
        raise rows.error(k, HASH_COLUMN, "got a null hash; expected integers")
    values = integer_column(
        flat.to_numpy(zero_copy_only=False), HASH_COLUMN, _per_value(rows, offsets)
    )
    return offsets, values


def read_parquet(
    path: str | os.PathLike[str], *, drop_failed: bool = False
) -> tuple[Instance, int, int]:
    """Read a native Parquet trace (columns named as in the CSV layout).

    Returns
    -------
    (instance, rows read, rows dropped as failed)
    """
    path = Path(path)
    file = str(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, ValueError) as exc:
        raise InputError(f"not a readable Parquet file: {exc}", file=file) from None
    raw_metadata = (table.schema.metadata or {}).get(PARQUET_KEY)
    metadata = (
        _default_metadata(path)
        if raw_metadata is None
        else _parse_metadata(raw_metadata.decode("utf-8", "replace"), file, None)
    )
    _check_header(table.column_names, file, None)
    if table.num_rows == 0:
        raise InputError("no rows; expected at least one request", file=file)
    rows = RowLocator.consecutive(file, 1, table.num_rows, "row")
    raw = {
        name: table.column(name).to_numpy()
        for name in table.column_names
        if name != HASH_COLUMN
    }
    columns = _typed_columns(raw, rows)
    hashes = (
        _list_column(table.column(HASH_COLUMN), rows)
        if HASH_COLUMN in table.column_names
        else None
    )
    instance, dropped = build_instance(
        columns, rows, metadata, hashes=hashes, drop_failed=drop_failed
    )
    return instance, table.num_rows, dropped
