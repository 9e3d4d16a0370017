"""Rules of the timed CP-SAT model, one function per family of constraints.

Notation of :mod:`lsched.formulations.timed.cpsat` and of its variables
(:mod:`lsched.formulations.timed.cpsat.variables`). The per-iteration limits,
features and existence rules are the MILP's
(:mod:`lsched.formulations.timed.milp.constraints`), written as CP-SAT
constraints::

    exactly one x[i,t],   S_i = sum_t t x[i,t],   S_p <= S_q (identical, p < q)
    u_k = 1 for k < min_iterations,   u_{k+1} => u_k,   x[i,t] => u_{t + o_i - 1}
    sum of the x that run some request in k >= u_k             (none empty)
    KV blocks <= M,   members <= N,   prefill tokens + decode steps <= B
    H_k = max_i x[i,k]
    R d'_k >= c_p . phi_k          for every piece p (of the regime in force)
    sum_r z[k,r] = u_k,   z[k,r] => lo_r <= phi_k[switch] <= hi_r
    T'_k >= T'_{k-1} + d'_{k-1},   x[i,t] => T'_t >= ceil(q a_i)

with the integer coefficients ``c`` and scale ``R`` of
:class:`~lsched.formulations.timed.cpsat.scale.TimeScale`. The limits are
written only where they can bind. Enforced constraints are invisible to
CP-SAT's default LP relaxation, so ``u_k = 1`` for ``k <``
:attr:`~lsched.formulations.timed.problem.TimedProblem.min_iterations`, a valid
linear row, carries the bound.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import numpy.typing as npt
from ortools.sat.python import cp_model

from lsched.formulations.timed import problem as timed
from lsched.formulations.timed.cpsat.variables import CpData, CpVariables

IntArray = npt.NDArray[np.int64]

#: Per iteration, phi as linear expressions of the variables.
Features = list[list[Any]]

#: Per request that may run in an iteration, ``(offset j, x[i, k - j])`` for
#: every start that runs it there.
Members = dict[int, list[tuple[int, cp_model.IntVar]]]


def add_assignment(model: cp_model.CpModel, data: CpData, v: CpVariables) -> None:
    """One start per request, ``S_i`` its iteration, identical requests in
    position order."""
    for i in range(data.n):
        window = range(data.last[i] + 1)
        model.add_exactly_one([v.x[i, t] for t in window])
        model.add(v.start[i] == sum(t * v.x[i, t] for t in window))
    for group in data.problem.identical_groups():
        for p, q in itertools.pairwise(group.tolist()):
            model.add(v.start[p] <= v.start[q])


def add_existence(model: cp_model.CpModel, data: CpData, v: CpVariables) -> None:
    """The first ``min_iterations`` exist, existing iterations are a prefix, and
    a request's iterations exist."""
    for k in range(min(data.problem.min_iterations, data.num)):
        model.add(v.u[k] == 1)
    for k in range(data.num - 1):
        model.add_implication(v.u[k + 1], v.u[k])
    for (i, t), var in v.x.items():
        model.add_implication(var, v.u[t + data.o[i] - 1])


def _members(data: CpData, v: CpVariables, k: int) -> Members:
    """The requests that may run in iteration ``k``, with the starts that run
    them there."""
    members = {}
    for i in range(data.n):
        running = [
            (j, v.x[i, k - j])
            for j in range(max(0, k - data.last[i]), min(k, data.o[i] - 1) + 1)
        ]
        if running:
            members[i] = running
    return members


def _add_limits(model: cp_model.CpModel, data: CpData, members: Members) -> None:
    """KV blocks, members and token budget of one iteration, where they can
    bind."""
    slots = data.problem.slots
    capacity, cap_seqs = slots.kv_capacity_blocks, slots.max_num_seqs
    cap_tokens, s, tables = slots.max_num_batched_tokens, data.s, data.tables
    if sum(tables[i][r[-1][0]] for i, r in members.items()) > capacity:
        model.add(
            sum(tables[i][j] * x for i, r in members.items() for j, x in r) <= capacity
        )
    if cap_seqs is not None and len(members) > cap_seqs:
        model.add(sum(x for r in members.values() for _, x in r) <= cap_seqs)
    if cap_tokens is not None and sum(max(s[i], 1) for i in members) > cap_tokens:
        model.add(
            sum((s[i] if j == 0 else 1) * x for i, r in members.items() for j, x in r)
            <= cap_tokens
        )


def _features(
    model: cp_model.CpModel, data: CpData, v: CpVariables, members: Members, k: int
) -> list[Any]:
    """Iteration ``k``'s phi, with ``H_k = max_i x[i,k]``."""
    s = data.s
    prefills = [(i, v.x[i, k]) for i in range(data.n) if k <= data.last[i]]
    decodes = [(i, j, x) for i, r in members.items() for j, x in r if j >= 1]
    phi: list[Any] = [0] * len(data.problem.feature_max)
    phi[timed.CONST] = v.u[k]
    phi[timed.PREFILL] = sum(s[i] * x for i, x in prefills)
    phi[timed.ATTENTION] = sum(s[i] * s[i] * x for i, x in prefills)
    phi[timed.DECODE] = sum(x for _, _, x in decodes)
    phi[timed.KV_READ] = sum((s[i] + j) * x for i, j, x in decodes)
    if prefills:
        model.add_max_equality(v.has_prefill[k], [x for _, x in prefills])
    phi[timed.HAS_PREFILL] = v.has_prefill[k]
    return phi


def add_iterations(model: cp_model.CpModel, data: CpData, v: CpVariables) -> Features:
    """Per iteration: not empty if it exists, its limits, and its phi (returned)."""
    features: Features = []
    for k in range(data.num):
        members = _members(data, v, k)
        model.add(sum(x for r in members.values() for _, x in r) >= v.u[k])
        _add_limits(model, data, members)
        features.append(_features(model, data, v, members, k))
    return features


def _scaled(c: IntArray, phi: list[Any]) -> Any:
    """``c . phi`` over the nonzero coefficients."""
    return sum(int(c[f]) * phi[f] for f in range(len(c)) if c[f] != 0)


def add_durations(
    model: cp_model.CpModel, data: CpData, v: CpVariables, features: Features
) -> None:
    """``R d'_k`` above every scaled piece of the regime in force."""
    problem, scale = data.problem, data.scale
    unit_r = scale.r
    for k in range(data.num):
        if data.regimes == 1:
            for c in scale.coefficients[0]:
                model.add(unit_r * v.d[k] >= _scaled(c, features[k]))
            continue
        switch = problem.switch_feature
        assert switch is not None
        model.add(sum(v.z[k, r] for r in range(data.regimes)) == v.u[k])
        for r, c_regime in enumerate(scale.coefficients):
            lo, hi = problem.regime_range[r]
            in_force = v.z[k, r]
            model.add(features[k][switch] >= lo).only_enforce_if(in_force)
            model.add(features[k][switch] <= hi).only_enforce_if(in_force)
            for c in c_regime:
                model.add(unit_r * v.d[k] >= _scaled(c, features[k])).only_enforce_if(
                    in_force
                )


def add_time(model: cp_model.CpModel, data: CpData, v: CpVariables) -> None:
    """An iteration starts after the previous one ends and after its prefills'
    arrivals."""
    for k in range(1, data.num):
        model.add(v.t[k] >= v.t[k - 1] + v.d[k - 1])
    a_min = data.a_min
    for (i, t), var in v.x.items():
        if data.arrival[i] > a_min:
            model.add(v.t[t] >= data.arrival[i]).only_enforce_if(var)


__all__ = [
    "Features",
    "add_assignment",
    "add_durations",
    "add_existence",
    "add_iterations",
    "add_time",
]
