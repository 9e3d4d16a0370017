"""Variables of the timed CP-SAT model, the data its rows read, and its hints.

Notation of :mod:`lsched.formulations.timed.cpsat`; times in integer units of
``1 / q`` seconds (:mod:`lsched.formulations.timed.cpsat.scale`).

Variables
---------
Booleans ``x[i,t]`` (``S_i = t``) for ``t <= L_i``, the integer start ``S_i``,
booleans ``u_k`` (iteration ``k`` exists) and ``H_k`` (it has a prefill; ``0``
where no request can start), integer lengths ``d'_k`` and starts ``T'_k``, and
with several reachable regimes of a threshold cost model booleans ``z[k,r]``
(regime ``r`` in force). The latency's completions ``C'_i`` belong to the
objective (:mod:`lsched.formulations.timed.cpsat.objective`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from ortools.sat.python import cp_model

from lsched.formulations.timed.cpsat.scale import TimeScale
from lsched.formulations.timed.problem import (
    HAS_PREFILL,
    TimedProblem,
    iteration_features,
)
from lsched.formulations.timed.windows import WindowData

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class CpData(WindowData):
    """The timed problem as the CP-SAT rows read it: Python lists, integer time.

    The fields of :class:`~lsched.formulations.timed.windows.WindowData`, and:

    Attributes
    ----------
    scale
        Integer time and coefficients.
    arrival
        ``ceil(q a_i)``.
    d_top
        The longest iteration in units, rounding included.
    horizon
        The latest end in units.
    d_least
        ``ceil(q d_min)``.
    """

    scale: TimeScale
    arrival: list[int]
    d_top: int
    horizon: int
    d_least: int

    @classmethod
    def of(
        cls, problem: TimedProblem, latest: npt.ArrayLike, scale: TimeScale
    ) -> CpData:
        """The data of ``problem`` with windows ``[0, latest_i]`` on ``scale``."""
        windows = WindowData.fields_of(problem, latest)
        arrival = scale.arrival_units(problem.arrival_s).tolist()
        box_sum = float(problem.feature_max.sum())
        top_s = problem.max_duration_s + box_sum / (scale.r * scale.units_per_s)
        d_top = math.ceil(scale.units_per_s * top_s) + 2
        return cls(
            **windows,
            scale=scale,
            arrival=arrival,
            d_top=d_top,
            horizon=max(arrival) + windows["num"] * d_top,
            d_least=math.ceil(scale.units_per_s * problem.min_duration_s - 1e-9),
        )

    @property
    def a_min(self) -> int:
        """The first arrival in units."""
        return min(self.arrival)

    @property
    def regimes(self) -> int:
        """Reachable regimes of the cost model."""
        return len(self.problem.pieces)


@dataclass(frozen=True, eq=False)
class CpVariables:
    """The model's variables (module docstring).

    Attributes
    ----------
    x
        ``x[i,t]`` by ``(i, t)``.
    start
        ``S_i``.
    u
        ``u_k``.
    has_prefill
        ``H_k``, or ``0`` where no request can start.
    d
        ``d'_k``.
    z
        ``z[k,r]`` by ``(k, r)``; empty with one regime.
    t
        ``T'_k``.
    """

    x: dict[tuple[int, int], cp_model.IntVar]
    start: list[cp_model.IntVar]
    u: list[cp_model.IntVar]
    has_prefill: list[Any]
    d: list[cp_model.IntVar]
    z: dict[tuple[int, int], cp_model.IntVar]
    t: list[cp_model.IntVar]


def add_variables(model: cp_model.CpModel, data: CpData) -> CpVariables:
    """The variables of the module docstring, added to ``model``."""
    n, last, num = data.n, data.last, data.num
    x = {
        (i, t): model.new_bool_var(f"x{i}_{t}")
        for i in range(n)
        for t in range(last[i] + 1)
    }
    start = [model.new_int_var(0, last[i], f"S{i}") for i in range(n)]
    u = [model.new_bool_var(f"u{k}") for k in range(num)]
    can_start = max(last)
    has_prefill = [
        model.new_bool_var(f"H{k}") if k <= can_start else 0 for k in range(num)
    ]
    d = [model.new_int_var(0, data.d_top, f"d{k}") for k in range(num)]
    z = {}
    if data.regimes > 1:
        z = {
            (k, r): model.new_bool_var(f"z{k}_{r}")
            for k in range(num)
            for r in range(data.regimes)
        }
    t = [model.new_int_var(data.a_min, data.horizon, f"T{k}") for k in range(num)]
    return CpVariables(x=x, start=start, u=u, has_prefill=has_prefill, d=d, z=z, t=t)


@dataclass(frozen=True, eq=False)
class TimedCpModel:
    """A built CP-SAT model of the timed problem.

    Attributes
    ----------
    model
        The CP-SAT model.
    data
        What its rows were written from.
    variables
        Its variables.
    completion
        ``C'_i`` (latency), else empty.
    """

    model: cp_model.CpModel
    data: CpData
    variables: CpVariables
    completion: list[cp_model.IntVar]

    @property
    def start(self) -> list[cp_model.IntVar]:
        """``S_i``."""
        return self.variables.start

    @property
    def scale(self) -> TimeScale:
        """Integer time and coefficients."""
        return self.data.scale

    @property
    def latest(self) -> IntArray:
        """``L_i``."""
        return self.data.latest

    def hints(self, values: npt.ArrayLike) -> None:
        """Hint every variable with its value at the timed schedule ``values``."""
        data, v, model = self.data, self.variables, self.model
        problem, scale, num = data.problem, data.scale, data.num
        values = np.asarray(values, dtype=np.int64)
        features = iteration_features(problem, values)
        used = len(features)
        length = np.zeros(num, dtype=np.int64)
        length[:used] = scale.duration_units(problem, features)
        ready = np.full(num, data.a_min, dtype=np.int64)
        np.maximum.at(ready, values, scale.arrival_units(problem.arrival_s))
        begin = np.zeros(num, dtype=np.int64)
        previous = data.a_min
        for k in range(num):
            begin[k] = max(previous, int(ready[k]))
            previous = int(begin[k] + length[k])
        stop = begin + length
        for (i, t), var in v.x.items():
            model.add_hint(var, int(values[i] == t))
        for i in range(data.n):
            model.add_hint(v.start[i], int(values[i]))
        regime = problem.profile.iteration_time.regime_of(
            np.vstack([features, np.zeros((num - used, features.shape[1]))])
        )
        for k in range(num):
            model.add_hint(v.u[k], int(k < used))
            model.add_hint(v.d[k], int(length[k]))
            model.add_hint(v.t[k], int(begin[k]))
            if not isinstance(v.has_prefill[k], int):
                model.add_hint(
                    v.has_prefill[k], int(k < used and features[k, HAS_PREFILL] > 0)
                )
            for r in range(data.regimes):
                if (k, r) in v.z:
                    model.add_hint(
                        v.z[k, r], int(k < used and regime[k] == problem.regimes[r])
                    )
        for i, c_var in enumerate(self.completion):
            model.add_hint(c_var, int(stop[values[i] + data.o[i] - 1]))


__all__ = ["CpData", "CpVariables", "TimedCpModel", "add_variables"]
