"""Rules of the timed MILP, one function per family of rows.

Notation of :mod:`lsched.formulations.timed.milp` and of its variables
(:mod:`lsched.formulations.timed.milp.variables`).

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

The per-iteration limits are written only where they can bind (the requests
that may run in iteration ``k`` could break them).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pyomo.environ as pyo

from lsched.formulations.timed.milp.variables import MilpData, cumulative
from lsched.formulations.timed.problem import (
    ATTENTION,
    CONST,
    DECODE,
    HAS_PREFILL,
    KV_READ,
    PREFILL,
    box_max,
)

#: Per iteration, phi as linear expressions of the variables.
Features = list[list[Any]]


def _add(rows: pyo.ConstraintList, relation: Any) -> None:
    """Add ``relation`` unless it is a constant (True: nothing to add)."""
    if isinstance(relation, bool | np.bool_):
        if not relation:
            raise ValueError("a constant row of the timed MILP is violated")
        return
    rows.add(relation)


def add_assignment(m: pyo.ConcreteModel, data: MilpData) -> None:
    """One start per request, ``y`` as the running sum of ``x``, and identical
    requests in position order (``y[p,t] >= y[q,t]`` for ``p < q``)."""
    x, y, last = m.x, m.y, data.last
    m.assign = pyo.Constraint(
        range(data.n),
        rule=lambda _, i: sum(x[i, t] for t in range(last[i] + 1)) == 1,
    )
    m.cumulative = pyo.ConstraintList()
    for i in range(data.n):
        data.check()
        for t in range(last[i]):
            m.cumulative.add(y[i, t] == cumulative(m, data, i, t - 1) + x[i, t])
    for group in data.problem.identical_groups():
        for p, q in itertools.pairwise(group.tolist()):
            for t in range(last[p]):
                m.cumulative.add(y[p, t] >= y[q, t])
                data.count("symmetry")


def _running(m: pyo.ConcreteModel, data: MilpData, i: int, k: int) -> Any:
    """``run_ik = y[i,k] - y[i,k-o_i]``."""
    return cumulative(m, data, i, k) - cumulative(m, data, i, k - data.o[i])


def add_limits(m: pyo.ConcreteModel, data: MilpData) -> None:
    """The slot model's per-iteration limits: KV blocks, members, token budget."""
    x, s, o, last = m.x, data.s, data.o, data.last
    slots = data.problem.slots
    capacity, cap_seqs = slots.kv_capacity_blocks, slots.max_num_seqs
    cap_tokens = slots.max_num_batched_tokens
    m.kv = pyo.ConstraintList()
    m.batch = pyo.ConstraintList()
    m.budget = pyo.ConstraintList()
    for k in range(data.num):
        data.check()
        present = [i for i in range(data.n) if k - o[i] + 1 <= last[i]]
        offsets = {i: range(k - min(k, last[i]), min(k, o[i] - 1) + 1) for i in present}
        present = [i for i in present if len(offsets[i])]
        if sum(data.tables[i][offsets[i][-1]] for i in present) > capacity:
            m.kv.add(
                sum(
                    data.tables[i][j] * x[i, k - j] for i in present for j in offsets[i]
                )
                <= capacity
            )
            data.count("kv")
        if cap_seqs is not None and len(present) > cap_seqs:
            _add(m.batch, sum(_running(m, data, i, k) for i in present) <= cap_seqs)
            data.count("batch")
        if cap_tokens is not None and sum(max(s[i], 1) for i in present) > cap_tokens:
            _add(
                m.budget,
                sum(_running(m, data, i, k) for i in present)
                + sum((s[i] - 1) * x[i, k] for i in present if k <= last[i])
                <= cap_tokens,
            )
            data.count("budget")


def add_existence(m: pyo.ConcreteModel, data: MilpData) -> None:
    """Iterations ``0 .. K' - 1`` exist and none is empty; the first
    :attr:`~lsched.formulations.timed.problem.TimedProblem.min_iterations`
    always exist (``u_k`` fixed to 1)."""
    num, o, last = data.num, data.o, data.last
    fixed = min(data.problem.min_iterations, num)
    for k in range(fixed):
        m.u[k].fix(1.0)
    m.exists = pyo.ConstraintList()
    for k in range(num):
        data.check()
        if k + 1 < num:
            m.exists.add(m.u[k] >= m.u[k + 1])
        if k >= fixed:
            for i in range(data.n):
                if 0 <= k - o[i] < last[i]:
                    m.exists.add(m.u[k] >= 1 - cumulative(m, data, i, k - o[i]))
        m.exists.add(m.u[k] <= sum(_running(m, data, i, k) for i in range(data.n)))


def add_features(m: pyo.ConcreteModel, data: MilpData) -> Features:
    """The rows that define ``Kr`` and ``H`` where a piece weighs them; returns
    each iteration's phi (0 for the features no piece weighs)."""
    x, s, o, last, used = m.x, data.s, data.o, data.last, data.used
    n = data.n

    def prefill_sum(k: int, coef: list[int]) -> Any:
        return sum(coef[i] * x[i, k] for i in range(n) if k <= last[i])

    features: Features = [[0] * len(used) for _ in range(data.num)]
    if used[KV_READ]:
        m.kv_read = pyo.ConstraintList()
    if used[HAS_PREFILL]:
        m.has_prefill = pyo.ConstraintList()
    squares = [si * si for si in s]
    for k in range(data.num):
        data.check()
        phi = features[k]
        phi[CONST] = m.u[k]
        if used[PREFILL]:
            phi[PREFILL] = prefill_sum(k, s)
        if used[ATTENTION]:
            phi[ATTENTION] = prefill_sum(k, squares)
        if used[DECODE]:
            phi[DECODE] = sum(
                cumulative(m, data, i, k - 1) - cumulative(m, data, i, k - o[i])
                for i in range(n)
            )
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
    return features


def _affine(weights: np.ndarray, phi: list[Any]) -> Any:
    """``weights . phi`` over the weighed features."""
    return sum(
        float(weights[f]) * phi[f] for f in range(len(weights)) if weights[f] != 0.0
    )


def _add_regimes(m: pyo.ConcreteModel, data: MilpData, features: Features) -> None:
    """Durations under threshold regimes: one binary per iteration and regime,
    the switch feature in the regime's range and every piece big-M'd."""
    problem, switch = data.problem, data.switch
    assert switch is not None
    ranges = problem.regime_range
    full = (np.zeros(len(data.used)), problem.feature_max)
    top = float(problem.feature_max[switch])
    regimes = range(len(data.pieces))
    for k in range(data.num):
        data.check()
        m.duration.add(sum(m.z[k, r] for r in regimes) == m.u[k])
        value = features[k][switch]
        for r, weights in enumerate(data.pieces):
            lo, hi = ranges[r]
            if lo > 0:
                _add(m.duration, value >= lo * m.z[k, r])
            if hi < top:
                _add(m.duration, value <= hi + (top - hi) * (1 - m.z[k, r]))
            big = np.maximum(box_max(weights, *full), 0.0)
            for p, piece in enumerate(weights):
                m.duration.add(
                    m.d[k]
                    >= _affine(piece, features[k]) - float(big[p]) * (1 - m.z[k, r])
                )
                data.count("duration")


def add_durations(m: pyo.ConcreteModel, data: MilpData, features: Features) -> None:
    """``d_k`` at least every piece of the cost model (of the regime in force)."""
    m.duration = pyo.ConstraintList()
    if data.switch is not None:
        _add_regimes(m, data, features)
        return
    for k in range(data.num):
        data.check()
        for piece in data.pieces[0]:
            m.duration.add(m.d[k] >= _affine(piece, features[k]))
            data.count("duration")


def add_time(m: pyo.ConcreteModel, data: MilpData) -> None:
    """An iteration starts after the previous one ends and after its members
    arrive (``T_k >= a_i y[i,k]``)."""
    a = data.a
    a_min = min(a)
    m.time = pyo.ConstraintList()
    for k in range(1, data.num):
        m.time.add(m.T[k] >= m.T[k - 1] + m.d[k - 1])
    for i in range(data.n):
        data.check()
        if a[i] > a_min:
            for k in range(data.last[i] + 1):
                m.time.add(m.T[k] >= a[i] * cumulative(m, data, i, k))
                data.count("arrival")


__all__ = [
    "Features",
    "add_assignment",
    "add_durations",
    "add_existence",
    "add_features",
    "add_limits",
    "add_time",
]
