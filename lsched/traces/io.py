"""The two front doors: :func:`read_trace` and :func:`write_trace`.

``read_trace`` detects (or is told) the format, reads the file with that format's
reader, then applies the transformations of :mod:`lsched.traces.transform` in their
fixed order (window, limit, rate scale, clip) and says in a :class:`ReadReport`
what it read, dropped and clipped. ``write_trace`` writes lsched's native CSV or
Parquet (lossless, atomic).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from lsched.checks import check_path
from lsched.errors import InputError
from lsched.instance import Instance
from lsched.traces import native
from lsched.traces.detect import (
    WRITE_FORMATS,
    detect_format,
    format_from_suffix,
    normalise_format,
)
from lsched.traces.formats import SPECS, read_csv_trace, read_jsonl_trace
from lsched.traces.transform import apply_transforms, check_options

if TYPE_CHECKING:
    from lsched.provenance import Provenance

Reader = Callable[..., tuple[Instance, int, int]]


@dataclass(frozen=True)
class ReadReport:
    """What :func:`read_trace` did.

    Attributes
    ----------
    format
        The format read (detected or forced).
    path
        The file, as given.
    rows_read
        Data rows (CSV records, JSON lines, Parquet rows) in the file.
    dropped_failed
        Rows dropped as failed (a zero prompt or output length; ``drop_failed``).
    dropped_window
        Requests outside ``[start_s, end_s)``.
    dropped_limit
        Requests beyond the first ``limit`` of the window.
    clipped
        Requests whose prompt or output was clipped to ``max_model_len``.
    num_requests
        Requests in the returned instance:
        ``rows_read - dropped_failed - dropped_window - dropped_limit``.
    """

    format: str
    path: str
    rows_read: int
    dropped_failed: int
    dropped_window: int
    dropped_limit: int
    clipped: int
    num_requests: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _reader(name: str) -> Reader:
    if name == "csv":
        return native.read_csv
    if name == "parquet":
        return native.read_parquet
    spec = SPECS[name]
    read = read_jsonl_trace if spec.jsonl else read_csv_trace
    return lambda path, drop_failed: read(path, spec, drop_failed=drop_failed)


def read_trace(
    path: str | os.PathLike[str],
    format: str | None = None,
    *,
    limit: int | None = None,
    start_s: float | None = None,
    end_s: float | None = None,
    rate_scale: float = 1.0,
    max_model_len: int | None = None,
    drop_failed: bool = False,
) -> tuple[Instance, ReadReport]:
    """Read a trace file into an :class:`~lsched.instance.Instance`.

    Parameters
    ----------
    path
        The trace file.
    format
        One of :data:`lsched.traces.FORMATS`; detected from the file when ``None``.
    limit, start_s, end_s, rate_scale, max_model_len
        Transformations, applied in the order window, limit, rate scale, clip
        (:mod:`lsched.traces.transform`).
    drop_failed
        Drop rows with a zero prompt or output length (failed requests) instead
        of raising; they are counted in the report.

    Returns
    -------
    (instance, report)

    Raises
    ------
    InputError
        Unknown format, undetectable file, or bad content, located by file, line
        and field.
    """
    check_options(
        limit=limit,
        start_s=start_s,
        end_s=end_s,
        rate_scale=rate_scale,
        max_model_len=max_model_len,
    )
    path = check_path(path, "path")
    try:
        name = None if format is None else normalise_format(format)
    except InputError as exc:
        raise exc.located(file=str(path)) from None
    if not path.is_file():
        what = "a directory" if path.is_dir() else "no such file"
        raise InputError(f"{what}; expected a trace file", file=str(path))
    if name is None:
        name = detect_format(path)
    instance, rows_read, dropped_failed = _reader(name)(path, drop_failed=drop_failed)
    try:
        instance, counts = apply_transforms(
            instance,
            limit=limit,
            start_s=start_s,
            end_s=end_s,
            rate_scale=rate_scale,
            max_model_len=max_model_len,
        )
    except InputError as exc:
        raise exc.located(file=str(path)) from None
    report = ReadReport(
        format=name,
        path=str(path),
        rows_read=rows_read,
        dropped_failed=dropped_failed,
        dropped_window=counts.dropped_window,
        dropped_limit=counts.dropped_limit,
        clipped=counts.clipped,
        num_requests=len(instance),
    )
    return instance, report


def write_trace(
    instance: Instance,
    path: str | os.PathLike[str],
    format: str | None = None,
    *,
    provenance: Provenance | Mapping[str, Any] | None = None,
) -> None:
    """Write ``instance`` in lsched's native CSV or Parquet, atomically.

    Parameters
    ----------
    instance
        What to write; every column and the metadata survive a read back.
    path
        Destination; written to a temporary file beside it, then renamed.
    format
        ``"csv"`` or ``"parquet"``; from the suffix of ``path`` when ``None``.
    provenance
        A record of what made the file (:mod:`lsched.provenance`): in the Parquet
        schema metadata, or in a sidecar beside the CSV. Reading ignores it.

    Raises
    ------
    InputError
        For a format lsched cannot write or a suffix it cannot read a format from.
    """
    name = (
        format_from_suffix(path)
        if format is None
        else normalise_format(format, WRITE_FORMATS)
    )
    from lsched import provenance as records

    if name == "csv":
        native.write_csv(instance, path)
        if provenance is not None:
            records.write_sidecar(path, provenance)
    else:
        extra = None if provenance is None else records.parquet_metadata(provenance)
        native.write_parquet(instance, path, metadata=extra)
