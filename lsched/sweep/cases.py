"""The cases of a sweep (:mod:`lsched.sweep`): what defines one, and running it.

A case is one (instance, profile, method): an :class:`InstanceSource` (a trace
file or a generator), a :class:`ProfileSetting` (a profile and its overrides),
and a policy or a :class:`SolverSetting`. :class:`Case` holds only these
descriptions, so it pickles small; its :attr:`Case.case_id` hashes the canonical
description, :func:`case_provenance` gives its provenance record, and
:func:`run_case` (run on a worker) loads the data and returns the case's row.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lsched.checks import check_number, check_solver_options
from lsched.errors import InputError
from lsched.instance import Instance
from lsched.policies import PolicyError, PolicySpec
from lsched.profile import DeploymentProfile
from lsched.provenance import FileHashes, Provenance

#: Version of the case description: bump it to invalidate every stored case.
_SCHEMA = 1
#: Relative tolerance of the solver's replay check (as ``lsched solve``).
_REPLAY_RTOL = 1e-9


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
            "--convention": options.get("convention"),
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
        convention=options.get("convention"),
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

        if self.backend not in BACKENDS["slot"]:
            raise InputError(
                f"got {self.backend!r}; expected one of {', '.join(BACKENDS['slot'])}",
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
    """The record of one case of the run ``run`` (a sweep's
    :meth:`~lsched.sweep.SweepConfig.provenance`): the config, the case's own
    files, its policy, the seed of its generator (``generate``), predictor
    (``predictor``) and solver (``seed``), the solver's time limit."""
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


# -- running one case -------------------------------------------------------------


def run_case(case: Case) -> dict[str, Any]:
    """Run one case; return its flat row (:data:`~lsched.sweep.BASE_COLUMNS` and
    metrics).

    A top-level function, so that executors can pickle it. Bad input for this
    case (a request that can never fit, a policy that needs predictions, a KV
    capacity the slot model rejects) and a policy breaking the model's rules give
    a row with status ``error``; any other exception propagates. ``provenance`` is
    ``None``: :func:`~lsched.sweep.run_sweep` records it (:func:`case_provenance`)
    as it stores the row.
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
    from lsched.comparison import objective_value
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
    from lsched.formulations.backends import replay_objective, solve
    from lsched.formulations.slot import SlotProblem, slot_length_s

    tau = slot_length_s(instance, profile) if setting.slot_s is None else setting.slot_s
    problem = SlotProblem.from_instance(
        instance, profile, objective=case.objective, slot_s=tau
    )
    result = solve(
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
