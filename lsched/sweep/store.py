"""Sweep results on disk (:mod:`lsched.sweep`): part files and the Parquet file.

Each finished case is written as its own part file (:func:`write_part`) through an
atomic rename; :func:`consolidate` folds the parts into the results file, and
:func:`load_results` reads both at any time, one row per ``case_id``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from lsched.atomic import atomic_target, check_output
from lsched.errors import InputError

#: Columns every row has, in this order; metrics of policies follow, sorted.
BASE_COLUMNS: tuple[str, ...] = (
    "case_id",
    "instance",
    "profile",
    "method",
    "kind",
    "objective",
    "status",
    "objective_value",
    "bound",
    "gap",
    "runtime_s",
    "num_requests",
    "replicas",
    "kv_capacity_tokens",
    "iterations",
    "solver",
    "solver_objective",
    "slot_s",
    "error",
    "provenance",
)
#: Columns that change from one run of a case to the next (wall-clock times, and
#: the provenance, which holds the run's start time).
TIMING_COLUMNS: tuple[str, ...] = ("runtime_s", "provenance")
#: Text columns among :data:`BASE_COLUMNS`; the others are numbers.
_TEXT_COLUMNS = frozenset(
    {"case_id", "instance", "profile", "method", "kind", "objective", "status"}
    | {"solver", "error", "provenance"}
)


def check_out(path: Path, inputs: Iterable[Path] = ()) -> None:
    """Check that ``path`` is a ``.parquet`` file in an existing, writable folder
    and none of ``inputs`` (:func:`lsched.atomic.check_output`)."""
    if path.suffix.lower() != ".parquet":
        raise InputError(
            f"got suffix {path.suffix.lower()!r}; expected .parquet", field="out"
        )
    check_output(path, inputs, "out")


def parts_dir(out: str | os.PathLike[str]) -> Path:
    """The folder of per-case part files beside ``out``: ``<out>.parts``."""
    out = Path(out)
    return out.with_name(f"{out.name}.parts")


def _normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Every base column, in order, with fixed dtypes; metrics after, sorted."""
    frame = frame.copy()
    for column in BASE_COLUMNS:
        if column not in frame:
            frame[column] = None
    for column in BASE_COLUMNS:
        if column in _TEXT_COLUMNS:
            values = frame[column].astype(object)
            frame[column] = values.where(values.notna(), None)
        else:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(
                "float64"
            )
    extra = sorted(c for c in frame.columns if c not in BASE_COLUMNS)
    for column in extra:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    frame = frame[[*BASE_COLUMNS, *extra]].reset_index(drop=True)
    # through Arrow and back: the dtypes pandas.read_parquet gives for the file
    # (text as this pandas' default string dtype), so both views compare equal
    return pa.Table.from_pandas(frame, preserve_index=False).to_pandas()


def _write_frame(path: Path, frame: pd.DataFrame) -> None:
    with atomic_target(path) as temporary:
        frame.to_parquet(temporary, index=False)


def write_part(out: str | os.PathLike[str], row: Mapping[str, Any]) -> Path:
    """Write one finished case's row atomically as its own part file."""
    folder = parts_dir(out)
    folder.mkdir(exist_ok=True)
    path = folder / f"part-{row['case_id']}.parquet"
    _write_frame(path, _normalise(pd.DataFrame([dict(row)])))
    return path


def _part_files(out: Path) -> list[Path]:
    folder = parts_dir(out)
    # temporaries are hidden (".part-...tmp"): only complete parts match
    return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []


def _read_stored(path: Path) -> pd.DataFrame:
    import pyarrow.lib

    try:
        frame = pd.read_parquet(path)
    except (pyarrow.lib.ArrowException, ValueError) as exc:
        raise InputError(
            f"cannot read it ({exc}); expected sweep results (Parquet)", file=path
        ) from None
    if "case_id" not in frame.columns:
        raise InputError(
            "has no case_id column; expected sweep results, not another file",
            file=path,
        )
    return frame


def load_results(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Every finished case under ``path``: the consolidated file and the parts.

    One row per ``case_id`` (a part wins over the consolidated file), sorted by
    ``case_id``; columns :data:`BASE_COLUMNS`, then the metrics. Empty (with the
    base columns) when nothing was written yet. Safe to call while a sweep runs.

    Raises
    ------
    InputError
        If a file there is not sweep results.
    """
    path = Path(path)
    frames = [_read_stored(path)] if path.is_file() else []
    for part in _part_files(path):
        with contextlib.suppress(FileNotFoundError):  # consolidated meanwhile
            frames.append(_read_stored(part))
    if not frames:
        return _normalise(pd.DataFrame(columns=list(BASE_COLUMNS)))
    frame = pd.concat([_normalise(f) for f in frames], ignore_index=True)
    frame = frame.drop_duplicates("case_id", keep="last")
    return _normalise(frame.sort_values("case_id", kind="stable"))


def consolidate(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Fold the part files into ``path`` atomically, then delete those parts.

    A crash in between leaves a part and its consolidated row: both say the same,
    and :func:`load_results` keeps one.
    """
    path = Path(path)
    parts = _part_files(path)
    frame = load_results(path)
    if parts or not path.is_file():
        _write_frame(path, frame)
    for part in parts:
        part.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: someone else's part or temp
        parts_dir(path).rmdir()
    return frame
