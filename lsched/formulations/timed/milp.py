"""MILP of the timed model (Pyomo, solved by HiGHS).

Notation of :mod:`lsched.formulations.timed.problem`; start windows
``0 <= S_i <= L_i`` from :func:`lsched.formulations.timed.incumbent.latest_starts`,
iterations ``k = 0 .. K - 1`` with ``K = max_i (L_i + o_i)``; ``d_min``, ``d_max``
the cost model's bounds on an iteration's seconds.

Variables
---------
``x[i,t]`` binary (``S_i = t``) and its running sum ``y[i,t] = sum_{t' <= t}
x[i,t']`` (continuous, ``y[i,t] = y[i,t-1] + x[i,t]``; ``y = 0`` before 0 and 1
from ``L_i``), so that with ``E_i = S_i + o_i``::

    run_ik = y[i,k] - y[i,k-o_i]        i is in iteration k
    R_ik   = 1 - y[i,k-o_i]             i is not complete before k (E_i > k)

``u_k`` (iteration k exists), ``H_k`` (it has a prefill), ``Kr_k`` (its KV reads),
``d_k`` (its seconds), ``T_k`` (its start), all continuous; with threshold
regimes, ``z[k,r]`` binary (regime ``r`` in force). Latency: ``v[i,l]``.

Rules
-----
::

    sum_t x[i,t] = 1
    sum_i sum_j k_ij x[i,k-j] <= M,  sum_i run_ik <= N,
    sum_i (run_ik + (s_i - 1) x[i,k]) <= B                        (as the slot model)
    u_k >= R_ik,   u_k <= sum_i run_ik,   u_k >= u_{k+1}      (iterations 0..K'-1
                                                               exist, none empty)
    phi_k = [u_k, sum_i s_i x[i,k], sum_i s_i^2 x[i,k], sum_i (run_ik - x[i,k]),
             Kr_k, H_k],   Kr_k = sum_i sum_{j >= 1} (s_i + j) x[i,k-j],
    H_k >= x[i,k],  H_k <= sum_i x[i,k]
    d_k >= w_p . phi_k                         for every piece p (one regime), or
    d_k >= w_rp . phi_k - W_rp (1 - z[k,r]),   sum_r z[k,r] = u_k,
    lo_r z[k,r] <= phi_k[switch] <= hi_r + (phi_max - hi_r)(1 - z[k,r])
    T_k >= T_{k-1} + d_{k-1},   T_k >= a_i y[i,k],   T_k >= min a

``W_rp`` is the largest ``w_rp . phi`` over the feature box, ``[lo_r, hi_r]`` the
regime's integer range of the switch feature (one binary per iteration and
regime, only for reachable regimes; none for a single one). Every
``phi`` is an exact linear function of ``x``, so for integer ``x`` each ``d_k``
can equal ``t(phi_k)`` and each ``T_k`` the true start; the objective is
nondecreasing in every ``d`` and ``T``, so the optimum takes them there.
``T_k >= a_i y[i,k]`` (rather than ``a_i x[i,k]``) is valid because ``T`` is
nondecreasing, and tighter in the LP. Empty trailing iterations have
``u = d = 0`` and cost nothing. ``u_k = 1`` is fixed for ``k <``
:attr:`~lsched.formulations.timed.problem.TimedProblem.min_iterations` (KV area
over capacity, and the batch limits' analogues): with the constant weight of
the cost model this is what gives the makespan LP its strength, as the KV energy
cut does for the slot model (jaillet(12, seed 0), llama2-70b-a100-tp4: root bound
3.63 s without it).

Objectives
----------
Makespan: ``min T_{K-1} + d_{K-1} - min a`` (the last end; no products).

Latency. With ``F_k = T_k + d_k`` (``F_{-1} = 0``) and ``delta_l = F_l -
F_{l-1} >= 0``, a completion is a sum over the iterations it waits through:

    C_i = F_{E_i - 1} = sum_l delta_l R_il.

``R_il = 1`` for ``l < o_i``, so ``C_i = F_{o_i - 1} + sum_{l >= o_i} v[i,l]``
with ``v[i,l] = delta_l R_il`` linearised as

    v[i,l] >= delta_l - M_l (1 - R_il),   v[i,l] >= 0,
    sum_{l >= o_i} v[i,l] >= d_min S_i = d_min sum_t t x[i,t].

The big-M is *local*, one iteration's span rather than the horizon:
``delta_l`` is ``d_l <= d_max`` plus the idle time before iteration ``l``, which
is positive only if an arrival at most ``max a`` delays it past ``F_{l-1} >=
min a + l d_min``, so ``M_l = d_max + max(0, max a - min a - l d_min)``; on
instances with every arrival at 0 it is ``d_max``. (A big-M on ``C_i >= F_k -
M (1 - R_ik)`` would need ``M`` of the whole horizon.) The last row holds since
``i`` waits through the ``S_i`` iterations ``o_i .. E_i - 1``, each at least
``d_min`` long; it is the sum of the per-iteration rows ``v[i,l] >= d_min
R_il``, which are a little tighter but made HiGHS 1.16's presolve map the MIP
start into its reduced space with a wrong objective (below).
Minimised: ``sum_i w_i C_i - sum_i w_i a_i``.

Time unit
---------
Times are in units of ``10^floor(log10(d_min))`` seconds
(:func:`default_time_unit_s`), so that an iteration lasts 1 to 10 units: HiGHS's
absolute feasibility tolerance (``1e-6``) would otherwise let each ``d_k`` fall
short of ``t(phi_k)`` by up to ``1e-6`` seconds (seen: ``6e-7`` per iteration,
``4e-6`` on a latency of 9 s), more than the ``1e-6`` relative agreement asked of
the model.

Solving
-------
:func:`solve` takes the best heuristic schedule (or ``initial_solution``), cuts
the windows with its objective, builds the model, passes it to HiGHS with that
schedule as MIP start (:mod:`lsched.formulations.solvers.highs`, wall-clock limit
and progress), and reports the *exact* objective
(:func:`~lsched.formulations.timed.problem.timed_objective`) of the best schedule
(HiGHS's, compacted, or the start). The limit covers the build too: it
checks the clock as it goes and is given up, returning the start, when it would
overrun (:func:`lsched.formulations.solvers.highs.build_and_load`); HiGHS gets
the time left. Objectives are continuous, so "optimal" is
HiGHS's ``mip_rel_gap`` (``1e-6`` by default here, :data:`DEFAULT_OPTIONS`).

HiGHS 1.16 was seen to report, for a MIP start, "feasible in the reduced space:
objective value 8.908" for a start of objective 8.953 (one ``M_l`` less), then
prune with that value and return "optimal 8.908" together with the start's
values. :func:`solve` therefore checks that HiGHS's objective is the objective of
the values it returns (``cost . x``) and, if not, solves again without the start
(``info["restarted_without_start"]``); the start's schedule is still kept if it
is the best.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyomo.environ as pyo
from pyomo.common.collections import ComponentMap
from pyomo.common.gc_manager import PauseGC

from lsched.checks import check_solver_options, check_type
from lsched.formulations.result import (
    LOG_COLUMNS,
    SolveResult,
    Status,
    Stop,
    decide_status,
)
from lsched.formulations.solvers import highs as _highs
from lsched.formulations.timed.incumbent import latest_starts, starting_schedule
from lsched.formulations.timed.problem import (
    ATTENTION,
    CONST,
    DECODE,
    HAS_PREFILL,
    KV_READ,
    PREFILL,
    TimedProblem,
    box_max,
    compact,
    is_feasible,
    timed_objective,
    timed_schedule,
)
from lsched.interrupt import requested, session

IntArray = npt.NDArray[np.int64]

#: :attr:`SolveResult.solver` of this backend.
SOLVER = "milp/timed"

#: HiGHS options set by :func:`solve` (the caller's ``params`` override them).
DEFAULT_OPTIONS: dict[str, float] = {"mip_rel_gap": 1e-6, "mip_abs_gap": 1e-9}

ProgressCallback = Callable[[float, float | None, float], None]


@dataclass
class TimedModel:
    """A built timed MILP and what is needed to map schedules in and out.

    Attributes
    ----------
    model
        The Pyomo model (module docstring's variables and rules, ``objective``).
    problem
        The timed problem.
    latest
        ``L_i`` used for the windows.
    time_unit_s
        Seconds per unit of the model's times.
    counts
        Rows written per family.
    """

    model: pyo.ConcreteModel
    problem: TimedProblem
    latest: IntArray
    time_unit_s: float
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def num_iterations(self) -> int:
        """``K = max_i (L_i + o_i)``."""
        return int((self.latest + self.problem.output_tokens).max())

    def values(self, start: npt.ArrayLike) -> ComponentMap:
        """Values of every variable for the timed schedule ``start``.

        ``start`` must be a timed schedule inside the windows, identical requests
        in position order.
        """
        problem, m = self.problem, self.model
        sched = timed_schedule(problem, start)
        start = np.asarray(sched.start)
        used, num = sched.num_iterations, self.num_iterations
        phi = np.zeros((num, sched.features.shape[1]))
        phi[:used] = sched.features
        d = np.zeros(num)
        d[:used] = sched.duration_s / self.time_unit_s
        begin = np.full(num, sched.end_s[-1] / self.time_unit_s)
        begin[:used] = sched.start_s / self.time_unit_s
        end = begin + d
        out = ComponentMap()
        for i, t in m.x:
            out[m.x[i, t]] = float(start[i] == t)
        for i, t in m.y:
            out[m.y[i, t]] = float(start[i] <= t)
        for k in m.K:
            out[m.u[k]] = float(k < used)
            out[m.d[k]] = float(d[k])
            out[m.T[k]] = float(begin[k])
        if hasattr(m, "Kr"):
            for k in m.K:
                out[m.Kr[k]] = float(phi[k, KV_READ])
        if hasattr(m, "H"):
            for k in m.K:
                out[m.H[k]] = float(phi[k, HAS_PREFILL])
        if hasattr(m, "z"):
            regime = problem.profile.iteration_time.regime_of(phi)
            for k, r in m.z:
                out[m.z[k, r]] = float(k < used and regime[k] == problem.regimes[r])
        if hasattr(m, "v"):
            delta = np.diff(end, prepend=0.0)
            stop = start + problem.output_tokens
            for i, ell in m.v:
                out[m.v[i, ell]] = float(delta[ell]) if ell < stop[i] else 0.0
        return out

    def start_of(self, value: ComponentMap) -> IntArray:
        """Start iterations read from variable values (largest ``x[i,t]`` per
        ``i``), compacted."""
        n = len(self.problem)
        best = np.full(n, -1.0)
        start = np.zeros(n, dtype=np.int64)
        for (i, t), var in self.model.x.items():
            v = value[var]
            if v > best[i]:
                best[i], start[i] = v, t
        return compact(self.problem, start)


def _add(rows: pyo.ConstraintList, relation: Any) -> None:
    """Add ``relation`` unless it is a constant (True: nothing to add)."""
    if isinstance(relation, bool | np.bool_):
        if not relation:
            raise ValueError("a constant row of the timed MILP is violated")
        return
    rows.add(relation)


def default_time_unit_s(problem: TimedProblem) -> float:
    """``10^floor(log10(d_min))`` seconds (``d_max`` if ``d_min = 0``): the MILP's
    time unit, so that an iteration lasts 1 to 10 units and HiGHS's absolute
    tolerances (``1e-6``) are small against it."""
    base = problem.min_duration_s or problem.max_duration_s or 1.0
    return 10.0 ** math.floor(math.log10(base))


def build_model(
    problem: TimedProblem,
    latest: npt.ArrayLike,
    *,
    time_unit_s: float | None = None,
    stop_at: float | None = None,
) -> TimedModel:
    """The timed MILP of ``problem`` with start windows ``[0, latest_i]``.

    Times are in units of ``time_unit_s`` seconds (:func:`default_time_unit_s` by
    default); the objective is ``sum_i w_i C_i`` (latency) or the last end
    (makespan) in those units, without the constant
    :attr:`~lsched.formulations.timed.problem.TimedProblem.objective_offset`.

    Past ``stop_at`` (``time.monotonic()``), or on a user's stop request, the
    build gives up with :class:`~lsched.formulations.solvers.highs.BuildStopped`
    (checked once per request or iteration of each family of rows).
    """
    # millions of small objects: Python's cyclic collector would walk the growing
    # model again and again (26-33 % of the build on Jaillet n = 20 and 30)
    with PauseGC():
        return _build(problem, latest, time_unit_s, stop_at)


def _build(
    problem: TimedProblem,
    latest: npt.ArrayLike,
    time_unit_s: float | None,
    stop_at: float | None,
) -> TimedModel:
    check = _highs.build_check(stop_at)
    unit = default_time_unit_s(problem) if time_unit_s is None else float(time_unit_s)
    latest = np.asarray(latest, dtype=np.int64)
    n = len(problem)
    s = problem.prompt_tokens.tolist()
    o = problem.output_tokens.tolist()
    w = problem.weight.tolist()
    a = (problem.arrival_s / unit).tolist()
    last = latest.tolist()
    num = int(max(last[i] + o[i] for i in range(n)))
    tables = [problem.slots.kv_table(i).tolist() for i in range(n)]
    capacity = problem.slots.kv_capacity_blocks
    cap_seqs = problem.slots.max_num_seqs
    cap_tokens = problem.slots.max_num_batched_tokens
    pieces = tuple(weights / unit for weights in problem.pieces)
    multi = len(pieces) > 1
    switch = problem.switch_feature if multi else None
    used = np.zeros(len(problem.feature_max), dtype=bool)
    for weights in pieces:
        used |= np.any(weights != 0.0, axis=0)
    if switch is not None:
        used[switch] = True
    d_min, d_max = problem.min_duration_s / unit, problem.max_duration_s / unit
    a_min, a_max = min(a), max(a)
    counts: dict[str, int] = {}

    def count(name: str, k: int = 1) -> None:
        counts[name] = counts.get(name, 0) + k

    m = pyo.ConcreteModel(name=f"timed:{problem.name}")
    m.K = pyo.RangeSet(0, num - 1)
    m.x = pyo.Var(
        [(i, t) for i in range(n) for t in range(last[i] + 1)], domain=pyo.Binary
    )
    m.y = pyo.Var([(i, t) for i in range(n) for t in range(last[i])], bounds=(0, 1))
    x, y = m.x, m.y

    def cum(i: int, t: int) -> Any:
        if t < 0:
            return 0
        if t >= last[i]:
            return 1
        return y[i, t]

    def starts(i: int, lo: int, hi: int) -> range:
        """Start iterations ``t`` in ``[lo, hi]`` inside i's window."""
        return range(max(0, lo), min(hi, last[i]) + 1)

    m.assign = pyo.Constraint(
        range(n), rule=lambda _, i: sum(x[i, t] for t in range(last[i] + 1)) == 1
    )
    m.cumulative = pyo.ConstraintList()
    for i in range(n):
        check()
        for t in range(last[i]):
            m.cumulative.add(y[i, t] == cum(i, t - 1) + x[i, t])
    for group in problem.identical_groups():
        for p, q in itertools.pairwise(group.tolist()):
            for t in range(last[p]):
                m.cumulative.add(y[p, t] >= y[q, t])
                count("symmetry")

    # -- per-iteration limits (the slot model's rows), skipped where they cannot bind
    m.kv = pyo.ConstraintList()
    m.batch = pyo.ConstraintList()
    m.budget = pyo.ConstraintList()
    for k in range(num):
        check()
        present = [i for i in range(n) if k - o[i] + 1 <= last[i]]
        offsets = {i: range(k - min(k, last[i]), min(k, o[i] - 1) + 1) for i in present}
        present = [i for i in present if len(offsets[i])]
        if sum(tables[i][offsets[i][-1]] for i in present) > capacity:
            m.kv.add(
                sum(tables[i][j] * x[i, k - j] for i in present for j in offsets[i])
                <= capacity
            )
            count("kv")
        if cap_seqs is not None and len(present) > cap_seqs:
            _add(
                m.batch,
                sum(cum(i, k) - cum(i, k - o[i]) for i in present) <= cap_seqs,
            )
            count("batch")
        if cap_tokens is not None and sum(max(s[i], 1) for i in present) > cap_tokens:
            _add(
                m.budget,
                sum(cum(i, k) - cum(i, k - o[i]) for i in present)
                + sum((s[i] - 1) * x[i, k] for i in present if k <= last[i])
                <= cap_tokens,
            )
            count("budget")

    # -- iterations that exist, and their features
    m.u = pyo.Var(m.K, bounds=(0, 1))
    fixed = min(problem.min_iterations, num)  # these iterations always exist
    for k in range(fixed):
        m.u[k].fix(1.0)
    m.exists = pyo.ConstraintList()
    for k in range(num):
        check()
        if k + 1 < num:
            m.exists.add(m.u[k] >= m.u[k + 1])
        if k >= fixed:
            for i in range(n):
                if 0 <= k - o[i] < last[i]:
                    m.exists.add(m.u[k] >= 1 - cum(i, k - o[i]))
        m.exists.add(m.u[k] <= sum(cum(i, k) - cum(i, k - o[i]) for i in range(n)))

    def prefill_sum(k: int, coef: list[int]) -> Any:
        return sum(coef[i] * x[i, k] for i in range(n) if k <= last[i])

    features: list[list[Any]] = [[0] * len(used) for _ in range(num)]
    if used[KV_READ]:
        m.Kr = pyo.Var(m.K, bounds=(0, None))
        m.kv_read = pyo.ConstraintList()
    if used[HAS_PREFILL]:
        m.H = pyo.Var(m.K, bounds=(0, 1))
        m.has_prefill = pyo.ConstraintList()
    squares = [si * si for si in s]
    for k in range(num):
        check()
        phi = features[k]
        phi[CONST] = m.u[k]
        if used[PREFILL]:
            phi[PREFILL] = prefill_sum(k, s)
        if used[ATTENTION]:
            phi[ATTENTION] = prefill_sum(k, squares)
        if used[DECODE]:
            phi[DECODE] = sum(cum(i, k - 1) - cum(i, k - o[i]) for i in range(n))
        if used[KV_READ]:
            m.kv_read.add(
                m.Kr[k]
                == sum(
                    (s[i] + j) * x[i, k - j]
                    for i in range(n)
                    for j in range(max(1, k - last[i]), min(k, o[i] - 1) + 1)
                )
            )
            phi[KV_READ] = m.Kr[k]
        if used[HAS_PREFILL]:
            members = [i for i in range(n) if k <= last[i]]
            for i in members:
                m.has_prefill.add(m.H[k] >= x[i, k])
            m.has_prefill.add(m.H[k] <= sum(x[i, k] for i in members))
            phi[HAS_PREFILL] = m.H[k]

    # -- durations
    slack = 1e-9 * max(1.0, d_max)
    m.d = pyo.Var(m.K, bounds=(0, d_max + slack))
    m.duration = pyo.ConstraintList()
    full = (np.zeros(len(used)), problem.feature_max)

    def affine(weights: np.ndarray, k: int) -> Any:
        return sum(
            float(weights[f]) * features[k][f]
            for f in range(len(used))
            if weights[f] != 0.0
        )

    if multi:
        assert switch is not None
        ranges = problem.regime_range
        m.z = pyo.Var(
            [(k, r) for k in range(num) for r in range(len(pieces))], domain=pyo.Binary
        )
        top = float(problem.feature_max[switch])
        for k in range(num):
            check()
            m.duration.add(sum(m.z[k, r] for r in range(len(pieces))) == m.u[k])
            value = features[k][switch]
            for r, weights in enumerate(pieces):
                lo, hi = ranges[r]
                if lo > 0:
                    _add(m.duration, value >= lo * m.z[k, r])
                if hi < top:
                    _add(m.duration, value <= hi + (top - hi) * (1 - m.z[k, r]))
                big = np.maximum(box_max(weights, *full), 0.0)
                for p, piece in enumerate(weights):
                    m.duration.add(
                        m.d[k] >= affine(piece, k) - float(big[p]) * (1 - m.z[k, r])
                    )
                    count("duration")
    else:
        for k in range(num):
            check()
            for piece in pieces[0]:
                m.duration.add(m.d[k] >= affine(piece, k))
                count("duration")

    # -- time
    m.T = pyo.Var(m.K, bounds=(a_min, None))
    m.time = pyo.ConstraintList()
    for k in range(1, num):
        m.time.add(m.T[k] >= m.T[k - 1] + m.d[k - 1])
    for i in range(n):
        check()
        if a[i] > a_min:
            for k in range(last[i] + 1):
                m.time.add(m.T[k] >= a[i] * cum(i, k))
                count("arrival")

    def end(k: int) -> Any:
        return m.T[k] + m.d[k] if k >= 0 else 0

    if problem.objective == "makespan":
        m.objective = pyo.Objective(expr=end(num - 1), sense=pyo.minimize)
    else:
        index = [(i, ell) for i in range(n) for ell in range(o[i], last[i] + o[i])]
        m.v = pyo.Var(index, bounds=(0, None))
        m.wait = pyo.ConstraintList()
        for i, ell in index:
            if ell == o[i]:
                check()
            big = d_max + max(0.0, a_max - a_min - ell * d_min) + slack
            done_before = cum(i, ell - o[i])  # 1 - R_il
            m.wait.add(m.v[i, ell] >= end(ell) - end(ell - 1) - big * done_before)
        for i in range(n):
            check()
            # i waits through S_i iterations l >= o_i, each >= d_min long
            if d_min > 0 and last[i] > 0:
                m.wait.add(
                    sum(m.v[i, ell] for ell in range(o[i], last[i] + o[i]))
                    >= d_min * sum(t * x[i, t] for t in range(1, last[i] + 1))
                )
        completion = [
            end(o[i] - 1) + sum(m.v[i, ell] for ell in range(o[i], last[i] + o[i]))
            for i in range(n)
        ]
        m.objective = pyo.Objective(
            expr=sum(w[i] * completion[i] for i in range(n)), sense=pyo.minimize
        )
        count("wait", len(m.wait))
    return TimedModel(
        model=m, problem=problem, latest=latest, time_unit_s=unit, counts=counts
    )


def lp_bound(
    problem: TimedProblem,
    *,
    time_limit: float = 60.0,
    time_unit_s: float | None = None,
) -> float:
    """The LP relaxation of :func:`solve`'s model, in seconds of objective.

    A lower bound on the timed optimum: the start windows come from the best
    heuristic's objective (no optimal schedule starts later), the rest is the
    model with its binaries relaxed. ``-inf`` unless the model is built and the
    LP solved within ``time_limit`` wall-clock seconds (heuristic and build
    included), and no stop was requested.

    Measured against the closed forms of :mod:`lsched.formulations.bounds.work`
    (2 cores), it helps where prompts are short or every request is present at
    the start: on ``jaillet(n, seed=0)`` with ``llama2-70b-a100-tp4`` the latency
    LP is 1-4 % above them (24.30 s against 23.39 s at ``n = 20``, 0.4 s), and
    on the first 20 requests of ``instances/gsm8k-n100-s0.csv`` with
    ``llama-65b-pang2025`` the makespan LP is 15 % above (5.50 s against 4.77 s,
    7.5 s). With prompts of 50-800 tokens arriving over 5 s it is below them
    for both objectives (10 requests, 154 output tokens: makespan 4.59 s
    against 5.43 s; the latency LP, whose completions are big-M sums, even
    below zero), and its latency LP does not finish in 10 s from about 400
    output tokens in all. Threshold regimes (more big-M rows) weaken it too.
    """
    began = time.monotonic()
    deadline = began + float(time_limit)
    _, start, exact = starting_schedule(problem, None)
    latest = np.maximum(latest_starts(problem, exact), start)
    try:
        built, loaded = _highs.build_and_load(
            lambda: build_model(
                problem, latest, time_unit_s=time_unit_s, stop_at=deadline
            ),
            lambda b: b.model,
            deadline=deadline,
            relax=True,
        )
    except _highs.BuildStopped:  # out of time in the build, or stopped by the user
        return -math.inf
    value = _highs.lp_relaxation(loaded, deadline=deadline)
    return value * built.time_unit_s + problem.objective_offset


def _consistent(loaded: _highs.LoadedModel, outcome: _highs.HighsOutcome) -> bool:
    """Whether HiGHS's objective is that of the values it returned."""
    if outcome.values is None or outcome.objective is None:
        return True
    lp = loaded.highs.getLp()
    value = float(np.dot(lp.col_cost_, outcome.values)) + float(lp.offset_)
    return abs(value - outcome.objective) <= 1e-6 * max(1.0, abs(value))


@session()
def solve(
    problem: TimedProblem,
    *,
    time_limit: float = 60.0,
    num_workers: int = 2,
    seed: int = 0,
    initial_solution: npt.ArrayLike | None = None,
    on_progress: ProgressCallback | None = None,
    time_unit_s: float | None = None,
    **params: Any,
) -> SolveResult:
    """Solve the timed ``problem`` with HiGHS, within ``time_limit`` wall-clock seconds.

    Parameters
    ----------
    problem
        The timed problem.
    time_limit
        Wall-clock seconds for everything (heuristics, model build and
        compilation, HiGHS). A build that would overrun it is given up
        (:func:`lsched.formulations.solvers.highs.build_and_load`): the starting
        schedule comes back with status ``time_limit`` (``interrupted`` on a
        user's stop) and ``info["stopped_in"]`` says where.
    num_workers
        HiGHS ``threads``.
    seed
        HiGHS ``random_seed``.
    initial_solution
        A timed schedule (start iterations) to start from; the best heuristic's
        by default.
    on_progress
        ``on_progress(time_s, objective, bound)`` on each improvement, seconds of
        objective (HiGHS's model value for its incumbents).
    time_unit_s
        Seconds per unit of the model's times (:func:`default_time_unit_s`).
    **params
        HiGHS options, applied last (e.g. ``mip_rel_gap=0.01``).

    Returns
    -------
    SolveResult
        ``solver="milp/timed"``; objective and bound in seconds, the objective
        recomputed exactly from ``start`` (start iterations). Never raises on a
        time-out.

    Raises
    ------
    InputError
        If ``initial_solution`` is not a timed schedule.
    """
    check_type(problem, "problem", TimedProblem, "a TimedProblem")
    time_limit, num_workers, seed = check_solver_options(time_limit, num_workers, seed)
    began = time.monotonic()
    deadline = began + float(time_limit)
    offset = problem.objective_offset
    source, start, exact = starting_schedule(problem, initial_solution)
    latest = np.maximum(latest_starts(problem, exact), start)
    unit = default_time_unit_s(problem) if time_unit_s is None else float(time_unit_s)
    rows: list[tuple[float, float | None, float]] = []

    def seconds(value: float) -> float:
        return value * unit + offset if math.isfinite(value) else value

    def emit(time_s: float, objective: float | None, bound: float) -> None:
        row = (
            time_s,
            None if objective is None else seconds(objective),
            seconds(bound),
        )
        rows.append(row)
        if on_progress is not None:
            on_progress(*row)

    emit(time.monotonic() - began, (exact - offset) / unit, -math.inf)
    try:
        built, loaded = _highs.build_and_load(
            lambda: build_model(problem, latest, time_unit_s=unit, stop_at=deadline),
            lambda b: b.model,
            deadline=deadline,
        )
    except _highs.BuildStopped as stopped:
        # the model could not be built (and compiled) in time, or the user
        # stopped it: the starting schedule, with the status that says why
        return SolveResult(
            status=decide_status(stopped.stop, exact, -math.inf),
            objective=exact,
            bound=-math.inf,
            runtime_s=time.monotonic() - began,
            start=start,
            solver=SOLVER,
            log=pd.DataFrame(rows, columns=list(LOG_COLUMNS), dtype=np.float64),
            info={
                "stopped_in": stopped.stage,
                "build_s": time.monotonic() - began,
                "time_unit_s": unit,
                "initial_source": source,
                "initial_objective": exact,
                "source": source,
            },
        )
    values = built.values(start)
    mip_start = np.array([values[v] for v in loaded.columns], dtype=np.float64)
    build_s = time.monotonic() - began
    settings = {**DEFAULT_OPTIONS, **params}
    outcome = _highs.run(
        loaded,
        deadline=deadline,
        threads=num_workers,
        seed=seed,
        options=settings,
        start=mip_start,
        start_objective=(exact - offset) / unit,
        on_event=emit,
        origin=began,
    )
    restarted = False
    if not _consistent(loaded, outcome):
        if requested() or time.monotonic() >= deadline:
            # no time (or leave) to solve again: HiGHS's values and bound are not
            # to be trusted, the start is kept
            outcome = dataclasses.replace(
                outcome,
                stop=Stop.INTERRUPTED if requested() else Stop.TIME_LIMIT,
                objective=None,
                bound=-math.inf,
                values=None,
            )
        else:
            # HiGHS's presolve has been seen to map a MIP start into its reduced
            # space with a wrong objective, then prune with it (module docstring)
            restarted = True
            loaded = _highs.load(built.model)
            outcome = _highs.run(
                loaded,
                deadline=deadline,
                threads=num_workers,
                seed=seed,
                options=settings,
                start_objective=(exact - offset) / unit,
                on_event=emit,
                origin=began,
            )
    best, best_source, value = start, source, exact
    if outcome.values is not None:
        candidate = built.start_of(
            ComponentMap(zip(loaded.columns, outcome.values, strict=True))
        )
        if is_feasible(problem, candidate):
            candidate = problem.canonical(candidate)
            candidate_value = timed_objective(problem, candidate)
            if candidate_value < value:
                best, best_source, value = candidate, "highs", candidate_value
    bound = min(seconds(outcome.bound), value)
    status = decide_status(
        outcome.stop,
        None if outcome.infeasible else value,
        bound,
        infeasible=outcome.infeasible,
    )
    info: dict[str, Any] = {
        **loaded.size,
        "rows": built.counts,
        "iterations": built.num_iterations,
        "nodes": outcome.nodes,
        "highs_status": outcome.model_status,
        "highs_objective": None
        if outcome.objective is None
        else seconds(outcome.objective),
        "interrupted": outcome.interrupted,
        "restarted_without_start": restarted,
        "highs_runtime_s": outcome.runtime_s,
        "build_s": build_s,
        "time_unit_s": unit,
        "initial_source": source,
        "initial_objective": exact,
        "source": best_source,
    }
    log = pd.DataFrame(rows, columns=list(LOG_COLUMNS), dtype=np.float64)
    runtime = time.monotonic() - began
    if status == Status.INFEASIBLE:  # not expected: the start is feasible
        return SolveResult(
            status=status,
            objective=None,
            bound=math.inf,
            runtime_s=runtime,
            start=None,
            solver=SOLVER,
            log=log,
            info=info,
        )
    return SolveResult(
        status=status,
        objective=value,
        bound=bound,
        runtime_s=runtime,
        start=best,
        solver=SOLVER,
        log=log,
        info=info,
    )


__all__ = [
    "DEFAULT_OPTIONS",
    "SOLVER",
    "TimedModel",
    "build_model",
    "lp_bound",
    "solve",
]
