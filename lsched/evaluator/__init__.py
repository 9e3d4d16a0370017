"""The evaluator: every schedule, offline or online, is scored here.

:func:`simulate_cluster` replays an instance on a :class:`~lsched.cluster.Cluster`
(pools of replicas, each with a profile and a policy, and a router), iteration by
iteration in meaning and event by event in cost (:mod:`lsched.evaluator.engine`,
:mod:`lsched.evaluator.cluster`), and returns a :class:`SimulationResult` with
per-request records, the metrics of :mod:`lsched.metrics` (over all served
requests, per replica and per pool) and, on request, the iteration log.
:func:`simulate` is the one-pool shorthand (``--model P --replicas C``).

Request ``i`` (instance position) runs on replica ``i mod C`` (round robin in
arrival order) unless an explicit ``assignment`` says otherwise, or a router that
reads the replicas' state (:mod:`lsched.routers`: ``least-outstanding``,
``least-kv``, ``least-queued``, or one registered by the user) chooses at its
arrival, which simulates the replicas jointly in time. Each replica gets a fresh
policy object.
The iteration model and the request lifecycle are those of DESIGN.md, restated in
:mod:`lsched.policies.base`.

Requests that do not fit a profile are handled as engines do (DESIGN.md,
"Rejection"; :mod:`lsched.evaluator.length`): with ``L`` the cluster's
``max_model_len`` (the smallest over its pools), a prompt over ``L`` is rejected
at arrival and counted (``num_rejected``), and a served request's output stops
at ``L - s_i + 1`` tokens (vLLM V0's stop checker), counted in its
``truncated_tokens`` and in ``num_truncated``. The KV checks before a run
(:func:`check_inputs`, :func:`check_fits`) count the outputs so cut and leave
out the requests rejected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from lsched.adapters import AdapterSpec
from lsched.checks import check_choice, check_int, check_type
from lsched.cluster import Cluster
from lsched.errors import InputError
from lsched.evaluator.cluster import ClusterSim, hash_block_tokens
from lsched.evaluator.disagg import DisaggSim
from lsched.evaluator.length import LengthCut, cluster_max_model_len, cut_to_length
from lsched.evaluator.migration import MigrationSim
from lsched.evaluator.records import collect
from lsched.evaluator.result import SimulationResult
from lsched.instance import Instance
from lsched.policies import PolicySpec, ReplicaLimits, parse_policy
from lsched.prefix.spec import PrefixCacheSpec
from lsched.profile import DeploymentProfile
from lsched.routers import RouterSpec, migrates, parse_router

__all__ = ["SimulationResult", "assign_replicas", "simulate", "simulate_cluster"]

#: The ``engine`` choices of :func:`simulate_cluster`.
ENGINES = ("auto", "compiled", "python")


def assign_replicas(
    instance: Instance, replicas: int, assignment: npt.ArrayLike | None = None
) -> np.ndarray:
    """Replica of every request: round robin, or ``assignment`` checked."""
    n = len(instance)
    if replicas < 1:
        raise InputError(f"got {replicas}; expected >= 1", field="replicas")
    if assignment is None:
        return np.arange(n, dtype=np.int64) % replicas
    raw = np.asarray(assignment)
    array = raw.astype(np.int64) if raw.dtype.kind in "iuf" else raw
    if (
        array.shape != (n,)
        or array.dtype != np.int64
        or np.any(array != raw)  # 0.7 is no replica id
        or np.any((array < 0) | (array >= replicas))
    ):
        raise InputError(
            f"expected {n} replica ids in 0..{replicas - 1}", field="assignment"
        )
    return array


def check_fits(instance: Instance, profile: DeploymentProfile) -> None:
    """Raise if a request's peak KV (``s + o' - 1`` tokens) exceeds the capacity.

    ``o'`` is the output cut to the profile's ``max_model_len``
    (:mod:`lsched.evaluator.length`); a prompt over it is rejected at arrival and
    not counted here.
    """
    cut = cut_to_length(instance, profile.max_model_len)
    _check_fits_on(cut.served, cut.admitted, profile)


def _check_fits_on(
    instance: Instance, rows: np.ndarray, profile: DeploymentProfile
) -> None:
    """:func:`check_fits` of the requests ``rows`` of an instance already cut."""
    peak = instance.prompt_tokens[rows] + instance.output_tokens[rows] - 1
    kv = ReplicaLimits.from_profile(profile).kv
    too_big = np.flatnonzero(kv.blocks(peak) > kv.capacity_blocks)
    if len(too_big):
        i = int(rows[too_big[0]])
        raise InputError(
            f"request {i} needs {int(peak[too_big[0]])} KV tokens at its peak "
            f"(prompt {int(instance.prompt_tokens[i])} + output "
            f"{int(instance.output_tokens[i])} - 1), more than the capacity of "
            f"{profile.kv_capacity_tokens} tokens ({profile.kv_capacity_blocks} "
            f"blocks of {profile.block_tokens}) on profile {profile.name}; "
            f"{len(too_big)} request(s) can never complete",
            field="kv_capacity_tokens",
        )


def check_dispatch(dispatch: str, has_assignment: bool) -> RouterSpec:
    """The router ``dispatch`` names (``NAME[:key=value,...]``); InputError on an
    unknown one or one that conflicts with an assignment."""
    try:
        spec = parse_router(dispatch)
    except InputError as exc:
        raise InputError(exc.message, field="dispatch") from None
    if spec.name == "static" and not has_assignment:
        raise InputError(
            "dispatch 'static' needs an assignment (one replica id per request)",
            field="dispatch",
        )
    if spec.name != "static" and has_assignment:
        raise InputError(
            f"dispatch {spec.name!r} chooses replicas itself; got an assignment too",
            field="dispatch",
        )
    return spec


def _check_fits_somewhere(cut: LengthCut, cluster: Cluster) -> None:
    """Raise if a request not rejected for length has a peak KV that fits on no
    pool of ``cluster``."""
    instance, rows = cut.served, cut.admitted
    if len(cluster.pools) == 1:
        _check_fits_on(instance, rows, cluster.pools[0].profile)
        return
    peak = instance.prompt_tokens[rows] + instance.output_tokens[rows] - 1
    fits = np.zeros(len(rows), dtype=bool)
    for pool in cluster.pools:
        kv = ReplicaLimits.from_profile(pool.profile).kv
        fits |= kv.blocks(peak) <= kv.capacity_blocks
    if not fits.all():
        k = int(np.flatnonzero(~fits)[0])
        capacities = ", ".join(str(p.profile.kv_capacity_tokens) for p in cluster.pools)
        raise InputError(
            f"request {int(rows[k])} needs {int(peak[k])} KV tokens at its peak, "
            f"more than any pool's capacity ({capacities} tokens); "
            f"{int((~fits).sum())} request(s) can never complete",
            field="kv_capacity_tokens",
        )


def _check_host(cut: LengthCut, cluster: Cluster) -> None:
    """Raise if a pool whose policy swaps has a host tier smaller than the
    largest peak KV of a request it may serve (``params.swaps``: the policy may
    swap)."""
    instance, rows = cut.served, cut.admitted
    if not len(rows):
        return
    peaks = instance.prompt_tokens[rows] + instance.output_tokens[rows]
    peak = int(peaks.max()) - 1
    for pool in cluster.pools:
        profile = pool.profile
        if not getattr(getattr(pool.policy, "params", None), "swaps", False):
            continue
        need = -(-peak // profile.block_tokens)
        if need > profile.host_capacity_blocks:
            assert profile.host is not None
            raise InputError(
                f"pool {pool.name} swaps ({pool.policy.label}) but its host tier "
                f"holds {profile.host_capacity_blocks} blocks "
                f"({profile.host.memory_bytes} bytes), less than one request's "
                f"peak KV ({peak} tokens, {need} blocks); give more host memory "
                "(--set host.memory_bytes=...)",
                field="host.memory_bytes",
            )


def check_inputs(instance: Instance, cluster: Cluster) -> None:
    """Raise :class:`InputError` if ``instance`` cannot run on ``cluster``: a
    request that fits no replica's KV (on a colocated cluster; a disaggregated one
    rejects it), a host tier too small for a swapping policy. Both count the
    outputs cut to the cluster's ``max_model_len`` and leave out the prompts over
    it, which are rejected at arrival (:mod:`lsched.evaluator.length`); every
    prompt over it is an error too (nothing to serve)."""
    cut = cut_to_length(instance, cluster_max_model_len(cluster))
    if cut.rejected.all():
        raise InputError(
            f"every prompt is over max_model_len {cut.max_model_len} (the longest "
            f"the cluster serves): no request can be served",
            field="max_model_len",
        )
    if not cluster.disaggregated:
        _check_fits_somewhere(cut, cluster)
    _check_host(cut, cluster)
    if cluster.prefix_cached:
        _check_prefix_hashes(instance, cluster)
    for pool in cluster.pools:
        if pool.adapters is not None:  # every adapter named is known
            pool.adapters.codes(instance.adapter, len(instance))


def _check_prefix_hashes(instance: Instance, cluster: Cluster) -> None:
    """Raise unless ``instance`` has prefix block hashes for a cluster with a
    prefix cache, at most ``ceil(s_i / B)`` per request on every pool with one
    (:mod:`lsched.evaluator.prefix`)."""
    offsets = instance.prefix_hash_offsets
    if offsets is None:
        raise InputError(
            "a prefix cache needs the requests' prefix block hashes (Mooncake "
            "hash_ids or a prefix_hashes column); the trace has none",
            field="prefix_cache",
        )
    counts = np.diff(offsets)
    for pool in cluster.pools:
        if pool.prefix_cache is None:
            continue
        block = hash_block_tokens(instance, pool.profile)
        over = np.flatnonzero(counts > -(-instance.prompt_tokens // block))
        if len(over):
            i = int(over[0])
            raise InputError(
                f"request {i} has {int(counts[i])} hashes; expected at most "
                f"ceil({int(instance.prompt_tokens[i])} / {block}) for its prompt "
                f"in blocks of {block} tokens (pool {pool.name})",
                field="prefix_hashes",
            )


def simulate(
    instance: Instance,
    profile: DeploymentProfile,
    policy: str | PolicySpec,
    *,
    replicas: int | None = None,
    assignment: npt.ArrayLike | None = None,
    dispatch: str | None = None,
    log: bool = False,
    progress: Callable[[int], None] | None = None,
    engine: str = "auto",
    prefix_cache: str | PrefixCacheSpec | None = None,
    adapters: str | AdapterSpec | None = None,
) -> SimulationResult:
    """Replay ``instance`` on ``profile`` under ``policy``: one colocated pool
    (:meth:`lsched.cluster.Cluster.colocated`), see :func:`simulate_cluster`.

    Parameters
    ----------
    instance
        The requests.
    profile
        Deployment: iteration time, KV capacity and block size, batch limits.
    policy
        A :class:`PolicySpec` or its text form ``name[:key=value,...]``.
    replicas
        Number of replicas ``C``; the profile's by default.
    assignment
        Replica id per request, for the ``static`` router.
    dispatch
        The router (:mod:`lsched.routers`): ``round-robin``, ``static`` (the
        ``assignment``), ``least-outstanding``, ``least-kv``, ``least-queued`` or
        a registered one; by default ``static`` with an assignment, else
        ``round-robin``.
    log, progress, engine
        As :func:`simulate_cluster`.
    prefix_cache
        A prefix cache on each replica (:mod:`lsched.evaluator.prefix`): a
        :class:`~lsched.prefix.spec.PrefixCacheSpec` or its text, e.g. ``"lru"``;
        ``None``: none. Such a run takes the Python engine.
    adapters
        The LoRA adapters each replica serves (:mod:`lsched.adapters`): an
        :class:`~lsched.adapters.AdapterSpec` or its text, e.g.
        ``"max_loras=2"``; ``None``: none (an ``adapter`` column is then
        ignored). Such a run takes the Python engine.

    Raises
    ------
    InputError
        If a request can never fit in KV, or on a bad ``replicas``/``assignment``/
        ``dispatch``/``prefix_cache`` (a cache over the replica's KV, an unknown
        eviction rule, an instance without prefix hashes).
    PolicyError
        If the policy returns a batch that breaks the model's rules, or stalls.
    """
    check_type(instance, "instance", Instance, "an Instance")
    check_type(profile, "profile", DeploymentProfile, "a DeploymentProfile")
    spec = parse_policy(policy) if isinstance(policy, str) else policy
    replicas = (
        profile.replicas if replicas is None else check_int(replicas, "replicas", 1)
    )
    if dispatch is None:
        dispatch = "round-robin" if assignment is None else "static"
    router = check_dispatch(dispatch, assignment is not None)
    cluster = Cluster.colocated(profile, spec, replicas, router, prefix_cache, adapters)
    return simulate_cluster(
        instance,
        cluster,
        assignment=assignment,
        log=log,
        progress=progress,
        engine=engine,
    )


def simulate_cluster(
    instance: Instance,
    cluster: Cluster,
    *,
    assignment: npt.ArrayLike | None = None,
    log: bool = False,
    progress: Callable[[int], None] | None = None,
    engine: str = "auto",
) -> SimulationResult:
    """Replay ``instance`` on ``cluster`` (:mod:`lsched.evaluator.cluster`).

    Parameters
    ----------
    instance
        The requests.
    cluster
        Pools (profile, policy, replicas) and the router.
    assignment
        Replica id per request, for the ``static`` router.
    log
        Keep the iteration log (runs, members, preemptions).
    progress
        Called with the number of requests finished so far, about every 0.5 %
        of the instance and at the end (for a replica on the compiled path, once
        when it ends).
    engine
        ``"compiled"``: each replica on the compiled path where it can take it
        (:mod:`lsched.evaluator.compiled`), else on the Python path; ``"auto"``:
        the same for replicas with at least 1,000 requests (below that, loading
        the kernels costs more than it saves); ``"python"``: every replica on the
        Python path. The result's ``engine`` says which ran.

    Returns
    -------
    SimulationResult
        Per-request records, metrics over all served requests and per replica and
        pool, and on request the iteration log. A prompt over the cluster's
        ``max_model_len`` is rejected, an output cut there (module docstring).

    Raises
    ------
    InputError
        If a request fits on no replica, or on a bad ``assignment``.
    PolicyError
        If a policy returns a batch that breaks the model's rules, or stalls.
    """
    check_type(instance, "instance", Instance, "an Instance")
    check_type(cluster, "cluster", Cluster, "a Cluster")
    check_choice(engine, "engine", ENGINES)
    if progress is not None and not callable(progress):
        raise InputError(f"got {progress!r}; expected a callable", field="progress")
    check_inputs(instance, cluster)
    where = None
    if assignment is not None:
        if cluster.disaggregated:
            raise InputError(
                "a static assignment is for colocated clusters; a disaggregated "
                "cluster routes with its router and decode_router",
                field="assignment",
            )
        where = assign_replicas(instance, cluster.num_replicas, assignment)
    started = time.perf_counter()
    finished = 0
    step = max(1, len(instance) // 200)
    reported = 0

    def count(k: int) -> None:
        nonlocal finished, reported
        finished += k
        if progress is not None and finished - reported >= step:
            reported = finished
            progress(finished)

    sim: ClusterSim | DisaggSim | MigrationSim
    if cluster.disaggregated:
        sim = DisaggSim(instance, cluster, log=log, on_finished=count)
    elif migrates(cluster.router):
        sim = MigrationSim(instance, cluster, log=log, on_finished=count)
    else:
        sim = ClusterSim(
            instance,
            cluster,
            assignment=where,
            log=log,
            on_finished=count,
            engine=engine,
        )
    sim.run()
    if progress is not None:
        progress(finished)
    # compiling a kernel is paid once per process: it is not the replay's time
    runtime_s = time.perf_counter() - started - sim.compile_s
    path = _engine(sim.paths)
    result = collect(instance, cluster, sim.outcome(), log, runtime_s, path)
    return replace(result, compile_s=sim.compile_s)


def _engine(paths: list[str]) -> str:
    """Which path ran: ``compiled``, ``python`` (with the reason where the
    compiled path was possible in principle) or a count of each."""
    kinds = dict.fromkeys(paths)
    if len(kinds) == 1:
        return paths[0]
    counts = {p: paths.count(p) for p in kinds}
    return "; ".join(f"{k} replica{'s' * (k > 1)} {p}" for p, k in counts.items())
