"""How far is each policy from optimal? Bounds, the best offline schedule, policies.

:func:`compare` answers it for one instance and one objective, in seconds:

1. every bound of the table :data:`~lsched.formulations.bounds.registry.BOUNDS`
   that applies (:func:`~lsched.formulations.bounds.suite.bound_report`), each
   with the class of schedules it holds for (``any``, or ``slot``:
   non-preemptive, whole-prompt prefill), and the solver's bound;
2. the best offline schedule, replayed through the evaluator: the slot model
   solved by a backend where slots are seconds (a unit-slot profile, one
   replica, integer arrivals); else, on one replica and up to
   :data:`TIMED_MAX_REQUESTS` requests, the timed model (iterations priced by the
   cost model); otherwise the best policy run stands in for it;
3. every policy replayed by the evaluator, with its gap to the best bound that
   holds for its run: a run that never preempts (recompute or swap) and
   prefills every prompt in one iteration is a slot-model schedule, so the
   ``slot`` bounds hold for it too.

Host tier (:mod:`lsched.tiers`). A swapping policy keeps the GPU's KV within its
capacity at every iteration and only adds work (copies), so every ``any`` bound
holds for it (the closed forms of :mod:`lsched.formulations.bounds.work` and the
slot model's ``energy``: a token-emitting iteration holds the request's whole KV
on the GPU, swapped or not); a swap pauses a request, so a run that swaps is no
slot-model schedule and the ``slot`` bounds do not. A policy that serves from
host memory (``infinigen``) runs on another profile (its KV capacity is the host
tier's): the bounds of the compared profile do not hold for it, and its gap is
taken to the bounds of the profile it serves with.

:func:`compare_cluster` does the same on a :class:`~lsched.cluster.Cluster`:
beyond one colocated pool (pools of different profiles, disaggregated prefill
and decode), the bounds are the cluster's
(:mod:`lsched.formulations.bounds.cluster`), the policies run on the cluster and
the offline solve, whose models have one colocated replica, is not computed.

Prefix cache (:mod:`lsched.evaluator.prefix`). With ``prefix_cache`` every
policy runs with a cache on each replica; a cache hit removes prefill work, so
only the bounds tagged for any cache
(:class:`~lsched.formulations.bounds.registry.Cache`, those of
:mod:`lsched.formulations.bounds.cached`: every distinct block computed once)
hold for those runs and score their gaps, and the headline ``best_bound``. The
offline solve (slot and timed models, no cache) stays a schedule without one.

Every bound, solve or policy run not computed is listed in
:attr:`Comparison.not_computed` with its reason (JSON ``skipped``).

Requests are compared as the evaluator serves them at the deployment's
``max_model_len`` (:func:`lsched.evaluator.length.served_requests`; a cluster's:
the smallest over its pools): a prompt over it is left out and an output is cut
where the engine stops it, before any bound, solve or policy run, so that all of
them serve the same requests with the same tokens (DESIGN.md, "Rejection"). A
bound computed on the uncut outputs would not hold for the cut runs.

Gaps are certified: ``(value - bound) / value``, ``>= 0`` by construction of the
bounds (and checked by the tests). The headline ``best_bound`` holds for every
schedule compared; the slot model's optimum may exceed it, because preemption can
beat the best non-preemptive schedule (on the shipped default instance, unit
slots, ``sjf`` with recompute preemption reaches 430 against a proven
non-preemptive optimum of 487: a recompute costs one slot whatever its length).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from lsched.checks import (
    check_choice,
    check_int,
    check_policies,
    check_solver_options,
    check_time_limit,
    check_type,
)
from lsched.cluster import Cluster, colocated_topology, served_profile
from lsched.errors import InputError
from lsched.evaluator import SimulationResult, simulate, simulate_cluster
from lsched.evaluator.length import cluster_max_model_len, served_requests
from lsched.formulations import backends
from lsched.formulations.bounds.cluster import cluster_bounds
from lsched.formulations.bounds.context import (
    one_colocated_pool,
    slot_problem_in_seconds,
    why_not_one_replica,
    why_not_slots,
)
from lsched.formulations.bounds.registry import (
    Cache,
    Preemption,
    Schedules,
    Topology,
)
from lsched.formulations.bounds.suite import (
    Bound,
    best_bound,
    bound_report,
    cluster_bound_report,
)
from lsched.formulations.bounds.work import OBJECTIVES
from lsched.formulations.result import (
    Reason,
    Skipped,
    SolveResult,
    Status,
    certified_gap,
)
from lsched.formulations.slot import SlotProblem
from lsched.formulations.timed import TimedProblem
from lsched.instance import Instance
from lsched.interrupt import requested, session
from lsched.policies import PolicySpec, parse_policy
from lsched.predictors import oracle
from lsched.prefix.spec import PrefixCacheSpec, parse_prefix_cache
from lsched.profile import DeploymentProfile
from lsched.routers import migrates

#: Policies compared by default: engines' rules and the OR literature's.
DEFAULT_POLICIES: tuple[str, ...] = (
    "fcfs",
    "vllm",
    "sarathi",
    "sjf",
    "srpt",
    "mc-sf",
    "sorted-f",
    "hybrid",
)

#: Largest instance whose timed model compare solves (it grows as n x sum(o)).
TIMED_MAX_REQUESTS = 8
#: The schedules the offline solver's bound holds for (slot or timed model).
SOLVER_SCHEDULES = Schedules(Preemption.NON_PREEMPTIVE, Topology.ONE_REPLICA)

Progress = Callable[[float, float | None, float], None]


@dataclass(frozen=True)
class PolicyRow:
    """One policy's run, scored."""

    policy: str
    objective_value: float
    bound_scope: str
    gap: float | None
    result: SimulationResult = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "objective_value": self.objective_value,
            "gap": self.gap,
            "bound_scope": self.bound_scope,
            "metrics": self.result.summary()["metrics"],
        }


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare` found (module docstring).

    Attributes
    ----------
    objective
        ``"latency"`` (total E2E seconds) or ``"makespan"`` (seconds).
    bounds
        Every bound computed, best first.
    policies
        One row per policy, in the order asked.
    solve
        The offline solve (slot or timed model), or ``None``.
    solve_objective
        The evaluator's objective of the solver's schedule (``None`` without one).
    solve_model
        ``"slot model"`` or ``"timed model"``.
    interrupted
        Whether the user stopped the comparison (Ctrl-C): what was finished is
        kept, the steps after the stop are listed in ``skipped``.
    skipped
        Policies not run because of the stop.
    not_computed
        Every bound and solve not computed, with the reason (time limit, out of
        scope, size, interrupted, not requested), and the policies of
        ``skipped``: nothing is dropped silently.
    cache
        ``"none"``, or ``"any"`` where the policies ran with a prefix cache:
        only the bounds that hold for cached runs score them.
    """

    objective: str
    bounds: list[Bound]
    policies: list[PolicyRow]
    solve: SolveResult | None = None
    solve_objective: float | None = None
    solve_model: str | None = None
    interrupted: bool = False
    skipped: list[str] = field(default_factory=list)
    not_computed: list[Skipped] = field(default_factory=list)
    cache: str = Cache.NONE.value

    @property
    def best_bound(self) -> float:
        """The largest bound that holds for every schedule compared."""
        return best_bound(self.bounds, "any", self.cache)

    @property
    def best_slot_bound(self) -> float:
        """The largest bound on non-preemptive, whole-prefill schedules."""
        return best_bound(self.bounds, "slot")

    def best_schedule(self) -> dict[str, Any]:
        """The best schedule found: its source, objective, status and gap."""
        found: list[tuple[float, str, str, float | None]] = [
            (row.objective_value, row.policy, "feasible", row.gap)
            for row in self.policies
        ]
        if self.solve is not None and self.solve_objective is not None:
            gap = certified_gap(self.solve_objective, self.best_slot_bound)
            label = f"{self.solve.solver} ({self.solve_model})"
            found.append((self.solve_objective, label, self.solve.status.value, gap))
        if not found:  # stopped before any schedule
            return {
                "source": None,
                "objective_value": None,
                "status": None,
                "gap": None,
            }
        value, source, status, gap = min(found, key=lambda row: row[0])
        return {
            "source": source,
            "objective_value": value,
            "status": status,
            "gap": gap,
        }

    def to_dict(self) -> dict[str, Any]:
        """The JSON view (keys as ``lsched compare --json``)."""

        def finite(value: float) -> float | None:
            return value if math.isfinite(value) else None

        return {
            "objective": self.objective,
            "bounds": {b.name: b.value for b in self.bounds},
            "bound_scopes": {b.name: b.scope for b in self.bounds},
            "bound_holds_for": {b.name: b.holds_for for b in self.bounds},
            "best_bound": finite(self.best_bound),
            "cache": self.cache,
            "best_slot_bound": finite(self.best_slot_bound),
            "best_schedule": self.best_schedule(),
            "solver": None if self.solve is None else self.solve.summary(),
            "policies": [row.to_dict() for row in self.policies],
            "status": "interrupted" if self.interrupted else "complete",
            "skipped_policies": list(self.skipped),
            "skipped": [item.to_dict() for item in self.not_computed],
        }


def objective_value(
    result: SimulationResult, instance: Instance, objective: str
) -> float:
    """The objective of an evaluator run, in seconds: total E2E (``latency``),
    total time to first token (``ttft``) or ``makespan``, over the requests it
    served (all of them unless a cluster rejected some)."""
    if objective == "makespan":
        return float(result.metrics["makespan_s"])
    column = "first_token_s" if objective == "ttft" else "completion_s"
    served = _served(result)
    waits = result.requests[column].to_numpy() - instance.arrival_s
    return float(np.sum(waits[served]))


def _served(result: SimulationResult) -> np.ndarray:
    """Whether each request was served (not rejected)."""
    return np.asarray(result.requests["rejected"].to_numpy() == "", dtype=bool)


def is_slot_schedule(result: SimulationResult, instance: Instance) -> bool:
    """Whether a logged run is a slot/timed-model schedule.

    That is: no preemption, every prompt prefilled in one iteration, and every
    request decoding in each iteration of its replica from its prefill to its
    completion (``o_i`` consecutive iterations, none skipped while it holds KV).
    """
    if result.members is None or result.runs is None:
        raise InputError("expected a run with its log (log=True)", field="result")
    records = result.requests
    if int(records["preemptions"].sum()) > 0:
        return False
    if "swap_outs" in records and int(records["swap_outs"].sum()) > 0:
        return False  # a swapped request pauses: no slot-model schedule
    prefills = result.members[result.members["kind"] == "prefill"]
    if not prefills["request"].is_unique:
        return False
    runs = result.runs
    for replica, own in records.groupby("replica"):
        mine = runs[runs["replica"] == replica]
        ends = mine["end_s"].to_numpy()
        done = np.concatenate([[0], np.cumsum(mine["iterations"].to_numpy())])
        # runs start at admissions and end at completions: exact boundaries
        first = np.searchsorted(mine["start_s"].to_numpy(), own["admitted_s"])
        last = np.searchsorted(ends, own["completion_s"])
        spans = done[last + 1] - done[first]
        if np.any(spans != instance.output_tokens[own.index.to_numpy()]):
            return False
    return True


def _check_options(
    objective: Any,
    backend: Any,
    time_limit: Any,
    num_workers: Any,
    seed: Any,
    lp_time_limit: Any,
) -> None:
    """InputError naming the first bad option of :func:`compare`."""
    check_choice(objective, "objective", OBJECTIVES)
    if backend is not None:
        check_choice(backend, "backend", backends.BACKENDS["slot"])
    check_solver_options(time_limit, num_workers, seed)
    check_time_limit(lp_time_limit, "lp_time_limit", zero=True)


@session()
def compare(
    instance: Instance,
    profile: DeploymentProfile,
    *,
    objective: str = "latency",
    policies: Sequence[str | PolicySpec] = DEFAULT_POLICIES,
    backend: str | None = "cpsat",
    time_limit: float = 10.0,
    replicas: int | None = None,
    num_workers: int = 2,
    seed: int = 0,
    on_progress: Progress | None = None,
    lp_time_limit: float = 10.0,
    dispatch: str | None = None,
    prefix_cache: str | PrefixCacheSpec | None = None,
) -> Comparison:
    """Bounds, the best offline schedule and every policy on one instance.

    Parameters
    ----------
    instance
        The requests. Length-aware policies read predicted output lengths; an
        instance without predictions gets the oracle's (hindsight, like the
        offline optimum it is compared with).
    profile
        The deployment.
    objective
        ``"latency"`` (total E2E seconds) or ``"makespan"`` (seconds).
    policies
        Policy specifications ``name[:key=value,...]`` (or :class:`PolicySpec`);
        a sequence, even of one: ``["fcfs"]`` (a ``str`` is refused).
    backend
        Slot-model backend (``cpsat``, ``milp`` or ``lns``), or ``None`` for no
        solve.
    time_limit
        Wall-clock seconds for the solve.
    replicas
        Number of replicas; the profile's by default.
    num_workers, seed
        Passed to the solver.
    on_progress
        Called with ``(time_s, objective, bound)`` as the solver improves.
    lp_time_limit
        Wall-clock seconds for each LP bound of the suite
        (:func:`~lsched.formulations.bounds.suite.bound_suite`).
    dispatch
        The router of the policy runs (:func:`~lsched.evaluator.simulate`);
        round robin by default.
    prefix_cache
        A prefix cache on each replica of the policy runs (module docstring).

    Raises
    ------
    InputError
        On an argument of the wrong type or out of its range (:mod:`lsched.checks`:
        a single ``str`` for ``policies`` is refused, pass ``["fcfs"]``), an
        unknown objective, policy or backend.
    """
    check_type(instance, "instance", Instance, "an Instance")
    check_type(profile, "profile", DeploymentProfile, "a DeploymentProfile")
    _check_options(objective, backend, time_limit, num_workers, seed, lp_time_limit)
    # fail on a bad name before work
    specs = [parse_policy(p) if isinstance(p, str) else p
             for p in check_policies(policies)]  # fmt: skip
    prefix_cache, cache = _with_cache(prefix_cache)
    replicas = (
        profile.replicas if replicas is None else check_int(replicas, "replicas", 1)
    )
    # what the evaluator serves (prompts over max_model_len out, outputs cut):
    # the bounds, the solve and every policy see the same requests
    instance = _served_with_predictions(instance, profile.max_model_len)
    report = bound_report(
        instance, profile, objective, replicas=replicas, lp_time_limit=lp_time_limit
    )
    options = {
        "time_limit": time_limit,
        "num_workers": num_workers,
        "seed": seed,
        "on_progress": on_progress,
    }
    offline = _offline(instance, profile, objective, backend, replicas, options)
    bounds = sorted([*report.bounds, *offline.bounds], key=lambda b: -b.value)
    rows, stopped = [], []
    for spec in specs:
        if requested():  # Ctrl-C: keep what is finished, run nothing more
            stopped.append(_stopped_policy(spec.label))
            continue
        result = simulate(instance, profile, spec, replicas=replicas,
                          log=offline.slot_class, dispatch=dispatch,
                          prefix_cache=prefix_cache)  # fmt: skip
        in_class = offline.slot_class and is_slot_schedule(result, instance)
        rows.append(
            _policy_row(spec, result, instance, profile, objective, replicas,
                        lp_time_limit, bounds, in_class, cache)
        )  # fmt: skip
    return Comparison(
        objective, bounds, rows, offline.solve, offline.value, offline.model,
        requested(), [item.name for item in stopped],
        [*report.skipped, *offline.skipped, *stopped], cache.value,
    )  # fmt: skip


def _with_cache(
    prefix_cache: str | PrefixCacheSpec | None,
) -> tuple[PrefixCacheSpec | None, Cache]:
    """The policy runs' prefix cache, parsed, and the runs' class of bounds."""
    if prefix_cache is None:
        return None, Cache.NONE
    return parse_prefix_cache(prefix_cache), Cache.ANY


def _policy_row(
    spec: PolicySpec,
    result: SimulationResult,
    instance: Instance,
    profile: DeploymentProfile,
    objective: str,
    replicas: int,
    lp_time_limit: float,
    bounds: list[Bound],
    in_class: bool,
    cache: Cache = Cache.NONE,
) -> PolicyRow:
    """A policy run of :func:`compare` scored against the best bound that holds
    for it: those of ``slot`` schedules too where the run is ``in_class``, those
    of the profile it serves with (module docstring, "Host tier"), and of runs
    with ``cache``."""
    value = objective_value(result, instance, objective)
    scope = (Preemption.NON_PREEMPTIVE if in_class else Preemption.ANY).value
    served = served_profile(spec, profile)
    if served is not profile:  # it serves from host memory: bound that
        bounds = bound_report(instance, served, objective, replicas=replicas,
                              lp_time_limit=lp_time_limit).bounds  # fmt: skip
    gap = certified_gap(value, best_bound(bounds, scope, cache.value))
    return PolicyRow(spec.label, value, scope, gap, result)


def _served_with_predictions(instance: Instance, max_model_len: int) -> Instance:
    """The requests the evaluator serves at ``max_model_len``, with the oracle's
    predictions where the instance has none (module docstring)."""
    instance = served_requests(instance, max_model_len)
    if instance.predicted_output_tokens is None:
        instance = oracle(instance)
    return instance


def _stopped_policy(label: str) -> Skipped:
    """A policy not run because the user stopped the comparison."""
    return Skipped(label, "policy", Reason.INTERRUPTED, "stopped by the user")


@dataclass(frozen=True)
class _Offline:
    """The offline solve of :func:`compare`, its bound, or why there is none.

    Attributes
    ----------
    slot_class
        Whether there are bounds of the ``slot`` class (a slot problem in seconds
        or a timed solve): only then does a policy run need its log, to tell
        whether it is of that class.
    solve, value, model
        The solve, the evaluator's objective of its schedule and the model
        (``"slot model"`` or ``"timed model"``); ``None`` without a solve.
    bounds
        The solver's bound (none if it proved none).
    skipped
        The solve or the solver's bound not computed, with the reason.
    """

    slot_class: bool
    solve: SolveResult | None = None
    value: float | None = None
    model: str | None = None
    bounds: tuple[Bound, ...] = ()
    skipped: tuple[Skipped, ...] = ()


def _offline(
    instance: Instance,
    profile: DeploymentProfile,
    objective: str,
    backend: str | None,
    replicas: int,
    options: dict[str, Any],
) -> _Offline:
    """The best offline schedule: the slot model where slots are seconds, else the
    timed model on one replica and small instances (module docstring)."""
    problem = slot_problem_in_seconds(instance, profile, objective, replicas)
    why_not = _why_no_solve(instance, profile, backend, replicas, problem)
    timed = None
    if why_not is None and problem is None:
        try:
            timed = TimedProblem.from_instance(instance, profile, objective=objective)
        except InputError as error:  # e.g. a prompt over the token budget
            slots = why_not_slots(instance, profile, replicas)
            why_not = Reason.OUT_OF_SCOPE, f"{slots}; timed model: {error}"
    if why_not is not None:
        skipped = Skipped("solve", "solve", *why_not)
        return _Offline(problem is not None, skipped=(skipped,))
    assert backend is not None
    value = None
    if problem is not None:
        model, name = "slot model", f"slot.{backend}"
        solve = backends.solve(problem, backend, **options)
        if solve.start is not None:
            value = backends.replay_objective(problem, solve.start)
    else:
        assert timed is not None
        model, name = "timed model", f"timed.{backend}"
        solve = backends.solve(timed, backend, **options)
        if solve.start is not None:
            value = backends.replay_timed_objective(timed, solve.start)
    if math.isfinite(solve.bound):
        topology = colocated_topology(profile.name, replicas)
        bound = Bound(name, solve.bound, SOLVER_SCHEDULES, topology)
        return _Offline(True, solve, value, model, bounds=(bound,))
    reason = {
        Status.INTERRUPTED: Reason.INTERRUPTED,
        Status.TIME_LIMIT: Reason.TIME_LIMIT,
    }.get(solve.status, Reason.OUT_OF_SCOPE)
    detail = f"the solver proved no bound (status {solve.status.value})"
    skipped = Skipped(name, "bound", reason, detail)
    return _Offline(True, solve, value, model, skipped=(skipped,))


@session()
def compare_cluster(
    instance: Instance,
    cluster: Cluster,
    *,
    objective: str = "latency",
    policies: Sequence[str | PolicySpec] | None = None,
    backend: str | None = "cpsat",
    time_limit: float = 10.0,
    num_workers: int = 2,
    seed: int = 0,
    on_progress: Progress | None = None,
    lp_time_limit: float = 10.0,
) -> Comparison:
    """:func:`compare` on a cluster: its bounds, and policies run on it.

    One colocated pool is :func:`compare` on its profile, replicas and router.
    On any other cluster the bounds are
    :func:`~lsched.formulations.bounds.suite.cluster_bound_report`'s (scope
    ``any``, for the cluster's topology), the offline solve (slot and timed
    models: one colocated replica) is listed as not computed, and each policy
    runs on the cluster through :func:`~lsched.evaluator.simulate_cluster`. A run
    that rejected requests is scored on those it served, its gap taken to the
    cluster bounds of those requests.

    Parameters
    ----------
    instance, objective, backend, time_limit, num_workers, seed, on_progress
        As :func:`compare`; so is ``lp_time_limit``.
    cluster
        The pools, links and routers.
    policies
        ``None``: one run of the cluster as written (each pool its own policy);
        else one run per policy, every pool running it.
    """
    check_type(instance, "instance", Instance, "an Instance")
    check_type(cluster, "cluster", Cluster, "a Cluster")
    _check_options(objective, backend, time_limit, num_workers, seed, lp_time_limit)
    if policies is not None:
        policies = check_policies(policies)
    runs = _cluster_runs(cluster, policies)  # fail on a bad name before work
    pool = one_colocated_pool(cluster)
    if pool is not None:
        return compare(
            instance, pool.profile, objective=objective, policies=list(runs),
            backend=backend, time_limit=time_limit, replicas=pool.replicas,
            num_workers=num_workers, seed=seed, on_progress=on_progress,
            lp_time_limit=lp_time_limit, dispatch=cluster.router.label,
            prefix_cache=pool.prefix_cache,
        )  # fmt: skip
    instance = _served_with_predictions(instance, cluster_max_model_len(cluster))
    report = cluster_bound_report(
        instance, cluster, objective, lp_time_limit=lp_time_limit,
        migrates=migrates(cluster.router),
    )  # fmt: skip
    bounds = sorted(report.bounds, key=lambda b: -b.value)
    detail = (
        f"{why_not_one_replica(cluster)}; the slot and timed models are of one "
        "colocated replica"
    )
    reason = Reason.NOT_REQUESTED if backend is None else Reason.OUT_OF_SCOPE
    not_computed = [*report.skipped, Skipped("solve", "solve", reason, detail)]
    rows, stopped = [], []
    for label, run in runs.items():
        if requested():  # Ctrl-C: keep what is finished, run nothing more
            stopped.append(_stopped_policy(label))
            continue
        result = simulate_cluster(instance, run)
        rows.append(_cluster_row(label, result, instance, cluster, objective, bounds))
    return Comparison(
        objective, bounds, rows, interrupted=requested(),
        skipped=[item.name for item in stopped],
        not_computed=[*not_computed, *stopped],
        cache=(Cache.ANY if cluster.prefix_cached else Cache.NONE).value,
    )  # fmt: skip


def _cluster_runs(
    cluster: Cluster, policies: Sequence[str | PolicySpec] | None
) -> dict[str, Cluster]:
    """Each run's label and cluster: as written, or every pool under one policy."""
    if policies is None:
        labels = {p.policy.label for p in cluster.pools}
        if len(labels) == 1:
            return {labels.pop(): cluster}
        mixed = " + ".join(f"{p.name}: {p.policy.label}" for p in cluster.pools)
        return {mixed: cluster}
    runs = {}
    for text in policies:
        spec = parse_policy(text) if isinstance(text, str) else text
        pools = tuple(replace(p, policy=spec) for p in cluster.pools)
        runs[spec.label] = replace(cluster, pools=pools)
    return runs


def _cluster_row(
    label: str,
    result: SimulationResult,
    instance: Instance,
    cluster: Cluster,
    objective: str,
    bounds: list[Bound],
) -> PolicyRow:
    """A cluster run scored against the bounds of the requests it served (none
    holds for a cluster with a prefix cache: the cluster bounds see none)."""
    value = objective_value(result, instance, objective)
    served = _served(result)
    cache = Cache.ANY if cluster.prefix_cached else Cache.NONE
    if served.all():
        bound = best_bound(bounds, Preemption.ANY.value, cache.value)
    elif served.any() and cache is Cache.NONE:
        found = cluster_bounds(instance.subset(served), cluster, objective)
        bound = max(found.values(), default=-math.inf)
    else:
        bound = -math.inf
    scope = Preemption.ANY.value
    return PolicyRow(label, value, scope, certified_gap(value, bound), result)


def _why_no_solve(
    instance: Instance,
    profile: DeploymentProfile,
    backend: str | None,
    replicas: int,
    problem: SlotProblem | None,
) -> tuple[Reason, str] | None:
    """Why :func:`compare` runs no offline solve, or ``None`` when it runs one."""
    if backend is None:
        return Reason.NOT_REQUESTED, "no solve backend asked (backend none)"
    if problem is not None:
        return None
    slots = why_not_slots(instance, profile, replicas)
    if replicas != 1:
        return (
            Reason.OUT_OF_SCOPE,
            f"{replicas} replicas; the slot and timed models have one",
        )
    timed_backends = backends.BACKENDS["timed"]
    if backend not in timed_backends:
        return (
            Reason.OUT_OF_SCOPE,
            f"{slots}; the timed model is solved by {', '.join(timed_backends)}, "
            f"not {backend}",
        )
    if len(instance) > TIMED_MAX_REQUESTS:
        return (
            Reason.SIZE,
            f"{slots}; the timed model is solved up to {TIMED_MAX_REQUESTS} "
            f"requests, not {len(instance)}",
        )
    return None


__all__ = [
    "DEFAULT_POLICIES",
    "TIMED_MAX_REQUESTS",
    "Comparison",
    "PolicyRow",
    "compare",
    "compare_cluster",
    "is_slot_schedule",
    "objective_value",
]
