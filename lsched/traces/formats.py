"""Readers for foreign trace formats: one declarative spec per format.

Every reader yields arrivals in **seconds since the first request**
(``arrival_s[0] == 0``); the first raw timestamp is kept in
``params["time_origin"]``, so nothing is lost. The spec names the file's columns
for time, prompt length and output length; other columns are ignored.

==========  ============================================  =========================
format      columns (time, prompt, output)                time unit
==========  ============================================  =========================
azure       ``TIMESTAMP, ContextTokens, GeneratedTokens``  ISO date-time, up to 7
                                                           (.NET 100 ns) fractional
                                                           digits, optional offset
burstgpt    ``Timestamp, Request tokens, Response          seconds
            tokens`` (+ ``Model, Total tokens, Log Type``)
vidur       ``arrived_at, num_prefill_tokens,              seconds
            num_decode_tokens``
splitwise   ``arrival_timestamp, prompt_size, token_size`` seconds
            (+ ``request_id, request_type,
            application_id, batch_size``)
mooncake    JSONL: ``timestamp, input_length,              milliseconds
            output_length[, hash_ids]``
==========  ============================================  =========================

Sources: Azure LLM inference trace 2023/2024 (Patel et al., "Splitwise: Efficient
generative LLM inference using phase splitting", ISCA 2024; Azure/AzurePublicDataset,
CC-BY 4.0). BurstGPT (Wang et al., "BurstGPT: A real-world workload dataset to
optimize LLM serving systems", 2024; HPMLL/BurstGPT README: failed requests are the
rows whose ``Response tokens`` is 0). Vidur (Agrawal et al., "Vidur: A large-scale
simulation framework for LLM inference", MLSys 2024; its trace request generator
reads ``arrived_at, num_prefill_tokens, num_decode_tokens``). splitwise-sim
(Mutinifni/splitwise-sim, ``load_trace`` reads
``request_id,request_type,application_id,arrival_timestamp,batch_size,prompt_size,
token_size``). Mooncake (Qin et al., "Mooncake: A KVCache-centric disaggregated
architecture for LLM serving", FAST 2025; kvcache-ai/Mooncake traces: ``hash_ids``
are hashes of 512-token prompt blocks, recorded as
``params["prefix_block_tokens"] = 512``).

Prefix hashes (Mooncake's ``hash_ids``) are checked as they are read: each must
be a JSON integer of 64 bits, and a request of ``s`` prompt tokens must have
``ceil(s / 512)`` of them, one per block, the last block possibly partial (every
line of Mooncake's synthetic trace does). Anything else is an error naming the
file, line and field.

Failed rows: with ``drop_failed`` a row whose prompt or output length is exactly 0
is dropped and counted (BurstGPT marks failures so); otherwise it is an error that
suggests the option. Negative, fractional and non-numeric lengths are always errors.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lsched.checks import refuse_nul
from lsched.errors import InputError
from lsched.instance import Instance
from lsched.traces.native import drop_trailing_blank_rows
from lsched.traces.validate import (
    RowLocator,
    build_instance,
    float_column,
    integer_column,
    require,
    require_nondecreasing,
    subset_csr,
)

#: Mooncake's prefix hash block, in tokens (kvcache-ai/Mooncake FAST'25 traces).
MOONCAKE_BLOCK_TOKENS = 512
#: The range of a hash stored as int64.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class TraceSpec:
    """How one foreign format names and encodes its columns.

    Parameters
    ----------
    name
        The format's name (``--format`` value).
    time_column, prompt_column, output_column
        The file's column (or JSON key) names.
    time_unit
        ``"datetime"`` (ISO date-time strings), ``"s"`` or ``"ms"``.
    description
        One line for help texts and error messages.
    jsonl
        JSON Lines rather than CSV.
    hash_column
        JSON key of prefix block hashes, if the format has them.
    block_tokens
        Tokens per prefix hash block.
    """

    name: str
    time_column: str
    prompt_column: str
    output_column: str
    time_unit: str
    description: str
    jsonl: bool = False
    hash_column: str | None = None
    block_tokens: int | None = None

    @property
    def columns(self) -> tuple[str, str, str]:
        return (self.time_column, self.prompt_column, self.output_column)


SPECS: dict[str, TraceSpec] = {
    spec.name: spec
    for spec in (
        TraceSpec(
            "azure",
            "TIMESTAMP",
            "ContextTokens",
            "GeneratedTokens",
            "datetime",
            "Azure LLM inference trace 2023/2024 CSV",
        ),
        TraceSpec(
            "burstgpt",
            "Timestamp",
            "Request tokens",
            "Response tokens",
            "s",
            "BurstGPT CSV",
        ),
        TraceSpec(
            "mooncake",
            "timestamp",
            "input_length",
            "output_length",
            "ms",
            "Mooncake JSONL",
            jsonl=True,
            hash_column="hash_ids",
            block_tokens=MOONCAKE_BLOCK_TOKENS,
        ),
        TraceSpec(
            "vidur",
            "arrived_at",
            "num_prefill_tokens",
            "num_decode_tokens",
            "s",
            "Vidur trace CSV",
        ),
        TraceSpec(
            "splitwise",
            "arrival_timestamp",
            "prompt_size",
            "token_size",
            "s",
            "splitwise-sim trace CSV",
        ),
    )
}


def _metadata(
    path: Path, spec: TraceSpec, origin: Any, drop_failed: bool, dropped: int
) -> dict[str, Any]:
    params: dict[str, Any] = {"trace_format": spec.name, "time_origin": origin}
    if spec.block_tokens is not None:
        params["prefix_block_tokens"] = spec.block_tokens
    if drop_failed:
        params["dropped_failed"] = dropped
    return {
        "name": path.stem,
        "source": str(path),
        "family": None,
        "seed": None,
        "params": params,
    }


def _times_ns(raw: pd.Series, spec: TraceSpec, rows: RowLocator) -> np.ndarray:
    """Parse date-times to int64 nanoseconds since the epoch (UTC)."""
    parsed = pd.to_datetime(raw, format="ISO8601", utc=True, errors="coerce")
    bad = parsed.isna().to_numpy()
    require(
        bad,
        raw.to_numpy(dtype=object),
        spec.time_column,
        rows,
        "a date-time like '2023-11-16 18:17:03.9799600'",
    )
    return parsed.dt.as_unit("ns").astype("int64").to_numpy()


def _hash_values(flat: np.ndarray, field: str, rows: RowLocator) -> np.ndarray:
    """Block hashes as int64: JSON integers within 64 bits, nothing else.

    Stricter than a length column (:func:`integer_column` takes ``12.0`` and
    ``"12"``): a hash is an identifier, and one written as a float above 2**53
    has lost digits, so a float, a string or a boolean is refused.
    """
    bad = np.fromiter(
        (type(h) is not int or not _INT64_MIN <= h <= _INT64_MAX for h in flat),
        bool,
        len(flat),
    )
    require(bad, flat, field, rows, "an integer hash (a JSON integer of 64 bits)")
    return np.array(flat.tolist(), dtype=np.int64)


def _check_hash_counts(
    offsets: np.ndarray, prompt_tokens: np.ndarray, spec: TraceSpec, rows: RowLocator
) -> None:
    """Each request has one hash per block of its prompt, ``ceil(s / B)``.

    A prompt of ``s`` tokens in blocks of ``B`` has ``ceil(s / B)`` blocks, the
    last one possibly partial (kvcache-ai/Mooncake's traces hash it too: every
    line of its synthetic trace has ``ceil(input_length / 512)`` hashes). Rows
    whose prompt is not ``>= 1`` are left to the length check.
    """
    assert spec.block_tokens is not None and spec.hash_column is not None
    block = spec.block_tokens
    counts = np.diff(offsets)
    expected = -(-prompt_tokens // block)
    bad = (counts != expected) & (prompt_tokens >= 1)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        s = int(prompt_tokens[k])
        raise rows.error(
            k,
            spec.hash_column,
            f"got {counts[k]} hashes for {s} prompt tokens "
            f"({spec.prompt_column}); expected ceil({s} / {block}) = {expected[k]}, "
            f"one per {block}-token block",
        )


def _finish(
    path: Path,
    spec: TraceSpec,
    times: Any,
    prompt: Any,
    output: Any,
    rows: RowLocator,
    *,
    drop_failed: bool,
    hashes: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[Instance, int]:
    """Lengths and times parsed from raw columns, failed rows dropped, rebased."""
    prompt_tokens = integer_column(prompt, spec.prompt_column, rows)
    output_tokens = integer_column(output, spec.output_column, rows)
    shown = times.to_numpy(dtype=object) if isinstance(times, pd.Series) else times
    dropped = 0
    if drop_failed:
        failed = (prompt_tokens == 0) | (output_tokens == 0)
        dropped = int(failed.sum())
        if dropped:
            keep = ~failed
            prompt_tokens, output_tokens = prompt_tokens[keep], output_tokens[keep]
            times, shown = times[keep], shown[keep]
            rows = rows.subset(keep)
            if hashes is not None:
                hashes = subset_csr(*hashes, keep)
        if len(prompt_tokens) == 0:
            raise InputError(
                f"no requests left after dropping {dropped} failed rows",
                file=rows.file,
            )
    if hashes is not None and spec.block_tokens is not None:
        _check_hash_counts(hashes[0], prompt_tokens, spec, rows)
    if isinstance(times, pd.Series):
        times = times.reset_index(drop=True)
    if spec.time_unit == "datetime":
        ns = _times_ns(times, spec, rows)
        require_nondecreasing(ns, spec.time_column, rows, shown)
        arrival_s = (ns - ns[0]) / 1e9
        origin: Any = str(shown[0])
    else:
        t = float_column(times, spec.time_column, rows)
        require(~np.isfinite(t), t, spec.time_column, rows, "a finite time")
        require_nondecreasing(t, spec.time_column, rows, shown)
        # divide (not multiply by 1e-3): correctly rounded seconds from integer ms
        arrival_s = (t - t[0]) / (1000.0 if spec.time_unit == "ms" else 1.0)
        origin = t[0].item()
    columns = {
        "arrival_s": arrival_s,
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
    }
    instance, _ = build_instance(
        columns,
        rows,
        _metadata(path, spec, origin, drop_failed, dropped),
        hashes=hashes,
        field_names=dict(
            zip(
                ("arrival_s", "prompt_tokens", "output_tokens"),
                spec.columns,
                strict=True,
            )
        ),
    )
    return instance, dropped


# -- CSV --------------------------------------------------------------------------


def read_header(path: Path, encoding: str = "utf-8-sig") -> list[str]:
    """The names in the first line of a CSV file, stripped of spaces."""
    with open(path, encoding=encoding, newline="") as stream:
        first = stream.readline()
    if not first.strip():
        raise InputError(
            "empty first line; expected a CSV header", file=str(path), line=1
        )
    return [name.strip() for name in next(csv.reader(io.StringIO(first)))]


def read_csv_trace(
    path: str | os.PathLike[str], spec: TraceSpec, *, drop_failed: bool = False
) -> tuple[Instance, int, int]:
    """Read a foreign CSV trace described by ``spec``.

    Returns
    -------
    (instance, rows read, rows dropped as failed)
    """
    path = Path(path)
    file = str(path)
    try:
        names = read_header(path)
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text; expected a CSV file", file=file) from None
    refuse_nul(path, "a CSV file")  # the parser would end a field at it: 4\0 -> 4
    for column in spec.columns:
        if column not in names:
            raise InputError(
                f"missing column {column!r}; found columns {names}, a {spec.name} "
                f"trace ({spec.description}) has {list(spec.columns)}",
                file=file,
                line=1,
                field=column,
            )
    wanted = set(spec.columns)
    time_dtype = str if spec.time_unit == "datetime" else None
    try:
        frame = pd.read_csv(
            path,
            usecols=lambda name: name.strip() in wanted,
            dtype={spec.time_column: time_dtype} if time_dtype else None,
            keep_default_na=False,
            skip_blank_lines=False,
            encoding="utf-8-sig",
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot parse as CSV: {exc}", file=file) from None
    frame.columns = [str(name).strip() for name in frame.columns]
    frame = drop_trailing_blank_rows(frame)
    if len(frame) == 0:
        raise InputError(
            "a header but no requests; expected at least one data row",
            file=file,
            line=2,
        )
    rows = RowLocator.consecutive(file, 2, len(frame))
    instance, dropped = _finish(
        path,
        spec,
        frame[spec.time_column],
        frame[spec.prompt_column],
        frame[spec.output_column],
        rows,
        drop_failed=drop_failed,
    )
    return instance, len(frame), dropped


# -- JSONL ------------------------------------------------------------------------


def read_jsonl_trace(
    path: str | os.PathLike[str], spec: TraceSpec, *, drop_failed: bool = False
) -> tuple[Instance, int, int]:
    """Read a JSON Lines trace (one object per line; blank lines are skipped).

    Parsing is one ``json.loads`` per line; every check after that is vectorised.

    Returns
    -------
    (instance, rows read, rows dropped as failed)
    """
    path = Path(path)
    file = str(path)
    records: list[Any] = []
    numbers: list[int] = []
    with open(path, "rb") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                detail = (
                    exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
                )
                raise InputError(
                    f"not JSON ({detail}): {line[:60].decode('utf-8', 'replace')!r}; "
                    "expected one JSON object per line",
                    file=file,
                    line=number,
                ) from None
            numbers.append(number)
    if not records:
        raise InputError(
            f"no JSON lines; expected one object per line with keys "
            f"{list(spec.columns)}",
            file=file,
            line=1,
        )
    rows = RowLocator(file, np.asarray(numbers, dtype=np.int64))
    not_object = np.fromiter(
        (not isinstance(r, dict) for r in records), bool, len(records)
    )
    if not_object.any():
        k = int(np.flatnonzero(not_object)[0])
        raise rows.error(
            k, None, f"got a JSON {type(records[k]).__name__}; expected a JSON object"
        )

    def column(key: str) -> np.ndarray:
        values = np.empty(len(records), dtype=object)
        values[:] = [r.get(key) for r in records]
        absent = np.fromiter((key not in r for r in records), bool, len(records))
        if absent.any():
            k = int(np.flatnonzero(absent)[0])
            raise rows.error(
                k,
                key,
                f"missing key {key!r}; found keys "
                f"{sorted(records[k])}, expected {list(spec.columns)}",
            )
        return values

    times, prompt, output = (column(key) for key in spec.columns)
    hashes = None
    if spec.hash_column is not None and spec.hash_column in records[0]:
        lists = column(spec.hash_column)
        not_list = np.fromiter(
            (not isinstance(h, list) for h in lists), bool, len(lists)
        )
        if not_list.any():
            k = int(np.flatnonzero(not_list)[0])
            raise rows.error(
                k, spec.hash_column, f"got {lists[k]!r}; expected a list of integers"
            )
        lengths = np.fromiter(map(len, lists), np.int64, len(lists))
        offsets = np.zeros(len(lists) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.empty(int(offsets[-1]), dtype=object)
        flat[:] = [h for hs in lists for h in hs]
        row_of_value = np.repeat(np.arange(len(lists)), lengths)
        values = _hash_values(
            flat, spec.hash_column, RowLocator(file, rows.lines[row_of_value])
        )
        hashes = (offsets, values)
    instance, dropped = _finish(
        path, spec, times, prompt, output, rows, drop_failed=drop_failed, hashes=hashes
    )
    return instance, len(records), dropped
