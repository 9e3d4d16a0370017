"""Integer time for the timed CP-SAT model, and the rounding bound it costs.

Notation of :mod:`lsched.formulations.timed.problem` and of
:mod:`lsched.formulations.timed.cpsat`.

Integer time (:class:`TimeScale`)
---------------------------------
Time counts units of ``1 / q`` seconds. ``q`` is a power of ten chosen from the
data, ``q = 10^ceil(log10(1 / (rho d_min)))`` with the relative resolution
``rho = 1e-5`` (the shortest iteration spans at least ``1 / rho`` units), or
``1 / time_unit_s`` if given. CP-SAT needs integer coefficients, so each piece's
weights are scaled by ``q R`` and rounded *up*, ``c_pf = ceil(q R w_pf)``, with a
second power of ten ``R >= 1000 Phi`` (``Phi = sum_f phi_max_f``, the feature
box), capped so that ``|c| . phi_max`` stays below ``2^50``; the model's rows
then say ``R d'_k >= c_p . phi_k``
(:mod:`lsched.formulations.timed.cpsat.constraints`).

Rounding bound
--------------
All features are ``>= 0``, so ``c_p . phi >= q R w_p . phi``: the least ``d'_k``
is ``ceil(max_p c_p . phi_k / R) >= q d_k``, and below ``q d_k + Phi / R + 1``.
Arrivals are rounded up by less than one unit. By induction over
``F_k = max(F_{k-1}, A_k) + d_k`` (a max of overestimates overestimates by at
most the larger error), the integer end of iteration ``k`` overestimates the
true one by

    0 <= F'_k / q - F_k < 1/q + (k + 1) e,    e = (1 + Phi / R) / q,

so for every schedule inside the windows, with ``E_i = S_i + o_i <= L_i + o_i``,

    0 <= objective'(S) - objective(S) <= Delta,
    Delta = sum_i w_i (1/q + (L_i + o_i) e)     (latency)
    Delta = 1/q + K e                            (makespan)

(:meth:`TimeScale.error_bound_s`). Hence CP-SAT's schedule is within ``Delta`` of
the true optimum, and CP-SAT's bound on ``objective'``, minus ``Delta``, bounds
the true optimum from below; that is the bound reported. Since every iteration
lasts at least ``d_min`` and ``1/q <= rho d_min``, ``Delta`` is about
``rho (1 + 1e-3)`` times the objective's span.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lsched.errors import InputError
from lsched.formulations.timed.problem import (
    TimedProblem,
    box_max,
    iteration_features,
)

IntArray = npt.NDArray[np.int64]

#: Default relative resolution rho: the shortest iteration spans >= 1 / rho units.
RESOLUTION = 1e-5

#: Bound on ``|c| . phi_max`` (and on the integer time horizon's scale).
_LIMIT = 2.0**50


def _power_of_ten_at_least(value: float) -> float:
    return 10.0 ** max(0, math.ceil(math.log10(value) - 1e-12))


@dataclass(frozen=True, eq=False)
class TimeScale:
    """Integer time and rounded-up durations (module docstring).

    Attributes
    ----------
    units_per_s
        ``q``.
    coefficient_scale
        ``R``.
    coefficients
        ``c`` per reachable regime, integer arrays of shape ``(pieces, 6)``.
    duration_error_s
        ``e = (1 + Phi / R) / q``: the most an iteration's rounded length
        exceeds its true one, seconds.
    """

    units_per_s: float
    coefficient_scale: float
    coefficients: tuple[IntArray, ...]
    duration_error_s: float

    @classmethod
    def choose(
        cls,
        problem: TimedProblem,
        *,
        time_unit_s: float | None = None,
        resolution: float = RESOLUTION,
    ) -> TimeScale:
        """The scale for ``problem`` (module docstring).

        Raises
        ------
        InputError
            On a ``time_unit_s`` or ``resolution`` that is not a number > 0.
        """
        if time_unit_s is not None:
            if not isinstance(time_unit_s, int | float) or not time_unit_s > 0:
                raise InputError(
                    f"got {time_unit_s!r}; expected seconds > 0", field="time_unit_s"
                )
            q = 1.0 / float(time_unit_s)
        else:
            if not isinstance(resolution, int | float) or not 0 < resolution < 1:
                raise InputError(
                    f"got {resolution!r}; expected a fraction in (0, 1)",
                    field="resolution",
                )
            base = problem.min_duration_s or problem.max_duration_s or 1.0
            q = _power_of_ten_at_least(1.0 / (resolution * base))
        box = problem.feature_max
        phi_sum = float(box.sum())
        largest = max(
            float(box_max(np.abs(w), np.zeros_like(box), box).max())
            for w in problem.pieces
        )
        r = _power_of_ten_at_least(1000.0 * phi_sum)
        r = max(
            1.0,
            min(r, 10.0 ** math.floor(math.log10(_LIMIT / (q * largest + phi_sum)))),
        )
        coefficients = tuple(
            np.ceil(w * (q * r)).astype(np.int64) for w in problem.pieces
        )
        return cls(
            units_per_s=q,
            coefficient_scale=r,
            coefficients=coefficients,
            duration_error_s=(1.0 + phi_sum / r) / q,
        )

    @property
    def r(self) -> int:
        return int(self.coefficient_scale)

    def arrival_units(self, arrival_s: npt.ArrayLike) -> IntArray:
        """``ceil(q a)``."""
        return np.ceil(np.asarray(arrival_s) * self.units_per_s).astype(np.int64)

    def duration_units(self, problem: TimedProblem, phi: npt.ArrayLike) -> IntArray:
        """Least ``d'`` of each batch: ``max(0, ceil(max_p c_p . phi / R))`` in the
        regime in force."""
        phi = np.asarray(phi, dtype=np.float64)
        regime = problem.profile.iteration_time.regime_of(phi)
        features = np.rint(phi).astype(np.int64)
        out = np.zeros(len(phi), dtype=np.int64)
        for index, r in enumerate(problem.regimes):
            rows = regime == r
            value = (features[rows] @ self.coefficients[index].T).max(axis=1)
            out[rows] = np.maximum(0, -(-value // self.r))
        return out

    def error_bound_s(self, problem: TimedProblem, latest: npt.ArrayLike) -> float:
        """``Delta``: ``objective' - objective`` of any schedule inside the windows
        ``S_i <= latest_i`` lies in ``[0, Delta]`` seconds."""
        stop = np.asarray(latest) + problem.output_tokens
        unit = 1.0 / self.units_per_s
        if problem.objective == "makespan":
            return unit + float(stop.max()) * self.duration_error_s
        return float(np.dot(problem.weight, unit + stop * self.duration_error_s))

    def objective_units(self, problem: TimedProblem, start: npt.ArrayLike) -> int:
        """``objective'`` of the schedule ``start`` without its constant (integer
        units): what the CP-SAT model minimises at its least times."""
        start = np.asarray(start, dtype=np.int64)
        phi = iteration_features(problem, start)
        d = self.duration_units(problem, phi)
        ready = np.full(len(d), np.iinfo(np.int64).min // 4)
        np.maximum.at(ready, start, self.arrival_units(problem.arrival_s))
        end = np.zeros(len(d), dtype=np.int64)
        previous = np.iinfo(np.int64).min // 4
        for k in range(len(d)):
            previous = max(previous, int(ready[k])) + int(d[k])
            end[k] = previous
        done = end[start + problem.output_tokens - 1]
        if problem.objective == "makespan":
            return int(done.max())
        return int(np.dot(problem.weight, done))


__all__ = ["RESOLUTION", "TimeScale"]
