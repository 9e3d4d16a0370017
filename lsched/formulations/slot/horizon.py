"""Safe per-request deadlines for the slot model, from any feasible schedule.

Both backends need a finite time range. Cutting it at a heuristic's makespan
could cut off every optimal schedule; the deadlines ``d_i`` here never do: for
every objective some optimal schedule (for latency and TTFT: every optimal
schedule) has ``E_i <= d_i`` for all ``i``. Write ``R = max_i r_i`` and let ``U``
be the integer objective of a feasible schedule (``sum w E``, ``sum w S`` or
``max E``).

No idle slot after the last release
    Let a schedule have a slot ``t >= R`` where no request runs, with requests
    starting after ``t``. Move all of those one slot earlier. Every one is
    released by ``R <= t``; requests started before ``t`` have ended by ``t`` (none
    runs in ``t``), so every later slot holds exactly what the next one held
    before: KV, batch cap and token budget still hold. Latency and TTFT strictly
    improve (weights are positive), makespan does not worsen. Hence optimal
    schedules have no such slot (for makespan: some optimal schedule), and as
    every slot from ``R`` to the last completion runs at least one of the
    ``sum_i o_i`` request-slots, ``E_i <= R + sum_k o_k``.

Objective budget
    Since ``E_k >= r_k + o_k`` for every request,

    * latency: ``w_i E_i <= U - sum_{k != i} w_k (r_k + o_k)``;
    * TTFT: ``w_i S_i <= U - sum_{k != i} w_k r_k``;
    * makespan: ``E_i <= U``;

    in any schedule at least as good as the given one.

``d_i`` is the smaller of the two. :func:`close_idle_slots` applies the move above
to a heuristic schedule, so that it satisfies its own deadlines.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from lsched.formulations.slot import SlotProblem

IntArray = npt.NDArray[np.int64]


def no_idle_horizon(problem: SlotProblem) -> int:
    """``R + sum_i o_i``: no optimal schedule (or some, for makespan) ends later."""
    return int(problem.release.max() + problem.output_tokens.sum())


def deadlines(problem: SlotProblem, upper_bound: int | None = None) -> IntArray:
    """Latest completion slot ``d_i`` per request (module docstring).

    Parameters
    ----------
    problem
        The slot problem.
    upper_bound
        Integer objective ``U`` of a feasible schedule, or ``None`` for the
        no-idle argument alone.
    """
    n = len(problem)
    limit = np.full(n, no_idle_horizon(problem), dtype=np.int64)
    if upper_bound is None:
        return limit
    w, r, o = problem.weight, problem.release, problem.output_tokens
    if problem.objective == "makespan":
        budget = np.full(n, int(upper_bound), dtype=np.int64)
    elif problem.objective == "latency":
        least = w * (r + o)
        budget = (int(upper_bound) - (least.sum() - least)) // w
    else:  # ttft: a bound on S_i, so add o_i for E_i
        least = w * r
        budget = (int(upper_bound) - (least.sum() - least)) // w + o
    return np.minimum(limit, budget)


def close_idle_slots(problem: SlotProblem, start: npt.ArrayLike) -> IntArray:
    """``start`` with every empty slot at or after ``R`` removed (module docstring).

    Each request starting after such slots moves earlier by their number; the
    result is feasible whenever ``start`` is, and no worse for any objective.
    """
    start = np.asarray(start, dtype=np.int64)
    end = start + problem.output_tokens
    top = int(end.max())
    busy = np.zeros(top + 1, dtype=np.int64)
    np.add.at(busy, start, 1)
    np.add.at(busy, end, -1)
    empty = np.cumsum(busy)[:top] == 0
    empty[: int(problem.release.max())] = False
    before = np.concatenate(([0], np.cumsum(empty)))  # empty slots in [0, t)
    return start - before[start]
