"""Routers: the replica each arriving request joins, or a rejection.

A router is built once per run (``RouterSpec.make(context)``) and called once per
request, in arrival order (instance order), as ``route(view)`` with a read-only
:class:`ClusterView`; it returns a replica id ``0..C-1`` or a :class:`Reject`
with a reason (DESIGN.md, "Rejection": the request is counted with its reason,
excluded from latency metrics and a miss for SLOs).

Built-in routers
----------------
``round-robin``
    Request ``i`` (instance position) goes to replica ``i mod C``.
``static``
    The assignment given to ``simulate(..., assignment=...)``.
``least-outstanding``
    The replica with the fewest unfinished requests (dispatched to it and not
    complete), ties to the lowest id.
``least-kv``
    The replica holding the fewest KV tokens, ties to the fewer unfinished
    requests, then to the lowest id. (The second key matters for simultaneous
    arrivals: a request just dispatched holds no KV until it is admitted, so
    without it every request of a burst would go to one replica.)
``random:seed=0``
    A replica drawn uniformly per request: request ``i`` goes to
    ``numpy.random.default_rng([seed, i]).integers(C)``, whatever the order of
    the calls (the same on the stateless and the joint path). Mooncake's
    "random" baseline (Qin et al., FAST 2025; ``serving-systems.md``).
``prefix``
    Longest cached prefix (Mooncake's "local cache-aware" scheduling): the
    replica that holds the longest leading run of the request's block hashes
    itself, on its GPU, in its host tier or in its share of a KV pool
    (:meth:`ClusterView.cached_blocks`), ties to the fewer unfinished requests,
    then to the lowest id. Without a prefix cache every run is 0: it is
    ``least-outstanding``.
``conductor:ttft_slo_s=inf,tbt_slo_s=inf``
    Mooncake's Conductor (:class:`Conductor`): the replica with the smallest
    predicted TTFT (queue, prefix copy and prefill), or a rejection when that
    misses the TTFT SLO or the decode pool would miss the TBT SLO.
``llumnix:interval_s=0.05,select=last,last_stage_blocks=16,max_stages=3``
    Llumnix (:class:`Llumnix`): each arrival to the replica of highest
    dispatch freeness (:mod:`lsched.migrators`), ties to the lowest id; every
    ``interval_s`` its migrator moves running requests live between replicas
    (:mod:`lsched.evaluator.migration`). ``headroom_blocks=H,high_priority=P``
    keep ``H`` blocks free beside requests of priority ``<= P``. Such a run
    takes the Python engine.
``dlora:interval_s=10,kv_fraction=0.9,imbalance=16,time_limit_s=5,backend=milp``
    dLoRA (:class:`Dlora`): each arrival to a replica where its adapter is
    resident or used (dLoRA's ``select_engine``), of least execution cost;
    every ``interval_s`` its migrator (:class:`~lsched.migrators.DLoraMigrator`)
    solves dLoRA's co-migration ILP over two replicas when one's KV is full or
    its requests exceed the mean, and moves requests live. Python engine.
``least-queued``
    The replica with the fewest *queued* requests (:meth:`ClusterView.queued`:
    unfinished and not in the iteration in flight), ties to the lowest id.
    DistServe's decode routing: simdistserve's
    ``Scheduler._find_best_worker_and_queue`` takes the decode worker with the
    shortest ``decode_queue``, which holds neither the batch in flight nor the
    finished requests (``simdistserve/base/scheduler.py``, ``base/worker.py``
    ``_enter_decodes``). On prefill replicas it is ``len(prefill_queue)``
    without DistServe's ``_prefill_ips``: use ``least-outstanding`` there.

A router that declares ``stateless = True`` reads nothing of the replicas' state
(``round-robin``, ``static``, ``random``): the evaluator then routes every
request up front and runs each replica alone, which gives the same result as
running them jointly in time (the replicas do not interact) at a fraction of
the cost. Such a router
may also route the whole instance at once with ``route_all(instance)``, an array
of replica ids, instead of a call per request. The others read the state at the
first iteration boundary at or after the arrival (:mod:`lsched.evaluator.cluster`
says how exactly).

Register your own with :func:`register_router`::

    class ShortestQueue:
        def route(self, view):
            return min(range(view.replicas), key=view.outstanding)

    lsched.register_router("shortest-queue", lambda params: ShortestQueue())
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from lsched.errors import InputError
from lsched.migrators import DLoraMigrator, LlumnixMigrator
from lsched.profile.cost import batch_features
from lsched.registry import Registry


@dataclass(frozen=True, slots=True)
class Reject:
    """A router's decision not to serve a request, with the reason recorded."""

    reason: str


@dataclass(frozen=True, slots=True)
class RouterContext:
    """What a router knows of the cluster when it is built.

    Attributes
    ----------
    replicas
        Number of replicas ``C`` over all pools.
    pool
        The pool name of every replica.
    kv_capacity_tokens
        The KV capacity of every replica, tokens.
    assignment
        A replica id per request given to ``simulate`` (for ``static``), or None.
    profiles
        The deployment profile of every replica (empty where the loop gives none).
    decode_profiles
        On a disaggregated cluster, the profile of every decode replica.
    adapter_codes
        Where the cluster serves LoRA adapters, per request its adapter's code
        (``-1``: the base model; :mod:`lsched.evaluator.adapters`), a column a
        router may read of the arriving request; else ``None``.
    """

    replicas: int
    pool: tuple[str, ...]
    kv_capacity_tokens: tuple[int, ...]
    assignment: npt.NDArray[np.int64] | None = None
    profiles: tuple[Any, ...] = ()
    decode_profiles: tuple[Any, ...] = ()
    adapter_codes: npt.NDArray[np.int64] | None = None


class ClusterView:
    """What a router may see when request ``request`` arrives at ``now_s``.

    The arriving request's own columns (``prompt_tokens``, and where the instance
    has them ``predicted_output_tokens``, ``tenant``, ``priority``; never its true
    output length) and, per replica ``c``, :meth:`outstanding` and
    :meth:`kv_tokens` (all of them: :attr:`loads`) at the first iteration
    boundary at or after ``now_s``. The
    per-replica state is computed on first use, for every replica at once; a
    stateless router never pays for it (and may not read it: the replicas have
    not run yet). :meth:`queued` is read at ``now_s`` itself.
    :meth:`cached_blocks` and :meth:`prefix_fetch` read a replica's prefix
    cache at that boundary (the blocks of an iteration in flight counted; a
    shared KV pool as its writes stand at ``now_s``) in O(blocks of the
    request), and :attr:`decode_loads` the decode replicas of a disaggregated
    cluster.
    """

    __slots__ = (
        "_cache",
        "_decode",
        "_decode_cache",
        "_lookup",
        "_queued",
        "_queued_cache",
        "_replica_load",
        "_state",
        "context",
        "now_s",
        "predicted_output_tokens",
        "priority",
        "prompt_tokens",
        "request",
        "tenant",
    )

    def __init__(
        self,
        context: RouterContext,
        request: int,
        now_s: float,
        prompt_tokens: int,
        state: Callable[[int], tuple[int, int]] | None,
        *,
        predicted_output_tokens: int | None = None,
        tenant: str | None = None,
        priority: int | None = None,
        queued: Callable[[int], int] | None = None,
        lookup: Callable[[int], tuple[int, int, float]] | None = None,
        decode: Callable[[], list[tuple[int, int]]] | None = None,
        replica_load: Callable[[int], Any] | None = None,
    ) -> None:
        self.context = context
        self._replica_load = replica_load
        self.request = request
        self.now_s = now_s
        self.prompt_tokens = prompt_tokens
        self.predicted_output_tokens = predicted_output_tokens
        self.tenant = tenant
        self.priority = priority
        self._state = state
        self._cache: list[tuple[int, int]] | None = None
        self._queued = queued
        self._queued_cache: list[int] | None = None
        self._lookup = lookup
        self._decode = decode
        self._decode_cache: list[tuple[int, int]] | None = None

    @property
    def replicas(self) -> int:
        """Number of replicas ``C``."""
        return self.context.replicas

    @property
    def loads(self) -> list[tuple[int, int]]:
        """``(outstanding, kv_tokens)`` of every replica, in replica order."""
        if self._cache is None:  # every replica at once: routers compare them all
            if self._state is None:
                raise RuntimeError(
                    "a router that declares stateless = True read the replicas' state"
                )
            self._cache = [self._state(c) for c in range(self.context.replicas)]
        return self._cache

    def outstanding(self, replica: int) -> int:
        """Requests dispatched to ``replica`` and not complete."""
        return self.loads[replica][0]

    def kv_tokens(self, replica: int) -> int:
        """KV tokens ``replica`` holds."""
        return self.loads[replica][1]

    def queued(self, replica: int) -> int:
        """Requests dispatched to ``replica``, not complete and not in the
        iteration in flight at ``now_s`` (one that started before and ends after
        it): those waiting, between iterations, or (decode replicas of a
        disaggregated cluster) on their way to it."""
        if self._queued_cache is None:
            if self._queued is None:
                raise RuntimeError(
                    "a router that declares stateless = True read the replicas' state"
                )
            self._queued_cache = [self._queued(c) for c in range(self.replicas)]
        return self._queued_cache[replica]

    def cached_blocks(self, replica: int) -> int:
        """The leading run of the request's prefix block hashes that
        ``replica`` holds itself: in its prefix cache on the GPU, its host
        tier, or its share of a KV pool (blocks homed there; 0 without a cache
        or hashes): read-only, O(blocks of the request)."""
        return self._hit(replica)[0]

    def prefix_fetch(self, replica: int) -> tuple[int, float]:
        """``(cached tokens, copy seconds)``: the tokens an admission on
        ``replica`` would take from its prefix cache, ``min(h B, s - 1)`` with
        ``h`` the leading run of the request's hashes in any tier it reads (a
        KV pool's blocks homed at other replicas included), and the seconds to
        copy those not on its GPU (:mod:`lsched.evaluator.prefix`, rules 5 and
        6; ``(0, 0.0)`` without a cache)."""
        _, tokens, seconds = self._hit(replica)
        return tokens, seconds

    def _hit(self, replica: int) -> tuple[int, int, float]:
        if self._lookup is None:
            return 0, 0, 0.0
        return self._lookup(replica)

    def replica_load(self, replica: int) -> Any:
        """``replica``'s :class:`~lsched.migrators.ReplicaLoad` (free blocks,
        the head of its queue, running requests), where the loop gives it (a
        run with migration); ``RuntimeError`` elsewhere."""
        if self._replica_load is None:
            raise RuntimeError("replica loads are given only on a run with migration")
        return self._replica_load(replica)

    @property
    def decode_loads(self) -> list[tuple[int, int]]:
        """``(outstanding, kv_tokens)`` of every decode replica of a
        disaggregated cluster (requests on their way to it counted), in decode
        replica order; empty on a colocated cluster."""
        if self._decode_cache is None:
            self._decode_cache = [] if self._decode is None else self._decode()
        return self._decode_cache


class Router(Protocol):
    """Sends each arrival to a replica (or rejects it)."""

    def route(self, view: ClusterView) -> int | Reject:
        """The replica id for ``view.request``, or a :class:`Reject`."""
        ...


def is_stateless(router: object) -> bool:
    """Whether ``router`` declares it reads no replica state."""
    return getattr(router, "stateless", False) is True


# -- the built-in routers ------------------------------------------------------------


class RoundRobin:
    """Request ``i`` to replica ``i mod C``."""

    stateless = True

    def __init__(self, context: RouterContext) -> None:
        self.replicas = context.replicas

    def route(self, view: ClusterView) -> int:
        return view.request % view.replicas

    def route_all(self, instance: Any) -> npt.NDArray[np.int64]:
        return np.arange(len(instance), dtype=np.int64) % self.replicas


class Static:
    """The assignment given to ``simulate``."""

    stateless = True

    def __init__(self, params: Any, context: RouterContext) -> None:
        if context.assignment is None:
            raise InputError(
                "router 'static' needs an assignment (one replica id per request)",
                field="router",
            )
        self.assignment = context.assignment

    def route(self, view: ClusterView) -> int:
        return int(self.assignment[view.request])

    def route_all(self, instance: Any) -> npt.NDArray[np.int64]:
        return self.assignment


class LeastOutstanding:
    """The replica with the fewest unfinished requests, ties to the lowest id."""

    def route(self, view: ClusterView) -> int:
        return min((u, c) for c, (u, _) in enumerate(view.loads))[1]


class LeastKv:
    """The replica holding the fewest KV tokens, then fewest unfinished, then id."""

    def route(self, view: ClusterView) -> int:
        return min((kv, u, c) for c, (u, kv) in enumerate(view.loads))[2]


class LeastQueued:
    """The replica with the fewest queued requests (unfinished and not in its
    iteration in flight), ties to the lowest id: DistServe's decode routing."""

    def route(self, view: ClusterView) -> int:
        return min(range(view.replicas), key=view.queued)


@dataclass(frozen=True)
class RandomParams:
    """``random``'s parameters: the seed of every request's draw."""

    seed: int = 0

    def __post_init__(self) -> None:
        if not self.seed >= 0:
            raise ValueError(f"got seed={self.seed}; expected an integer >= 0")


class Random:
    """Request ``i`` to ``default_rng([seed, i]).integers(C)``: uniform, seeded,
    independent of the order of the calls."""

    stateless = True

    def __init__(self, params: RandomParams, context: RouterContext) -> None:
        self.seed = params.seed
        self.replicas = context.replicas

    def route(self, view: ClusterView) -> int:
        rng = np.random.default_rng([self.seed, view.request])
        return int(rng.integers(self.replicas))

    def route_all(self, instance: Any) -> npt.NDArray[np.int64]:
        return np.array(
            [
                np.random.default_rng([self.seed, i]).integers(self.replicas)
                for i in range(len(instance))
            ],
            dtype=np.int64,
        )


class LongestPrefix:
    """The replica caching the longest leading run of the request's block
    hashes, ties to the fewer unfinished requests, then to the lowest id."""

    def route(self, view: ClusterView) -> int:
        return min(
            (-view.cached_blocks(c), u, c) for c, (u, _) in enumerate(view.loads)
        )[2]


@dataclass(frozen=True)
class ConductorParams:
    """``conductor``'s SLOs, seconds (``inf``: none)."""

    ttft_slo_s: float = math.inf
    tbt_slo_s: float = math.inf

    def __post_init__(self) -> None:
        for name in ("ttft_slo_s", "tbt_slo_s"):
            value = getattr(self, name)
            if not value > 0:  # NaN too
                raise ValueError(f"got {name}={value}; expected seconds > 0")


def prefill_seconds(profile: Any, prompt: int, cached: int) -> float:
    """Predicted seconds to prefill ``prompt`` tokens of which ``cached`` are
    cached, alone on a replica of ``profile``: chunks of ``max_num_batched_tokens``
    tokens, one iteration each, attention over the cached context charged
    (phi of :mod:`lsched.profile.cost`)."""
    left = prompt - cached
    step = profile.max_num_batched_tokens
    chunks = np.full(-(-left // step), step, dtype=np.int64)
    chunks[-1] = left - step * (len(chunks) - 1)
    before = cached + np.concatenate([[0], np.cumsum(chunks)[:-1]])
    phi = batch_features(
        len(chunks),
        prefill_batch=np.arange(len(chunks)),
        prefill_tokens=chunks,
        prefill_ctx_before=before,
    )
    return float(profile.iteration_time_s(phi).sum())


def decode_step_seconds(profile: Any, steps: int, kv_tokens: int) -> float:
    """Seconds of one decode iteration of ``steps`` requests reading
    ``kv_tokens`` KV tokens on a replica of ``profile``."""
    phi = np.array([1.0, 0.0, 0.0, steps, kv_tokens, 0.0])
    return float(profile.iteration_time_s(phi))


class Conductor:
    """Mooncake's Conductor (Qin et al., FAST 2025, Algorithm 1;
    ``/work/shared/reference/serving-systems.md``).

    For every entry replica ``p`` (prefill or colocated) the predicted TTFT of a
    request of ``s`` tokens is ``T_queue(p) + T_transfer(p) + T_prefill(s,
    x_p)``:

    * ``x_p`` the cached tokens an admission on ``p`` would take and
      ``T_transfer(p)`` the seconds to copy those not on its GPU, from its host
      tier or from a KV pool, another replica's share over the pool's link
      included (:meth:`ClusterView.prefix_fetch`; rules 5 and 6 of
      :mod:`lsched.evaluator.prefix`);
    * ``T_prefill`` the cost model's time of the remaining ``s - x_p`` tokens
      alone on ``p`` (:func:`prefill_seconds`);
    * ``T_queue(p) = max(0, busy_p - now)``, where ``busy_p`` is this router's
      ledger of ``p``'s work: each request it sends to ``p`` sets ``busy_p =
      max(busy_p, now) + T_transfer + T_prefill`` (the copy blocks the replica;
      Mooncake's Conductor likewise sums the predicted prefill times of the
      requests queued on an instance).

    With a KV pool this is Mooncake's global cache-aware scheduling; with
    replica-local caches, its local form. Mooncake copies from the best holder
    only past a balancing threshold; lsched's admissions always copy what the
    pool holds, and the prediction follows them. It picks the smallest
    prediction (ties to the lowest id) and rejects the request when that
    prediction exceeds ``ttft_slo_s``, or when the predicted TBT exceeds
    ``tbt_slo_s``: the time of one decode iteration, on the decode replica
    where it is smallest (:attr:`ClusterView.decode_loads`; on a colocated
    cluster the chosen replica itself), of its ``u`` unfinished requests plus
    this one, reading its ``K`` KV tokens plus ``u + s + 1``
    (:func:`decode_step_seconds`): the decode pool's state now, not when the
    request will get there.
    """

    def __init__(self, params: ConductorParams, context: RouterContext) -> None:
        if len(context.profiles) != context.replicas:
            raise InputError(
                "router 'conductor' needs every replica's profile (a cluster "
                "simulation gives them)",
                field="router",
            )
        self.params = params
        self.context = context
        self.busy_s = [0.0] * context.replicas

    def _ttft(self, view: ClusterView, c: int) -> tuple[float, float]:
        """(predicted TTFT, predicted seconds of copy and prefill) on entry
        replica ``c``."""
        cached, copy_s = view.prefix_fetch(c)
        work = copy_s + prefill_seconds(
            self.context.profiles[c], view.prompt_tokens, cached
        )
        return max(0.0, self.busy_s[c] - view.now_s) + work, work

    def _tbt(self, view: ClusterView, c: int) -> float:
        """Predicted TBT (class docstring)."""
        s = view.prompt_tokens
        if view.decode_loads:
            pairs = zip(self.context.decode_profiles, view.decode_loads, strict=True)
        else:
            pairs = zip([self.context.profiles[c]], [view.loads[c]], strict=True)
        return min(
            decode_step_seconds(p, u + 1, kv + u + s + 1) for p, (u, kv) in pairs
        )

    def route(self, view: ClusterView) -> int | Reject:
        predicted = [self._ttft(view, c) for c in range(view.replicas)]
        c = min(range(view.replicas), key=lambda c: (predicted[c][0], c))
        ttft, work = predicted[c]
        if ttft > self.params.ttft_slo_s:
            return Reject(
                f"conductor: predicted TTFT {ttft:.3f} s > SLO "
                f"{self.params.ttft_slo_s:g} s (best replica {c})"
            )
        tbt = self._tbt(view, c)
        if tbt > self.params.tbt_slo_s:
            return Reject(
                f"conductor: predicted TBT {tbt:.4f} s > SLO "
                f"{self.params.tbt_slo_s:g} s"
            )
        self.busy_s[c] = max(self.busy_s[c], view.now_s) + work
        return c


@dataclass(frozen=True)
class LlumnixParams:
    """``llumnix``'s parameters: the migrator's tick, which request it moves
    (``last`` admitted or ``shortest``), the copy's last-stage threshold and
    stage limit (:mod:`lsched.evaluator.migration`), and the headroom kept on a
    replica that runs a request of priority ``<= high_priority``
    (:mod:`lsched.migrators`)."""

    interval_s: float = LlumnixMigrator.interval_s
    select: str = LlumnixMigrator.select
    last_stage_blocks: int = LlumnixMigrator.last_stage_blocks
    max_stages: int = LlumnixMigrator.max_stages
    headroom_blocks: int = LlumnixMigrator.headroom_blocks
    high_priority: int = LlumnixMigrator.high_priority

    def __post_init__(self) -> None:
        _check_params(self, (
            *_migration_checks(self),
            ("select", self.select in ("last", "shortest"), "last or shortest"),
            ("headroom_blocks", self.headroom_blocks >= 0, "blocks >= 0"),
        ))  # fmt: skip


def _migration_checks(params: Any) -> tuple[tuple[str, bool, str], ...]:
    """The checks of a migrating router's tick and live copy: ``(field, holds,
    expected)``."""
    interval = params.interval_s
    return (
        ("interval_s", math.isfinite(interval) and interval > 0, "finite seconds > 0"),
        ("last_stage_blocks", params.last_stage_blocks >= 1, "an integer >= 1"),
        ("max_stages", params.max_stages >= 1, "an integer >= 1"),
    )


def _check_params(params: Any, checks: tuple[tuple[str, bool, str], ...]) -> None:
    """Raise ``ValueError`` naming the first of ``checks`` that fails."""
    for name, ok, expected in checks:
        if not ok:
            value = getattr(params, name)
            raise ValueError(f"got {name}={value!r}; expected {expected}")


class Llumnix:
    """Dispatch to the freest replica (ties to the lowest id); its
    :attr:`migrator` moves running requests (:mod:`lsched.migrators`)."""

    #: runs take the migration loop (:mod:`lsched.evaluator.migration`)
    migrates = True

    def __init__(self, params: LlumnixParams) -> None:
        self.migrator = LlumnixMigrator(**dataclasses.asdict(params))

    def route(self, view: ClusterView) -> int:
        def freeness(c: int) -> float:
            load = view.replica_load(c)
            return load.dispatch_freeness_after(self.migrator.headroom(load))

        return min(range(view.replicas), key=lambda c: (-freeness(c), c))


#: dLoRA's speed of a merged batch relative to an unmerged one in its dispatch
#: cost (``merge_speed_ratio`` in ``EngineManager.__init__``,
#: ``vllm/engine/engine_manager.py`` of LLMServe/dLoRA-artifact).
MERGE_SPEED_RATIO = 0.6


@dataclass(frozen=True)
class DloraRouterParams:
    """``dlora``'s parameters: its migrator's (:class:`~lsched.migrators.
    DLoraMigrator`: tick, KV fraction, request imbalance, the solve's time limit
    and backend) and the live copy's (:mod:`lsched.evaluator.migration`)."""

    interval_s: float = DLoraMigrator.interval_s
    kv_fraction: float = DLoraMigrator.kv_fraction
    imbalance: float = DLoraMigrator.imbalance
    time_limit_s: float = DLoraMigrator.time_limit_s
    backend: str = DLoraMigrator.backend
    last_stage_blocks: int = DLoraMigrator.last_stage_blocks
    max_stages: int = DLoraMigrator.max_stages

    def __post_init__(self) -> None:
        _check_params(self, (
            *_migration_checks(self),
            ("kv_fraction", 0 < self.kv_fraction <= 1, "a fraction in (0, 1]"),
            ("imbalance", math.isfinite(self.imbalance) and self.imbalance >= 1,
             "requests >= 1"),
            ("time_limit_s", self.time_limit_s > 0, "seconds > 0"),
            ("backend", self.backend in ("milp", "cpsat"), "milp or cpsat"),
        ))  # fmt: skip


class Dlora:
    """dLoRA's dispatch and co-migration (dLoRA-artifact,
    ``vllm/engine/engine_manager.py``).

    Dispatch (``EngineManager.select_engine`` in its co-migration mode): the
    candidates are the replicas where the request's adapter is *mapped*, here
    resident or used by an unfinished request there (every replica for the base
    model); among them the least execution cost (``get_engine_req_model_cnt``:
    with ``n_a`` the unfinished requests of adapter ``a`` and ``S`` =
    ``max_num_seqs``, ``sum_a floor(n_a / S) * 0.6 + floor(sum_a (n_a mod S) /
    S)``, :data:`MERGE_SPEED_RATIO`), ties to the fewer unfinished requests,
    then the lowest id (dLoRA takes the first in its mapping's order). With no
    candidate: the replica with the fewest unfinished requests, ties to the
    lowest id (dLoRA's ``engine_num_requests.index(min(...))``). Its
    :attr:`migrator` is :class:`~lsched.migrators.DLoraMigrator`.
    """

    #: runs take the migration loop (:mod:`lsched.evaluator.migration`)
    migrates = True

    def __init__(self, params: DloraRouterParams, context: RouterContext) -> None:
        self.codes = context.adapter_codes
        self.migrator = DLoraMigrator(**dataclasses.asdict(params))

    def route(self, view: ClusterView) -> int:
        loads = [view.replica_load(c) for c in range(view.replicas)]
        count = [load.running + load.waiting for load in loads]
        code = -1 if self.codes is None else int(self.codes[view.request])
        mapped = [
            c
            for c, load in enumerate(loads)
            if code < 0
            or code in load.adapters.resident
            or any(q.adapter == code for q in load.adapters.requests)
        ]
        if not mapped:
            return min(range(view.replicas), key=lambda c: (count[c], c))
        return min(mapped, key=lambda c: (_exec_cost(loads[c]), count[c], c))


def _exec_cost(load: Any) -> float:
    """dLoRA's execution cost of a replica (:class:`Dlora`)."""
    adapters = load.adapters
    if adapters is None:
        return 0.0
    seqs = adapters.max_num_seqs
    counts: dict[int, int] = {}
    for q in adapters.requests:
        counts[q.adapter] = counts.get(q.adapter, 0) + 1
    full = sum(n // seqs for n in counts.values())
    rest = sum(n % seqs for n in counts.values())
    return full * MERGE_SPEED_RATIO + rest // seqs


def migrates(spec: Any) -> bool:
    """Whether the router of ``spec`` (a :class:`RouterSpec`) moves requests
    between replicas (it declares ``migrates = True``)."""
    return getattr(REGISTRY[spec.name].build, "migrates", False) is True


#: Router name -> parameters and constructor.
REGISTRY = Registry("router")
REGISTRY.register(
    "round-robin", lambda params, context: RoundRobin(context), None, RoundRobin.__doc__
)
REGISTRY.register("static", Static, None, Static.__doc__)
REGISTRY.register(
    "least-outstanding",
    lambda params: LeastOutstanding(),
    None,
    LeastOutstanding.__doc__,
)
REGISTRY.register("least-kv", lambda params: LeastKv(), None, LeastKv.__doc__)
REGISTRY.register(
    "least-queued", lambda params: LeastQueued(), None, LeastQueued.__doc__
)
REGISTRY.register("random", Random, RandomParams, Random.__doc__)
REGISTRY.register("conductor", Conductor, ConductorParams, Conductor.__doc__)
REGISTRY.register("prefix", lambda params: LongestPrefix(), None, LongestPrefix.__doc__)
REGISTRY.register("llumnix", Llumnix, LlumnixParams, Llumnix.__doc__)
REGISTRY.register("dlora", Dlora, DloraRouterParams, Dlora.__doc__)


@dataclass(frozen=True)
class RouterSpec:
    """A named router with its parameters; ``make()`` gives a fresh router."""

    name: str
    params: Any

    def make(self, context: RouterContext) -> Router:
        """A fresh router for the cluster ``context`` describes."""
        return REGISTRY[self.name].make(self.params, context)

    @property
    def label(self) -> str:
        """``name`` or ``name:key=value,...``."""
        return REGISTRY.label(self.name, self.params)


def parse_router(text: str) -> RouterSpec:
    """Parse ``NAME[:key=value,...]`` into a :class:`RouterSpec`."""
    return RouterSpec(*REGISTRY.parse(text))


def register_router(
    name: str,
    build: Callable[..., Router],
    params: type | None = None,
    summary: str = "",
    *,
    replace: bool = False,
) -> None:
    """Register a router under ``name``, for ``--router NAME``, cluster files and
    :func:`parse_router`.

    ``build(params, context)`` (or ``build(params)``) returns a fresh router;
    ``context`` is the :class:`RouterContext`. A router has ``route(view)``
    returning a replica id or :class:`Reject`; it may declare ``stateless = True``
    when it reads no replica state. See :meth:`lsched.registry.Registry.register`.
    """
    REGISTRY.register(name, build, params, summary, replace=replace)
