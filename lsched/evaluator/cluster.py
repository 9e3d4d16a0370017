"""The cluster loop: every replica of every pool, and the router between them.

:class:`ClusterSim` replays an instance on a :class:`~lsched.cluster.Cluster`.
Each replica is a :class:`~lsched.evaluator.engine.ReplicaEngine` with its pool's
profile and a fresh policy built with its :class:`~lsched.policies.PolicyContext`
(replica id, pool, limits, the workload's tenants). The router
(:mod:`lsched.routers`) is called once per request in arrival order.

Two ways through, with the same results
---------------------------------------
*A stateless router* (round robin, static) reads nothing of the replicas: every
request is routed up front and each replica runs alone, start to end. Replicas
do not interact, so this is the joint run in time below, without its cost.

*A router that reads state* needs the replicas advanced jointly in time. Arrivals
are taken in instance order; before arrival ``i`` at ``a_i`` is routed, every
replica is advanced as far as the arrival cannot change it: every iteration that
starts at a boundary ``t`` with ``a_i > t + ARRIVAL_TOLERANCE_S`` (where the
engine would not see the request yet) runs. A replica then sits at its first
boundary at or after ``a_i`` (where its policy would first see the request), or
in a held decode stretch or an idle spell that spans ``a_i`` and is not yet
committed. The router reads the replica's state **at that first boundary at or
after** ``a_i`` (for a pending held stretch in closed form: ``j`` more
iterations, ``j * d`` more KV tokens, no completion before the stretch's end). A
real router reads the state one iteration earlier at most; the difference is at
most one iteration's completions and KV growth.

Exactness. A held stretch (or an idle spell waiting on a clock) is committed only
once it is known not to be cut by a request routed to its own replica: it runs in
one piece exactly as when the replica runs alone, and is cut at an arrival only
when that arrival joins its replica. So the joint run with round-robin routing
gives bit-for-bit the per-request times of the stateless path
(``tests/test_dispatch.py`` checks it).

Requests that do not fit. Before anything is routed, a request whose prompt is
over the cluster's ``max_model_len`` ``L`` (the smallest over its pools) is
rejected at arrival, never routed (the router is not called for it; its
``rejected`` reason names its prompt and ``L``), and every other request's output
is cut to ``min(o_i, L - s_i + 1)`` tokens, where vLLM V0's stop checker ends it
(:mod:`lsched.evaluator.length` states both rules and their sources). The
engines run the cut instance; the records keep the tokens cut.

Engine arrays. In the joint run each replica's engine has room for every request
(one entry per instance request, ``+inf`` arrival times at the unused tail, which
the engine never reaches); routing writes the next entry (with, on a replica
that serves adapters, the request's adapter code: codes are over the whole
instance, so a code names the same adapter on every replica). A policy sees only
its arrived requests' entries, as the policy contract says.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lsched.cluster import Cluster
from lsched.errors import InputError
from lsched.evaluator.adapters import ReplicaAdapters
from lsched.evaluator.compiled import kernel_for, load, run_replica
from lsched.evaluator.engine import DONE, ReplicaEngine
from lsched.evaluator.length import cluster_max_model_len, cut_to_length
from lsched.evaluator.prefix import KVPool, ReplicaPrefix
from lsched.evaluator.stretch import DecodeStretch
from lsched.instance import Instance
from lsched.kv import KVBlocks
from lsched.policies import ARRIVAL_TOLERANCE_S, Batch, PolicyContext, ReplicaLimits
from lsched.policies.base import restore_policy, snapshot_policy
from lsched.profile import DeploymentProfile
from lsched.registry import positional_arity
from lsched.routers import ClusterView, Reject, RouterContext, is_stateless

#: The replica of a request a router rejected.
REJECTED = -1
#: ``engine="auto"`` takes the compiled path for replicas with at least this many
#: requests: loading the kernels costs about a second per process (numba's start
#: and its cache), what the Python engine takes for a few thousand requests.
AUTO_MIN_REQUESTS = 1000


@dataclass
class ClusterRun:
    """What a :class:`ClusterSim` run leaves: the replica of every request (or
    :data:`REJECTED`), the rejection reasons and each replica's engine (``None``
    for a replica that served nothing); engine ``c``'s local request ``k`` is
    instance request ``ids[c][k]``. A disaggregated run
    (:mod:`lsched.evaluator.disagg`) adds per-request ``stages`` columns; its
    ``where`` is the replica a request arrived at (prefill or colocated).
    ``served`` is the instance the engines ran (outputs cut to ``max_model_len``,
    :mod:`lsched.evaluator.length`) and ``truncated`` the tokens cut per request;
    ``None``: the instance as given, nothing cut. A run with live migration
    (:mod:`lsched.evaluator.migration`) has ``migrations``, its stage table,
    and lists a request that moved under every engine it ran on."""

    where: np.ndarray
    reasons: dict[int, str]
    engines: list[ReplicaEngine | None]
    ids: list[np.ndarray]
    stages: dict[str, np.ndarray] | None = None
    served: Instance | None = None
    truncated: np.ndarray | None = None
    migrations: Any = None  # a run with migration: its stage table


def make_policy(spec: object, context: PolicyContext) -> object:
    """A fresh policy from ``spec`` for the replica of ``context``; a spec whose
    ``make()`` takes no context (written before contexts) still works."""
    make = spec.make  # type: ignore[attr-defined]
    return make(context) if positional_arity(make) >= 1 else make()


def _contexts(instance: Instance, cluster: Cluster) -> list[PolicyContext]:
    tenants = None
    if instance.tenant is not None:
        tenants = tuple(str(t) for t in np.unique(instance.tenant))
    contexts = []
    for c, k in enumerate(cluster.replica_pool.tolist()):
        pool = cluster.pools[k]
        contexts.append(
            PolicyContext(
                c, pool.name, ReplicaLimits.from_profile(pool.profile), tenants=tenants
            )
        )
    return contexts


def router_context(
    instance: Instance,
    cluster: Cluster,
    replicas: np.ndarray,
    assignment: np.ndarray | None = None,
    decode: np.ndarray | None = None,
) -> RouterContext:
    """What a router of the ``replicas`` of ``cluster`` knows (``decode``: the
    decode replicas of a disaggregated cluster, for an entry router)."""
    pools = [cluster.pool_of(int(c)) for c in replicas]
    decode_pools = [] if decode is None else [cluster.pool_of(int(d)) for d in decode]
    return RouterContext(
        replicas=len(pools),
        pool=tuple(p.name for p in pools),
        kv_capacity_tokens=tuple(p.profile.kv_capacity_tokens for p in pools),
        assignment=assignment,
        profiles=tuple(p.profile for p in pools),
        decode_profiles=tuple(p.profile for p in decode_pools),
        adapter_codes=_adapter_codes(instance, pools),
    )


def _adapter_codes(instance: Instance, pools: list[Any]) -> np.ndarray | None:
    """Per request its adapter's code (``-1``: the base model) where some pool
    serves adapters (the codes are the same on every pool), else ``None``."""
    spec = next((p.adapters for p in pools if p.adapters is not None), None)
    return None if spec is None else spec.codes(instance.adapter, len(instance))[0]


def _view(
    context: RouterContext,
    instance: Instance,
    i: int,
    state: Callable[[int], tuple[int, int]] | None,
    queued: Callable[[int], int] | None = None,
    lookup: Callable[[int], tuple[int, int, float]] | None = None,
    decode: Callable[[], list[tuple[int, int]]] | None = None,
    replica_load: Callable[[int], Any] | None = None,
) -> ClusterView:
    pred, tenant, prio = (
        instance.predicted_output_tokens,
        instance.tenant,
        instance.priority,
    )
    return ClusterView(
        context,
        i,
        float(instance.arrival_s[i]),
        int(instance.prompt_tokens[i]),
        state,
        predicted_output_tokens=None if pred is None else int(pred[i]),
        tenant=None if tenant is None else str(tenant[i]),
        priority=None if prio is None else int(prio[i]),
        queued=queued,
        lookup=lookup,
        decode=decode,
        replica_load=replica_load,
    )


def _decision(choice: object, i: int, replicas: int) -> int | Reject:
    if isinstance(choice, Reject):
        return choice
    if (
        isinstance(choice, bool)
        or not isinstance(choice, int | np.integer)
        or not 0 <= choice < replicas
    ):
        raise InputError(
            f"the router sent request {i} to {choice!r}; expected a replica id in "
            f"0..{replicas - 1} or a Reject",
            field="router",
        )
    return int(choice)


def _check_fits(
    instance: Instance, i: int, cluster: Cluster, c: int, kv: KVBlocks
) -> None:
    """Raise unless request ``i`` fits replica ``c`` (block arithmetic ``kv``)."""
    profile = cluster.pool_of(c).profile
    peak = int(instance.prompt_tokens[i] + instance.output_tokens[i] - 1)
    if not kv.fits(kv.blocks(peak)):
        raise InputError(
            f"the router sent request {i} (peak KV {peak} tokens) to replica {c} "
            f"of pool {cluster.pool_of(c).name!r}, whose capacity is "
            f"{profile.kv_capacity_tokens} tokens: it could never complete there",
            field="router",
        )


class ClusterSim:
    """A cluster replay that can stop at a time, go on, and be snapshotted.

    Parameters
    ----------
    instance, cluster
        The requests and the cluster.
    assignment
        For the ``static`` router: a checked replica id per request.
    log
        Keep every replica's iteration log.
    on_finished
        Called with the number of requests each completion event finishes.
    joint
        Run the replicas jointly in time even under a stateless router (for
        checking the two ways against each other); by default only when the
        router reads state.
    engine
        ``"python"`` (default): every replica on the Python engine.
        ``"compiled"``: a replica on the compiled path
        (:mod:`lsched.evaluator.compiled`) where it can take it: a stateless
        router, no log, a policy with a port; such a replay runs only to the
        end (no ``run(until_s)`` or snapshots). ``"auto"``: the same, for
        replicas with at least :data:`AUTO_MIN_REQUESTS` requests. :attr:`paths`
        says which path each replica takes, and why.

    Raises
    ------
    InputError
        If the router sends a request to a replica where it can never fit, or
        returns something that is no replica id.
    PolicyError
        If a policy returns a batch that breaks the model's rules, or stalls.
    """

    def __init__(
        self,
        instance: Instance,
        cluster: Cluster,
        *,
        assignment: np.ndarray | None = None,
        log: bool = False,
        on_finished: Callable[[int], None] | None = None,
        joint: bool | None = None,
        engine: str = "python",
    ) -> None:
        #: prompts over max_model_len rejected, outputs cut to it, once, here
        #: (lsched.evaluator.length); the engines run ``self.instance``
        self.cut = cut_to_length(instance, cluster_max_model_len(cluster))
        instance = self.instance = self.cut.served
        self.cluster = cluster
        self.context = router_context(
            instance, cluster, np.arange(cluster.num_replicas), assignment
        )
        self._pool_kv = [
            ReplicaLimits.from_profile(p.profile).kv for p in cluster.pools
        ]
        self._kv = [self._pool_kv[k] for k in cluster.replica_pool.tolist()]
        self.router = cluster.router.make(self.context)
        contexts = _contexts(instance, cluster)
        self.joint = not is_stateless(self.router) if joint is None else joint
        n = len(instance)
        self.where = np.full(n, REJECTED, dtype=np.int64)
        self.reasons: dict[int, str] = self.cut.reasons
        self.routed = 0  # requests routed so far (instance order)
        #: per replica: "compiled", or "python" and why not compiled
        self.paths = [
            "python: the router reads replica state" if self.joint else "python"
        ] * cluster.num_replicas
        if self.joint:
            self.engines: list[ReplicaEngine] = [
                JointEngine(
                    n,
                    instance,
                    cluster.pool_of(c).profile,
                    make_policy(cluster.pool_of(c).policy, contexts[c]),
                    log=log,
                    on_finished=on_finished,
                    prefix=replica_prefix(instance, [], cluster.pool_of(c), n, log),
                    adapters=joint_adapters(instance, cluster.pool_of(c), n),
                )
                for c in range(cluster.num_replicas)
            ]
            return
        # stateless: route every request now, then each replica is independent
        self._route_all()
        self.routed = n
        self.engines = []
        for c in range(cluster.num_replicas):
            ids = np.flatnonzero(self.where == c)
            pool = cluster.pool_of(c)
            self.paths[c] = _path(
                pool.policy, engine, log, len(ids), pool.prefix_cache is not None,
                pool.adapters is not None,
            )  # fmt: skip
            if self.paths[c] == "compiled":
                replica: Any = CompiledEngine(
                    instance, ids, cluster.pool_of(c), on_finished
                )
            else:
                replica = _replica_engine(
                    instance, ids, cluster, c, contexts[c], log, on_finished
                )
            self.engines.append(replica)

    def _route_all(self) -> None:
        """Route every request up front (a stateless router)."""
        route_all = getattr(self.router, "route_all", None)
        rejected = self.cut.rejected
        if route_all is None:
            for i in self.cut.admitted.tolist():
                self._route(i, None)
            return
        # a request rejected for length is never routed: whatever the router
        # would say of it is dropped (round robin still counts it: request i
        # goes to i mod C, as when the router is called request by request)
        where = np.asarray(route_all(self.instance))
        replicas = self.cluster.num_replicas
        if where.shape != (len(self.instance),) or where.dtype.kind not in "iu":
            raise InputError(
                f"the router's route_all gave {where.shape} {where.dtype}; expected "
                f"{len(self.instance)} replica ids",
                field="router",
            )
        bad = ((where < 0) | (where >= replicas)) & ~rejected
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            _decision(int(where[i]), i, replicas)  # raises, naming the request
        where = np.where(rejected, REJECTED, where)
        self.where[:] = where
        pool_of = np.where(rejected, -1, self.cluster.replica_pool[where])
        peak = self.instance.prompt_tokens + self.instance.output_tokens - 1
        for k, kv in enumerate(self._pool_kv):
            over = (pool_of == k) & (kv.blocks(peak) > kv.capacity_blocks)
            if over.any():
                i = int(np.flatnonzero(over)[0])
                _check_fits(self.instance, i, self.cluster, int(where[i]), kv)

    def _route(
        self,
        i: int,
        state: Callable[[int], tuple[int, int]] | None,
        queued: Callable[[int], int] | None = None,
        lookup: Callable[[int], tuple[int, int, float]] | None = None,
    ) -> int:
        """Route request ``i``; its replica or :data:`REJECTED`."""
        view = _view(self.context, self.instance, i, state, queued, lookup)
        choice = _decision(self.router.route(view), i, self.cluster.num_replicas)
        if isinstance(choice, Reject):
            self.reasons[i] = choice.reason
            return REJECTED
        _check_fits(self.instance, i, self.cluster, choice, self._kv[choice])
        self.where[i] = choice
        return choice

    def run(self, until_s: float = math.inf) -> bool:
        """Run until every request is done, or until ``until_s``: every replica
        then sits at its first iteration boundary at or after ``until_s`` (or in
        a held stretch or idle spell that spans it), and every request arriving
        before ``until_s`` is routed. Returns whether everything is done."""
        if not self.joint:
            done = [e.run(until_s) for e in self.engines]  # every one, no short cut
            return all(done)
        arrival = self.instance.arrival_s
        engines: list[JointEngine] = self.engines  # type: ignore[assignment]
        n = len(self.instance)
        rejected = self.cut.rejected
        while self.routed < n and arrival[self.routed] < until_s:
            i = self.routed
            if rejected[i]:  # rejected for length at arrival: never routed
                self.routed += 1
                continue
            t = float(arrival[i])
            for engine in engines:
                engine.advance(t)
            hashes = request_hashes(self.instance, i)
            s = int(self.instance.prompt_tokens[i])
            c = self._route(
                i,
                lambda c, t=t: engines[c].state_at(t),
                lambda c, t=t: engines[c].queued_at(t),
                lambda c, h=hashes, s=s, t=t: engines[c].prefix_hit(h, s, t),
            )
            if c != REJECTED:
                engines[c].add(self.instance, i)
            self.routed += 1
        for engine in engines:
            engine.advance(until_s)
        return self.routed == n and all(e.done == e.m for e in engines)

    @property
    def compile_s(self) -> float:
        """Seconds spent compiling or loading compiled kernels in :meth:`run`."""
        return sum(getattr(e, "compile_s", 0.0) for e in self.engines)

    def snapshot(self) -> dict[str, Any]:
        """The whole state (every engine's, the router's, routing so far), for
        :meth:`restore`."""
        return {
            "engines": [e.snapshot() for e in self.engines],
            "router": snapshot_policy(self.router),
            "where": self.where.copy(),
            "reasons": dict(self.reasons),
            "routed": self.routed,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Put the replay back in a :meth:`snapshot` (which stays reusable)."""
        for engine, saved in zip(self.engines, state["engines"], strict=True):
            engine.restore(saved)
        restore_policy(self.router, state["router"])
        np.copyto(self.where, state["where"])
        self.reasons = dict(state["reasons"])
        self.routed = state["routed"]

    def outcome(self) -> ClusterRun:
        """Where every request went and the engines (after :meth:`run`)."""
        if self.joint:
            engines: list[JointEngine] = self.engines  # type: ignore[assignment]
            ids = [np.array(e.ids, dtype=np.int64) for e in engines]
        else:
            ids = [np.flatnonzero(self.where == c) for c in range(len(self.engines))]
        return ClusterRun(
            self.where,
            self.reasons,
            [e if len(k) else None for e, k in zip(self.engines, ids, strict=True)],
            ids,
            served=self.instance,
            truncated=self.cut.truncated,
        )


def _path(
    spec: object,
    engine: str,
    log: bool,
    requests: int,
    prefix_cache: bool = False,
    adapters: bool = False,
) -> str:
    """The path of a replica under ``spec`` serving ``requests`` (with a prefix
    cache where ``prefix_cache``, adapters where ``adapters``), with the reason
    where it is Python but ``engine`` allowed the compiled one."""
    if engine == "python":
        return "python"
    if log:
        return "python: the iteration log was asked for"
    if prefix_cache:
        return "python: the prefix cache runs on the Python engine only"
    if adapters:
        return "python: adapters run on the Python engine only"
    if kernel_for(spec) is None:
        label = getattr(spec, "label", spec)
        return f"python: policy {label} has no compiled kernel"
    if engine == "auto" and requests < AUTO_MIN_REQUESTS:
        return (
            f"python: under {AUTO_MIN_REQUESTS:,} requests per replica (loading "
            "the compiled kernel takes longer)"
        )
    return "compiled"


class CompiledEngine:
    """A replica replayed on the compiled path, run to its end in one call; it
    then has the fields the records read (those of :class:`CompiledReplica`)."""

    def __init__(
        self,
        instance: Instance,
        ids: np.ndarray,
        pool: Any,
        on_finished: Callable[[int], None] | None,
    ) -> None:
        self._args = (instance, ids, pool, on_finished)
        self.m = len(ids)
        self.ran = False
        self.compile_s = 0.0  # compiling or loading the kernel, before the run

    def run(self, until_s: float = math.inf) -> bool:
        if until_s != math.inf:
            raise ValueError("a compiled replica runs only to its end")
        if not self.ran:
            instance, ids, pool, on_finished = self._args
            self.compile_s = load(pool.policy, pool.profile)
            predicted = instance.predicted_output_tokens
            result = run_replica(
                pool.policy,
                instance.arrival_s[ids],
                instance.prompt_tokens[ids],
                instance.output_tokens[ids],
                None if predicted is None else predicted[ids],
                pool.profile,
                on_finished,
                ids=ids,
            )
            vars(self).update(vars(result))
            self.ran = True
        return True


def _replica_engine(
    instance: Instance,
    ids: np.ndarray,
    cluster: Cluster,
    c: int,
    context: PolicyContext,
    log: bool,
    on_finished: Callable[[int], None] | None,
) -> ReplicaEngine:
    """The engine of replica ``c`` serving the requests ``ids``."""
    predicted = instance.predicted_output_tokens
    pool = cluster.pool_of(c)
    engine = ReplicaEngine(
        instance.arrival_s[ids],
        instance.prompt_tokens[ids],
        instance.output_tokens[ids],
        None if predicted is None else predicted[ids],
        pool.profile,
        make_policy(pool.policy, context),  # type: ignore[arg-type]
        log=log,
        on_finished=on_finished,
        priority=None if instance.priority is None else instance.priority[ids],
        tenant=None if instance.tenant is None else instance.tenant[ids],
        prefix=replica_prefix(instance, ids.tolist(), pool, len(ids), log),
        adapters=replica_adapters(instance, ids, pool),
    )
    engine.ids = ids  # a stall names the request by its instance position
    return engine


def replica_adapters(
    instance: Instance, ids: np.ndarray, pool: Any
) -> ReplicaAdapters | None:
    """The adapters of a replica of ``pool`` serving requests ``ids`` (``None``
    if the pool serves none): codes over the whole instance, so that a code
    names the same adapter on every replica (:mod:`lsched.evaluator.adapters`)."""
    spec = pool.adapters
    if spec is None:
        return None
    codes, names = spec.codes(instance.adapter, len(instance))
    h2d = pool.profile.host.h2d_bytes_per_s
    load_s = [spec.size_of(name) / h2d for name in names]
    return ReplicaAdapters(codes[ids], load_s, spec.num_slots, spec.max_loras, names)


def joint_adapters(
    instance: Instance, pool: Any, capacity: int
) -> ReplicaAdapters | None:
    """The adapters of a replica of ``pool`` that receives requests while it
    runs (:class:`JointEngine`), ``capacity`` local entries: every code ``-1``
    until :meth:`JointEngine.add` writes the code of the request it routes
    there (``None`` if the pool serves none)."""
    adapters = replica_adapters(instance, np.zeros(0, dtype=np.int64), pool)
    if adapters is None:
        return None
    adapters.instance_codes = pool.adapters.codes(instance.adapter, len(instance))[0]
    adapters.codes = np.full(capacity, -1, dtype=np.int64)
    return adapters


def request_hashes(instance: Instance, i: int) -> list[int]:
    """Request ``i``'s prefix block hashes as Python ints (none without any)."""
    offsets, values = instance.prefix_hash_offsets, instance.prefix_hash_values
    if offsets is None or values is None:
        return []
    return values[offsets[i] : offsets[i + 1]].tolist()


def hash_block_tokens(instance: Instance, profile: DeploymentProfile) -> int:
    """``B``, tokens per hash block: the instance's ``prefix_block_tokens``, else
    the profile's KV block size (:mod:`lsched.evaluator.prefix`)."""
    return int(instance.params.get("prefix_block_tokens", profile.block_tokens))


def replica_prefix(
    instance: Instance, ids: list[int], pool: Any, size: int, log: bool,
    kv_pool: KVPool | None = None, replica: int = 0,
) -> ReplicaPrefix | None:  # fmt: skip
    """The prefix cache of replica ``replica`` of ``pool`` serving requests
    ``ids``, room for ``size``, sharing ``kv_pool`` if given (``None`` if the
    pool has no cache)."""
    if pool.prefix_cache is None:
        return None
    offsets, values = instance.prefix_hash_offsets, instance.prefix_hash_values
    hashes: list[list[int]] = []
    if offsets is not None and values is not None and ids:
        flat, bounds = values.tolist(), offsets.tolist()
        hashes = [flat[bounds[i] : bounds[i + 1]] for i in ids]
    profile = pool.profile
    block = hash_block_tokens(instance, profile)
    return ReplicaPrefix(
        pool.prefix_cache, block, profile.block_tokens, size, hashes, log,
        profile.kv_bytes_per_token, profile.host.h2d_bytes_per_s, kv_pool, replica,
    )  # fmt: skip


class JointEngine(ReplicaEngine):
    """A replica engine that receives requests while it runs.

    :meth:`advance` runs everything an arrival at ``t`` cannot change;
    :meth:`add` routes a request to it; :meth:`state_at` is what a router reads.
    Reading and committing stretches reuses :meth:`ReplicaEngine._stretch_length`
    and :meth:`ReplicaEngine._decode_stretch`.
    """

    def __init__(
        self,
        capacity: int,
        instance: Instance,
        profile: DeploymentProfile,
        policy: object,
        *,
        log: bool,
        on_finished: Callable[[int], None] | None,
        prefix: ReplicaPrefix | None = None,
        adapters: ReplicaAdapters | None = None,
    ) -> None:
        pred = instance.predicted_output_tokens
        # the arrays the engine shows read-only views of; add() writes into them
        self._pred = None if pred is None else np.ones(capacity, dtype=np.int64)
        self._prio = (
            None
            if instance.priority is None
            else np.zeros(capacity, dtype=instance.priority.dtype)
        )
        self._tenant = (
            None
            if instance.tenant is None
            else np.full(capacity, instance.tenant[0], dtype=instance.tenant.dtype)
        )
        super().__init__(
            np.full(capacity, np.inf),
            np.ones(capacity, dtype=np.int64),
            np.ones(capacity, dtype=np.int64),
            self._pred,
            profile,
            policy,  # type: ignore[arg-type]
            log=log,
            on_finished=on_finished,
            priority=self._prio,
            tenant=self._tenant,
            prefix=prefix,
            adapters=adapters,
        )
        self.m = 0
        self.now_s = -math.inf
        self.ids: list[int] = []  # instance position of every local request
        self.pending: Batch | None = None  # a held or empty batch not yet run
        #: the end of the last iteration (or held stretch) run and its requests
        self.last_run: tuple[float, np.ndarray] = (-math.inf, np.zeros(0, np.int64))

    def add(self, instance: Instance, i: int) -> None:
        """Route request ``i`` of ``instance`` to this replica."""
        k = self.m
        self.arrival_s[k] = instance.arrival_s[i]
        self.prompt[k] = instance.prompt_tokens[i]
        self.output[k] = instance.output_tokens[i]
        if self._pred is not None:
            self._pred[k] = instance.predicted_output_tokens[i]  # type: ignore[index]
        if self._prio is not None:
            self._prio[k] = instance.priority[i]  # type: ignore[index]
        if self._tenant is not None:
            self._tenant[k] = instance.tenant[i]  # type: ignore[index]
        if self.prefix is not None:
            self.prefix.hashes.append(request_hashes(instance, i))
        if self.adapters is not None:
            self.adapters.codes[k] = self.adapters.instance_codes[i]
        self.m += 1
        self.ids.append(i)

    def snapshot(self) -> dict[str, Any]:
        """:meth:`ReplicaEngine.snapshot` plus the requests routed here."""
        state = super().snapshot()
        state["joint"] = (
            self.m,
            list(self.ids),
            self.pending,
            [a.copy() for a in self._routed_arrays()],
            self.last_run,
        )
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """:meth:`ReplicaEngine.restore` plus the requests routed here."""
        super().restore(state)
        self.m, ids, self.pending, arrays, self.last_run = state["joint"]
        self.ids = list(ids)
        if self.prefix is not None:
            del self.prefix.hashes[self.m :]
        for array, saved in zip(self._routed_arrays(), arrays, strict=True):
            np.copyto(array, saved)

    def _routed_arrays(self) -> list[np.ndarray]:
        arrays = [self.arrival_s, self.prompt, self.output]
        codes = None if self.adapters is None else self.adapters.codes
        return arrays + [
            a for a in (self._pred, self._prio, self._tenant, codes) if a is not None
        ]

    def advance(self, t: float) -> None:
        """Run every step that an arrival at ``t`` (``inf``: none) cannot change."""
        while True:
            if self.pending is not None:
                if not self._resume(t):
                    return
                continue
            if self.done >= self.m or t <= self.now_s + ARRIVAL_TOLERANCE_S:
                return
            self._arrive()
            if not self.running and not self._has_waiting():
                if self.num_arrived == self.m:
                    return  # idle until a request is routed here
                self.now_s = max(self.now_s, float(self.arrival_s[self.num_arrived]))
                continue
            batch = self.policy.decide(self._view())
            if batch.moves_kv or self._copies:
                batch = self._moves(batch)
            if batch.is_empty:
                self.pending = batch
                continue
            grow = self._check(batch)
            if self.prefix is not None:
                batch, grow = self._prefix_admit(batch, grow)
            self._admit(batch.prefill)
            if self.adapters is not None:  # one iteration at a time, as alone
                self._load_adapters(batch)
                self._iteration(batch, grow)
            elif batch.hold and len(batch.prefill) == 0 and not batch.moves_kv:
                self.pending = batch
            else:
                self._iteration(batch, grow)

    def _cut(self, t: float) -> tuple[DecodeStretch, int, int]:
        """The pending stretch, its length and its length if cut at ``t``."""
        assert self.pending is not None
        stretch, n = self._stretch_length(self.pending)
        j = n
        if n > 1 and t < math.inf:
            j = stretch.iterations_until((t - ARRIVAL_TOLERANCE_S) - self.now_s, n)
        return stretch, n, j

    def _resume(self, t: float) -> bool:
        """Commit the pending batch if ``t`` cannot change it; True if committed."""
        batch = self.pending
        assert batch is not None
        if batch.is_empty:
            if self.num_arrived < self.m:
                self._idle(batch)  # a known arrival of its own comes first
            elif batch.wake_at_s is not None and batch.wake_at_s > self.now_s:
                if batch.wake_at_s > t:
                    return False  # a request routed here at t would come first
                self.now_s = batch.wake_at_s
            elif t < math.inf:
                return False  # waits for a request to be routed here
            else:
                self._idle(batch)  # nothing left to wait for: the stall error
        else:
            stretch, n, j = self._cut(t)
            if j < n:
                return False
            self._decode_stretch(batch, (stretch, n))
        self.pending = None
        return True

    def _iteration(self, batch: Batch, grow: int) -> None:
        super()._iteration(batch, grow)
        members = batch.decode
        if len(batch.prefill):
            members = np.concatenate([batch.prefill, batch.decode])
        self.last_run = (self.now_s, members)

    def _advance(self, decode: np.ndarray, p: np.ndarray, stretch: DecodeStretch,
                 n: int, remaining: list[int] | None) -> None:  # fmt: skip
        super()._advance(decode, p, stretch, n, remaining)
        self.last_run = (self.now_s, decode)

    def in_flight(self, t: float) -> tuple[int, int]:
        """(requests, finished requests) of the iteration in flight at ``t`` (one
        that started before ``t`` and ends after it), after :meth:`advance` to
        ``t``: its requests that finish at its end are already done here."""
        batch = self.pending
        if batch is not None and not batch.is_empty:
            # a held stretch that spans t: no completion before its end
            return len(batch.decode), 0
        end, members = self.last_run
        if end <= t + ARRIVAL_TOLERANCE_S:
            return 0, 0
        return len(members), int(np.count_nonzero(self.status[members] == DONE))

    def queued_at(self, t: float) -> int:
        """Requests routed here, unfinished at ``t`` and not in the iteration in
        flight at ``t`` (after :meth:`advance` to ``t``): DistServe's
        ``len(decode_queue)`` on a decode worker, ``len(prefill_queue)`` on a
        prefill one."""
        members, finished = self.in_flight(t)
        return self.m - self.done - (members - finished)

    def prefix_hit(
        self, hashes: list[int], prompt: int, t: float
    ) -> tuple[int, int, float]:
        """What a request of ``hashes`` and ``prompt`` tokens finds in this
        replica's prefix cache (:meth:`ReplicaPrefix.hit
        <lsched.evaluator.prefix.ReplicaPrefix.hit>`: the run it holds itself,
        the cached tokens an admission would take and their copy's seconds;
        zeros without a cache) at the first boundary at or after ``t``, a
        shared pool's writes by ``t`` counted, after :meth:`advance` to ``t``:
        read-only, O(len(hashes)) (plus the blocks a pending held stretch
        evicts by then)."""
        if self.prefix is None:
            return 0, 0, 0.0
        self.prefix.sync(t)
        return self.prefix.hit(hashes, prompt, self._stretch_evictions(t))

    def _stretch_evictions(self, t: float) -> int:
        """Evictable blocks the iterations of a pending held stretch that start
        before ``t`` evict (rule 4 of :mod:`lsched.evaluator.prefix`: its ``j``
        iterations need the KV after the ``j``-th; the stretch commits them at
        once, so a router reads them here)."""
        batch, prefix = self.pending, self.prefix
        assert prefix is not None
        if batch is None or batch.is_empty or not prefix.cache.evictable_blocks:
            return 0
        _, _, j = self._cut(t)
        p = self.processed[batch.decode]
        kv = self.kv
        grow = int((kv.kv.blocks(p + j) - kv.kv.blocks(p)).sum())
        over = kv.exact_blocks(self.running) + grow
        over += prefix.charged_blocks - self._capacity
        return 0 if over <= 0 else -(-over // prefix.charge)

    def state_at(self, t: float) -> tuple[int, int]:
        """(unfinished requests, KV tokens held) at the first boundary at or after
        ``t``, after :meth:`advance` to ``t``."""
        unfinished = self.m - self.done
        batch = self.pending
        if batch is None or batch.is_empty:
            return unfinished, self.kv.held_tokens
        _, _, j = self._cut(t)  # j < n: no completion before the boundary
        return unfinished, self.kv.held_tokens + j * len(batch.decode)
