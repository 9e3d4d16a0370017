"""Closed-form bounds in seconds for a cluster: pools of different profiles, and
disaggregated prefill and decode pools with the links between them (DESIGN.md,
"Clusters").

They carry :mod:`lsched.formulations.bounds.work` (its linear under-estimators
``u`` of the iteration time, the per-member attribution of an iteration's time
and the SRPT fluid bound) from ``C`` replicas of one profile to a
:class:`~lsched.cluster.Cluster`, and hold for every schedule the evaluator runs
on it: any policy in any pool, any router and decode router, ``fifo`` or
``share`` links. Pool ``k`` gives, under its own profile, request i's prefill and
its ``o_i - 1`` decode steps run alone (``q^pre_ki``, ``q^dec_ki``) and their work
(``p^pre_ki``, ``p^dec_ki``); a pool whose cost model has no usable
under-estimator counts 0 for all four.

Routes
------
Request i runs whole on a colocated pool ``c``, or is prefilled on a prefill pool
``P`` (which emits token 1), moves over the link ``(P, D)`` and is decoded on a
decode pool ``D``. Its KV transfer takes at least ``m_PDi = latency + s_i
kv_bytes_per_token(P) / bandwidth`` (the link to itself; queueing behind or
sharing with other transfers only delays it), none if ``o_i = 1`` (done at its
prefill). After its arrival, along each route:

    colocated c:  first token after q^pre_ci, then rest q^dec_ci
    (P, D):       first token after q^pre_Pi, then rest m_PDi + q^dec_Di

so ``C_i >= a_i + path_i``, ``path_i`` the least ``first + rest`` over routes
(``critical_path``); its first token comes no earlier than ``a_i + min first``,
after which it needs at least ``rest_i``, the least rest; and no decode step runs
before ``r_i = a_i + min over routes (first + m)`` (``m = 0`` colocated).

Machines
--------
Each replica of pool ``k`` processes at most one second of pool-``k`` work per
second, whatever ``(u, lambda)`` the pool is measured with. Pools from which
every request needs a part of its work form a fluid machine whose speed is their
replica count and which must run request i's part, at least the least part over
those pools:

``prefill_queue``
    the prefill and colocated pools, ``min_k p^pre_ki``, released at ``a_i``,
    done by i's first token. Latency: ``sum_k max(SRPT_(k), (a + first)_(k)) +
    sum_i rest_i`` (the colocated ``prefill_queue``); makespan: ``max_tau (tau -
    min a) + sum_{a_i >= tau} part_i / speed + min_{a_i >= tau} rest_i``.
``decode_work``
    the decode and colocated pools, ``min_k p^dec_ki``, released at ``r_i``,
    done by ``C_i``.
``work``
    every pool, ``min(min_c (p^pre_ci + p^dec_ci), min_P p^pre_Pi + min_D
    p^dec_Di)``, released at ``a_i``: on colocated pools of different profiles,
    the colocated ``work`` bound.

The last two, like ``work`` of :mod:`work_bounds`, are for latency ``sum_k
max(SRPT_(k), (a + path)_(k)) - sum a`` and for makespan the larger of the
fluid makespan and the critical path. Every choice of one ``(u, lambda)`` per
profile gives a bound: all combinations are tried where there are at most
:data:`MAX_COMBINATIONS`, else the ``j``-th candidate of every profile together
(cycling the shorter lists); the largest value is taken. As in
:mod:`work_bounds`, recompute (after a preemption, or when a transferred KV does
not fit its decode replica and is prefilled again there) and swapping only add
work.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lsched.cluster import Cluster
from lsched.formulations.bounds.work import (
    RequestFigures,
    check_inputs,
    fluid_latency,
    fluid_makespan,
    request_figures,
)
from lsched.instance import Instance

FloatArray = npt.NDArray[np.float64]

#: The bounds of :func:`cluster_bounds`, in the order they are reported.
CLUSTER_BOUNDS: tuple[str, ...] = (
    "critical_path",
    "work",
    "prefill_queue",
    "decode_work",
)
#: Most combinations of one ``(u, lambda)`` per profile tried (module docstring).
MAX_COMBINATIONS = 64

#: The pools of each machine (module docstring).
_PREFILL_ROLES = ("prefill", "colocated")
_DECODE_ROLES = ("decode", "colocated")


@dataclass(frozen=True)
class _Paths:
    """Per-request least times after ``a_i`` over the routes (module docstring)."""

    first: FloatArray  # to the first token
    rest: FloatArray  # from the first token to the completion
    path: FloatArray  # to the completion
    release: FloatArray  # to the first decode step


@dataclass(frozen=True)
class _Machines:
    """One combination's work per request, divided by each machine's speed."""

    prefill: FloatArray
    decode: FloatArray
    whole: FloatArray


def _figures(instance: Instance, cluster: Cluster) -> list[RequestFigures] | None:
    """Each pool's figures (one object per profile), ``None`` if no pool has any."""
    cache: dict[int, RequestFigures | None] = {}
    found = []
    for pool in cluster.pools:
        key = id(pool.profile)
        if key not in cache:
            cache[key] = request_figures(instance, pool.profile)
        found.append(cache[key])
    if all(f is None for f in found):
        return None
    zero = np.zeros(len(instance))
    nothing = RequestFigures(zero, zero, [(zero, zero)])  # t >= 0 is all we know
    return [nothing if f is None else f for f in found]


def _paths(
    instance: Instance, cluster: Cluster, figures: list[RequestFigures]
) -> _Paths:
    """The least first, rest, path and decode release over every route."""
    s = instance.prompt_tokens.astype(np.float64)
    more = instance.output_tokens > 1
    routes = []  # (first, move, rest after the move) of each route
    for pool, own in zip(cluster.pools, figures, strict=True):
        if pool.role == "colocated":
            routes.append((own.prefill_alone, 0.0, own.decode_alone))
        if pool.role != "prefill":
            continue
        nbytes = s * pool.profile.kv_bytes_per_token
        for target, theirs in zip(cluster.pools, figures, strict=True):
            if target.role == "decode":
                link = cluster.link(pool.name, target.name)
                move = np.where(more, link.latency_s + link.seconds(nbytes), 0.0)
                routes.append((own.prefill_alone, move, theirs.decode_alone))
    return _Paths(
        first=np.min([first for first, _, _ in routes], axis=0),
        rest=np.min([move + rest for _, move, rest in routes], axis=0),
        path=np.min([first + move + rest for first, move, rest in routes], axis=0),
        release=np.min([first + move for first, move, _ in routes], axis=0),
    )


def _combinations(
    figures: list[RequestFigures],
) -> Iterator[list[tuple[FloatArray, FloatArray]]]:
    """One ``(p^pre, p^dec)`` per pool, pools of one profile alike (module
    docstring: all combinations, or the ``j``-th of every profile)."""
    distinct = {id(f): f for f in figures}
    keys = list(distinct)
    index = [keys.index(id(f)) for f in figures]
    lists = [f.works for f in distinct.values()]
    if math.prod(len(w) for w in lists) <= MAX_COMBINATIONS:
        choices: Iterator[tuple[tuple[FloatArray, FloatArray], ...]] = (
            itertools.product(*lists)
        )
    else:
        longest = max(len(w) for w in lists)
        choices = (tuple(w[j % len(w)] for w in lists) for j in range(longest))
    for choice in choices:
        yield [choice[k] for k in index]


def _machines(
    cluster: Cluster, works: list[tuple[FloatArray, FloatArray]]
) -> _Machines:
    """Each machine's least part per request over its pools, over its speed."""

    def least(roles: tuple[str, ...], part: int) -> tuple[FloatArray, int]:
        keep = [k for k, p in enumerate(cluster.pools) if p.role in roles]
        speed = sum(cluster.pools[k].replicas for k in keep)
        return np.min([works[k][part] for k in keep], axis=0), speed

    prefill, prefill_speed = least(_PREFILL_ROLES, 0)
    decode, decode_speed = least(_DECODE_ROLES, 1)
    whole = [
        pre + dec
        for (pre, dec), pool in zip(works, cluster.pools, strict=True)
        if pool.role == "colocated"
    ]
    if cluster.disaggregated:
        whole.append(least(("prefill",), 0)[0] + least(("decode",), 1)[0])
    return _Machines(
        prefill / prefill_speed,
        decode / decode_speed,
        np.min(whole, axis=0) / cluster.num_replicas,
    )


def _makespan(
    a: FloatArray, paths: _Paths, machines: list[_Machines]
) -> dict[str, float]:
    start = float(a.min())
    path = float((a + paths.path).max() - start)
    release = a + paths.release

    def best(fluid: Callable[[_Machines], float]) -> float:
        return max(path, *(fluid(m) for m in machines))

    return {
        "critical_path": path,
        "work": best(lambda m: fluid_makespan(a, m.whole, start)),
        "prefill_queue": best(
            lambda m: fluid_makespan(a, m.prefill, start, paths.rest)
        ),
        "decode_work": best(lambda m: fluid_makespan(release, m.decode, start)),
    }


def _latency(
    a: FloatArray, paths: _Paths, machines: list[_Machines]
) -> dict[str, float]:
    total_a = float(a.sum())
    finish = a + paths.path
    first = a + paths.first
    release = a + paths.release
    work = max(fluid_latency(a, m.whole, finish) for m in machines)
    queue = max(fluid_latency(a, m.prefill, first) for m in machines)
    decode = max(fluid_latency(release, m.decode, finish) for m in machines)
    return {
        "critical_path": float(finish.sum()) - total_a,
        "work": work - total_a,
        "prefill_queue": queue + float(paths.rest.sum()) - total_a,
        "decode_work": decode - total_a,
    }


def cluster_bounds(
    instance: Instance, cluster: Cluster, objective: str = "latency"
) -> dict[str, float]:
    """Closed-form bounds in seconds on the objective of any schedule on ``cluster``.

    Parameters
    ----------
    instance
        The requests.
    cluster
        The pools (profiles, replica counts, roles) and links; policies and
        routers do not matter: the bounds hold for all of them.
    objective
        ``"latency"`` (total E2E, ``sum_i C_i - a_i``) or ``"makespan"``
        (``max C - min a``).

    Returns
    -------
    dict[str, float]
        :data:`CLUSTER_BOUNDS` by name (module docstring); empty if no pool's
        cost model has a usable under-estimator. They hold for the topology
        :meth:`Cluster.describe` states.
    """
    check_inputs(instance, objective, cluster.num_replicas)
    figures = _figures(instance, cluster)
    if figures is None:
        return {}
    a = instance.arrival_s.astype(np.float64)
    paths = _paths(instance, cluster, figures)
    machines = [_machines(cluster, works) for works in _combinations(figures)]
    if objective == "makespan":
        return _makespan(a, paths, machines)
    return _latency(a, paths, machines)


__all__ = ["CLUSTER_BOUNDS", "MAX_COMBINATIONS", "cluster_bounds"]
