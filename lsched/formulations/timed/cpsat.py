"""CP-SAT model of the timed model: integer time, durations rounded up.

Notation of :mod:`lsched.formulations.timed.problem` and of the MILP
(:mod:`lsched.formulations.timed.milp`): windows ``0 <= S_i <= L_i``, iterations
``k < K = max_i (L_i + o_i)``, booleans ``x[i,t]`` (``S_i = t``), ``u_k``
(iteration k exists), ``H_k`` (it has a prefill), ``z[k,r]`` (regime r, for
threshold cost models with several reachable regimes); the per-iteration limits,
features and existence rules are the MILP's, written as CP-SAT linear constraints
(``H_k = max_i x[i,k]``, ``x[i,t] => u_{t + o_i - 1}``).

Integer time (:class:`TimeScale`)
---------------------------------
Time counts units of ``1 / q`` seconds. ``q`` is a power of ten chosen from the
data, ``q = 10^ceil(log10(1 / (rho d_min)))`` with the relative resolution
``rho = 1e-5`` (the shortest iteration spans at least ``1 / rho`` units), or
``1 / time_unit_s`` if given. CP-SAT needs integer coefficients, so each piece's
weights are scaled by ``q R`` and rounded *up*, ``c_pf = ceil(q R w_pf)``, with a
second power of ten ``R >= 1000 Phi`` (``Phi = sum_f phi_max_f``, the feature
box), capped so that ``|c| . phi_max`` stays below ``2^50``. Then

    R d'_k >= c_p . phi_k          for every piece p (of the regime in force)
    T'_k >= T'_{k-1} + d'_{k-1},   x[i,t] => T'_t >= ceil(q a_i)
    latency:  x[i,t] => C'_i >= T'_{t+o_i-1} + d'_{t+o_i-1};  min sum_i w_i C'_i
    makespan: min T'_{K-1} + d'_{K-1}

Enforced constraints are invisible to CP-SAT's default LP relaxation, so two
valid linear rows carry the bound: ``u_k = 1`` for ``k <``
:attr:`~lsched.formulations.timed.problem.TimedProblem.min_iterations`, and
``C'_i >= T'_{o_i-1} + d'_{o_i-1} + ceil(q d_min) S_i`` (request ``i`` waits
through the ``S_i`` iterations ``o_i .. E_i - 1``, each at least ``d_min`` long).

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
``rho (1 + 1e-3)`` times the objective's span. ``OPTIMAL`` means CP-SAT proved its
integer objective optimal: the schedule is optimal up to ``Delta``. The
objective reported is always the exact replay
(:func:`~lsched.formulations.timed.problem.timed_objective`) of the best
schedule, never ``objective'``.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from ortools.sat.python import cp_model

from lsched.checks import check_solver_options, check_type
from lsched.errors import InputError
from lsched.formulations.result import (
    CPSAT_OTHER_LIMITS,
    LOG_COLUMNS,
    SolveResult,
    Status,
    cpsat_stop,
    decide_status,
)
from lsched.formulations.solvers.cpsat import configured_solver, solve_stoppable
from lsched.formulations.timed.incumbent import latest_starts, starting_schedule
from lsched.formulations.timed.problem import (
    ATTENTION,
    CONST,
    DECODE,
    HAS_PREFILL,
    KV_READ,
    PREFILL,
    TimedProblem,
    box_max,
    compact,
    iteration_features,
    timed_objective,
)
from lsched.interrupt import session

IntArray = npt.NDArray[np.int64]
Progress = Callable[[float, float | None, float], None]

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


@dataclass
class TimedCpModel:
    """A built CP-SAT model of the timed problem."""

    model: cp_model.CpModel
    start: list[cp_model.IntVar]
    scale: TimeScale
    latest: IntArray
    hints: Callable[[IntArray], None]


def build(
    problem: TimedProblem, latest: npt.ArrayLike, scale: TimeScale
) -> TimedCpModel:
    """The CP-SAT model of ``problem`` with start windows ``[0, latest_i]``."""
    latest_arr = np.asarray(latest, dtype=np.int64)
    n = len(problem)
    s = problem.prompt_tokens.tolist()
    o = problem.output_tokens.tolist()
    w = problem.weight.tolist()
    last = latest_arr.tolist()
    num = int(max(last[i] + o[i] for i in range(n)))
    tables = [problem.slots.kv_table(i).tolist() for i in range(n)]
    capacity = problem.slots.kv_capacity_blocks
    cap_seqs = problem.slots.max_num_seqs
    cap_tokens = problem.slots.max_num_batched_tokens
    box = problem.feature_max
    arrival = scale.arrival_units(problem.arrival_s).tolist()
    a_min = min(arrival)
    unit_r = scale.r
    # the longest iteration in units, rounding included
    top_s = problem.max_duration_s + float(box.sum()) / (unit_r * scale.units_per_s)
    d_top = math.ceil(scale.units_per_s * top_s) + 2
    horizon = max(arrival) + num * d_top
    d_least = math.ceil(scale.units_per_s * problem.min_duration_s - 1e-9)
    multi = len(problem.pieces) > 1
    switch = problem.switch_feature if multi else None

    model = cp_model.CpModel()
    x = {
        (i, t): model.new_bool_var(f"x{i}_{t}")
        for i in range(n)
        for t in range(last[i] + 1)
    }
    start = []
    for i in range(n):
        window = range(last[i] + 1)
        model.add_exactly_one([x[i, t] for t in window])
        var = model.new_int_var(0, last[i], f"S{i}")
        model.add(var == sum(t * x[i, t] for t in window))
        start.append(var)
    for group in problem.identical_groups():
        for p, q in itertools.pairwise(group.tolist()):
            model.add(start[p] <= start[q])

    def running(i: int, k: int) -> list[tuple[int, cp_model.IntVar]]:
        """``(offset j, x[i, k - j])`` for every start that runs i in iteration k."""
        return [
            (j, x[i, k - j]) for j in range(max(0, k - last[i]), min(k, o[i] - 1) + 1)
        ]

    u = [model.new_bool_var(f"u{k}") for k in range(num)]
    for k in range(min(problem.min_iterations, num)):
        model.add(u[k] == 1)
    for k in range(num - 1):
        model.add_implication(u[k + 1], u[k])
    for (i, t), var in x.items():
        model.add_implication(var, u[t + o[i] - 1])

    phi: list[list[Any]] = []
    h_vars: list[Any] = []
    for k in range(num):
        members = {i: running(i, k) for i in range(n)}
        members = {i: r for i, r in members.items() if r}
        model.add(sum(v for r in members.values() for _, v in r) >= u[k])
        if sum(tables[i][r[-1][0]] for i, r in members.items()) > capacity:
            model.add(
                sum(tables[i][j] * v for i, r in members.items() for j, v in r)
                <= capacity
            )
        if cap_seqs is not None and len(members) > cap_seqs:
            model.add(sum(v for r in members.values() for _, v in r) <= cap_seqs)
        if cap_tokens is not None and sum(max(s[i], 1) for i in members) > cap_tokens:
            model.add(
                sum(
                    (s[i] if j == 0 else 1) * v
                    for i, r in members.items()
                    for j, v in r
                )
                <= cap_tokens
            )
        prefills = [(i, x[i, k]) for i in range(n) if k <= last[i]]
        decodes = [(i, j, v) for i, r in members.items() for j, v in r if j >= 1]
        features: list[Any] = [0] * len(box)
        features[CONST] = u[k]
        features[PREFILL] = sum(s[i] * v for i, v in prefills)
        features[ATTENTION] = sum(s[i] * s[i] * v for i, v in prefills)
        features[DECODE] = sum(v for _, _, v in decodes)
        features[KV_READ] = sum((s[i] + j) * v for i, j, v in decodes)
        if prefills:
            has = model.new_bool_var(f"H{k}")
            model.add_max_equality(has, [v for _, v in prefills])
        else:
            has = 0
        features[HAS_PREFILL] = has
        h_vars.append(has)
        phi.append(features)

    d = [model.new_int_var(0, d_top, f"d{k}") for k in range(num)]
    z: dict[tuple[int, int], cp_model.IntVar] = {}

    def scaled(c: IntArray, k: int) -> Any:
        return sum(int(c[f]) * phi[k][f] for f in range(len(c)) if c[f] != 0)

    for k in range(num):
        if not multi:
            for c in scale.coefficients[0]:
                model.add(unit_r * d[k] >= scaled(c, k))
            continue
        assert switch is not None
        for r in range(len(problem.pieces)):
            z[k, r] = model.new_bool_var(f"z{k}_{r}")
        model.add(sum(z[k, r] for r in range(len(problem.pieces))) == u[k])
        for r, c_regime in enumerate(scale.coefficients):
            lo, hi = problem.regime_range[r]
            model.add(phi[k][switch] >= lo).only_enforce_if(z[k, r])
            model.add(phi[k][switch] <= hi).only_enforce_if(z[k, r])
            for c in c_regime:
                model.add(unit_r * d[k] >= scaled(c, k)).only_enforce_if(z[k, r])

    t_vars = [model.new_int_var(a_min, horizon, f"T{k}") for k in range(num)]
    for k in range(1, num):
        model.add(t_vars[k] >= t_vars[k - 1] + d[k - 1])
    for (i, t), var in x.items():
        if arrival[i] > a_min:
            model.add(t_vars[t] >= arrival[i]).only_enforce_if(var)

    def end(k: int) -> Any:
        return t_vars[k] + d[k]

    completion: list[Any] = []
    if problem.objective == "makespan":
        model.minimize(end(num - 1))
    else:
        for i in range(n):
            c_var = model.new_int_var(a_min, horizon, f"C{i}")
            # i waits through S_i iterations o_i .. E_i - 1, each >= d_min long
            model.add(c_var >= end(o[i] - 1) + d_least * start[i])
            for t in range(last[i] + 1):
                model.add(c_var >= end(t + o[i] - 1)).only_enforce_if(x[i, t])
            completion.append(c_var)
        model.minimize(sum(w[i] * completion[i] for i in range(n)))

    def hints(values: IntArray) -> None:
        """Hint every variable with its value at the schedule ``values``."""
        values = np.asarray(values, dtype=np.int64)
        features = iteration_features(problem, values)
        used = len(features)
        length = np.zeros(num, dtype=np.int64)
        length[:used] = scale.duration_units(problem, features)
        ready = np.full(num, a_min, dtype=np.int64)
        np.maximum.at(ready, values, scale.arrival_units(problem.arrival_s))
        begin = np.zeros(num, dtype=np.int64)
        previous = a_min
        for k in range(num):
            begin[k] = max(previous, int(ready[k]))
            previous = int(begin[k] + length[k])
        stop = begin + length
        for (i, t), var in x.items():
            model.add_hint(var, int(values[i] == t))
        for i in range(n):
            model.add_hint(start[i], int(values[i]))
        regime = problem.profile.iteration_time.regime_of(
            np.vstack([features, np.zeros((num - used, features.shape[1]))])
        )
        for k in range(num):
            model.add_hint(u[k], int(k < used))
            model.add_hint(d[k], int(length[k]))
            model.add_hint(t_vars[k], int(begin[k]))
            if not isinstance(h_vars[k], int):
                model.add_hint(
                    h_vars[k], int(k < used and features[k, HAS_PREFILL] > 0)
                )
            for r in range(len(problem.pieces)):
                if (k, r) in z:
                    model.add_hint(
                        z[k, r], int(k < used and regime[k] == problem.regimes[r])
                    )
        for i, c_var in enumerate(completion):
            model.add_hint(c_var, int(stop[values[i] + o[i] - 1]))

    return TimedCpModel(
        model=model, start=start, scale=scale, latest=latest_arr, hints=hints
    )


class _Recorder(cp_model.CpSolverSolutionCallback):
    """Logs (time, exact objective, bound) on every improvement."""

    def __init__(
        self,
        problem: TimedProblem,
        built: TimedCpModel,
        started: float,
        to_seconds: Callable[[float], float],
        on_progress: Progress | None,
    ) -> None:
        super().__init__()
        self.problem = problem
        self.built = built
        self.rows: list[tuple[float, float | None, float]] = []
        self.best: tuple[float, IntArray] | None = None
        self._started = started
        self._to_seconds = to_seconds
        self._objective: float | None = None
        self._bound = -math.inf
        self._on_progress = on_progress

    def record(self, objective: float | None, bound: float) -> None:
        if objective is not None and (
            self._objective is None or objective < self._objective
        ):
            self._objective = objective
        self._bound = max(self._bound, bound)
        row = (time.perf_counter() - self._started, self._objective, self._bound)
        self.rows.append(row)
        if self._on_progress is not None:
            self._on_progress(*row)

    def on_solution_callback(self) -> None:
        start = np.array([self.value(v) for v in self.built.start], dtype=np.int64)
        start = self.problem.canonical(compact(self.problem, start))
        exact = timed_objective(self.problem, start)
        if self.best is None or exact < self.best[0]:
            self.best = (exact, start)
        self.record(exact, -math.inf)

    def on_bound(self, bound: float) -> None:
        self.record(None, self._to_seconds(bound))


@session()
def solve(
    problem: TimedProblem,
    *,
    time_limit: float = 60.0,
    num_workers: int = 2,
    seed: int = 0,
    initial_solution: npt.ArrayLike | None = None,
    on_progress: Progress | None = None,
    time_unit_s: float | None = None,
    resolution: float = RESOLUTION,
    **params: Any,
) -> SolveResult:
    """Solve the timed ``problem`` with CP-SAT on integer time.

    Parameters
    ----------
    problem
        The timed problem.
    time_limit
        Wall-clock seconds for the whole call, model building included.
    num_workers
        CP-SAT search workers.
    seed
        CP-SAT ``random_seed``.
    initial_solution
        A timed schedule (start iterations) to start from (a hint); the best
        heuristic by default.
    on_progress
        ``on_progress(time_s, objective, bound)`` on every improvement: the exact
        objective of CP-SAT's schedules, and its bound minus the rounding bound.
    time_unit_s
        Seconds per integer time unit; chosen from ``resolution`` by default.
    resolution
        ``rho`` of the module docstring (ignored with ``time_unit_s``).
    **params
        Further CP-SAT parameters.

    Returns
    -------
    SolveResult
        ``solver="cpsat/timed"``; the exact objective of ``start``, and a bound
        valid for the exact objective. ``info`` holds ``time_unit_s``,
        ``rounding_bound_s`` (``Delta``) and ``rounded_objective_s`` (CP-SAT's own
        value of the schedule). Never raises on a time-out.

    Raises
    ------
    InputError
        If ``initial_solution`` is not a timed schedule, or on a bad parameter.
    """
    check_type(problem, "problem", TimedProblem, "a TimedProblem")
    time_limit, num_workers, seed = check_solver_options(time_limit, num_workers, seed)
    started = time.perf_counter()
    source, start, exact = starting_schedule(problem, initial_solution)
    latest = np.maximum(latest_starts(problem, exact), start)
    scale = TimeScale.choose(problem, time_unit_s=time_unit_s, resolution=resolution)
    built = build(problem, latest, scale)
    built.hints(start)
    delta = scale.error_bound_s(problem, latest)
    offset = problem.objective_offset

    def to_seconds(units: float) -> float:
        return units / scale.units_per_s + offset - delta

    remaining = time_limit - (time.perf_counter() - started)
    solver = configured_solver(max(0.0, remaining), num_workers, seed, params)
    recorder = _Recorder(problem, built, started, to_seconds, on_progress)
    recorder.record(exact, -math.inf)
    solver.best_bound_callback = recorder.on_bound
    code, interrupted = solve_stoppable(solver, built.model, recorder)

    best, best_source, value = start, source, exact
    if recorder.best is not None and recorder.best[0] < value:
        value, best = recorder.best
        best_source = "cpsat"
    bound = -math.inf
    if code == cp_model.OPTIMAL:
        bound = to_seconds(solver.objective_value)
    elif code == cp_model.FEASIBLE or code == cp_model.UNKNOWN:
        bound = to_seconds(solver.best_objective_bound)
    bound = min(bound, value)
    stop = cpsat_stop(
        solver.status_name(code),
        interrupted=interrupted,
        other_limits=bool(CPSAT_OTHER_LIMITS & params.keys()),
    )
    if code == cp_model.INFEASIBLE:  # impossible with a feasible hint in the windows
        status = decide_status(stop, None, bound, infeasible=True)
    else:
        # CP-SAT's proof is on rounded durations: optimal only if the bound,
        # less the rounding, still meets the objective
        status = decide_status(stop, value, bound)
    runtime = time.perf_counter() - started
    recorder.record(None if status == Status.INFEASIBLE else value, bound)
    info = {
        "incumbent": source,
        "source": best_source,
        "initial_objective": exact,
        "cpsat_status": solver.status_name(code),
        "branches": solver.num_branches,
        "conflicts": solver.num_conflicts,
        "iterations": int((latest + problem.output_tokens).max()),
        "time_unit_s": 1.0 / scale.units_per_s,
        "coefficient_scale": scale.coefficient_scale,
        "duration_error_s": scale.duration_error_s,
        "rounding_bound_s": delta,
        "rounded_objective_s": scale.objective_units(problem, best) / scale.units_per_s
        + offset,
    }
    log = pd.DataFrame(recorder.rows, columns=list(LOG_COLUMNS))
    if status == Status.INFEASIBLE:
        return SolveResult(
            status=status,
            objective=None,
            bound=math.inf,
            runtime_s=runtime,
            start=None,
            solver="cpsat/timed",
            log=log,
            info=info,
        )
    return SolveResult(
        status=status,
        objective=value,
        bound=bound,
        runtime_s=runtime,
        start=best,
        solver="cpsat/timed",
        log=log,
        info=info,
    )


__all__ = ["RESOLUTION", "TimeScale", "TimedCpModel", "build", "solve"]
