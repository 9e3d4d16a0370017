"""Integer seconds for the co-migration CP-SAT model, and the rounding it costs.

Notation of :mod:`lsched.formulations.comigration`. CP-SAT needs integer
coefficients, so time counts units of ``1 / U`` seconds and every coefficient is
rounded to the nearest unit: ``E_i = round(U e_i)``, ``M = round(U m)``, ``Bt =
round(U beta)``, ``L_k = round(U l_k)``. ``U`` is ``10^9`` (nanoseconds), or
the largest smaller power of ten for which the largest replica time that can
occur, ``U (sum_i e_i + n m + beta sum_i b_i + sum_k l_k)``, stays below
``2^50`` (far inside CP-SAT's int64), or ``1 / time_unit_s`` if given.

Rounding bound
--------------
For every assignment and replica, ``T'_j / U`` (CP-SAT's integer time, in
seconds) differs from ``T_j`` by at most

    Delta = sum_i |E_i / U - e_i| + n |M / U - m|
            + max(0, sum_i b_i - min_j G_j) |Bt / U - beta| + sum_k |L_k / U - l_k|,

a sum over every term that can enter one replica's time (the overflow of one
replica is at most ``sum_i b_i - min_j G_j`` blocks). Hence the maxima over
replicas differ by at most ``Delta`` too, CP-SAT's bound ``B'`` on ``max_j
T'_j`` gives the bound ``B' / U - Delta`` on the true optimum, and CP-SAT's
optimal assignment is within ``2 Delta`` of it. ``Delta`` is at most half a
unit per request, per move, per overflow block and per adapter, ``(2 n + O + K) /
(2 U)`` seconds with ``O`` the overflow above: about 1e-6 s for 1,000 requests
and 1,000 overflow blocks at ``U = 10^9``. Data on the unit grid (every time a
whole number of nanoseconds) has ``Delta`` of floating point only, and CP-SAT's
optimum is then the driver's ``optimal``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lsched.checks import check_number
from lsched.formulations.comigration.problem import CoMigrationProblem

__all__ = ["FINEST_UNITS_PER_S", "TimeScale"]

IntArray = npt.NDArray[np.int64]

#: Finest resolution: nanoseconds.
FINEST_UNITS_PER_S = 1e9
#: Largest integer time the model may reach (CP-SAT works in int64).
_MOST_UNITS = 2.0**50


@dataclass(frozen=True)
class TimeScale:
    """Integer coefficients of the co-migration model (module docstring).

    Attributes
    ----------
    units_per_s
        ``U``.
    exec_units
        ``E_i`` per request.
    move_units
        ``M``.
    block_units
        ``Bt``.
    load_units
        ``L_k`` per adapter.
    error_bound_s
        ``Delta``, seconds.
    """

    units_per_s: float
    exec_units: IntArray
    move_units: int
    block_units: int
    load_units: IntArray
    error_bound_s: float

    @classmethod
    def choose(
        cls, problem: CoMigrationProblem, time_unit_s: float | None = None
    ) -> TimeScale:
        """The scale of ``problem``: ``U`` from the data, or ``1 / time_unit_s``.

        Raises
        ------
        InputError
            If ``time_unit_s`` is not a positive number.
        """
        n = len(problem)
        total_blocks = int(problem.blocks.sum())
        most_s = (
            float(problem.exec_s.sum())
            + n * problem.move_s
            + problem.block_s * total_blocks
            + float(problem.adapter_load_s.sum())
        )
        if time_unit_s is None:
            units = FINEST_UNITS_PER_S
            while most_s * units >= _MOST_UNITS:
                units /= 10.0
        else:
            unit = check_number(time_unit_s, "time_unit_s", 0.0, strict=True)
            units = 1.0 / unit
        exec_units = np.rint(problem.exec_s * units).astype(np.int64)
        load_units = np.rint(problem.adapter_load_s * units).astype(np.int64)
        move_units = round(problem.move_s * units)
        block_units = round(problem.block_s * units)
        overflow = max(0, total_blocks - int(problem.capacity_blocks.min()))
        error = (
            float(np.abs(exec_units / units - problem.exec_s).sum())
            + n * abs(move_units / units - problem.move_s)
            + overflow * abs(block_units / units - problem.block_s)
            + float(np.abs(load_units / units - problem.adapter_load_s).sum())
        )
        return cls(
            units_per_s=units,
            exec_units=exec_units,
            move_units=move_units,
            block_units=block_units,
            load_units=load_units,
            error_bound_s=error,
        )

    def seconds(self, units: float) -> float:
        """A bound on CP-SAT's objective (units) as a bound on the true one."""
        if not math.isfinite(units):
            return units
        return units / self.units_per_s - self.error_bound_s

    def integer_objective(self, problem: CoMigrationProblem, where: IntArray) -> int:
        """``max_j T'_j`` of the assignment ``where``, in units."""
        c = problem.replicas
        work = np.bincount(where, weights=self.exec_units, minlength=c)
        moved = np.bincount(where[where != problem.replica], minlength=c)
        new = problem.needed(where) & ~problem.resident
        loads = new.T.astype(np.int64) @ self.load_units
        overflow = problem.overflow_blocks(where) * self.block_units
        times = work.astype(np.int64) + self.move_units * moved + overflow + loads
        return int(times.max())
