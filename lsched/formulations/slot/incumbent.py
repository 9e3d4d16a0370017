"""Feasible slot-model schedules from heuristics: the warm start of every solve.

Two sources, and the best is kept:

* **list scheduling**: requests taken in a priority order, each placed at the
  earliest start slot where it fits beside those already placed (KV table, batch
  cap, token budget, slot by slot). Orders tried: shortest output first, smallest
  KV area first, arrival order, each with ties broken by release. Because a
  request's KV grows with its age, the earliest fit is not always best, but every
  result is feasible;
* **online policies** (``mc-sf`` with the oracle predictor, ``fcfs``) replayed by
  the evaluator on the problem's unit-slot deployment; a replay is kept only if no
  request was preempted, so that it is a slot-model schedule (``S_i`` = first
  token time minus one).

Every candidate is checked by :func:`lsched.evaluator.slots.score_start_slots`
(independent of the placement code) and passed through
:func:`lsched.formulations.slot.horizon.close_idle_slots`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from lsched.errors import InputError
from lsched.evaluator import simulate
from lsched.evaluator.slots import score_start_slots
from lsched.formulations.slot import SlotProblem
from lsched.formulations.slot.horizon import close_idle_slots, no_idle_horizon
from lsched.policies import PolicyError
from lsched.predictors import oracle

IntArray = npt.NDArray[np.int64]

#: Candidate start slots examined per vectorised step of the list scheduler.
_CHUNK = 512


def list_schedule(problem: SlotProblem, order: npt.ArrayLike) -> IntArray:
    """Place requests in ``order``, each at its earliest feasible start slot."""
    horizon = no_idle_horizon(problem) + 1
    kv = np.zeros(horizon, dtype=np.int64)
    seqs = np.zeros(horizon, dtype=np.int64)
    tokens = np.zeros(horizon, dtype=np.int64)
    capacity = problem.kv_capacity_blocks
    cap_seqs = problem.max_num_seqs or len(problem)
    budget = problem.max_num_batched_tokens
    start = np.zeros(len(problem), dtype=np.int64)
    for i in np.asarray(order, dtype=np.int64):
        o, s = int(problem.output_tokens[i]), int(problem.prompt_tokens[i])
        table = problem.kv_table(i)
        first = int(problem.release[i])
        while True:
            last = min(first + _CHUNK, horizon - o + 1)
            window = slice(first, last + o - 1)
            ok = np.all(sliding_window_view(kv[window], o) + table <= capacity, axis=1)
            ok &= np.all(sliding_window_view(seqs[window], o) < cap_seqs, axis=1)
            if budget is not None:
                load = sliding_window_view(tokens[window], o) + 1
                load[:, 0] += s - 1
                ok &= np.all(load <= budget, axis=1)
            if ok.any():
                at = first + int(np.argmax(ok))
                break
            first = last
        start[i] = at
        kv[at : at + o] += table
        seqs[at : at + o] += 1
        tokens[at : at + o] += 1
        tokens[at] += s - 1
    return start


def list_orders(problem: SlotProblem) -> dict[str, IntArray]:
    """The priority orders :func:`heuristic_schedules` tries, by name."""
    r, o, s = problem.release, problem.output_tokens, problem.prompt_tokens
    area = o * s + o * (o - 1) // 2
    return {
        "list-spt": np.lexsort((r, o / problem.weight)),
        "list-area": np.lexsort((r, area / problem.weight)),
        "list-arrival": np.lexsort((o, r)),
    }


def policy_schedule(problem: SlotProblem, policy: str) -> IntArray | None:
    """Start slots of ``policy``'s replay, or ``None`` if it preempted or failed."""
    instance = oracle(problem.unit_instance())
    try:
        result = simulate(instance, problem.unit_profile(), policy)
    except (PolicyError, InputError):
        return None
    requests = result.requests
    if requests["preemptions"].to_numpy().any():
        return None
    start = np.rint(requests["first_token_s"].to_numpy()).astype(np.int64) - 1
    return start


def heuristic_schedules(
    problem: SlotProblem, policies: tuple[str, ...] = ("mc-sf", "fcfs")
) -> dict[str, IntArray]:
    """Every feasible heuristic schedule, by source name (module docstring)."""
    candidates = {
        name: list_schedule(problem, order)
        for name, order in list_orders(problem).items()
    }
    for policy in policies:
        start = policy_schedule(problem, policy)
        if start is not None:
            candidates[policy] = start
    feasible = {}
    for name, start in candidates.items():
        if is_feasible(problem, start):
            feasible[name] = close_idle_slots(problem, start)
    return feasible


def best_heuristic(problem: SlotProblem) -> tuple[str, IntArray]:
    """The heuristic schedule with the smallest objective, and its source."""
    schedules = heuristic_schedules(problem)
    name = min(schedules, key=lambda k: problem.integer_objective(schedules[k]))
    return name, schedules[name]


def starting_schedule(
    problem: SlotProblem, initial_solution: npt.ArrayLike | None
) -> tuple[str, IntArray]:
    """The incumbent every solve starts from, and its source.

    ``initial_solution`` (checked: integer starts, feasible) or the best
    heuristic, with idle slots after the last release closed
    (:func:`~lsched.formulations.slot.horizon.close_idle_slots`, so that it keeps the
    safe deadlines) and identical requests in position order
    (:meth:`~lsched.formulations.slot.SlotProblem.canonical`, so that it keeps the
    symmetry-breaking constraints).

    Raises
    ------
    InputError
        Naming ``initial_solution`` if it has the wrong shape or breaks a rule.
    """
    if initial_solution is None:
        source, start = best_heuristic(problem)
    else:
        source, start = "initial", np.asarray(initial_solution)
        if start.shape != (len(problem),) or start.dtype.kind not in "iu":
            raise InputError(
                f"got shape {start.shape} dtype {start.dtype}; expected "
                f"{len(problem)} integer start slots",
                field="initial_solution",
            )
        if not is_feasible(problem, start):
            raise InputError(
                "the schedule breaks a slot-model rule (arrival, KV capacity, "
                "batch cap or token budget); expected a feasible schedule",
                field="initial_solution",
            )
    return source, problem.canonical(close_idle_slots(problem, start))


def is_feasible(problem: SlotProblem, start: npt.ArrayLike) -> bool:
    """Whether ``start`` keeps every slot-model rule (checked by the evaluator's
    vectorised scorer, which shares no code with the formulations)."""
    scores = score_start_slots(
        problem.unit_instance(),
        np.asarray(start, dtype=np.int64)[None, :],
        kv_capacity_tokens=problem.kv_capacity_blocks * problem.block_tokens,
        block_tokens=problem.block_tokens,
        max_num_seqs=problem.max_num_seqs,
        max_num_batched_tokens=problem.max_num_batched_tokens,
    )
    return bool(scores.feasible[0])
