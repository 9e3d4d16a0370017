"""Starting schedules and safe start windows for the timed model.

Starting schedules
------------------
A slot-model schedule with its empty slots removed is a timed schedule (the slot
rules are the timed rules; arrivals only delay iterations in time). The
candidates, each compacted (:func:`~lsched.formulations.timed.problem.compact`)
and scored by the exact :func:`~lsched.formulations.timed.problem.timed_objective`:

* the slot heuristics of :mod:`lsched.formulations.slot.incumbent` (list scheduling
  in three orders, MC-SF and FCFS replays) on the slot problem whose slot length
  ``tau`` is the profile's default (:func:`lsched.formulations.slot.slot_length_s`)
  and on ``tau / 4`` and ``4 tau`` (a finer or coarser view of the arrivals);
* list scheduling in iteration space (every release 0) in arrival order, in
  shortest-output order (for latency), and in longest-output and largest-KV-area
  order (for makespan: the long requests first, the short ones packed around
  them);

the best is kept, identical requests put in position order.

Safe start windows
------------------
Let ``U`` be the objective of a feasible schedule, ``d_min`` the least length of
a non-empty iteration (:attr:`TimedProblem.min_duration_s`) and ``a_min`` the
first arrival. Iteration 0 starts at or after an arrival, so the end of iteration
``E - 1`` is at least ``a_min + E d_min``, and request ``i`` spends at least
``o_i d_min`` between its start and its completion. In any schedule at least as
good as the given one:

* makespan: ``a_min + E_i d_min - a_min <= U``, so ``E_i <= U / d_min``;
* latency: ``w_i (C_i - a_i) <= U - lambda_i`` with ``lambda_i`` a lower bound on
  the others' latency ``sum_{k != i} w_k (C_k - a_k)``, so
  ``E_i <= (a_i - a_min + (U - lambda_i) / w_i) / d_min``. Two bounds are used,
  the larger kept: ``sum_{k != i} w_k o_k d_min``, and
  ``d_min Lambda_i - sum_{k != i} w_k (a_k - a_min)`` where ``Lambda_i`` is the
  slot model's closed-form bound (:func:`lsched.formulations.bounds.slot.closed_form`)
  on ``sum_{k != i} w_k E_k`` for the other requests alone in iteration space:
  dropping ``i`` from a schedule and closing the empty iterations gives such a
  schedule with no later ends, and ``C_k >= a_min + E_k d_min``. On
  ``jaillet(8, seed=0)`` (all at 0, llama2-70b-a100-tp4) it cuts the horizon from
  ``sum o = 211`` to about 120 iterations.

With no empty iteration, ``E_i <= K <= sum_k o_k`` as well. The latest start is
``L_i = min(those) - o_i`` (rounded down after a relative slack of ``1e-9`` for
the float arithmetic, and never below the given schedule's own start). Every
optimal schedule lies inside these windows.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import numpy.typing as npt

from lsched.errors import InputError
from lsched.formulations.bounds.slot import closed_form
from lsched.formulations.slot import SlotProblem, slot_length_s
from lsched.formulations.slot.incumbent import heuristic_schedules, list_schedule
from lsched.formulations.timed.problem import (
    TimedProblem,
    check_start,
    compact,
    timed_objective,
)

IntArray = npt.NDArray[np.int64]

#: Multiples of the default slot length tried by :func:`heuristic_starts`.
SLOT_SCALES: tuple[float, ...] = (1.0, 0.25, 4.0)


def _slot_views(problem: TimedProblem) -> list[tuple[str, SlotProblem]]:
    base = slot_length_s(problem.instance, problem.profile)
    views = []
    slots = problem.slots
    for scale in SLOT_SCALES:
        tau = base * scale
        if not math.isfinite(tau) or tau <= 0:
            continue
        views.append(
            (
                f"tau*{scale:g}",
                dataclasses.replace(
                    slots, arrival=problem.arrival_s / tau, objective=problem.objective
                ),
            )
        )
    return views


def heuristic_starts(problem: TimedProblem) -> dict[str, IntArray]:
    """Every heuristic timed schedule (compacted), by source name."""
    found: dict[str, IntArray] = {}
    for view, slot_problem in _slot_views(problem):
        for name, start in heuristic_schedules(slot_problem).items():
            found[f"{name}@{view}"] = compact(problem, start)
    a, o, s = problem.arrival_s, problem.output_tokens, problem.prompt_tokens
    area = o * s + o * (o - 1) // 2
    orders = {
        "iteration-arrival": np.lexsort((o, a)),
        "iteration-spt": np.lexsort((a, o / problem.weight)),
        "iteration-lpt": np.lexsort((a, -o)),
        "iteration-largest-area": np.lexsort((a, -area)),
    }
    for name, order in orders.items():
        found[name] = compact(problem, list_schedule(problem.slots, order))
    return found


def best_heuristic(problem: TimedProblem) -> tuple[str, IntArray, float]:
    """The heuristic schedule with the least exact objective: source, start,
    objective."""
    best: tuple[str, IntArray, float] | None = None
    for name, start in heuristic_starts(problem).items():
        value = timed_objective(problem, start)
        if best is None or value < best[2]:
            best = (name, start, value)
    assert best is not None  # list scheduling always succeeds
    return best


def starting_schedule(
    problem: TimedProblem, initial_solution: npt.ArrayLike | None
) -> tuple[str, IntArray, float]:
    """The incumbent a solve starts from: source, start (canonical), objective.

    ``initial_solution`` (compacted, then checked) or :func:`best_heuristic`.

    Raises
    ------
    InputError
        Naming ``initial_solution`` if it is not a timed schedule.
    """
    if initial_solution is None:
        source, start, _ = best_heuristic(problem)
    else:
        source = "initial"
        try:
            start = check_start(problem, compact(problem, initial_solution))
        except InputError as error:
            raise InputError(error.message, field="initial_solution") from None
    start = problem.canonical(start)
    return source, start, timed_objective(problem, start)


def latest_starts(problem: TimedProblem, upper_bound: float | None = None) -> IntArray:
    """``L_i``: no optimal schedule starts request ``i`` later (module docstring).

    Parameters
    ----------
    problem
        The timed problem.
    upper_bound
        Objective (seconds) of a feasible schedule, or ``None`` for ``K <= sum o``
        alone.
    """
    o = problem.output_tokens
    end = np.full(len(problem), int(o.sum()), dtype=np.int64)
    d_min = problem.min_duration_s
    if upper_bound is not None and d_min > 0 and math.isfinite(upper_bound):
        slack = 1.0 + 1e-9
        if problem.objective == "makespan":
            budget = np.full(len(problem), upper_bound * slack / d_min)
        else:
            w, a = problem.weight.astype(np.float64), problem.arrival_s
            spare = (upper_bound - others_latency_s(problem)) / w
            budget = (a - a.min() + spare) * slack / d_min
        cap = np.floor(np.minimum(budget + 1e-6, float(NO_CAP))).astype(np.int64)
        end = np.minimum(end, cap)
    return np.maximum(end - o, 0)


#: Cap on an end iteration computed in floats (far above any sum of outputs).
NO_CAP = 2**40


def others_latency_s(problem: TimedProblem) -> npt.NDArray[np.float64]:
    """``lambda_i``: a lower bound on ``sum_{k != i} w_k (C_k - a_k)`` in every
    timed schedule (module docstring), seconds."""
    n = len(problem)
    w, o, a = problem.weight, problem.output_tokens, problem.arrival_s
    d_min = problem.min_duration_s
    least = w * o * d_min
    out = least.sum() - least
    if n == 1 or d_min <= 0:
        return out
    for i in range(n):
        keep = np.delete(np.arange(n), i)
        ends = closed_form(problem.slots.subproblem(keep))  # sum_k w_k E_k
        if math.isfinite(ends):
            value = d_min * ends - float(np.dot(w[keep], a[keep] - a.min()))
            out[i] = max(out[i], value)
    return out


__all__ = [
    "SLOT_SCALES",
    "best_heuristic",
    "heuristic_starts",
    "latest_starts",
    "others_latency_s",
    "starting_schedule",
]
