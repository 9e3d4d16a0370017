"""Provenance: what made a result, recorded in every result and written file.

A :class:`Provenance` record says which lsched made a result, when (UTC), from
which command line (the arguments as given), from which input files (each with
the SHA-256 of its bytes: the trace, the deployment profile's TOML, shipped ones
included, the cluster file, the sweep config, ...), under which policies (their
labels, ``name[:key=value,...]``), seeds and time limits. It is built once per
run, when the inputs have been read and before the work starts, and each file is
hashed once per run (:class:`FileHashes`); the results themselves (numbers,
schedules) never depend on it.

JSON view (:meth:`Provenance.to_dict`)::

    {"schema": 1, "lsched_version": "0.1.0", "python": "3.12.3",
     "created_utc": "2025-01-31T12:00:00Z",
     "argv": ["simulate", "t.csv", "-m", "unit-slot", "--json"],
     "inputs": [{"role": "trace", "path": "/abs/t.csv", "sha256": "…",
                 "bytes": 1234}, {"role": "profile", …}],
     "policies": ["fcfs"], "seeds": {"seed": 0}, "time_limits": {"time_limit": 10.0}}

``argv`` holds the arguments after ``lsched`` as given (``null`` outside the
command line: the Python API). ``seeds`` and ``time_limits`` are keyed by the
option (or config key) that set them: ``seed`` (solver), ``poisson`` (arrivals),
``predictor`` (its draws), ``time_limit``, ``lp_time_limit``, ...; a whole sweep's
record keys them by the generated instance's or the solver's label instead. Both
are empty where the run has none. ``inputs`` lists each file once per role, in
the order read, with its absolute path.

Where the record goes (:func:`read_provenance` reads it back from each):

* JSON, printed (``--json``) or written (``--out x.json``): a top-level
  ``"provenance"`` object, the same record in both.
* Parquet: the schema metadata key ``b"lsched.provenance"`` (:data:`PARQUET_KEY`),
  the record as JSON; the file reads as before (pandas ignores the key).
* CSV: a sidecar ``FILE.csv.provenance.json`` beside it (:func:`write_sidecar`),
  written atomically after the CSV. A comment line inside the CSV would break
  every plain CSV reader (and lsched's native trace CSV already owns its first
  line), so the CSV stays plain; the sidecar names the CSV and holds its SHA-256,
  so a sidecar left from an earlier write (a run stopped between the two files)
  is told apart: :func:`read_provenance` refuses it.
* PNG (``--plot``): a ``tEXt`` chunk with keyword ``lsched.provenance``
  (:data:`PNG_KEY`), readable by any PNG tool.
* TOML (``lsched profile fit --out``): a first comment line
  ``# lsched provenance: {...}`` (:data:`TOML_PREFIX`); the profile loads as
  before.
* Sweep results (:mod:`lsched.sweep`): a ``provenance`` text column, one record per
  row, since the rows of one file come from several runs (a rerun adds only the
  missing cases); each row's record names that case's own inputs, method, seed and
  time limit, hashed once per run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

#: Version of the record's layout.
SCHEMA = 1
#: Key of the record in a JSON object.
JSON_KEY = "provenance"
#: Schema-metadata key of the record in a Parquet file.
PARQUET_KEY = b"lsched.provenance"
#: Keyword of the PNG text chunk holding the record.
PNG_KEY = "lsched.provenance"
#: What follows a CSV's name in its sidecar's name.
SIDECAR_SUFFIX = ".provenance.json"
#: Start of the TOML comment line holding the record.
TOML_PREFIX = "# lsched provenance: "
#: Where :class:`lsched.cli.LazyGroup` keeps the arguments as given (``ctx.meta``).
ARGV_META = "lsched.argv"
#: The running command's arguments as given (:func:`command_line`).
_ARGV: ContextVar[tuple[str, ...] | None] = ContextVar("lsched_argv", default=None)

_CHUNK = 1 << 20


def lsched_version() -> str:
    """The installed lsched's version (``lsched --version``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lsched")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of the file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class FileHashes:
    """SHA-256 and size of files, each read once (keyed by its real path)."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[str, int]] = {}

    def __call__(self, path: str | os.PathLike[str]) -> tuple[str, int]:
        key = os.path.realpath(path)
        if key not in self._known:
            self._known[key] = (file_sha256(key), os.path.getsize(key))
        return self._known[key]


@dataclass(frozen=True)
class InputFile:
    """One file a run read: its role (``trace``, ``profile``, ...), absolute path,
    SHA-256 and size in bytes."""

    role: str
    path: str
    sha256: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "path": self.path,
            "sha256": self.sha256,
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class Provenance:
    """What made a result (module docstring)."""

    lsched_version: str
    created_utc: str
    inputs: tuple[InputFile, ...] = ()
    policies: tuple[str, ...] = ()
    seeds: Mapping[str, int] = field(default_factory=dict)
    time_limits: Mapping[str, float] = field(default_factory=dict)
    argv: tuple[str, ...] | None = None
    python: str = field(default_factory=platform.python_version)

    def to_dict(self) -> dict[str, Any]:
        """The JSON view (module docstring)."""
        return {
            "schema": SCHEMA,
            "lsched_version": self.lsched_version,
            "python": self.python,
            "created_utc": self.created_utc,
            "argv": None if self.argv is None else list(self.argv),
            "inputs": [f.to_dict() for f in self.inputs],
            "policies": list(self.policies),
            "seeds": dict(self.seeds),
            "time_limits": dict(self.time_limits),
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as one line of ASCII JSON."""
        return json.dumps(self.to_dict(), ensure_ascii=True, separators=(",", ":"))

    def attach(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """``obj`` with this record under ``"provenance"`` (last key)."""
        return {**obj, JSON_KEY: self.to_dict()}

    def narrowed(
        self,
        inputs: Iterable[tuple[str, str | os.PathLike[str] | None]],
        *,
        policies: Iterable[str] = (),
        seeds: Mapping[str, int | None] | None = None,
        time_limits: Mapping[str, float | None] | None = None,
        hashes: FileHashes | None = None,
    ) -> Provenance:
        """The same run's record for one part of it (a sweep's case): its own
        inputs, policies, seeds and time limits, the run's version, time and
        command line."""
        return Provenance(
            lsched_version=self.lsched_version,
            created_utc=self.created_utc,
            inputs=_inputs(inputs, hashes or FileHashes()),
            policies=tuple(policies),
            seeds=_given(seeds),
            time_limits=_given(time_limits),
            argv=self.argv,
            python=self.python,
        )


@contextlib.contextmanager
def command_line(argv: Iterable[str] | None) -> Iterator[None]:
    """Within the block, records carry ``argv``: the arguments of the running
    ``lsched`` command as given (:class:`lsched.cli.LazyGroup` sets them)."""
    token = _ARGV.set(None if argv is None else tuple(argv))
    try:
        yield
    finally:
        _ARGV.reset(token)


def provenance(
    inputs: Iterable[tuple[str, str | os.PathLike[str] | None]] = (),
    *,
    policies: Iterable[str] = (),
    seeds: Mapping[str, int | None] | None = None,
    time_limits: Mapping[str, float | None] | None = None,
    hashes: FileHashes | None = None,
) -> Provenance:
    """The record of a run, now.

    Parameters
    ----------
    inputs
        ``(role, path)`` of each file read; ``None`` paths are skipped and a file
        named twice under one role is listed once.
    policies
        Policy labels.
    seeds, time_limits
        Keyed by the option that set them; ``None`` values are left out.
    hashes
        A cache shared by several records of one run (each file read once).

    Raises
    ------
    OSError
        If an input cannot be read.
    """
    return Provenance(
        lsched_version=lsched_version(),
        created_utc=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        inputs=_inputs(inputs, hashes or FileHashes()),
        policies=tuple(policies),
        seeds=_given(seeds),
        time_limits=_given(time_limits),
        argv=_ARGV.get(),
    )


def _inputs(
    inputs: Iterable[tuple[str, str | os.PathLike[str] | None]], hashes: FileHashes
) -> tuple[InputFile, ...]:
    files: list[InputFile] = []
    seen: set[tuple[str, str]] = set()
    for role, path in inputs:
        if path is None or (role, os.path.realpath(path)) in seen:
            continue
        seen.add((role, os.path.realpath(path)))
        sha256, size = hashes(path)
        files.append(InputFile(role, os.path.abspath(path), sha256, size))
    return tuple(files)


def _given(values: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (values or {}).items() if v is not None}


def _record(record: Provenance | Mapping[str, Any]) -> dict[str, Any]:
    return record.to_dict() if isinstance(record, Provenance) else dict(record)


def _json(record: Provenance | Mapping[str, Any]) -> str:
    return json.dumps(_record(record), ensure_ascii=True, separators=(",", ":"))


# -- writing ----------------------------------------------------------------------


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The sidecar of ``path``: ``path`` + :data:`SIDECAR_SUFFIX`."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def write_sidecar(
    path: str | os.PathLike[str], record: Provenance | Mapping[str, Any]
) -> Path:
    """Write the sidecar of the (already written) file ``path``, atomically: the
    file's name and SHA-256, and the record."""
    from lsched.atomic import write_text_atomic

    path = Path(path)
    sidecar = sidecar_path(path)
    body = {
        "file": path.name,
        "sha256": file_sha256(path),
        JSON_KEY: _record(record),
    }
    write_text_atomic(sidecar, json.dumps(body, indent=2) + "\n")
    return sidecar


def parquet_metadata(record: Provenance | Mapping[str, Any]) -> dict[bytes, bytes]:
    """The schema-metadata entry holding ``record``."""
    return {PARQUET_KEY: _json(record).encode("ascii")}


def write_frame(
    path: str | os.PathLike[str],
    frame: pd.DataFrame,
    record: Provenance | Mapping[str, Any],
) -> None:
    """Write ``frame`` (no index) as ``.csv`` or ``.parquet`` atomically, with
    ``record``: Parquet schema metadata, or a CSV sidecar."""
    from lsched.atomic import atomic_target

    path = Path(path)
    if path.suffix.lower() == ".csv":
        with atomic_target(path) as temporary:
            frame.to_csv(temporary, index=False)
        write_sidecar(path, record)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    metadata = {**(table.schema.metadata or {}), **parquet_metadata(record)}
    with atomic_target(path) as temporary:
        pq.write_table(table.replace_schema_metadata(metadata), temporary)


def write_png(
    figure: Figure,
    path: str | os.PathLike[str],
    record: Provenance | Mapping[str, Any],
    *,
    dpi: int = 100,
) -> None:
    """Save ``figure`` as a PNG atomically, ``record`` in a text chunk."""
    from lsched.atomic import atomic_target

    with atomic_target(path) as temporary:
        figure.savefig(
            temporary, format="png", dpi=dpi, metadata={PNG_KEY: _json(record)}
        )


def toml_comment(record: Provenance | Mapping[str, Any]) -> str:
    """The TOML comment line holding ``record`` (with its line end)."""
    return f"{TOML_PREFIX}{_json(record)}\n"


# -- reading --------------------------------------------------------------------


def read_provenance(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The record a file written by lsched carries, or ``None`` if it has none.

    By suffix: ``.json`` (its ``"provenance"`` key), ``.parquet`` (schema
    metadata), ``.png`` (text chunk), ``.toml`` (comment line); any other file
    (``.csv``): its sidecar.

    Raises
    ------
    ValueError
        If a CSV's sidecar describes other bytes than the file's (left from an
        earlier write).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        return data.get(JSON_KEY) if isinstance(data, dict) else None
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        raw = (pq.read_schema(path).metadata or {}).get(PARQUET_KEY)
        return None if raw is None else json.loads(raw)
    if suffix == ".png":
        text = _png_text(path.read_bytes()).get(PNG_KEY)
        return None if text is None else json.loads(text)
    if suffix == ".toml":
        with open(path, encoding="utf-8") as stream:
            for line in stream:
                if line.startswith(TOML_PREFIX):
                    return json.loads(line[len(TOML_PREFIX) :])
        return None
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    body = json.loads(sidecar.read_text(encoding="utf-8"))
    if body.get("sha256") != file_sha256(path):
        raise ValueError(f"{sidecar} describes other bytes than {path}'s")
    return body.get(JSON_KEY)


def _png_text(data: bytes) -> dict[str, str]:
    """The ``tEXt`` chunks of a PNG: keyword -> text (Latin-1)."""
    chunks: dict[str, str] = {}
    at = 8  # after the signature
    while at + 8 <= len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        kind = data[at + 4 : at + 8]
        body = data[at + 8 : at + 8 + length]
        if kind == b"tEXt":
            key, _, text = body.partition(b"\0")
            chunks[key.decode("latin-1")] = text.decode("latin-1")
        if kind == b"IEND":
            break
        at += 12 + length
    return chunks
