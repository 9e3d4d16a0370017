"""Detect a trace file's format from its first bytes.

Rules, in order:

1. the Parquet magic ``PAR1`` at offset 0 -> ``parquet``;
2. a first line starting ``# lsched`` -> ``csv`` (lsched's native CSV);
3. a first line that is a JSON object with keys ``timestamp``, ``input_length``
   and ``output_length`` -> ``mooncake``;
4. a CSV header holding every column of a format -> that format (native
   ``arrival_s,prompt_tokens,output_tokens`` is tried first);
5. a CSV header holding the *time column* of a format but not all its columns
   -> that format, so that its reader reports the missing column by name
   (``TIMESTAMP,ContextTokens`` is an Azure trace without ``GeneratedTokens``).

Anything else is an :class:`~lsched.errors.InputError` listing the known formats;
``format=`` (``--format``) skips detection.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from lsched.errors import InputError
from lsched.traces.formats import SPECS
from lsched.traces.native import CSV_MAGIC, REQUIRED

PARQUET_MAGIC = b"PAR1"

#: Every readable format with a one-line description, in the order detection tries.
FORMAT_DESCRIPTIONS: dict[str, str] = {
    **{spec.name: spec.description for spec in SPECS.values()},
    "csv": "lsched native CSV",
    "parquet": "lsched native Parquet",
}
FORMATS: tuple[str, ...] = tuple(FORMAT_DESCRIPTIONS)
#: Formats that :func:`lsched.traces.write_trace` writes.
WRITE_FORMATS: tuple[str, ...] = ("csv", "parquet")


def known_formats() -> str:
    """``"azure (Azure ... CSV), burstgpt (...), ..."`` for error messages."""
    return ", ".join(f"{name} ({text})" for name, text in FORMAT_DESCRIPTIONS.items())


def normalise_format(name: str, allowed: tuple[str, ...] = FORMATS) -> str:
    """Return the canonical format name, or raise listing the allowed ones."""
    canonical = name.strip().lower()
    if canonical not in allowed:
        listing = known_formats() if allowed == FORMATS else ", ".join(allowed)
        raise InputError(
            f"unknown trace format {name!r}; expected one of: {listing}",
            field="format",
        )
    return canonical


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of the trace at ``path`` (rules in the module docstring).

    Raises
    ------
    InputError
        For an empty file or a first line that matches no format.
    """
    file = str(path)
    with open(path, "rb") as stream:
        head = stream.read(1 << 16)
    if not head:
        raise InputError(
            f"the file is empty; expected a trace in one of: {known_formats()}",
            file=file,
            line=1,
        )
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    first_bytes = head.split(b"\n", 1)[0]
    try:
        first = first_bytes.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        first = ""  # not text: undetectable, reported below
    if first.startswith(CSV_MAGIC):
        return "csv"
    if first.startswith("{"):
        try:
            record = json.loads(first)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            for spec in SPECS.values():
                if spec.jsonl and set(spec.columns) <= set(record):
                    return spec.name
    elif first:
        names = {n.strip() for n in next(csv.reader(io.StringIO(first)), [])}
        if set(REQUIRED) <= names:
            return "csv"
        csv_specs = [spec for spec in SPECS.values() if not spec.jsonl]
        for spec in csv_specs:
            if set(spec.columns) <= names:
                return spec.name
        if "arrival_s" in names:
            return "csv"
        for spec in csv_specs:
            if spec.time_column in names:
                return spec.name
    shown = first_bytes[:80].decode("utf-8", "replace")
    raise InputError(
        f"cannot tell the trace format from {shown!r}; known formats: "
        f"{known_formats()}; name one with format= (--format)",
        file=file,
        line=1,
    )


def format_from_suffix(path: str | os.PathLike[str]) -> str:
    """``csv`` or ``parquet`` from a file name's suffix, for writing."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise InputError(
        f"cannot tell the output format from the suffix {suffix!r}; expected "
        "'.csv' or '.parquet', or give format='csv' / 'parquet' (--to)",
        file=str(path),
    )
