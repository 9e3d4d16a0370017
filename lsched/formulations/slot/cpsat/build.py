"""The slot model in CP-SAT: three formulations, one model builder.

Notation of :mod:`lsched.formulations.slot`: release ``r_i``, output ``o_i``, KV
table ``k_ij`` (nondecreasing in ``j``), capacity ``M``, batch cap ``N``, token
budget ``B``; start domains ``lo_i <= S_i <= hi_i`` (the safe deadlines of
:mod:`lsched.formulations.slot.horizon` give ``hi_i = d_i - o_i``).

``interval``
------------
A request's KV is a staircase in time: ``k_i0`` from ``S_i`` to ``E_i``, plus
``k_ij - k_{i,j-1}`` from ``S_i + j`` to ``E_i`` for every ``j`` where the table
steps up. Each step is a fixed-size interval ``[S_i + j, E_i)`` tied to ``S_i``,
and one ``AddCumulative`` of all steps with capacity ``M`` is *exactly* the KV
rule, for every slot, with no time index: ``sum_j`` of the steps covering ``t``
is ``k_{i, t - S_i}``. With ``b = 1`` that is ``o_i`` intervals per request.
The batch cap is a cumulative of ``[S_i, E_i)`` with demand 1 and capacity
``N``; the token budget one of ``[S_i, E_i)`` (demand 1) and ``[S_i, S_i + 1)``
(demand ``s_i - 1``) with capacity ``B``. The model size does not depend on the
horizon, and CP-SAT's cumulative propagators (time-tabling, energetic reasoning)
and its interval-based LNS apply directly. It proves ``n = 10`` in a few
seconds, but the cumulative's energetic reasoning sees flat demands, not the
sawtooth, so its bound stalls (below the closed-form bounds from ``n = 20``).

``time-indexed``
----------------
Booleans ``x_it`` (request ``i`` starts at ``t``), ``sum_t x_it = 1``,
``S_i = sum_t t x_it``, and one linear KV row per slot,
``sum_i sum_j k_ij x_{i, t-j} <= M`` (batch and budget rows likewise). Its LP
relaxation is the textbook one, but the model has ``sum_i (hi_i - lo_i + 1)``
booleans and ``sum_i o_i (hi_i - lo_i + 1)`` terms: at ``n = 60`` over a million,
and it proved 2 of the 6 ``n = 10`` benchmark cases in 20 s, against 6 for the
other two (``benchmarks/slot_model/README.md``).

``events`` (KV checked at completion events; the default, the one that wins)
-----------------------------------------------------------------------------
Between two completions nothing frees KV and every running request's KV grows,
so the KV total is largest in some request's last slot ``E_k - 1``. Checking only
there is exact: with ``a_ik`` = "``i`` runs in slot ``E_k - 1``" (``S_i <= E_k - 1 <
E_i``; both directions are enforced), ``sum_{i != k} c_ik + k_{k, o_k - 1} <= M``
where ``c_ik >= k_{i, E_k - 1 - S_i}`` when ``a_ik`` (for a table ``ceil((s + j)/b)``
this is the linear ``b c_ik >= s_i + E_k - 1 - S_i``). ``n^2`` booleans; the
batch cap is checked the same way, the budget by its cumulative. Measured on
the benchmark (2 workers, 20 s): it proves every ``n = 10`` case about 4x faster
than ``interval`` (median 0.5-0.9 s against 2.8-4.1 s), because the ordering
booleans ``a_ik`` let CP-SAT learn on completion orders directly; at ``n = 40``
its schedules are as good (within 1 %, better on 2 of 3 seeds). So it is the
default; ``interval`` stays for instances with very many requests (its size is
linear in ``sum o``, not quadratic in ``n``).

Symmetry and dominance
----------------------
Requests identical in release, prompt, output and weight are interchangeable:
any schedule stays feasible with the same objective after swapping two of
them, so ``S_i <= S_k`` for ``i < k`` within each group loses no optimum (all
formulations). Objectives as in :mod:`lsched.formulations.slot`: ``sum w E``,
``sum w S`` or ``max E``, all integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import numpy.typing as npt
from ortools.sat.python import cp_model

from lsched.errors import InputError
from lsched.formulations.slot import SlotProblem

IntArray = npt.NDArray[np.int64]

FORMULATIONS: tuple[str, ...] = ("interval", "time-indexed", "events")


@dataclass
class SlotModel:
    """A built CP-SAT model: the model, start variables and the objective."""

    model: cp_model.CpModel
    start: list[cp_model.IntVar]
    formulation: str

    def hint(self, start: IntArray) -> None:
        """Give CP-SAT the schedule ``start`` as a solution hint."""
        for var, value in zip(self.start, start.tolist(), strict=True):
            self.model.add_hint(var, value)


def build(
    problem: SlotProblem, lo: IntArray, hi: IntArray, formulation: str = "events"
) -> SlotModel:
    """The CP-SAT model of ``problem`` with start domains ``[lo_i, hi_i]``."""
    if formulation not in FORMULATIONS:
        raise InputError(
            f"got {formulation!r}; expected one of {', '.join(FORMULATIONS)}",
            field="formulation",
        )
    model = cp_model.CpModel()
    n = len(problem)
    o = problem.output_tokens
    start = [model.new_int_var(int(lo[i]), int(hi[i]), f"S{i}") for i in range(n)]
    end = [start[i] + int(o[i]) for i in range(n)]
    {"interval": _interval, "time-indexed": _time_indexed, "events": _events}[
        formulation
    ](model, problem, start, lo, hi)
    for ids in problem.identical_groups():
        for a, b in pairwise(ids):
            model.add(start[a] <= start[b])
    w = problem.weight.tolist()
    if problem.objective == "latency":
        model.minimize(sum(w[i] * end[i] for i in range(n)))
    elif problem.objective == "ttft":
        model.minimize(sum(w[i] * start[i] for i in range(n)))
    else:
        makespan = model.new_int_var(0, int((hi + o).max()), "makespan")
        model.add_max_equality(makespan, end)
        model.minimize(makespan)
    return SlotModel(model, start, formulation)


def _limits_bind(problem: SlotProblem) -> tuple[bool, bool]:
    n = len(problem)
    seqs = problem.max_num_seqs is not None and problem.max_num_seqs < n
    budget = problem.max_num_batched_tokens is not None and (
        problem.max_num_batched_tokens
        < n + int((problem.prompt_tokens - 1).sum())  # the most one slot can take
    )
    return seqs, budget


def _interval(model, problem, start, lo, hi) -> None:
    n = len(problem)
    o = problem.output_tokens
    steps, demands, whole = [], [], []
    for i in range(n):
        table = problem.kv_table(i)
        rise = np.diff(table, prepend=0)
        oi = int(o[i])
        for j in np.flatnonzero(rise):
            iv = model.new_fixed_size_interval_var(start[i] + int(j), oi - int(j), "")
            steps.append(iv)
            demands.append(int(rise[j]))
            if j == 0:
                whole.append(iv)
    model.add_cumulative(steps, demands, problem.kv_capacity_blocks)
    _batch_limits(model, problem, start, whole)


def _batch_limits(model, problem, start, whole, *, seqs: bool = True) -> None:
    limit_seqs, limit_budget = _limits_bind(problem)
    n = len(problem)
    if seqs and limit_seqs:
        model.add_cumulative(whole, [1] * n, problem.max_num_seqs)
    if limit_budget:
        prefill = [
            model.new_fixed_size_interval_var(start[i], 1, "")
            for i in range(n)
            if problem.prompt_tokens[i] > 1
        ]
        extra = [int(s) - 1 for s in problem.prompt_tokens if s > 1]
        model.add_cumulative(
            whole + prefill, [1] * n + extra, problem.max_num_batched_tokens
        )


def _time_indexed(model, problem, start, lo, hi) -> None:
    n = len(problem)
    horizon = int((hi + problem.output_tokens).max())
    kv = [[] for _ in range(horizon)]
    seqs = [[] for _ in range(horizon)]
    tokens = [[] for _ in range(horizon)]
    for i in range(n):
        table = problem.kv_table(i).tolist()
        s = int(problem.prompt_tokens[i])
        slots = range(int(lo[i]), int(hi[i]) + 1)
        x = [model.new_bool_var(f"x{i}_{t}") for t in slots]
        model.add_exactly_one(x)
        model.add(start[i] == sum(t * v for t, v in zip(slots, x, strict=True)))
        for t, v in zip(slots, x, strict=True):
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


def _events(model, problem, start, lo, hi) -> None:
    n = len(problem)
    o, s, b = problem.output_tokens, problem.prompt_tokens, problem.block_tokens
    end = [start[i] + int(o[i]) for i in range(n)]
    peak = problem.peak_blocks
    limit_seqs, _ = _limits_bind(problem)
    for k in range(n):
        load, count = [], []
        last_k = (int(lo[k] + o[k]) - 1, int(hi[k] + o[k]) - 1)  # range of E_k - 1
        for i in range(n):
            # skip i if it can never run in k's last slot
            if i == k or lo[i] > last_k[1] or hi[i] + o[i] <= last_k[0]:
                continue
            runs = model.new_bool_var(f"a{i}_{k}")
            before = model.new_bool_var("")
            after = model.new_bool_var("")
            # runs <=> S_i <= E_k - 1 < E_i: each of the three cases is enforced
            model.add(start[i] <= end[k] - 1).only_enforce_if(runs)
            model.add(end[i] >= end[k]).only_enforce_if(runs)
            model.add(start[i] >= end[k]).only_enforce_if(before)
            model.add(end[i] <= end[k] - 1).only_enforce_if(after)
            model.add_exactly_one([runs, before, after])
            held = model.new_int_var(0, int(peak[i]), "")
            age = end[k] - 1 - start[i]
            model.add(b * held >= int(s[i]) + age).only_enforce_if(runs)
            load.append(held)
            count.append(runs)
        if load:
            model.add(sum(load) + int(peak[k]) <= problem.kv_capacity_blocks)
        if limit_seqs and count:
            model.add(sum(count) + 1 <= problem.max_num_seqs)
    whole = [
        model.new_fixed_size_interval_var(start[i], int(o[i]), "") for i in range(n)
    ]
    _batch_limits(model, problem, start, whole, seqs=False)
