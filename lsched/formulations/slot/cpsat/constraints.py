"""Constraints of the slot model in CP-SAT: the KV rule of each formulation, the
batch cap, the token budget and the symmetry order.

Notation of :mod:`lsched.formulations.slot`: release ``r_i``, prompt ``s_i``,
output ``o_i``, KV table ``k_ij`` (nondecreasing in ``j``), capacity ``M``, batch
cap ``N``, token budget ``B``; start domains ``lo_i <= S_i <= hi_i``. Each
formulation (:func:`add_interval`, :func:`add_time_indexed`, :func:`add_events`)
takes ``(model, problem, start, lo, hi)`` and adds the KV, batch and budget rules;
:func:`add_symmetry` is shared by all.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import numpy.typing as npt
from ortools.sat.python import cp_model

from lsched.formulations.slot import SlotProblem
from lsched.formulations.slot.cpsat.variables import (
    end_expressions,
    kv_step_intervals,
    prefill_intervals,
    run_intervals,
    running_at_completion,
    start_booleans,
)

IntArray = npt.NDArray[np.int64]


def _limits_bind(problem: SlotProblem) -> tuple[bool, bool]:
    """Whether the batch cap and the token budget can bind at all."""
    n = len(problem)
    seqs = problem.max_num_seqs is not None and problem.max_num_seqs < n
    budget = problem.max_num_batched_tokens is not None and (
        problem.max_num_batched_tokens
        < n + int((problem.prompt_tokens - 1).sum())  # the most one slot can take
    )
    return seqs, budget


def add_interval(
    model: cp_model.CpModel,
    problem: SlotProblem,
    start: list[cp_model.IntVar],
    lo: IntArray,
    hi: IntArray,
) -> None:
    """The ``interval`` formulation: the KV rule as one cumulative.

    A request's KV is a staircase in time: ``k_i0`` from ``S_i`` to ``E_i``, plus
    ``k_ij - k_{i,j-1}`` from ``S_i + j`` to ``E_i`` for every ``j`` where the table
    steps up. Each step is a fixed-size interval ``[S_i + j, E_i)`` tied to
    ``S_i`` (:func:`~lsched.formulations.slot.cpsat.variables.kv_step_intervals`),
    and one ``AddCumulative`` of all steps with capacity ``M`` is *exactly* the
    KV rule, for every slot, with no time index: ``sum_j`` of the steps covering
    ``t`` is ``k_{i, t - S_i}``. With ``b = 1`` that is ``o_i`` intervals per
    request. The batch cap and the token budget are cumulatives too
    (:func:`add_batch_limits`). The model size does not depend on the horizon
    (``lo`` and ``hi`` are unused), and CP-SAT's cumulative propagators
    (time-tabling, energetic reasoning) and its interval-based LNS apply
    directly.
    """
    steps, demands, whole = kv_step_intervals(model, problem, start)
    model.add_cumulative(steps, demands, problem.kv_capacity_blocks)
    add_batch_limits(model, problem, start, whole)


def add_batch_limits(
    model: cp_model.CpModel,
    problem: SlotProblem,
    start: list[cp_model.IntVar],
    whole: list[cp_model.IntervalVar],
    *,
    seqs: bool = True,
) -> None:
    """The batch cap and the token budget as cumulatives, where they can bind.

    The batch cap (unless ``seqs`` is false) is a cumulative of the run
    intervals ``whole`` = ``[S_i, E_i)`` with demand 1 and capacity ``N``; the
    token budget one of ``[S_i, E_i)`` (demand 1) and ``[S_i, S_i + 1)`` (demand
    ``s_i - 1``, for ``s_i > 1``) with capacity ``B``.
    """
    limit_seqs, limit_budget = _limits_bind(problem)
    n = len(problem)
    if seqs and limit_seqs:
        model.add_cumulative(whole, [1] * n, problem.max_num_seqs)
    if limit_budget:
        prefill = prefill_intervals(model, problem, start)
        extra = [int(s) - 1 for s in problem.prompt_tokens if s > 1]
        model.add_cumulative(
            whole + prefill, [1] * n + extra, problem.max_num_batched_tokens
        )


def add_time_indexed(
    model: cp_model.CpModel,
    problem: SlotProblem,
    start: list[cp_model.IntVar],
    lo: IntArray,
    hi: IntArray,
) -> None:
    """The ``time-indexed`` formulation: one linear row per slot and rule.

    With the start booleans ``x_it``
    (:func:`~lsched.formulations.slot.cpsat.variables.start_booleans`), one KV
    row per slot, ``sum_i sum_j k_ij x_{i, t-j} <= M``, written where its
    largest load exceeds ``M``; batch rows ``sum_i sum_j x_{i, t-j} <= N`` where
    more than ``N`` booleans cover ``t``; budget rows ``sum_i sum_j (s_i if j =
    0 else 1) x_{i, t-j} <= B``. Its LP relaxation is the textbook one, but the
    model has ``sum_i (hi_i - lo_i + 1)`` booleans and ``sum_i o_i (hi_i - lo_i +
    1)`` terms.
    """
    horizon = int((hi + problem.output_tokens).max())
    kv = [[] for _ in range(horizon)]
    seqs = [[] for _ in range(horizon)]
    tokens = [[] for _ in range(horizon)]
    x = start_booleans(model, start, lo, hi)
    for i, xi in enumerate(x):
        table = problem.kv_table(i).tolist()
        s = int(problem.prompt_tokens[i])
        for t, v in zip(range(int(lo[i]), int(hi[i]) + 1), xi, strict=True):
            for j, k in enumerate(table):
                kv[t + j].append((k, v))
                seqs[t + j].append(v)
                tokens[t + j].append((s if j == 0 else 1, v))
    limit_seqs, limit_budget = _limits_bind(problem)
    for t in range(horizon):
        if sum(k for k, _ in kv[t]) > problem.kv_capacity_blocks:
            model.add(sum(k * v for k, v in kv[t]) <= problem.kv_capacity_blocks)
        if limit_seqs and len(seqs[t]) > problem.max_num_seqs:
            model.add(sum(seqs[t]) <= problem.max_num_seqs)
        if limit_budget:
            model.add(
                sum(c * v for c, v in tokens[t]) <= problem.max_num_batched_tokens
            )


def add_events(
    model: cp_model.CpModel,
    problem: SlotProblem,
    start: list[cp_model.IntVar],
    lo: IntArray,
    hi: IntArray,
) -> None:
    """The ``events`` formulation: the KV rule checked at completion events.

    Between two completions nothing frees KV and every running request's KV
    grows, so the KV total is largest in some request's last slot ``E_k - 1``.
    Checking only there is exact: with ``a_ik`` = "``i`` runs in slot ``E_k -
    1``" and ``c_ik >= k_{i, E_k - 1 - S_i}`` when ``a_ik``
    (:func:`~lsched.formulations.slot.cpsat.variables.running_at_completion`),
    ``sum_{i != k} c_ik + k_{k, o_k - 1} <= M``. ``n^2`` booleans; the batch cap
    is checked the same way, ``sum_{i != k} a_ik + 1 <= N``, the budget by its
    cumulative (:func:`add_batch_limits`).
    """
    end = end_expressions(problem, start)
    peak = problem.peak_blocks
    limit_seqs, _ = _limits_bind(problem)
    for k in range(len(problem)):
        count, load = running_at_completion(model, problem, start, end, lo, hi, k)
        if load:
            model.add(sum(load) + int(peak[k]) <= problem.kv_capacity_blocks)
        if limit_seqs and count:
            model.add(sum(count) + 1 <= problem.max_num_seqs)
    whole = run_intervals(model, problem, start)
    add_batch_limits(model, problem, start, whole, seqs=False)


def add_symmetry(
    model: cp_model.CpModel, problem: SlotProblem, start: list[cp_model.IntVar]
) -> None:
    """``S_i <= S_k`` for ``i < k`` within each group of identical requests.

    Requests identical in release, prompt, output and weight are
    interchangeable: any schedule stays feasible with the same objective after
    swapping two of them, so the order loses no optimum (all formulations).
    """
    for ids in problem.identical_groups():
        for a, b in pairwise(ids):
            model.add(start[a] <= start[b])
