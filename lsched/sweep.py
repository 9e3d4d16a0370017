"""Sweeps: every instance x profile x method, one Parquet row per finished case.

A sweep is described by a TOML file (paths in it are relative to that file)::

    [sweep]
    out = "results.parquet"               # default: <config stem>.parquet
    instances = [
        "instances/default.csv",          # any trace format lsched.traces reads
        { path = "traces/azure.csv", format = "azure-code-2023", limit = 50 },
    ]
    profiles = [
        "unit-slot",                      # a models/ name or a .toml path
        { name = "unit-slot", sets = ["kv_capacity_tokens=40"] },
    ]
    policies = ["fcfs", "mc-sf", "sarathi:chunk=256"]
    objective = "latency"                 # latency | makespan | ttft
    replicas = 1                          # default: the profile's
    dispatch = "round-robin"              # round-robin | least-outstanding | least-kv
    predictor = "oracle"                  # output-length predictions (mc-sf, sjf, ...)

    [[sweep.generate]]                    # seeded instances, as `lsched trace gen`
    family = "jaillet"                    # jaillet | gsm8k | poisson | resample
    n = 10
    seeds = [0, 1, 2]                     # or seed = 0
    # rate, cv, prompt, output, kv_capacity, few_shot_tokens, source, format

    [[sweep.solver]]                      # the slot model, as `lsched solve`
    backend = "cpsat"                     # cpsat | milp | lns
    time_limit = 5                        # seconds per solve
    threads = 1                           # solver threads (default 1)
    seed = 0
    # slot_s = 1.0                        # default: as `lsched solve`

A *case* is one (instance, profile, method); the methods are the policies, then the
solver settings. Each case has a stable :attr:`Case.case_id`: a hash of its
canonical description (the instance as written in the config, the profile and its
overrides, the method, the objective, replicas, dispatch and predictor), so it does
not change when the config moves or the cases are reordered, and it changes with
anything that changes the result. It does not hash a trace file's content: after
editing a trace, delete the results (or change the entry) to recompute.

Storage (``out = results.parquet``): each finished case is written as its own
Parquet file ``results.parquet.parts/part-<case_id>.parquet`` through an atomic
rename (:mod:`lsched.atomic`), the moment it finishes; at the end of a run the
parts are consolidated into ``results.parquet`` (atomically) and then removed. A
crash therefore loses no finished case, and :func:`load_results` reads the
consolidated file and the parts at any time, one row per ``case_id`` (a part,
being newer, wins over the consolidated row). A rerun skips every case whose
``case_id`` is already there; only ``--retry-errors`` runs error rows again. Rows of
cases no longer in the config are kept. Two sweeps must not write the same ``out``
at the same time.

Cases run on a :class:`concurrent.futures.Executor`: a
:class:`~concurrent.futures.ProcessPoolExecutor` (``local``) or a Dask cluster
through :meth:`distributed.Client.get_executor` (``dask``). Workers receive the
case's description, not the data, and load the instance and profile themselves,
so Dask workers need lsched installed and the config's files at the same paths.

Row columns (:data:`BASE_COLUMNS`, then the evaluator's metrics for policies):
``objective_value`` is the sweep's objective in seconds as the evaluator scores
the schedule (sum of E2E, makespan or sum of TTFT; for a solver, its schedule's
replay, slots times ``slot_s``), ``bound`` and ``gap`` the solver's proven lower
bound (seconds) and certified gap; ``status`` is ``ok`` for a policy, the solver's
status (``optimal``, ``feasible``, ``time_limit``, ``infeasible``, ``unknown``) for
a solver, or ``error`` with the reason in ``error`` when the case could not run
(bad input for that case, a policy breaking the rules, a failed replay check).
``provenance`` is the JSON record of the run that stored the row
(:mod:`lsched.provenance`): the lsched version, the time the run started, the
command line, the SHA-256 of this case's files (the config, the trace or a
generator's source, the profile's TOML), the policy's label, the solver's or
generator's seed and the solver's time limit. It is per row, not per file,
because the rows of one file come from several runs (a rerun adds only the
missing cases); each file is hashed once per run, when the run starts.
Only :data:`TIMING_COLUMNS` differ between two runs of the same case.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import re
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from lsched.atomic import atomic_target, check_output
from lsched.checks import (
    check_number,
    check_path,
    check_solver_options,
    check_workers,
)
from lsched.errors import InputError
from lsched.instance import Instance
from lsched.interrupt import POLL_S, request, requested, session
from lsched.policies import PolicyError, PolicySpec, parse_policy
from lsched.profile import DeploymentProfile, read_toml
from lsched.provenance import FileHashes, Provenance, provenance

#: Executors :func:`run_sweep` accepts.
EXECUTORS: tuple[str, ...] = ("local", "dask")
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
#: Version of the case description: bump it to invalidate every stored case.
_SCHEMA = 1
#: Relative tolerance of the solver's replay check (as ``lsched solve``).
_REPLAY_RTOL = 1e-9
#: Dispatch rules a sweep accepts (``static`` needs an assignment).
_DISPATCH = ("round-robin", "least-outstanding", "least-kv")
_SWEEP_KEYS = (
    "out",
    "instances",
    "generate",
    "profiles",
    "policies",
    "solver",
    "objective",
    "replicas",
    "dispatch",
    "predictor",
)
_INSTANCE_KEYS = ("path", "format", "limit")
_PROFILE_KEYS = ("name", "sets")
_SOLVER_KEYS = ("backend", "time_limit", "threads", "seed", "slot_s")
#: ``[[sweep.generate]]`` keys besides family, n, seed(s): option -> kind.
_GENERATE_OPTIONS: dict[str, type | tuple[type, ...]] = {
    "rate": (int, float),
    "cv": (int, float),
    "prompt": str,
    "output": str,
    "kv_capacity": int,
    "few_shot_tokens": int,
    "source": str,
    "format": str,
}


# -- the cases ----------------------------------------------------------------


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class InstanceSource:
    """Where a case's instance comes from: a trace file or a generator.

    Attributes
    ----------
    label
        Short name for the results: the path as written in the config, or
        ``family-n{n}-s{seed}`` (``:key=value,...`` for further options).
    description
        Canonical JSON of what defines the instance (paths as written).
    path
        Absolute trace path (file entries), else ``None``.
    format
        Trace format (file entries; ``None``: detected), or the ``source``'s
        format (``resample``).
    limit
        First N requests of the trace, or ``None``.
    family, n, seed
        Generator family (``lsched trace gen`` names), size and seed.
    options
        Further generator options as sorted ``(key, value)`` pairs; ``source`` is
        an absolute path.
    """

    label: str
    description: str
    path: str | None = None
    format: str | None = None
    limit: int | None = None
    family: str | None = None
    n: int | None = None
    seed: int | None = None
    options: tuple[tuple[str, Any], ...] = ()

    def load(self) -> Instance:
        """Read or generate the instance.

        Raises
        ------
        InputError
            On a missing or bad trace, or bad generator options.
        """
        if self.path is not None:
            from lsched.traces import read_trace

            instance, _ = read_trace(self.path, self.format, limit=self.limit)
            return instance
        assert self.family is not None and self.n is not None and self.seed is not None
        return _generate(self.family, self.n, self.seed, dict(self.options))


def _generate(family: str, n: int, seed: int, options: Mapping[str, Any]) -> Instance:
    # `lsched trace gen`'s own builder, so that a sweep's jaillet-n10-s0 is the
    # same instance as `lsched trace gen jaillet --n 10 --seed 0`
    from lsched.generators.build import (
        arrival_process,
        build_family,
        check_applicable,
    )

    check_applicable(
        family,
        {
            "--prompt": options.get("prompt"),
            "--output": options.get("output"),
            "--kv-capacity": options.get("kv_capacity"),
            "--few-shot-tokens": options.get("few_shot_tokens"),
            "--source": options.get("source"),
            "--format": options.get("format"),
        },
    )
    source = options.get("source")
    rate = options.get("rate")
    cv = options.get("cv")
    return build_family(
        family,
        n=n,
        seed=seed,
        name=None,
        arrivals=arrival_process(
            None if rate is None else float(rate), None if cv is None else float(cv)
        ),
        prompt=options.get("prompt"),
        output=options.get("output"),
        kv_capacity=options.get("kv_capacity"),
        few_shot_tokens=options.get("few_shot_tokens"),
        source=None if source is None else Path(source),
        trace_format=options.get("format"),
    )


@dataclass(frozen=True)
class ProfileSetting:
    """A deployment profile and its ``--set`` overrides.

    Attributes
    ----------
    label
        ``name`` or ``name:field=value,...`` (overrides sorted by field).
    name
        The profile as written: a ``models/`` name or a ``.toml`` path.
    location
        What :func:`lsched.profile.load_profile` gets: the name, or the absolute
        path of a ``.toml``.
    overrides
        ``(field, value)`` pairs, sorted by field.
    """

    label: str
    name: str
    location: str
    overrides: tuple[tuple[str, Any], ...] = ()

    def load(self, instance: Instance | None = None) -> DeploymentProfile:
        """The profile with the instance's KV capacity, then the overrides.

        As ``lsched simulate``/``solve``: an instance that carries its KV capacity
        (Jaillet's ``M``) uses it unless ``kv_capacity_tokens`` is overridden.
        """
        from lsched.overrides import deployment_profile

        return deployment_profile(self.location, dict(self.overrides), instance)

    def file(self) -> Path | None:
        """The TOML the profile is read from (a named profile's too), or ``None``
        for a name not found."""
        from lsched._models import find_profile

        location = Path(self.location)
        return location if location.is_file() else find_profile(self.location)


@dataclass(frozen=True)
class SolverSetting:
    """One offline solve of the slot model (as ``lsched solve``).

    Attributes
    ----------
    backend
        ``cpsat``, ``milp`` or ``lns``.
    time_limit
        Wall-clock seconds per solve, > 0.
    threads
        Solver threads, >= 1.
    seed
        Solver random seed, >= 0.
    slot_s
        Seconds per slot; ``None``: ``lsched solve``'s default.
    """

    backend: str
    time_limit: float
    threads: int = 1
    seed: int = 0
    slot_s: float | None = None

    def __post_init__(self) -> None:
        from lsched.formulations.backends import BACKENDS

        if self.backend not in BACKENDS:
            raise InputError(
                f"got {self.backend!r}; expected one of {', '.join(BACKENDS)}",
                field="backend",
            )
        check_solver_options(
            self.time_limit, self.threads, self.seed,
            names=("time_limit", "threads", "seed"),
        )  # fmt: skip
        if self.slot_s is not None:
            check_number(self.slot_s, "slot_s", 0, strict=True, what="seconds")

    @property
    def label(self) -> str:
        """``backend:time_limit=...,threads=...,seed=...[,slot_s=...]``."""
        text = (
            f"{self.backend}:time_limit={self.time_limit:g},threads={self.threads},"
            f"seed={self.seed}"
        )
        return text if self.slot_s is None else f"{text},slot_s={self.slot_s:g}"

    def description(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict."""
        return {
            "backend": self.backend,
            "time_limit": float(self.time_limit),
            "threads": self.threads,
            "seed": self.seed,
            "slot_s": None if self.slot_s is None else float(self.slot_s),
        }


@dataclass(frozen=True)
class Case:
    """One (instance, profile, method) of a sweep; picklable, holds no data.

    Attributes
    ----------
    instance, profile
        Where the instance and the deployment come from.
    policy, solver
        The method: exactly one is set.
    objective
        ``latency``, ``makespan`` or ``ttft``.
    replicas
        Replicas for a policy (``None``: the profile's); a solver uses one.
    dispatch
        Replica dispatch rule for a policy.
    predictor
        Predictor applied to the instance before a policy runs, or ``None``.
    """

    instance: InstanceSource
    profile: ProfileSetting
    policy: PolicySpec | None = None
    solver: SolverSetting | None = None
    objective: str = "latency"
    replicas: int | None = None
    dispatch: str = "round-robin"
    predictor: str | None = None

    def __post_init__(self) -> None:
        if (self.policy is None) == (self.solver is None):
            raise ValueError("a case has exactly one of policy and solver")

    @property
    def kind(self) -> str:
        """``policy`` or ``solver``."""
        return "policy" if self.policy is not None else "solver"

    @property
    def method(self) -> str:
        """The policy's label or the solver's label."""
        if self.policy is not None:
            return self.policy.label
        assert self.solver is not None
        return self.solver.label

    def description(self) -> dict[str, Any]:
        """Everything that defines the case's result, JSON-ready.

        Replicas, dispatch and predictor concern policies only: a solver case's
        description (and id) does not change with them.
        """
        method: dict[str, Any]
        if self.policy is not None:
            method = {
                "policy": self.policy.label,
                "replicas": self.replicas,
                "dispatch": self.dispatch,
                "predictor": self.predictor,
            }
        else:
            assert self.solver is not None
            method = {"solver": self.solver.description()}
        return {
            "schema": _SCHEMA,
            "instance": json.loads(self.instance.description),
            "profile": {
                "name": self.profile.name,
                "sets": dict(self.profile.overrides),
            },
            "method": method,
            "objective": self.objective,
        }

    @property
    def case_id(self) -> str:
        """16 hex digits of the SHA-256 of the canonical :meth:`description`."""
        digest = hashlib.sha256(_canonical(self.description()).encode("utf-8"))
        return digest.hexdigest()[:16]


@dataclass(frozen=True)
class SweepConfig:
    """A parsed, validated sweep config (see the module docstring).

    Attributes
    ----------
    path
        The config file.
    out
        The consolidated results file (``.parquet``).
    instances, profiles, policies, solvers
        The axes of the product, in config order (files, then generated).
    objective, replicas, dispatch, predictor
        Settings shared by every case.
    """

    path: Path
    out: Path
    instances: tuple[InstanceSource, ...]
    profiles: tuple[ProfileSetting, ...]
    policies: tuple[PolicySpec, ...] = ()
    solvers: tuple[SolverSetting, ...] = ()
    objective: str = "latency"
    replicas: int | None = None
    dispatch: str = "round-robin"
    predictor: str | None = None

    def __post_init__(self) -> None:
        from lsched.formulations.slot import OBJECTIVES

        for name in ("instances", "profiles"):
            if not getattr(self, name):
                raise InputError(
                    "is empty; expected at least one entry", field=f"sweep.{name}"
                )
        if not self.policies and not self.solvers:
            raise InputError(
                "no method; expected sweep.policies or a [[sweep.solver]] table",
                field="sweep.policies",
            )
        if self.objective not in OBJECTIVES:
            raise InputError(
                f"got {self.objective!r}; expected one of {', '.join(OBJECTIVES)}",
                field="sweep.objective",
            )
        if self.dispatch not in _DISPATCH:
            raise InputError(
                f"got {self.dispatch!r}; expected one of {', '.join(_DISPATCH)}",
                field="sweep.dispatch",
            )
        if self.replicas is not None and self.replicas < 1:
            raise InputError(
                f"got {self.replicas}; expected >= 1", field="sweep.replicas"
            )
        if self.solvers and self.replicas not in (None, 1):
            raise InputError(
                f"got {self.replicas} with [[sweep.solver]]; the slot model has one "
                "replica, expected replicas = 1",
                field="sweep.replicas",
            )
        for name, labels in (
            ("instances", [s.label for s in self.instances]),
            ("profiles", [p.label for p in self.profiles]),
            ("policies", [p.label for p in self.policies]),
            ("solver", [s.label for s in self.solvers]),
        ):
            seen: set[str] = set()
            for label in labels:
                if label in seen:
                    raise InputError(
                        f"{label!r} is listed twice; expected each once",
                        field=f"sweep.{name}",
                    )
                seen.add(label)

    def input_files(self) -> tuple[Path, ...]:
        """Every file the sweep reads: the config, the traces (and generators'
        sources) and the profile files (a named profile's file included)."""
        return tuple(Path(path) for _, path in self.inputs())

    def inputs(self) -> list[tuple[str, str | Path]]:
        """:meth:`input_files` with each one's role (``sweep_config``, ``trace``,
        ``source``, ``profile``), for the provenance."""
        files: list[tuple[str, str | Path]] = [("sweep_config", self.path)]
        for source in self.instances:
            files += _instance_files(source)
        for profile in self.profiles:
            found = profile.file()
            files += [] if found is None else [("profile", found)]
        return files

    def provenance(self, hashes: FileHashes | None = None) -> Provenance:
        """The sweep's record, now: every input file, the policies, the seeds of
        the generated instances and of the solvers (keyed by their labels) and the
        solvers' time limits (:mod:`lsched.provenance`)."""
        seeds = {s.label: s.seed for s in self.instances if s.family is not None}
        if self.policies and self.predictor is not None:
            seeds["predictor"] = _check_predictor(self.predictor)
        return provenance(
            self.inputs(),
            policies=[p.label for p in self.policies],
            seeds=seeds | {s.label: s.seed for s in self.solvers},
            time_limits={s.label: s.time_limit for s in self.solvers},
            hashes=hashes,
        )

    def cases(self) -> tuple[Case, ...]:
        """Every case: instances x profiles x (policies, then solvers)."""
        shared = {
            "objective": self.objective,
            "replicas": self.replicas,
            "dispatch": self.dispatch,
            "predictor": self.predictor,
        }
        cases: list[Case] = []
        for instance in self.instances:
            for profile in self.profiles:
                cases.extend(
                    Case(instance, profile, policy=p, **shared) for p in self.policies
                )
                cases.extend(
                    Case(instance, profile, solver=s, **shared) for s in self.solvers
                )
        return tuple(cases)


def _instance_files(source: InstanceSource) -> list[tuple[str, str | Path]]:
    """The files an instance is read from: its trace, or a generator's source."""
    files: list[tuple[str, str | Path]] = []
    if source.path is not None:
        files.append(("trace", source.path))
    generated = dict(source.options).get("source")
    if generated is not None:
        files.append(("source", generated))
    return files


def case_provenance(
    case: Case, run: Provenance, config: Path, hashes: FileHashes | None = None
) -> Provenance:
    """The record of one case of the run ``run`` (a sweep's :meth:`SweepConfig.
    provenance`): the config, the case's own files, its policy, the seed of its
    generator (``generate``), predictor (``predictor``) and solver (``seed``),
    the solver's time limit."""
    profile = case.profile.file()
    solver = case.solver
    predicted = case.policy is not None and case.predictor is not None
    return run.narrowed(
        [("sweep_config", config), *_instance_files(case.instance),
         ("profile", profile)],
        policies=[] if case.policy is None else [case.policy.label],
        seeds={"generate": case.instance.seed,
               "predictor": run.seeds.get("predictor") if predicted else None,
               "seed": None if solver is None else solver.seed},
        time_limits={"time_limit": None if solver is None else solver.time_limit},
        hashes=hashes,
    )  # fmt: skip


# -- reading the config ---------------------------------------------------------


class _Located:
    """Turns problems in the config into :class:`InputError` with file and line."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, *needles: str) -> int | None:
        """1-based line of the first needle found (a key ``k =`` or a text)."""
        for needle in needles:
            key = re.compile(rf"(^|[\s{{,]){re.escape(needle)}\s*=")
            for number, line in enumerate(self.lines, start=1):
                if key.search(line):
                    return number
            # a table header [sweep.x] or [[sweep.x]], then the needle as a text
            header = re.compile(rf"^\s*\[+\s*([\w.]+\.)?{re.escape(needle)}\s*\]")
            quoted = re.compile(rf"[\"']{re.escape(needle)}[\"']")
            for pattern in (header, quoted):
                for number, line in enumerate(self.lines, start=1):
                    if pattern.search(line):
                        return number
        return None

    def error(self, message: str, field: str, *needles: str) -> InputError:
        return InputError(
            message,
            file=self.path,
            line=self.line_of(*needles, field.rsplit(".", 1)[-1]),
            field=field,
        )

    def relocate(
        self, exc: InputError, field: str, *needles: str, inner: bool = True
    ) -> InputError:
        """``exc`` placed in the config unless it already names another file.

        With ``inner``, the error's own field (a generator's ``--rate``, a
        solver's ``time_limit``) is appended to ``field``.
        """
        if exc.file is not None:
            return exc
        key = (exc.field or "").lstrip("-").replace("-", "_") if inner else ""
        return InputError(
            exc.message,
            file=self.path,
            line=self.line_of(*filter(None, (key, *needles, field.rsplit(".")[-1]))),
            field=f"{field}.{key}" if key else field,
        )


def _check_keys(
    table: Mapping[str, Any], allowed: Sequence[str], where: str, loc: _Located
) -> None:
    for key in table:
        if key not in allowed:
            raise loc.error(
                f"unknown key {key!r}; expected one of {', '.join(allowed)}",
                f"{where}.{key}",
                key,
            )


def _typed(
    value: Any,
    kind: type | tuple[type, ...],
    field: str,
    loc: _Located,
    what: str,
) -> Any:
    if value is None:
        raise loc.error(f"is missing; expected {what}", field)
    # bool is an int in Python, never in a config
    if isinstance(value, bool) and bool not in (
        kind if isinstance(kind, tuple) else (kind,)
    ):
        raise loc.error(f"got {value!r}; expected {what}", field)
    if not isinstance(value, kind):
        raise loc.error(f"got {value!r}; expected {what}", field)
    return value


def _list_of(table: Mapping[str, Any], key: str, loc: _Located, what: str) -> list[Any]:
    value = table.get(key, [])
    return list(_typed(value, list, f"sweep.{key}", loc, f"a list of {what}"))


def _entries(
    sweep: Mapping[str, Any],
    key: str,
    loc: _Located,
    short: str,
    allowed: Sequence[str],
    expected: str,
) -> list[dict[str, Any]]:
    """The tables of ``sweep.<key>``, a bare string read as ``{short = text}``."""
    field = f"sweep.{key}"
    tables = []
    for entry in _list_of(sweep, key, loc, f"{short}s or {{{short} = ...}} tables"):
        if isinstance(entry, str):
            entry = {short: entry}
        if not isinstance(entry, dict):
            raise loc.error(f"got {entry!r}; expected {expected}", field)
        _check_keys(entry, allowed, field, loc)
        tables.append(entry)
    return tables


def _config_path(base: Path, text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def _file_sources(
    sweep: Mapping[str, Any], base: Path, loc: _Located
) -> list[InstanceSource]:
    sources: list[InstanceSource] = []
    field = "sweep.instances"
    expected = "a path or {path = ..., format = ..., limit = ...}"
    for entry in _entries(sweep, "instances", loc, "path", _INSTANCE_KEYS, expected):
        if "path" not in entry:
            raise loc.error("an entry has no path; expected path = ...", field)
        written = _typed(entry["path"], str, f"{field}.path", loc, "a path")
        fmt = entry.get("format")
        if fmt is not None:
            _typed(fmt, str, f"{field}.format", loc, "a trace format name")
        limit = entry.get("limit")
        if limit is not None and (
            _typed(limit, int, f"{field}.limit", loc, "an integer >= 1") < 1
        ):
            raise loc.error(f"got {limit}; expected an integer >= 1", f"{field}.limit")
        path = _config_path(base, written)
        if not path.is_file():
            what = "a directory" if path.is_dir() else "no such file"
            raise loc.error(
                f"{what} {str(path)!r}; expected a trace file", field, written
            )
        label = written if limit is None else f"{written}:limit={limit}"
        description = {"path": written, "format": fmt, "limit": limit}
        sources.append(
            InstanceSource(
                label=label,
                description=_canonical(description),
                path=str(path.resolve()),
                format=fmt,
                limit=limit,
            )
        )
    return sources


def _generated_sources(
    sweep: Mapping[str, Any], base: Path, loc: _Located
) -> list[InstanceSource]:
    from lsched.generators.build import CLI_FAMILIES, OPTION_OF

    tables = _typed(
        sweep.get("generate", []),
        list,
        "sweep.generate",
        loc,
        "[[sweep.generate]] tables",
    )
    allowed = ("family", "n", "seed", "seeds", *_GENERATE_OPTIONS)
    sources: list[InstanceSource] = []
    for table in tables:
        field = "sweep.generate"
        _typed(table, dict, field, loc, "a [[sweep.generate]] table")
        _check_keys(table, allowed, field, loc)
        family = _typed(
            table.get("family"), str, f"{field}.family", loc, "a family name"
        )
        if family not in CLI_FAMILIES:
            raise loc.error(
                f"got {family!r}; expected one of {', '.join(CLI_FAMILIES)}",
                f"{field}.family",
                family,
            )
        n = _typed(table.get("n"), int, f"{field}.n", loc, "an integer >= 1")
        if n < 1:
            raise loc.error(f"got {n}; expected an integer >= 1", f"{field}.n")
        if "seed" in table and "seeds" in table:
            raise loc.error("got both seed and seeds; expected one", f"{field}.seeds")
        if "seeds" in table:
            seeds = _typed(table["seeds"], list, f"{field}.seeds", loc, "integers")
        else:
            seeds = [table.get("seed", 0)]
        for seed in seeds:
            _typed(seed, int, f"{field}.seeds", loc, "integers >= 0")
        if not seeds:
            raise loc.error("is empty; expected seeds >= 0", f"{field}.seeds")
        options: dict[str, Any] = {}
        written: dict[str, Any] = {}
        for key, kind in _GENERATE_OPTIONS.items():
            if key not in table:
                continue
            value = _typed(table[key], kind, f"{field}.{key}", loc, _KIND_TEXT[key])
            written[key] = value
            options[key] = (
                str(_config_path(base, value).resolve()) if key == "source" else value
            )
        suffix = ",".join(f"{k}={v}" for k, v in sorted(written.items()))
        for seed in seeds:
            try:  # fail now, not once per case: build one request the same way
                _generate(family, 1, seed, options)
            except InputError as exc:
                # the generator names its keyword (kv_capacity_tokens), the config
                # the `lsched trace gen` option (kv_capacity)
                option = OPTION_OF.get(exc.field or "", exc.field)
                raise loc.relocate(
                    InputError(exc.message, file=exc.file, field=option), field, family
                ) from None
            name = f"{family}-n{n}-s{seed}"
            description = {"family": family, "n": n, "seed": seed, **written}
            sources.append(
                InstanceSource(
                    label=f"{name}:{suffix}" if suffix else name,
                    description=_canonical(description),
                    family=family,
                    n=n,
                    seed=seed,
                    options=tuple(sorted(options.items())),
                )
            )
    return sources


_KIND_TEXT = {
    "rate": "a rate (requests/s)",
    "cv": "a number",
    "prompt": "a length spec, e.g. lognormal:median=512,sigma=1.0",
    "output": "a length spec, e.g. uniform:low=1,high=64",
    "kv_capacity": "an integer",
    "few_shot_tokens": "an integer",
    "source": "a trace path",
    "format": "a trace format name",
}


def _profiles(
    sweep: Mapping[str, Any], base: Path, loc: _Located
) -> list[ProfileSetting]:
    from lsched.overrides import deployment_profile, parse_overrides

    settings: list[ProfileSetting] = []
    field = "sweep.profiles"
    expected = "a name or {name = ..., sets = [...]}"
    for entry in _entries(sweep, "profiles", loc, "name", _PROFILE_KEYS, expected):
        name = _typed(entry.get("name"), str, f"{field}.name", loc, "a profile name")
        sets = _typed(
            entry.get("sets", []), list, f"{field}.sets", loc, "FIELD=VALUE texts"
        )
        for item in sets:
            _typed(item, str, f"{field}.sets", loc, "FIELD=VALUE texts")
        is_path = name.endswith(".toml") or "/" in name
        location = str(_config_path(base, name).resolve()) if is_path else name
        try:
            overrides = parse_overrides(sets)
            deployment_profile(location, overrides)  # unknown profile, bad value
        except InputError as exc:
            where = field + (".sets" if (exc.field or "").startswith("--set") else "")
            raise loc.relocate(exc, where, name, inner=False) from None
        pairs = tuple(sorted(overrides.items()))
        label = name + (":" + ",".join(f"{k}={v}" for k, v in pairs) if pairs else "")
        settings.append(ProfileSetting(label, name, location, pairs))
    return settings


def _solvers(sweep: Mapping[str, Any], loc: _Located) -> list[SolverSetting]:
    tables = _typed(
        sweep.get("solver", []), list, "sweep.solver", loc, "[[sweep.solver]] tables"
    )
    solvers: list[SolverSetting] = []
    for table in tables:
        field = "sweep.solver"
        _typed(table, dict, field, loc, "a [[sweep.solver]] table")
        _check_keys(table, _SOLVER_KEYS, field, loc)
        backend = _typed(
            table.get("backend"), str, f"{field}.backend", loc, "cpsat, milp or lns"
        )
        number = (int, float)
        time_limit = _typed(
            table.get("time_limit", 60.0), number, f"{field}.time_limit", loc, "seconds"
        )
        threads = _typed(table.get("threads", 1), int, f"{field}.threads", loc, "int")
        seed = _typed(table.get("seed", 0), int, f"{field}.seed", loc, "an integer")
        slot_s = table.get("slot_s")
        if slot_s is not None:
            _typed(slot_s, number, f"{field}.slot_s", loc, "seconds")
        try:
            solvers.append(
                SolverSetting(
                    backend=backend,
                    time_limit=float(time_limit),
                    threads=threads,
                    seed=seed,
                    slot_s=None if slot_s is None else float(slot_s),
                )
            )
        except InputError as exc:
            raise loc.relocate(exc, field, backend) from None
    return solvers


def _check_predictor(spec: str) -> int | None:
    """Check a predictor spec on a one-request probe; the seed of its draws."""
    from lsched.predictors import apply_predictor

    one = np.ones(1, dtype=np.int64)
    probe = Instance(arrival_s=np.zeros(1), prompt_tokens=one, output_tokens=one)
    how = apply_predictor(probe, spec).params.get("predictor")
    seed = how.get("seed") if isinstance(how, Mapping) else None
    return seed if isinstance(seed, int) else None


def load_config(path: str | os.PathLike[str]) -> SweepConfig:
    """Read and validate a sweep config (TOML, see the module docstring).

    Trace files, profiles, overrides, policies, generator options and the
    predictor are all checked here, before any case runs.

    Raises
    ------
    InputError
        For a missing or unreadable file, invalid TOML, an unknown key, or a bad
        value, located by file, line and field (``sweep.KEY``).
    """
    path = check_path(path, "config")
    if not path.is_file():
        what = "a directory" if path.is_dir() else "no such file"
        raise InputError(f"{what}; expected a sweep config (.toml)", file=path)
    text, data = read_toml(path)
    loc = _Located(path, text)
    _check_keys(data, ("sweep",), "", loc)
    if "sweep" not in data:
        raise InputError("no [sweep] table; expected one", file=path, field="sweep")
    sweep = _typed(data["sweep"], dict, "sweep", loc, "a [sweep] table")
    _check_keys(sweep, _SWEEP_KEYS, "sweep", loc)
    base = path.resolve().parent

    out_text = _typed(
        sweep.get("out", f"{path.stem}.parquet"), str, "sweep.out", loc, "a path"
    )
    out = _config_path(base, out_text)
    try:
        check_out(out)
    except InputError as exc:
        raise loc.relocate(exc, "sweep.out", "out", inner=False) from None

    policies: list[PolicySpec] = []
    for text_spec in _list_of(sweep, "policies", loc, "policy names"):
        _typed(text_spec, str, "sweep.policies", loc, "NAME[:key=value,...]")
        try:
            policies.append(parse_policy(text_spec))
        except InputError as exc:
            line = loc.line_of(text_spec, "policies")
            raise InputError(
                exc.message, file=path, line=line, field="sweep.policies"
            ) from None

    replicas = sweep.get("replicas")
    if replicas is not None:
        _typed(replicas, int, "sweep.replicas", loc, "an integer >= 1")
    predictor = sweep.get("predictor")
    if predictor is not None:
        _typed(predictor, str, "sweep.predictor", loc, "a predictor, e.g. oracle")
        try:
            _check_predictor(predictor)
        except InputError as exc:
            raise loc.relocate(
                exc, "sweep.predictor", "predictor", inner=False
            ) from None
    objective = _typed(
        sweep.get("objective", "latency"), str, "sweep.objective", loc, "a name"
    )
    dispatch = _typed(
        sweep.get("dispatch", "round-robin"), str, "sweep.dispatch", loc, "a rule"
    )
    try:
        config = SweepConfig(
            path=path,
            out=out,
            instances=(
                *_file_sources(sweep, base, loc),
                *_generated_sources(sweep, base, loc),
            ),
            profiles=tuple(_profiles(sweep, base, loc)),
            policies=tuple(policies),
            solvers=tuple(_solvers(sweep, loc)),
            objective=objective,
            replicas=replicas,
            dispatch=dispatch,
            predictor=predictor,
        )
    except InputError as exc:
        if exc.file is not None:
            raise
        needle = (exc.field or "sweep").rsplit(".", 1)[-1]
        raise InputError(
            exc.message, file=path, line=loc.line_of(needle), field=exc.field
        ) from None
    try:  # the results file must not be one of the files the sweep reads
        check_out(out, config.input_files())
    except InputError as exc:
        raise loc.relocate(exc, "sweep.out", "out", inner=False) from None
    return config


def check_out(path: Path, inputs: Iterable[Path] = ()) -> None:
    """Check that ``path`` is a ``.parquet`` file in an existing, writable folder
    and none of ``inputs`` (:func:`lsched.atomic.check_output`)."""
    if path.suffix.lower() != ".parquet":
        raise InputError(
            f"got suffix {path.suffix.lower()!r}; expected .parquet", field="out"
        )
    check_output(path, inputs, "out")


# -- running one case -------------------------------------------------------------


def run_case(case: Case) -> dict[str, Any]:
    """Run one case; return its flat row (:data:`BASE_COLUMNS` and metrics).

    A top-level function, so that executors can pickle it. Bad input for this
    case (a request that can never fit, a policy that needs predictions, a KV
    capacity the slot model rejects) and a policy breaking the model's rules give
    a row with status ``error``; any other exception propagates. ``provenance`` is
    ``None``: :func:`run_sweep` records it (:func:`case_provenance`) as it stores
    the row.
    """
    row: dict[str, Any] = {
        "case_id": case.case_id,
        "instance": case.instance.label,
        "profile": case.profile.label,
        "method": case.method,
        "kind": case.kind,
        "objective": case.objective,
        "status": "error",
        "provenance": None,
    }
    try:
        instance = case.instance.load()
        profile = case.profile.load(instance)
        row["num_requests"] = len(instance)
        row["kv_capacity_tokens"] = profile.kv_capacity_tokens
        if case.policy is not None:
            row.update(_run_policy(case, case.policy, instance, profile))
        else:
            assert case.solver is not None
            row.update(_run_solver(case, case.solver, instance, profile))
    except (InputError, PolicyError) as exc:
        row["status"] = "error"
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


def _run_policy(
    case: Case, policy: PolicySpec, instance: Instance, profile: DeploymentProfile
) -> dict[str, Any]:
    from lsched.compare import objective_value
    from lsched.evaluator import simulate

    if case.predictor is not None:
        from lsched.predictors import apply_predictor

        instance = apply_predictor(instance, case.predictor)
    result = simulate(
        instance, profile, policy, replicas=case.replicas, dispatch=case.dispatch
    )
    value = objective_value(result, instance, case.objective)
    return {
        **{name: float(v) for name, v in result.metrics.items()},
        "status": "ok",
        "objective_value": value,
        "runtime_s": result.runtime_s,
        "replicas": result.replicas,
        "iterations": result.iterations,
    }


def _run_solver(
    case: Case, setting: SolverSetting, instance: Instance, profile: DeploymentProfile
) -> dict[str, Any]:
    from lsched.formulations.backends import replay_objective, solve_slot
    from lsched.formulations.slot import SlotProblem, slot_length_s

    tau = slot_length_s(instance, profile) if setting.slot_s is None else setting.slot_s
    problem = SlotProblem.from_instance(
        instance, profile, objective=case.objective, slot_s=tau
    )
    result = solve_slot(
        problem,
        setting.backend,
        time_limit=setting.time_limit,
        seed=setting.seed,
        num_workers=setting.threads,
    )
    row: dict[str, Any] = {
        "status": result.status.value,
        "runtime_s": result.runtime_s,
        "replicas": 1,
        "solver": result.solver,
        "slot_s": tau,
        "bound": result.bound * tau if math.isfinite(result.bound) else math.nan,
        "gap": math.nan if result.gap is None else result.gap,
    }
    if result.objective is not None:
        row["solver_objective"] = result.objective * tau
    if result.start is None:
        return row
    replay = replay_objective(problem, result.start)  # PolicyError: an error row
    row["objective_value"] = replay * tau
    assert result.objective is not None
    if not math.isclose(replay, result.objective, rel_tol=_REPLAY_RTOL, abs_tol=1e-9):
        row["status"] = "error"
        row["error"] = (
            f"replay check failed: the evaluator scores the schedule {replay!r}, "
            f"the solver reported {result.objective!r}"
        )
    return row


# -- storage -------------------------------------------------------------------


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


# -- executors -----------------------------------------------------------------


def _init_worker() -> None:
    """Worker initializer: no solver banner on the user's stdout, no Ctrl-C, and
    a clean exit on SIGTERM.

    HiGHS prints to the C-level stdout whatever its options; a worker process
    shares the parent's, which may carry ``--json`` output. A Ctrl-C in a
    terminal reaches the whole process group: the parent alone handles it, so a
    worker ignores it rather than dying midway through a case. The parent ends
    its workers with SIGTERM (:func:`_end_workers`): as an exit, not a kill, so
    that what a worker registered (Pyomo's lock, a named semaphore) is released.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


#: Seconds a worker has to exit on SIGTERM before it is killed.
WORKER_GRACE_S = 5.0


def _end_workers(pool: Any) -> None:
    """Cancel what a process pool has not started and end its workers now.

    ``shutdown(wait=False)`` alone lets the cases in flight run on, and the
    interpreter waits for them at exit; their results would be dropped anyway.
    Each worker gets SIGTERM (an exit, :func:`_init_worker`), and is killed if
    it has not exited within :data:`WORKER_GRACE_S` (native code that holds
    the interpreter).
    """
    # before shutdown, which forgets them
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    give_up = time.monotonic() + WORKER_GRACE_S
    for process in processes:
        process.join(max(0.0, give_up - time.monotonic()))
        if process.is_alive():
            process.kill()


def check_executor(
    kind: str, *, address: str | None = None, workers: int | None = None
) -> None:
    """Check executor settings (see :func:`open_executor`) without starting one.

    Raises
    ------
    InputError
        On an unknown kind, a bad ``workers``, or an address missing (``dask``)
        or given (``local``); the field is ``executor``, ``address`` or
        ``workers``.
    """
    if kind not in EXECUTORS:
        raise InputError(
            f"got {kind!r}; expected one of {', '.join(EXECUTORS)}", field="executor"
        )
    if workers is not None:
        check_workers(workers, "workers")
    if kind == "local" and address is not None:
        raise InputError(
            "applies to the dask executor only; expected no address", field="address"
        )
    if kind == "dask" and not address:
        raise InputError(
            "is required with the dask executor; expected tcp://HOST:PORT",
            field="address",
        )


@contextlib.contextmanager
def open_executor(
    kind: str = "local", *, address: str | None = None, workers: int | None = None
) -> Iterator[tuple[Executor, int]]:
    """An executor and how many cases to keep in flight on it.

    Parameters
    ----------
    kind
        ``local``: a process pool of ``workers`` processes (default: the CPU
        count), started with ``spawn``. ``dask``: the cluster at ``address``
        through :meth:`distributed.Client.get_executor`; ``workers`` caps the
        cases in flight (default: the cluster's threads).
    address
        The Dask scheduler, ``tcp://HOST:PORT`` (``dask`` only).
    workers
        See ``kind``; >= 1.

    Raises
    ------
    InputError
        On an unknown kind, a bad ``workers``, a missing address, or a scheduler
        that cannot be reached.

    Notes
    -----
    ``spawn`` starts each worker as a fresh interpreter that imports the
    caller's main module: a script that runs a local sweep needs the usual
    ``if __name__ == "__main__":`` guard (notebooks and the CLI need nothing).
    """
    check_executor(kind, address=address, workers=workers)
    if kind == "local":
        count = workers or os.cpu_count() or 1
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(
            count,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
        )
        try:
            yield pool, count
        except BaseException:  # a failure or a stop: nothing in flight is kept
            _end_workers(pool)
            raise
        pool.shutdown(wait=True)
        return
    from distributed import Client

    try:
        client = Client(address, set_as_default=False, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise InputError(
            f"cannot reach the Dask scheduler {address!r}: {exc}", field="address"
        ) from None
    try:
        threads = sum(client.nthreads().values())
        executor = client.get_executor(pure=False)
        try:
            yield executor, workers or max(1, threads)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        executor.shutdown(wait=True)
    finally:
        client.close()


# -- the sweep -----------------------------------------------------------------


@dataclass(frozen=True)
class SweepReport:
    """What :func:`run_sweep` did.

    Attributes
    ----------
    out
        The consolidated results file.
    cases
        Cases in the config.
    skipped
        Cases already finished before this run.
    ran
        Cases finished by this run.
    remaining
        Cases still to run (``max_cases`` stopped the run early).
    errors
        Cases of the config whose row has status ``error``.
    results
        The rows of the config's finished cases, in config order.
    provenance
        This run's record (:meth:`SweepConfig.provenance`); each row it stored
        has its case's (the ``provenance`` column).
    interrupted
        Whether the user stopped the run (Ctrl-C): the cases finished are stored,
        those in flight were dropped and are counted in ``remaining``.
    """

    out: Path
    cases: int
    skipped: int
    ran: int
    remaining: int
    errors: int
    results: pd.DataFrame = dataclasses.field(repr=False)
    provenance: Provenance | None = dataclasses.field(default=None, repr=False)
    interrupted: bool = False

    def summary(self) -> dict[str, Any]:
        """The JSON view (without the rows)."""
        return {
            "status": "interrupted" if self.interrupted else "complete",
            "out": str(self.out),
            "cases": self.cases,
            "skipped": self.skipped,
            "ran": self.ran,
            "remaining": self.remaining,
            "errors": self.errors,
        }


def _progress_bar(enabled: bool) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not (enabled and console.is_terminal),
    )


class _Stopped(Exception):
    """Ends the executor's block on a user's stop, dropping the cases in flight."""


@session()
def run_sweep(
    config: SweepConfig | str | os.PathLike[str],
    *,
    executor: str = "local",
    address: str | None = None,
    workers: int | None = None,
    out: str | os.PathLike[str] | None = None,
    max_cases: int | None = None,
    retry_errors: bool = False,
    progress: bool = False,
    on_case: Callable[[Mapping[str, Any]], None] | None = None,
) -> SweepReport:
    """Run every case of ``config`` not already in the results.

    Parameters
    ----------
    config
        A :class:`SweepConfig` or the path of its TOML file.
    executor, address, workers
        Where the cases run (:func:`open_executor`).
    out
        Results file, instead of the config's.
    max_cases
        Run at most this many cases, then stop (a rerun goes on).
    retry_errors
        Run again the cases whose stored row has status ``error``.
    progress
        Show a progress bar on stderr (only where stderr is a terminal).
    on_case
        Called with each row once it is stored (in the calling process).

    Returns
    -------
    SweepReport
        With ``interrupted`` set when the user stopped the run (Ctrl-C, or
        :func:`lsched.interrupt.request`): the finished cases are stored, those
        in flight dropped (a local pool's workers ended at once), nothing more is
        started.

    Raises
    ------
    InputError
        On a bad config, ``out``, executor settings or ``max_cases``.
    Exception
        What a case raised other than bad input (noted with its case id), or
        what ``on_case`` raised; rows stored before stay stored.
    """
    check_executor(executor, address=address, workers=workers)
    if not isinstance(config, SweepConfig):
        config = load_config(config)
    target = config.out if out is None else Path(out)
    check_out(target, config.input_files())
    if max_cases is not None and max_cases < 0:
        raise InputError(f"got {max_cases}; expected >= 0", field="max_cases")
    hashes = FileHashes()  # each file read once, at the start of the run
    record = config.provenance(hashes)
    cases = config.cases()
    stored = load_results(target)
    done = set(stored["case_id"])
    if retry_errors:
        done -= set(stored.loc[stored["status"] == "error", "case_id"])
    todo = deque(c for c in cases if c.case_id not in done)
    skipped = len(cases) - len(todo)
    budget = len(todo) if max_cases is None else min(max_cases, len(todo))
    ran = 0
    interrupted = False
    if budget and not requested():
        try:
            ran = _run_cases(
                todo, budget, target, executor, address, workers, progress, on_case,
                len(cases), skipped,
                lambda case: case_provenance(case, record, config.path, hashes),
            )  # fmt: skip
        except _Stopped as stopped:
            ran, interrupted = stopped.args[0], True
    interrupted = interrupted or requested()
    frame = consolidate(target)
    rows = frame.set_index("case_id")
    order = [c.case_id for c in cases if c.case_id in rows.index]
    results = rows.loc[order].reset_index()
    return SweepReport(
        out=target,
        cases=len(cases),
        skipped=skipped,
        ran=ran,
        remaining=len(cases) - len(order),
        errors=int((results["status"] == "error").sum()),
        results=results,
        provenance=record,
        interrupted=interrupted,
    )


def _run_cases(
    todo: deque[Case],
    budget: int,
    target: Path,
    executor: str,
    address: str | None,
    workers: int | None,
    progress: bool,
    on_case: Callable[[Mapping[str, Any]], None] | None,
    total: int,
    skipped: int,
    made_by: Callable[[Case], Provenance],
) -> int:
    """Run up to ``budget`` cases of ``todo``, storing each as it finishes with
    its provenance (``made_by``); the number stored. Raises :class:`_Stopped`
    (with that number) on a user's stop."""
    ran = 0
    with (
        open_executor(executor, address=address, workers=workers) as (pool, width),
        _progress_bar(progress) as bar,
    ):
        task = bar.add_task("sweep", total=total, completed=skipped)
        in_flight: dict[Future[dict[str, Any]], Case] = {}
        try:
            while todo or in_flight:
                while (
                    todo
                    and len(in_flight) < 2 * width
                    and ran + len(in_flight) < budget
                ):
                    case = todo.popleft()
                    in_flight[pool.submit(run_case, case)] = case
                if not in_flight:
                    break
                try:  # wake up now and then to notice a stop request
                    finished, _ = wait(
                        in_flight, timeout=POLL_S, return_when=FIRST_COMPLETED
                    )
                except KeyboardInterrupt:  # Python's default SIGINT handler
                    request()
                    finished = set()
                failure: BaseException | None = None
                for future in finished:
                    case = in_flight.pop(future)
                    try:
                        row = future.result()
                    except Exception as exc:  # keep the others' rows first
                        if failure is None:
                            exc.add_note(
                                f"in sweep case {case.case_id}: "
                                f"{case.instance.label} / {case.profile.label} / "
                                f"{case.method}"
                            )
                            failure = exc
                        continue
                    row = {**row, "provenance": made_by(case).to_json()}
                    write_part(target, row)
                    ran += 1
                    bar.advance(task)
                    if on_case is not None:
                        on_case(row)
                if failure is not None:
                    raise failure
                if requested():  # Ctrl-C: keep what is stored, start nothing
                    raise _Stopped(ran)
        except BaseException:
            for future in in_flight:
                future.cancel()
            raise
    return ran
