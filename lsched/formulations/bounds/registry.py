"""The table of every lower bound lsched knows, each stated as data.

Every bound is one :class:`BoundSpec` in :data:`BOUNDS`, written out here by hand
and in the order the reports list them; nothing registers itself on import. A
spec says which objectives it bounds, which model it is computed on
(:class:`Model`, the first part of its name: ``slot.sawtooth``), the schedules it
holds for (:class:`Schedules`), when it applies and how it is computed from a
:class:`~lsched.formulations.bounds.context.BoundContext` (the instance, the
objective and the deployment).

Schedules
---------
A bound is only a bound *for a class of schedules*, in two respects.

Preemption (:class:`Preemption`)
    ``any``: every schedule the evaluator can run on the deployment (online
    policies with chunked prefill, preemption or swapping, fixed tables, the slot
    and timed models). ``slot``: non-preemptive schedules that prefill each prompt
    whole (the slot model and every run that neither preempts nor chunks); a
    preemptive policy may beat such a bound. ``recompute``: chunked prefill and
    recompute preemption, without prefix cache, host tier or migration (the
    bucket LP and its Lagrangian). A bound for ``any`` schedules also holds for
    the other classes, one for ``recompute`` schedules for the ``slot`` class
    (:meth:`Preemption.covers`).
Topology (:class:`Topology`)
    One replica (the slot and timed models), one colocated pool of ``C`` replicas
    of one profile (the closed forms of :mod:`~lsched.formulations.bounds.work`),
    a cluster beyond one colocated pool (pools of different profiles,
    disaggregated prefill and decode: :mod:`~lsched.formulations.bounds.cluster`),
    or any deployment.
Cache (:class:`Cache`)
    ``none``: runs without a prefix cache, where every request computes its whole
    prompt; every bound computed from whole prompts (the closed forms of
    :mod:`~lsched.formulations.bounds.work` and
    :mod:`~lsched.formulations.bounds.cluster`, the slot and timed models) holds
    only there, since a cache hit removes prefill work. ``any``: runs with any
    prefix cache or none (:mod:`~lsched.formulations.bounds.cached`: every
    distinct block computed once). A bound for ``any`` cache also holds for runs
    without one (:meth:`Cache.covers`).
Migration (:class:`Migration`)
    ``none``: runs in which every request stays on the replica it was routed to.
    ``any``: runs in which a running request may also move to another replica
    (Llumnix's live migration, dLoRA's co-migration; DESIGN.md, "Clusters"), or
    not. A move keeps every step the request makes: the same prompt and output
    tokens, the same KV held by each decode step (its blocks are copied, not
    recomputed), never two replicas decoding it at once; it adds downtime, copy
    traffic and the copy's KV on the destination, never work. Hence, per spec:

    * ``seconds.critical_path``: ``any``. A request's own prefill and decode
      steps, each in an iteration that lasts at least its own share; a move
      only adds time between two of them.
    * ``seconds.work``, ``seconds.prefill_queue``: ``any``. The ``C``
      identical replicas are a fluid machine of speed ``C`` whichever replica
      runs a step, and a step's work depends only on its own tokens and KV,
      unchanged by a move (the copy's blocks on the destination only lower
      what the batches there may hold, below the same capacity).
    * ``seconds.cached_work``, ``seconds.cached_prefill_queue``: ``any``. As
      above, and a migrated KV holds tokens its own request computed, so a
      cache fed by it still holds only tokens an earlier request computed: the
      computations that every schedule makes are unchanged.
    * ``cluster.critical_path``, ``cluster.work``, ``cluster.prefill_queue``,
      ``cluster.decode_work``: ``none``. Each takes, per request, the least
      over routes of sums under *one* pool's profile (all decode steps on one
      pool); a request moved between pools of different profiles can run its
      early decode steps where short contexts are cheap and the late ones where
      long contexts are, less in total than on either pool
      (``tests/test_migration_bounds.py`` has a case 4.5 s under
      ``cluster.critical_path``), and a move from a colocated to a decode pool
      is a route they do not list.
    * ``slot.*``, ``timed.lp``, ``seconds.bucket_lp``,
      ``seconds.bucket_lagrangian``: ``any``. They are computed on one replica
      only (their topology), where a run with migration on has no other replica
      to move a request to: it is a run without migration.

    A bound for ``any`` also holds for runs without migration
    (:meth:`Migration.covers`); the context says whether the run migrates
    (:attr:`~lsched.formulations.bounds.context.BoundContext.migrates`), and a
    bound for ``none`` is then skipped as out of scope.

Listing
-------
For an objective and a deployment, a report lists each spec of the table, in its
order, that is listed for the objective (:attr:`BoundSpec.listed_for`: its
objectives, and for ``slot.lagrangian`` and ``slot.clique_lp`` makespan too) and
whose topology is the deployment's, one replica or any: the closed forms of one
pool and those of a cluster are counterparts, each listed on its own deployments
only, while the bounds of the one-replica models are listed everywhere, as out
of scope where they do not apply. A listed spec is then either computed or
skipped with its reason (:class:`~lsched.formulations.result.Skipped`), checked
in this order (:meth:`BoundSpec.why_not`, then the user's stop, then the value):

1. its own applicability (:attr:`BoundSpec.applies`: the slot model only where
   slots are seconds, an LP only up to a size);
2. its topology against the deployment's;
3. the objective (listed but not bounded: out of scope);
4. migration: a bound for runs without it, where the run migrates (out of
   scope);
5. a stop requested by the user (interrupted);
6. its value (:attr:`BoundSpec.compute`): a finite float, or why there is none.

Adding a bound
--------------
A function in a module of this package, and one :class:`BoundSpec` line in
:data:`BOUNDS` (:mod:`lsched.formulations.bounds` says how). The suite reads
:data:`BOUNDS` at every call, so a test or a notebook can try a spec by
extending the table for a while, e.g. ``monkeypatch.setattr(registry, "BOUNDS",
(*registry.BOUNDS, spec))``; the spec is gone once the attribute is restored.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from lsched.errors import InputError
from lsched.formulations.bounds import slot as slot_bounds
from lsched.formulations.bounds.bucket import bucket_lp, serial_horizon_s
from lsched.formulations.bounds.bucket_lagrangian import bucket_lagrangian
from lsched.formulations.bounds.cached import block_tokens_of
from lsched.formulations.bounds.clique import clique_lp
from lsched.formulations.bounds.context import BoundContext, why_not_one_replica
from lsched.formulations.bounds.work import OBJECTIVES
from lsched.formulations.result import Reason
from lsched.formulations.slot import milp
from lsched.formulations.slot.incumbent import best_heuristic
from lsched.formulations.timed import milp as timed_milp
from lsched.interrupt import requested

#: Why a bound is not computed: the reason and one line for a person.
Why = tuple[Reason, str]
#: A bound's value in seconds, or why it has none.
Compute = Callable[[BoundContext], float | Why]
#: Why a bound does not apply to a context, or ``None`` where it does.
Applies = Callable[[BoundContext], Why | None]

#: Largest ``sum_i o_i`` (the timed model's horizon) whose timed LP is solved.
TIMED_LP_MAX_ITERATIONS = 400
#: Buckets of the suite's bucket LP over the serial horizon (``Delta`` follows).
BUCKET_LP_BUCKETS = 100
#: Most Lagrangian evaluations of the suite's bucket Lagrangian (each a DP per
#: request; a few milliseconds at the suite's sizes).
BUCKET_LAGRANGIAN_ITERATIONS = 300


class Model(enum.StrEnum):
    """The model a bound is computed on: the first part of its name."""

    SECONDS = "seconds"
    """Closed forms in seconds on one pool (:mod:`~lsched.formulations.bounds.work`)."""
    CLUSTER = "cluster"
    """Closed forms in seconds on a cluster
    (:mod:`~lsched.formulations.bounds.cluster`)."""
    SLOT = "slot"
    """The slot model (:mod:`~lsched.formulations.bounds.slot`), in unit slots."""
    TIMED = "timed"
    """The timed model (:mod:`lsched.formulations.timed`), in seconds."""


class Preemption(enum.StrEnum):
    """The schedules a bound holds for, by preemption and prefill (module
    docstring); the value is the scope users see (``any``, ``slot``)."""

    ANY = "any"
    """Every schedule the evaluator runs."""
    NON_PREEMPTIVE = "slot"
    """Non-preemptive schedules that prefill each prompt whole."""
    RECOMPUTE = "recompute"
    """Schedules whose only preemption is recompute, with chunked prefill, and no
    prefix cache, host tier or migration (they include the ``slot`` class)."""

    def covers(self, other: Preemption) -> bool:
        """Whether a bound for these schedules holds for ``other``'s."""
        wider = self is Preemption.RECOMPUTE and other is Preemption.NON_PREEMPTIVE
        return self is Preemption.ANY or self is other or wider


class Cache(enum.StrEnum):
    """The runs a bound holds for, by prefix cache (module docstring)."""

    NONE = "none"
    """Runs without a prefix cache: every prompt computed whole."""
    ANY = "any"
    """Runs with any prefix cache (size, eviction, tier) or none."""

    def covers(self, other: Cache) -> bool:
        """Whether a bound for these runs holds for ``other``'s."""
        return self is Cache.ANY or self is other


class Migration(enum.StrEnum):
    """The runs a bound holds for, by migration between replicas (module
    docstring)."""

    NONE = "none"
    """Runs in which every request stays on the replica it was routed to."""
    ANY = "any"
    """Runs in which running requests may move between replicas, or not."""

    def covers(self, other: Migration) -> bool:
        """Whether a bound for these runs holds for ``other``'s."""
        return self is Migration.ANY or self is other


class Topology(enum.StrEnum):
    """The deployments a bound is stated for (module docstring)."""

    ONE_REPLICA = "one replica"
    ONE_POOL = "one colocated pool"
    CLUSTER = "a cluster beyond one colocated pool"
    ANY = "any deployment"

    def admits(self, context: BoundContext) -> bool:
        """Whether ``context``'s deployment is of this topology."""
        if self is Topology.ANY:
            return True
        if self is Topology.CLUSTER:
            return context.cluster is not None
        one = self is Topology.ONE_POOL or context.replicas == 1
        return context.cluster is None and one

    def listed_on(self, context: BoundContext) -> bool:
        """Whether a report on ``context``'s deployment lists a bound of this
        topology (module docstring, "Listing")."""
        everywhere = (Topology.ONE_REPLICA, Topology.ANY)
        return self in everywhere or self.admits(context)


@dataclass(frozen=True)
class Schedules:
    """The class of schedules a bound holds for (module docstring); a bound
    tagged with no cache is not claimed for cached runs, one tagged with no
    migration not for runs with migration."""

    preemption: Preemption
    topology: Topology
    cache: Cache = Cache.NONE
    migration: Migration = Migration.NONE


@dataclass(frozen=True)
class BoundSpec:
    """One lower bound: what it bounds, for which schedules, and how.

    Attributes
    ----------
    model
        The model it is computed on; its name is ``<model>.<bound>``.
    bound
        Its name within the model, e.g. ``"sawtooth"``.
    objectives
        The objectives it bounds (of
        :data:`~lsched.formulations.bounds.work.OBJECTIVES`).
    schedules
        The schedules it holds for.
    compute
        Its value in seconds on a context, or why there is none (a non-finite
        value is skipped as ``no finite value``). Called only where
        :meth:`why_not` is ``None``.
    applies
        Why it does not apply to a context, or ``None`` where it does (the
        model's conditions, size limits); ``None``: it applies wherever its
        topology and objective do.
    listed_for
        The objectives whose reports list it, computed or out of scope; its
        ``objectives`` by default.
    """

    model: Model
    bound: str
    objectives: frozenset[str]
    schedules: Schedules
    compute: Compute = field(compare=False)
    applies: Applies | None = field(default=None, compare=False)
    listed_for: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if not self.bound or "." in self.bound:
            raise InputError(f"got {self.bound!r}; expected a name without a dot",
                             field="bound")  # fmt: skip
        if not self.objectives or not self.objectives <= set(OBJECTIVES):
            raise InputError(
                f"got {sorted(self.objectives)}; expected some of {OBJECTIVES}",
                field="objectives",
            )
        if self.listed_for is not None and not self.objectives <= self.listed_for:
            raise InputError("expected every objective among those listed",
                             field="listed_for")  # fmt: skip

    @property
    def name(self) -> str:
        """``<model>.<bound>``, e.g. ``"slot.sawtooth"``."""
        return f"{self.model.value}.{self.bound}"

    def listed(self, context: BoundContext) -> bool:
        """Whether a report on ``context`` lists it (module docstring)."""
        listed_for = self.objectives if self.listed_for is None else self.listed_for
        return context.objective in listed_for and self.schedules.topology.listed_on(
            context
        )

    def why_not(self, context: BoundContext) -> Why | None:
        """Why it is not computed on ``context``, or ``None`` where it is
        (steps 1 to 4 of the module docstring)."""
        why = None if self.applies is None else self.applies(context)
        topology = self.schedules.topology
        if why is None and not topology.admits(context):
            where = (
                f"{context.replicas} replicas"
                if context.cluster is None
                else why_not_one_replica(context.cluster)
            )
            why = Reason.OUT_OF_SCOPE, f"{where}; it holds for {topology.value}"
        if why is None and context.objective not in self.objectives:
            defined = ", ".join(sorted(self.objectives))
            why = (
                Reason.OUT_OF_SCOPE,
                f"defined for {defined}, not {context.objective}",
            )
        moves = context.migrates and not self.schedules.migration.covers(Migration.ANY)
        if why is None and moves:
            why = (
                Reason.OUT_OF_SCOPE,
                "requests migrate between replicas here; it holds for runs "
                "without migration",
            )
        return why


# -- how each bound applies and is computed -----------------------------------------


def _finite(value: float, otherwise: Why) -> float | Why:
    return value if math.isfinite(value) else otherwise


def _lp_value(value: float, context: BoundContext) -> float | Why:
    """An LP's value, or why it gave none: the user's stop or its time limit."""
    if math.isfinite(value):
        return value
    if requested():
        return Reason.INTERRUPTED, "stopped by the user"
    limit = f"{context.lp_time_limit:g} s"
    return Reason.TIME_LIMIT, f"the LP was not solved within its limit of {limit}"


def _looked_up(
    values: Callable[[BoundContext], Mapping[str, float]], name: str, missing: str
) -> Compute:
    """The value ``name`` of the context's ``values``, or out of scope because
    ``missing`` when it has none."""

    def compute(context: BoundContext) -> float | Why:
        found = values(context)
        if name not in found:
            return Reason.OUT_OF_SCOPE, missing
        return found[name]

    return compute


def _cached(name: str) -> Compute:
    """``cached_work_bounds``' value ``name`` on the context's pool."""
    return _looked_up(
        lambda context: context.cached_values,
        name,
        "the cost model has no usable under-estimator",
    )


def _has_prefix_hashes(context: BoundContext) -> Why | None:
    """The cached bounds need prefix hashes and their block size."""
    if block_tokens_of(context.instance) is None:
        detail = "no prefix hashes with params['prefix_block_tokens']: no cache hits"
        return Reason.OUT_OF_SCOPE, detail
    return None


def _seconds(name: str) -> Compute:
    """``work_bounds``' value ``name`` on the context's pool."""
    return _looked_up(
        lambda context: context.seconds_values,
        name,
        "the cost model has no usable under-estimator",
    )


def _cluster(name: str) -> Compute:
    """``cluster_bounds``' value ``name`` on the context's cluster."""
    return _looked_up(
        lambda context: context.cluster_values,
        name,
        "no pool's cost model has a usable under-estimator",
    )


def _slots_are_seconds(context: BoundContext) -> Why | None:
    """The slot model's bounds apply where slots are seconds."""
    why = context.why_not_slots
    return None if why is None else (Reason.OUT_OF_SCOPE, why)


def _size(context: BoundContext) -> Why | None:
    """An LP is solved up to ``lp_max_requests`` requests."""
    n, most = len(context.instance), context.lp_max_requests
    return (Reason.SIZE, f"{n} requests > {most}") if n > most else None


def _slot_lp_applies(context: BoundContext) -> Why | None:
    return _slots_are_seconds(context) or _size(context)


def _timed_lp_applies(context: BoundContext) -> Why | None:
    """Where slots are not seconds, on one replica, up to a size."""
    if context.why_not_one_replica is not None:
        return Reason.OUT_OF_SCOPE, context.why_not_one_replica
    if context.why_not_slots is None:
        return Reason.OUT_OF_SCOPE, "slots are seconds here: slot.lp is this LP"
    if context.replicas != 1:
        return (Reason.OUT_OF_SCOPE,
                f"{context.replicas} replicas; the timed model has one")  # fmt: skip
    iterations = int(context.instance.output_tokens.sum())
    size = _size(context)
    if size is None and iterations > TIMED_LP_MAX_ITERATIONS:
        detail = f"{iterations} output tokens > {TIMED_LP_MAX_ITERATIONS}"
        size = Reason.SIZE, detail
    if size is None and isinstance(context.timed_problem, InputError):
        return Reason.OUT_OF_SCOPE, str(context.timed_problem)
    return size


_NO_SLOT_VALUE: Why = (Reason.OUT_OF_SCOPE, "no finite value on this instance")


def _energy(context: BoundContext) -> float | Why:
    return _finite(slot_bounds.energy(context.slot_problem), _NO_SLOT_VALUE)


def _sawtooth(context: BoundContext) -> float | Why:
    return _finite(slot_bounds.sawtooth(context.slot_problem), _NO_SLOT_VALUE)


def _lagrangian(context: BoundContext) -> float | Why:
    """The Lagrangian bound, its step size set by the best heuristic's value."""
    problem = context.slot_problem
    _, start = best_heuristic(problem)
    value = slot_bounds.lagrangian(problem, problem.integer_objective(start))
    return _finite(value, _NO_SLOT_VALUE)


def _slot_lp(context: BoundContext) -> float | Why:
    problem = context.slot_problem
    return _lp_value(milp.lp_bound(problem, time_limit=context.lp_time_limit), context)


def _clique_lp(context: BoundContext) -> float | Why:
    """The conflict-clique LP: the best value reached within the LP time limit."""
    found = clique_lp(context.slot_problem, time_limit=context.lp_time_limit)
    return _lp_value(found.bound, context)


def _timed_lp(context: BoundContext) -> float | Why:
    problem = context.timed_problem
    assert not isinstance(problem, InputError)
    value = timed_milp.lp_bound(problem, time_limit=context.lp_time_limit)
    return _lp_value(value, context)


def _bucket_lp_applies(context: BoundContext) -> Why | None:
    """One colocated replica, latency, up to ``lp_max_requests`` requests."""
    if context.why_not_one_replica is not None:
        return Reason.OUT_OF_SCOPE, context.why_not_one_replica
    if context.replicas != 1:
        detail = f"{context.replicas} replicas; the bucket LP holds for one"
        return Reason.OUT_OF_SCOPE, detail
    return _size(context)


def _buckets(context: BoundContext) -> tuple[float, float]:
    """The serial horizon and the width of :data:`BUCKET_LP_BUCKETS` buckets up
    to it, seconds (the bucket LP's and its Lagrangian's)."""
    instance, profile = context.instance, context.profile
    horizon = serial_horizon_s(instance, profile)
    delta = (horizon - float(instance.arrival_s.min())) / BUCKET_LP_BUCKETS
    return horizon, max(delta, 1e-9)


def _bucket_lp(context: BoundContext) -> float | Why:
    """The bucket LP with :data:`BUCKET_LP_BUCKETS` buckets up to the serial
    horizon, its value at HiGHS's duals by the LP time limit."""
    assert context.profile is not None
    if context.lp_time_limit <= 0:
        return _lp_value(-math.inf, context)
    instance, profile = context.instance, context.profile
    horizon, delta = _buckets(context)
    found = bucket_lp(instance, profile, delta_s=delta, horizon_s=horizon,
                      time_limit=context.lp_time_limit)  # fmt: skip
    return _lp_value(found.value, context)


def _bucket_lagrangian(context: BoundContext) -> float | Why:
    """The bucket Lagrangian on the bucket LP's buckets, started from the
    ``priority`` policy's run (work key, chunks of 384 tokens) and aimed at its
    total latency, for at most the LP time limit and
    :data:`BUCKET_LAGRANGIAN_ITERATIONS` evaluations."""
    from lsched.evaluator import simulate
    from lsched.policies import PolicySpec
    from lsched.policies.priority import work_params
    from lsched.predictors import oracle

    assert context.profile is not None
    if context.lp_time_limit <= 0:
        return _lp_value(-math.inf, context)
    instance, profile = context.instance, context.profile
    horizon, delta = _buckets(context)
    spec = PolicySpec("priority", work_params(profile, chunk_tokens=384))
    run = simulate(oracle(instance), profile, spec).requests  # any run will do
    completion = run["completion_s"].to_numpy()
    found = bucket_lagrangian(
        instance, profile, delta_s=delta, horizon_s=horizon,
        completion_s=completion, first_token_s=run["first_token_s"].to_numpy(),
        upper_bound=float((completion - instance.arrival_s).sum()),
        time_limit=context.lp_time_limit,
        iterations=BUCKET_LAGRANGIAN_ITERATIONS,
    )  # fmt: skip
    return _finite(found.value, _NO_SLOT_VALUE)


# -- the table ----------------------------------------------------------------------

_BOTH = frozenset(OBJECTIVES)
_LATENCY = frozenset({"latency"})
_MOVES = Migration.ANY  # module docstring, "Migration": each spec's reason
_ANY_POOL = Schedules(Preemption.ANY, Topology.ONE_POOL, migration=_MOVES)
_ANY_POOL_ANY_CACHE = Schedules(Preemption.ANY, Topology.ONE_POOL, Cache.ANY, _MOVES)
_ANY_CLUSTER = Schedules(Preemption.ANY, Topology.CLUSTER, migration=Migration.NONE)
_ANY_REPLICA = Schedules(Preemption.ANY, Topology.ONE_REPLICA, migration=_MOVES)
_SLOT_REPLICA = Schedules(
    Preemption.NON_PREEMPTIVE, Topology.ONE_REPLICA, migration=_MOVES
)
_RECOMPUTE_REPLICA = Schedules(
    Preemption.RECOMPUTE, Topology.ONE_REPLICA, migration=_MOVES
)


def _slot_latency(name: str, compute: Compute, applies: Applies) -> BoundSpec:
    """A slot-model bound on latency alone, listed for makespan too (as out of
    scope there), on one replica's slot schedules."""
    return BoundSpec(
        Model.SLOT, name, _LATENCY, _SLOT_REPLICA, compute, applies, listed_for=_BOTH
    )


#: Every bound lsched has, in the order the reports list them (module docstring).
BOUNDS: tuple[BoundSpec, ...] = (
    BoundSpec(
        Model.SECONDS, "critical_path", _BOTH, _ANY_POOL, _seconds("critical_path")
    ),
    BoundSpec(Model.SECONDS, "work", _BOTH, _ANY_POOL, _seconds("work")),
    BoundSpec(
        Model.SECONDS, "prefill_queue", _LATENCY, _ANY_POOL, _seconds("prefill_queue")
    ),
    BoundSpec(
        Model.SECONDS,
        "cached_work",
        _BOTH,
        _ANY_POOL_ANY_CACHE,
        _cached("cached_work"),
        _has_prefix_hashes,
    ),
    BoundSpec(
        Model.SECONDS,
        "cached_prefill_queue",
        _LATENCY,
        _ANY_POOL_ANY_CACHE,
        _cached("cached_prefill_queue"),
        _has_prefix_hashes,
    ),
    BoundSpec(
        Model.CLUSTER, "critical_path", _BOTH, _ANY_CLUSTER, _cluster("critical_path")
    ),
    BoundSpec(Model.CLUSTER, "work", _BOTH, _ANY_CLUSTER, _cluster("work")),
    BoundSpec(
        Model.CLUSTER, "prefill_queue", _BOTH, _ANY_CLUSTER, _cluster("prefill_queue")
    ),
    BoundSpec(
        Model.CLUSTER, "decode_work", _BOTH, _ANY_CLUSTER, _cluster("decode_work")
    ),
    BoundSpec(Model.SLOT, "energy", _BOTH, _ANY_REPLICA, _energy, _slots_are_seconds),
    BoundSpec(
        Model.SLOT, "sawtooth", _BOTH, _SLOT_REPLICA, _sawtooth, _slots_are_seconds
    ),
    _slot_latency("lagrangian", _lagrangian, _slots_are_seconds),
    BoundSpec(Model.SLOT, "lp", _BOTH, _SLOT_REPLICA, _slot_lp, _slot_lp_applies),
    _slot_latency("clique_lp", _clique_lp, _slot_lp_applies),
    BoundSpec(Model.TIMED, "lp", _BOTH, _SLOT_REPLICA, _timed_lp, _timed_lp_applies),
    BoundSpec(
        Model.SECONDS,
        "bucket_lp",
        _LATENCY,
        _RECOMPUTE_REPLICA,
        _bucket_lp,
        _bucket_lp_applies,
        listed_for=_BOTH,
    ),
    BoundSpec(
        Model.SECONDS,
        "bucket_lagrangian",
        _LATENCY,
        _RECOMPUTE_REPLICA,
        _bucket_lagrangian,
        _bucket_lp_applies,
        listed_for=_BOTH,
    ),
)


def bound_spec(name: str) -> BoundSpec:
    """The spec of :data:`BOUNDS` named ``name`` (e.g. ``"slot.lp"``).

    Raises
    ------
    InputError
        If no spec, or more than one, has that name.
    """
    found = [spec for spec in BOUNDS if spec.name == name]
    if len(found) != 1:
        names = ", ".join(spec.name for spec in BOUNDS)
        raise InputError(f"got {name!r}; expected one of {names}", field="bound")
    return found[0]


__all__ = [
    "BOUNDS",
    "BUCKET_LAGRANGIAN_ITERATIONS",
    "BUCKET_LP_BUCKETS",
    "TIMED_LP_MAX_ITERATIONS",
    "Applies",
    "BoundSpec",
    "Cache",
    "Compute",
    "Migration",
    "Model",
    "Preemption",
    "Schedules",
    "Topology",
    "Why",
    "bound_spec",
]
