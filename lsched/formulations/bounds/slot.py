"""Lower bounds for the slot model, each naming the model and objective it bounds.

Every function returns a value in problem units (constants included) that is
``<=`` the optimum of :class:`~lsched.formulations.slot.SlotProblem` for its
objective; ``-inf`` where it says nothing. Notation of
:mod:`lsched.formulations.slot`; ``A_i = sum_j k_ij`` is request i's KV *area*
(block-slots) and ``E_i = S_i + o_i``.

``energy`` (closed form, every objective)
    Fluid relaxation: one machine of speed ``M`` block-slots per slot runs
    request i's area ``A_i`` preemptively, from ``r_i``. Any schedule is such a
    fluid schedule (request i's area is held within ``[S_i, E_i)``, at most ``M``
    per slot), so every completion is at least its fluid counterpart. SRPT on the
    fluid machine completes the most requests by every time (Schrage 1968), so
    the ``k``-th smallest completion of any schedule is at least the ``k``-th SRPT
    completion, and at least the ``k``-th smallest ``r_i + o_i``. Unit weights:
    ``sum_k max(ceil(C^SRPT_(k)), (r + o)_(k))``. Other weights: the larger of
    ``sum_i w_i (r_i + o_i)`` and the WSPT fluid value with all releases at
    ``min r`` (Smith's rule; optimal for the preemptive single machine without
    releases, Smith 1956). Makespan: the larger of ``max_i (r_i + o_i)`` and
    ``max_tau tau + ceil(sum_{r_i >= tau} A_i / M)``. TTFT: ``S_i = E_i - o_i``,
    so the latency bound minus ``sum_i w_i o_i``.

``sawtooth`` (closed form; unit weights; every objective)
    Between two completions nothing frees KV and every running request grows,
    so KV peaks in *event* slots (some request's last slot). Request k running in
    slot t still runs in the next event slot ``e >= t`` (at the latest its own
    last slot), so *reserving* in t what k holds in ``e`` keeps the sum of
    reservations ``<= KV(e) <= M`` in every slot. If ``a_1 < ... < a_m = o_k - 1``
    are the ages of k at event slots, k reserves
    ``R_k = sum_j (a_j - a_{j-1}) k_{k,a_j}`` (``a_0 = -1``) and holds
    ``Q_k = sum_j k_{k,a_j}`` in event slots. For the first ``q`` completers:
    their slots lie in ``[min r, E_(q))``, so ``sum R_k <= M (E_(q) - min r)``;
    their event slots are completion slots of requests done by ``E_(q)``, at
    most ``q`` distinct ones, each holding ``<= M``, so ``sum Q_k <= q M``.
    Hence, for any ``eta >= 0``, with ``v_k(eta) = min_A (R_k + eta Q_k)`` over
    age sets ``A`` (a DP in ``O(o_k^2)``)::

        E_(q) >= min r + (sum of the q smallest v_k(eta) - eta q M) / M.

    The best ``eta`` per ``q``, and the ``q``-th smallest ``r_i + o_i``, give the
    bound as for ``energy``. With releases, the same argument on the requests
    released at ``tau`` or later (slots from ``tau``), plus ``r_i + o_i`` for the
    others, is a bound for every ``tau``; the largest is taken. It charges each
    request the sawtooth of KV between completions that the energy bound (a flat
    profile) misses. (Derived in this
    project's research on the slot model, 2026-11.)

``lagrangian`` (latency and TTFT)
    Relax the per-slot KV rule with multipliers ``lambda_t >= 0``:
    ``L(lambda) = sum_i min_{S} [w_i (S + o_i) + sum_j lambda_{S+j} k_ij]
    - M sum_t lambda_t``, every ``S`` in the safe range (batch cap and budget
    dropped, which only relaxes). Each ``L(lambda)`` is a lower bound (weak
    duality); subgradient steps with Polyak's step size improve it. Its best
    value equals the time-indexed LP (the per-request subproblem is a simplex),
    so it is the LP bound without an LP solver.

``lp``
    The LP relaxation of :mod:`lsched.formulations.slot.milp.build` with its cuts, by
    HiGHS (:func:`lsched.formulations.slot.milp.lp_bound`).
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import numpy.typing as npt

from lsched.formulations.slot import SlotProblem
from lsched.formulations.slot.horizon import deadlines

FloatArray = npt.NDArray[np.float64]


def areas(problem: SlotProblem) -> npt.NDArray[np.int64]:
    """``A_i = sum_j k_ij``: KV block-slots of each request."""
    return np.array([problem.kv_table(i).sum() for i in range(len(problem))])


def srpt_completions(release: npt.ArrayLike, work: npt.ArrayLike) -> FloatArray:
    """Completion times of SRPT on one unit-speed machine (preemptive, releases)."""
    release = np.asarray(release, dtype=np.float64)
    work = np.asarray(work, dtype=np.float64)
    order = np.argsort(release, kind="stable")
    done = np.empty(len(work))
    queue: list[tuple[float, int]] = []
    t, k, n = 0.0, 0, len(work)
    while k < n or queue:
        if not queue:
            t = max(t, release[order[k]])
        while k < n and release[order[k]] <= t:
            heapq.heappush(queue, (work[order[k]], int(order[k])))
            k += 1
        left, i = heapq.heappop(queue)
        arrival = release[order[k]] if k < n else math.inf
        if t + left <= arrival:
            t += left
            done[i] = t
        else:  # the next arrival may preempt: requeue what is left
            heapq.heappush(queue, (left - (arrival - t), i))
            t = arrival
    return done


def _ceil(x: FloatArray) -> FloatArray:
    return np.ceil(x - 1e-9)  # completions are integers; forgive rounding


def energy(problem: SlotProblem) -> float:
    """Closed-form fluid bound (module docstring), for the problem's objective."""
    r, o, w = problem.release, problem.output_tokens, problem.weight
    fluid = areas(problem) / problem.kv_capacity_blocks
    if problem.objective == "makespan":
        top = int((r + o).max())
        for tau in np.unique(r):
            top = max(top, int(tau + _ceil(fluid[r >= tau].sum())))
        return top + problem.objective_offset
    if np.all(w == 1):
        completion = np.sort(_ceil(srpt_completions(r, fluid)))
        value = np.maximum(completion, np.sort(r + o)).sum()
    else:
        order = np.argsort(fluid / w, kind="stable")
        wspt = r.min() + np.cumsum(fluid[order])
        value = max(float(np.dot(w[order], _ceil(wspt))), float(np.dot(w, r + o)))
    if problem.objective == "ttft":
        value -= float(np.dot(w, o))
    return float(value) + problem.objective_offset


#: Multipliers ``eta`` tried by :func:`sawtooth` (those below ``2 M`` are used).
SAWTOOTH_ETAS = np.concatenate([np.arange(0.0, 4.0, 0.25), np.arange(4.0, 101.0)])


def _reservation_costs(table: npt.NDArray[np.int64], etas: FloatArray) -> FloatArray:
    """``v(eta) = min_A (R + eta Q)`` for one request's KV table, every ``eta``."""
    o = len(table)
    best = np.full((len(etas), o + 1), np.inf)
    best[:, 0] = 0.0  # best[:, a + 1]: the cheapest age set whose last event is a
    for a in range(o):
        since = a - np.arange(-1, a)  # slots since the previous event b = -1..a-1
        step = (since[None, :] + etas[:, None]) * float(table[a])
        best[:, a + 1] = np.min(best[:, : a + 1] + step, axis=1)
    return best[:, o]


def sawtooth(problem: SlotProblem) -> float:
    """Sawtooth (event reservation) bound (module docstring); unit weights only."""
    if np.any(problem.weight != 1):
        return -math.inf
    n, capacity = len(problem), problem.kv_capacity_blocks
    r, o = problem.release, problem.output_tokens
    etas = SAWTOOTH_ETAS[: np.searchsorted(SAWTOOTH_ETAS, 2 * capacity)]
    cache: dict[tuple[int, int], FloatArray] = {}
    costs = np.empty((len(etas), n))
    for i in range(n):
        key = (int(problem.prompt_tokens[i]), int(o[i]))
        if key not in cache:
            cache[key] = _reservation_costs(problem.kv_table(i), etas)
        costs[:, i] = cache[key]
    best = -math.inf
    for tau in np.unique(r):  # requests released at tau or later, the rest apart
        late = r >= tau
        q = np.arange(1, int(late.sum()) + 1)
        reserved = np.cumsum(np.sort(costs[:, late], axis=1), axis=1)
        reserved -= etas[:, None] * q * capacity
        completion = tau + _ceil(np.max(reserved, axis=0) / capacity)
        completion = np.maximum(completion, np.sort((r + o)[late]))
        if problem.objective == "makespan":
            value = float(completion[-1])
        else:
            value = float(completion.sum() + (r + o)[~late].sum())
        best = max(best, value)
    if problem.objective == "ttft":
        best -= float(o.sum())
    return best + problem.objective_offset


def closed_form(problem: SlotProblem) -> float:
    """The best free bound: the larger of :func:`energy` and :func:`sawtooth`."""
    return max(energy(problem), sawtooth(problem))


def lagrangian(
    problem: SlotProblem,
    upper_bound: int,
    *,
    iterations: int = 300,
) -> float:
    """Lagrangian bound on the KV rule (module docstring); latency and TTFT.

    Parameters
    ----------
    problem
        The slot problem.
    upper_bound
        Integer objective of a feasible schedule: it fixes the safe start range
        (:func:`lsched.formulations.slot.horizon.deadlines`) and Polyak's step target.
    iterations
        Subgradient steps.
    """
    if problem.objective == "makespan":
        return -math.inf
    n = len(problem)
    r, o, w = problem.release, problem.output_tokens, problem.weight
    latest = deadlines(problem, upper_bound) - o
    horizon = int((latest + o).max())
    tables = [problem.kv_table(i).astype(np.float64) for i in range(n)]
    shift = o if problem.objective == "latency" else np.zeros(n, dtype=np.int64)
    capacity = problem.kv_capacity_blocks
    lam = np.zeros(horizon)
    best = -math.inf
    scale = 2.0
    stalled = 0
    for _ in range(iterations):
        value = -capacity * lam.sum()
        load = np.zeros(horizon)
        for i in range(n):
            slots = np.arange(r[i], latest[i] + 1)
            # price of starting at each S: sum_j lambda_{S+j} k_ij
            price = np.correlate(lam[r[i] : latest[i] + o[i]], tables[i], "valid")
            cost = w[i] * (slots + shift[i]) + price
            k = int(np.argmin(cost))
            value += cost[k]
            load[slots[k] : slots[k] + o[i]] += tables[i]
        if value > best + 1e-9:
            best, stalled = value, 0
        else:
            stalled += 1
            if stalled >= 10:  # halve the step after 10 steps without progress
                scale, stalled = scale / 2, 0
        grad = load - capacity
        grad[(lam <= 0) & (grad < 0)] = 0.0
        norm = float(np.dot(grad, grad))
        if norm == 0.0 or scale < 1e-4:
            break
        lam = np.maximum(0.0, lam + scale * (upper_bound - value) / norm * grad)
    return math.ceil(best - 1e-6) + problem.objective_offset
