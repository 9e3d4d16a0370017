"""Variables of the timed MILP, the data its rows read, and schedules in and out.

Notation of :mod:`lsched.formulations.timed.milp`; times in model units of
``time_unit_s`` seconds.

Variables
---------
``x[i,t]`` binary (``S_i = t``) and its running sum ``y[i,t] = sum_{t' <= t}
x[i,t']`` (continuous, ``y[i,t] = y[i,t-1] + x[i,t]``; ``y = 0`` before 0 and 1
from ``L_i``), so that with ``E_i = S_i + o_i``::

    run_ik = y[i,k] - y[i,k-o_i]        i is in iteration k
    R_ik   = 1 - y[i,k-o_i]             i is not complete before k (E_i > k)

``u_k`` (iteration k exists), ``H_k`` (it has a prefill), ``Kr_k`` (its KV reads),
``d_k`` (its seconds, at most ``d_max``), ``T_k`` (its start, at least ``min
a``), all continuous; with threshold regimes, ``z[k,r]`` binary (regime ``r``
in force). ``Kr`` and ``H`` exist only if some piece of the cost model weighs
them. The latency's ``v[i,l]`` belong to the objective
(:mod:`lsched.formulations.timed.milp.objective`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyomo.environ as pyo
from pyomo.common.collections import ComponentMap

from lsched.formulations.solvers.highs import build_check
from lsched.formulations.timed.problem import (
    HAS_PREFILL,
    KV_READ,
    TimedProblem,
    compact,
    timed_schedule,
)
from lsched.formulations.timed.windows import WindowData

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class MilpData(WindowData):
    """The timed problem as the MILP's rows read it: Python lists, model units.

    The fields of :class:`~lsched.formulations.timed.windows.WindowData`, and:

    Attributes
    ----------
    unit_s
        Seconds per model time unit.
    a
        Arrivals in model units.
    pieces
        The cost model's pieces per reachable regime, in model units per feature.
    switch
        The switch feature's index with several regimes, else ``None``.
    used
        Features that some piece weighs (the switch feature included).
    d_min, d_max
        Bounds on a non-empty iteration's length, model units.
    check
        Raises :class:`~lsched.formulations.solvers.highs.BuildStopped` past the
        build's deadline or on a stop request.
    counts
        Rows written per family.
    """

    unit_s: float
    a: list[float]
    pieces: tuple[FloatArray, ...]
    switch: int | None
    used: npt.NDArray[np.bool_]
    d_min: float
    d_max: float
    check: Callable[[], None]
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        problem: TimedProblem,
        latest: npt.ArrayLike,
        unit_s: float,
        stop_at: float | None,
    ) -> MilpData:
        """The data of ``problem`` with windows ``[0, latest_i]``, times in
        ``unit_s`` seconds, a build that gives up past ``stop_at``."""
        pieces = tuple(weights / unit_s for weights in problem.pieces)
        switch = problem.switch_feature if len(pieces) > 1 else None
        used = np.zeros(len(problem.feature_max), dtype=bool)
        for weights in pieces:
            used |= np.any(weights != 0.0, axis=0)
        if switch is not None:
            used[switch] = True
        return cls(
            **WindowData.fields_of(problem, latest),
            unit_s=unit_s,
            a=(problem.arrival_s / unit_s).tolist(),
            pieces=pieces,
            switch=switch,
            used=used,
            d_min=problem.min_duration_s / unit_s,
            d_max=problem.max_duration_s / unit_s,
            check=build_check(stop_at),
        )

    @property
    def slack(self) -> float:
        """Float slack on the length bounds, model units."""
        return 1e-9 * max(1.0, self.d_max)

    def count(self, name: str, k: int = 1) -> None:
        """Count ``k`` rows of the family ``name``."""
        self.counts[name] = self.counts.get(name, 0) + k


def add_variables(m: pyo.ConcreteModel, data: MilpData) -> None:
    """Add ``K``, ``x``, ``y``, ``u``, ``Kr``, ``H``, ``d``, ``z`` and ``T`` to
    ``m`` (module docstring)."""
    n, last, num = data.n, data.last, data.num
    m.K = pyo.RangeSet(0, num - 1)
    m.x = pyo.Var(
        [(i, t) for i in range(n) for t in range(last[i] + 1)], domain=pyo.Binary
    )
    m.y = pyo.Var([(i, t) for i in range(n) for t in range(last[i])], bounds=(0, 1))
    m.u = pyo.Var(m.K, bounds=(0, 1))
    if data.used[KV_READ]:
        m.Kr = pyo.Var(m.K, bounds=(0, None))
    if data.used[HAS_PREFILL]:
        m.H = pyo.Var(m.K, bounds=(0, 1))
    m.d = pyo.Var(m.K, bounds=(0, data.d_max + data.slack))
    if data.switch is not None:
        m.z = pyo.Var(
            [(k, r) for k in range(num) for r in range(len(data.pieces))],
            domain=pyo.Binary,
        )
    m.T = pyo.Var(m.K, bounds=(min(data.a), None))


def cumulative(m: pyo.ConcreteModel, data: MilpData, i: int, t: int) -> Any:
    """``y[i,t]``, with its constant ends: 0 before 0, 1 from ``L_i``."""
    if t < 0:
        return 0
    if t >= data.last[i]:
        return 1
    return m.y[i, t]


def end(m: pyo.ConcreteModel, k: int) -> Any:
    """``F_k = T_k + d_k``, the end of iteration ``k`` (``F_{-1} = 0``)."""
    return m.T[k] + m.d[k] if k >= 0 else 0


@dataclass
class TimedModel:
    """A built timed MILP and what is needed to map schedules in and out.

    Attributes
    ----------
    model
        The Pyomo model (the package docstring's variables and rules,
        ``objective``).
    problem
        The timed problem.
    latest
        ``L_i`` used for the windows.
    time_unit_s
        Seconds per unit of the model's times.
    counts
        Rows written per family.
    """

    model: pyo.ConcreteModel
    problem: TimedProblem
    latest: IntArray
    time_unit_s: float
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def num_iterations(self) -> int:
        """``K = max_i (L_i + o_i)``."""
        return int((self.latest + self.problem.output_tokens).max())

    def values(self, start: npt.ArrayLike) -> ComponentMap:
        """Values of every variable for the timed schedule ``start``.

        ``start`` must be a timed schedule inside the windows, identical requests
        in position order.
        """
        problem, m = self.problem, self.model
        sched = timed_schedule(problem, start)
        start = np.asarray(sched.start)
        used, num = sched.num_iterations, self.num_iterations
        phi = np.zeros((num, sched.features.shape[1]))
        phi[:used] = sched.features
        d = np.zeros(num)
        d[:used] = sched.duration_s / self.time_unit_s
        begin = np.full(num, sched.end_s[-1] / self.time_unit_s)
        begin[:used] = sched.start_s / self.time_unit_s
        out = ComponentMap()
        for i, t in m.x:
            out[m.x[i, t]] = float(start[i] == t)
        for i, t in m.y:
            out[m.y[i, t]] = float(start[i] <= t)
        for k in m.K:
            out[m.u[k]] = float(k < used)
            out[m.d[k]] = float(d[k])
            out[m.T[k]] = float(begin[k])
        if hasattr(m, "Kr"):
            for k in m.K:
                out[m.Kr[k]] = float(phi[k, KV_READ])
        if hasattr(m, "H"):
            for k in m.K:
                out[m.H[k]] = float(phi[k, HAS_PREFILL])
        if hasattr(m, "z"):
            regime = problem.profile.iteration_time.regime_of(phi)
            for k, r in m.z:
                out[m.z[k, r]] = float(k < used and regime[k] == problem.regimes[r])
        if hasattr(m, "v"):
            delta = np.diff(begin + d, prepend=0.0)
            stop = start + problem.output_tokens
            for i, ell in m.v:
                out[m.v[i, ell]] = float(delta[ell]) if ell < stop[i] else 0.0
        return out

    def start_of(self, value: ComponentMap) -> IntArray:
        """Start iterations read from variable values (largest ``x[i,t]`` per
        ``i``), compacted."""
        n = len(self.problem)
        best = np.full(n, -1.0)
        start = np.zeros(n, dtype=np.int64)
        for (i, t), var in self.model.x.items():
            v = value[var]
            if v > best[i]:
                best[i], start[i] = v, t
        return compact(self.problem, start)


__all__ = ["MilpData", "TimedModel", "add_variables", "cumulative", "end"]
