"""Constraints of the slot MILP, one function per family.

Notation of :mod:`lsched.formulations.slot.milp.build`: windows ``T_i = {r_i,
..., L_i}``, KV table ``k_ij`` (``j = 0..o_i-1``, nondecreasing), ``M`` KV blocks,
batch cap ``N``, token budget ``B``; start variables ``x[i,t]`` and cumulative
starts ``y[i,t]`` (:mod:`lsched.formulations.slot.milp.variables`).

The per-slot families (KV, batch, budget, cliques) share one pass over the slots
(:func:`add_slot_rows`): the requests that may run in slot ``tau``, each at the
offset ``j = tau - t`` it would have if started at ``t``, are found once per slot
(:class:`Running`) and each family writes its row from them. Rows written and
rows skipped are tallied in ``counts`` (``kv``, ``kv_skipped``, ...).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyomo.environ as pyo

from lsched.formulations.slot import SlotProblem
from lsched.formulations.slot.milp.variables import StartColumns

IntArray = npt.NDArray[np.int64]


def _ranges(owner: IntArray, lo: IntArray, hi: IntArray) -> tuple[IntArray, IntArray]:
    """Every ``(owner[k], j)`` with ``lo[k] <= j <= hi[k]``, in order: two arrays."""
    length = hi - lo + 1
    total = int(length.sum())
    first = np.cumsum(length) - length
    who = np.repeat(owner, length)
    return who, np.repeat(lo - first, length) + np.arange(total)


def kv_matrix(problem: SlotProblem) -> IntArray:
    """``k_ij`` as one ``(n, max_i o_i)`` array, zero past ``o_i``."""
    kv = np.zeros((len(problem), int(problem.output_tokens.max())), dtype=np.int64)
    for i in range(len(problem)):
        table = problem.kv_table(i)
        kv[i, : len(table)] = table
    return kv


def add_assignment(model: pyo.ConcreteModel, starts: StartColumns) -> None:
    """``sum_{t in T_i} x[i,t] = 1`` for every request ``i`` (``model.assign``)."""
    model.assign = pyo.Constraint(
        range(len(starts.width)),
        rule=lambda m, i: starts.row(starts.of_request(i)) == 1,
    )


@dataclass(frozen=True)
class Running:
    """The requests that may run in slot ``tau`` (at least two).

    Attributes
    ----------
    tau
        The slot.
    running
        Requests ``i`` with some ``t in T_i`` and ``0 <= tau - t < o_i``, ascending.
    lo, hi
        Per running request, the offsets ``j = tau - t`` it may have there:
        ``lo..hi``.
    who, offset
        Every (request, offset) pair, requests ascending, then offsets.
    columns
        The column of ``x[who, tau - offset]`` for each pair.
    """

    tau: int
    running: IntArray
    lo: IntArray
    hi: IntArray
    who: IntArray
    offset: IntArray
    columns: IntArray


def running_in(
    tau: int, problem: SlotProblem, latest: IntArray, starts: StartColumns
) -> Running | None:
    """Who may run in slot ``tau``; ``None`` if fewer than two requests may."""
    r, o = problem.release, problem.output_tokens
    # offsets j with tau - j in [r_i, L_i] and 0 <= j < o_i
    lo = np.maximum(0, tau - latest)
    hi = np.minimum(o - 1, tau - r)
    running = np.flatnonzero(lo <= hi)
    if len(running) < 2:
        return None
    lo, hi = lo[running], hi[running]
    who, offset = _ranges(running, lo, hi)
    columns = starts.at(who, tau - offset)
    return Running(tau, running, lo, hi, who, offset, columns)


def add_slot_rows(
    model: pyo.ConcreteModel,
    problem: SlotProblem,
    latest: IntArray,
    starts: StartColumns,
    kv: IntArray,
    *,
    skip_rows: bool,
    cliques: bool,
    check: Callable[[], None],
    counts: dict[str, int],
) -> None:
    """The KV, batch, budget and clique rows of every slot, in one pass.

    Adds the lists ``model.kv``, ``model.batch``, ``model.budget`` and
    ``model.clique`` (empty where a family does not apply); ``check`` is called
    once per slot.
    """
    model.kv = pyo.ConstraintList()
    model.batch = pyo.ConstraintList()
    model.budget = pyo.ConstraintList()
    model.clique = pyo.ConstraintList()
    capacity = problem.kv_capacity_blocks
    # first offset at which request i holds more than M / (c + 1) blocks
    first_big = {c: np.argmax((c + 1) * kv > capacity, axis=1) for c in (1, 2)}
    first_slot = int(problem.release.min())
    last_slot = int((latest + problem.output_tokens).max()) - 1
    for tau in range(first_slot, last_slot + 1):
        check()
        slot = running_in(tau, problem, latest, starts)
        if slot is None:
            continue
        add_kv_row(model.kv, starts, slot, kv, capacity, skip_rows, counts)
        if problem.max_num_seqs is not None:
            add_batch_row(
                model.batch, starts, slot, problem.max_num_seqs, skip_rows, counts
            )
        if problem.max_num_batched_tokens is not None:
            add_budget_row(model.budget, problem, starts, slot, skip_rows, counts)
        if cliques:
            add_clique_rows(model.clique, starts, slot, kv, capacity, first_big, counts)


def add_kv_row(
    rows: pyo.ConstraintList,
    starts: StartColumns,
    slot: Running,
    kv: IntArray,
    capacity: int,
    skip_rows: bool,
    counts: dict[str, int],
) -> None:
    """The KV row of slot ``tau``, unless it can never be violated.

    ::

        sum_i sum_{j : tau-j in T_i} k_ij x[i,tau-j] <= M

    These are the "aggregated memory constraints": one row per slot holding
    every request that may be running there. With ``skip_rows``, the row is
    written only if the largest load it can carry, ``sum_i k_{i, min(o_i-1,
    tau-r_i)}`` over the requests that can run at ``tau`` (``k`` is
    nondecreasing, so the latest offset is the largest), is above ``M``.
    """
    peak = int(kv[slot.running, slot.hi].sum())
    if peak > capacity or not skip_rows:
        rows.add(starts.row(slot.columns, kv[slot.who, slot.offset]) <= capacity)
        counts["kv"] += 1
    else:
        counts["kv_skipped"] += 1


def add_batch_row(
    rows: pyo.ConstraintList,
    starts: StartColumns,
    slot: Running,
    cap_seqs: int,
    skip_rows: bool,
    counts: dict[str, int],
) -> None:
    """The batch row of slot ``tau``, unless it can never be violated.

    ::

        sum_i sum_{j : tau-j in T_i} x[i,tau-j] <= N

    With ``skip_rows``, written only if more than ``N`` requests can run at
    ``tau``.
    """
    if len(slot.running) > cap_seqs or not skip_rows:
        rows.add(starts.row(slot.columns) <= cap_seqs)
        counts["batch"] += 1
    else:
        counts["batch_skipped"] += 1


def add_budget_row(
    rows: pyo.ConstraintList,
    problem: SlotProblem,
    starts: StartColumns,
    slot: Running,
    skip_rows: bool,
    counts: dict[str, int],
) -> None:
    """The token-budget row of slot ``tau``, unless it can never be violated.

    ::

        sum_i sum_{j : tau-j in T_i} (1 + [j=0](s_i-1)) x[i,tau-j] <= B

    With ``skip_rows``, written only if ``sum_i max(s_i if tau in T_i else 1)``
    over the requests that can run at ``tau`` is above ``B``.
    """
    s, cap_tokens = problem.prompt_tokens, problem.max_num_batched_tokens
    most = int(np.where(slot.lo == 0, s[slot.running], 1).sum())
    if most > cap_tokens or not skip_rows:
        coefs = np.where(slot.offset == 0, s[slot.who], 1)
        rows.add(starts.row(slot.columns, coefs) <= cap_tokens)
        counts["budget"] += 1
    else:
        counts["budget_skipped"] += 1


def add_clique_rows(
    rows: pyo.ConstraintList,
    starts: StartColumns,
    slot: Running,
    kv: IntArray,
    capacity: int,
    first_big: dict[int, IntArray],
    counts: dict[str, int],
) -> None:
    """The clique rows of slot ``tau`` (strengthening ``cliques``).

    For ``c = 1, 2``: at most ``c`` running requests can each hold more than
    ``M / (c+1)`` blocks, so

    ::

        sum_{(i,j) : k_ij > M/(c+1)} x[i,tau-j] <= c

    written only when more than ``c`` requests could hold such an amount in
    ``tau``. The LP relaxation of the KV row alone allows up to ``(c+1) -
    epsilon`` of them. ``first_big[c][i]`` is the first offset at which request
    ``i`` holds more than ``M / (c+1)`` blocks.
    """
    for c in (1, 2):
        # k > M / (c + 1)  <=>  (c + 1) k > M
        big = (c + 1) * kv[slot.running, slot.hi] > capacity
        if np.count_nonzero(big) <= c:
            continue
        held = slot.running[big]
        who_big, offset_big = _ranges(
            held, np.maximum(slot.lo[big], first_big[c][held]), slot.hi[big]
        )
        rows.add(starts.row(starts.at(who_big, slot.tau - offset_big)) <= c)
        counts[f"clique{c}"] += 1


def add_symmetry(
    model: pyo.ConcreteModel,
    problem: SlotProblem,
    latest: IntArray,
    groups: list[list[int]],
    check: Callable[[], None],
    counts: dict[str, int],
) -> None:
    """The symmetry rows (strengthening ``symmetry``), as ``model.symmetry``.

    Requests with equal ``(r_i, s_i, o_i, w_i)`` (hence equal windows) are
    interchangeable. In each such group ``i_1 < i_2 < ...`` the cumulative
    starts (:func:`~lsched.formulations.slot.milp.variables.add_cumulative_starts`)
    must satisfy ``y[i_a,t] >= y[i_{a+1},t]``: the lower index starts no later.
    Any schedule becomes one that satisfies it by permuting the group's starts.
    ``check`` is called once per group.
    """
    r, y = problem.release, model.y
    model.symmetry = pyo.ConstraintList()
    for group in groups:
        check()
        for a, b in itertools.pairwise(group):
            for t in range(int(r[a]), int(latest[a])):
                model.symmetry.add(y[a, t] >= y[b, t])
                counts["symmetry"] += 1
