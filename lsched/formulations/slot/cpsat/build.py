"""The slot model in CP-SAT: three formulations, one model builder.

Notation of :mod:`lsched.formulations.slot`: release ``r_i``, output ``o_i``, KV
table ``k_ij`` (nondecreasing in ``j``), capacity ``M``, batch cap ``N``, token
budget ``B``; start domains ``lo_i <= S_i <= hi_i`` (the safe deadlines of
:mod:`lsched.formulations.slot.horizon` give ``hi_i = d_i - o_i``).

:func:`build` assembles the model from the start variables
(:mod:`~lsched.formulations.slot.cpsat.variables`), one formulation of the KV,
batch and budget rules and the symmetry order
(:mod:`~lsched.formulations.slot.cpsat.constraints`, where each formulation's
math is), and the objective (:mod:`~lsched.formulations.slot.cpsat.objective`).

The formulations
----------------
``interval`` (:func:`~lsched.formulations.slot.cpsat.constraints.add_interval`)
    The KV staircase of every request as fixed-size intervals in one
    cumulative: exact, with no time index. It proves ``n = 10`` in a few
    seconds, but the cumulative's energetic reasoning sees flat demands, not
    the sawtooth, so its bound stalls (below the closed-form bounds from
    ``n = 20``).
``time-indexed`` (:func:`~lsched.formulations.slot.cpsat.constraints.add_time_indexed`)
    Start booleans and one linear row per slot: at ``n = 60`` over a million
    terms, and it proved 2 of the 6 ``n = 10`` benchmark cases in 20 s, against
    6 for the other two (``benchmarks/slot_model/README.md``).
``events`` (:func:`~lsched.formulations.slot.cpsat.constraints.add_events`)
    The default, the one that wins: the KV rule checked in every request's last
    slot, with ``n^2`` ordering booleans. Measured on the benchmark (2 workers,
    20 s): it proves every ``n = 10`` case about 4x faster than ``interval``
    (median 0.5-0.9 s against 2.8-4.1 s), because the ordering booleans ``a_ik``
    let CP-SAT learn on completion orders directly; at ``n = 40`` its schedules
    are as good (within 1 %, better on 2 of 3 seeds). So it is the default;
    ``interval`` stays for instances with very many requests (its size is linear
    in ``sum o``, not quadratic in ``n``).

All formulations add the symmetry order of identical requests
(:func:`~lsched.formulations.slot.cpsat.constraints.add_symmetry`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from ortools.sat.python import cp_model

from lsched.errors import InputError
from lsched.formulations.slot import SlotProblem
from lsched.formulations.slot.cpsat.constraints import (
    add_events,
    add_interval,
    add_symmetry,
    add_time_indexed,
)
from lsched.formulations.slot.cpsat.objective import set_objective
from lsched.formulations.slot.cpsat.variables import start_variables

IntArray = npt.NDArray[np.int64]

#: The KV, batch and budget rules of each formulation (module docstring).
_RULES: dict[str, Callable[..., None]] = {
    "interval": add_interval,
    "time-indexed": add_time_indexed,
    "events": add_events,
}

FORMULATIONS: tuple[str, ...] = tuple(_RULES)


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
    start = start_variables(model, lo, hi)
    _RULES[formulation](model, problem, start, lo, hi)
    add_symmetry(model, problem, start)
    set_objective(model, problem, start, hi)
    return SlotModel(model, start, formulation)
