"""Sweep configs (:mod:`lsched.sweep`): reading and validating the TOML file.

:func:`load_config` reads a sweep config into a :class:`SweepConfig`, checking
every trace, profile, override, policy, generator option and the predictor before
any case runs; each problem is an :class:`~lsched.errors.InputError` located by
file, line and field (``sweep.KEY``). :meth:`SweepConfig.cases` is the product
of its axes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lsched.checks import check_path
from lsched.errors import InputError
from lsched.instance import Instance
from lsched.policies import PolicySpec, parse_policy
from lsched.profile import read_toml
from lsched.provenance import FileHashes, Provenance, provenance
from lsched.sweep.cases import (
    Case,
    InstanceSource,
    ProfileSetting,
    SolverSetting,
    _canonical,
    _generate,
    _instance_files,
)
from lsched.sweep.store import check_out

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
    "convention": str,
    "source": str,
    "format": str,
}


@dataclass(frozen=True)
class SweepConfig:
    """A parsed, validated sweep config (see :mod:`lsched.sweep`).

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
    "convention": "lsched or jaillet",
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
    """Read and validate a sweep config (TOML, see :mod:`lsched.sweep`).

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
