"""Time-indexed MILP of the slot model, built as a Pyomo ``ConcreteModel``.

Data and rules are those of :mod:`lsched.formulations.slot`: request ``i`` has
release ``r_i``, prompt ``s_i``, output ``o_i``, weight ``w_i`` and KV table
``k_ij`` (``j = 0..o_i-1``, nondecreasing); ``M`` KV blocks, batch cap ``N`` and
token budget ``B`` (both optional). Safe deadlines ``d_i``
(:func:`lsched.formulations.slot.horizon.deadlines`) bound every start to the window

    T_i = {r_i, ..., L_i},   L_i = d_i - o_i.

The model
---------
:func:`build_model` assembles it, in this order (the order of the compiled rows
and columns):

- the binary starts ``x[i,t]``, ``t in T_i``
  (:mod:`~lsched.formulations.slot.milp.variables`);
- the rows of :mod:`~lsched.formulations.slot.milp.constraints`, each family's
  math with its function: one start per request (``assign``), then per slot
  ``tau`` the KV row (the "aggregated memory constraints"), the batch row, the
  token-budget row and the clique rows; then, for groups of identical requests,
  the cumulative starts ``y[i,t]`` and the symmetry rows;
- the objective (:mod:`~lsched.formulations.slot.milp.objective`): ``latency``,
  ``ttft``, or ``makespan`` with one continuous ``C``.

Strengthening (:class:`Strengthening`; each can be switched off to measure it)
-------------------------------------------------------------------------------
``skip_rows``
    KV, batch and budget rows that can never be violated are not written
    (:func:`~lsched.formulations.slot.milp.constraints.add_kv_row` and its
    neighbours): the same polytope with fewer rows.
``symmetry``
    Interchangeable requests start in index order
    (:func:`~lsched.formulations.slot.milp.constraints.add_symmetry`).
``cliques``
    At most ``c`` running requests each hold more than ``M / (c+1)`` blocks,
    ``c = 1, 2`` (:func:`~lsched.formulations.slot.milp.constraints.add_clique_rows`).
``energy``
    Makespan only: bounds on ``C`` from the KV volume
    (:func:`~lsched.formulations.slot.milp.objective.makespan_bounds`).

What they measured (``jaillet(10, seed=s)``, ``s = 0..4``, unit-slot profile,
HiGHS 1.16, one thread, 2-core machine)
  LP bound (problem units), all / none / without ``cliques`` / without ``energy``:

  ========  ================================  ================================
  seed      latency                           makespan
  ========  ================================  ================================
  0         422.5 / 420.3 / 420.3 / 422.5     91.0 / 65.8 / 91.0 / 66.2
  1         278.7 / 277.4 / 277.4 / 278.7     63.0 / 46.2 / 63.0 / 46.6
  2         291.3 / 290.3 / 290.3 / 291.3     66.0 / 46.4 / 66.0 / 46.7
  3         373.3 / 370.9 / 370.9 / 373.3     86.0 / 65.9 / 86.0 / 66.2
  4         290.0 / 289.1 / 289.1 / 290.0     66.0 / 57.1 / 66.0 / 57.2
  ========  ================================  ================================

  (TTFT moves like latency: +1 to +2.4 from ``cliques``.) ``energy`` is the
  big gain for makespan (+16 to +39%); ``cliques`` adds 0.3-0.6% to the
  latency/TTFT LP bound and, at a 15 s limit, the final dual bound (seed 0: 470
  with them, 464-468 without); seed 1 solves to optimality in about 10 s either
  way. ``skip_rows`` removes only 1-2 KV rows on these instances (their KV
  capacity binds almost everywhere) and changes nothing measurable; it pays on
  instances with slack memory and is free. ``symmetry`` (10 requests of 3 kinds,
  M = 40, latency, 10 s limit): one instance solved in 7.6 s with it and not in
  10 s without (bound 249 vs 266 optimum), one equal, one 0.5 s slower; kept.
  Differences in 15 s solves between identical models are run-to-run noise of a
  few units (wall-clock interrupts), so only the LP bounds are exact.

Building
--------
The build counts inside the solve's wall-clock limit (issue 20), so it is made
fast: each row's (request, offset) pairs, its columns and coefficients are NumPy
index arithmetic (:class:`~lsched.formulations.slot.milp.constraints.Running`),
and the row goes to Pyomo as one ``LinearExpression`` of its coefficients and
variables (:meth:`~lsched.formulations.slot.milp.variables.StartColumns.row`),
not term by term through ``quicksum`` and operator
overloading; Python's cyclic garbage collector is paused meanwhile (it would walk
the growing model again and again). The model is the same, row for row
(``benchmarks/milp_build``: an order-free fingerprint of the compiled matrices);
the build is 4.5-14 times faster (Jaillet n = 60, 1.4-4.8 million nonzeros:
0.9-3.8 s against 8-30 s on a loaded 2-core machine), and Pyomo's compilation to
matrices (:func:`lsched.formulations.solvers.highs.load`, 2-9 s there, unchanged) is
now most of the time.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyomo.environ as pyo
from pyomo.common.collections import ComponentMap
from pyomo.common.gc_manager import PauseGC

from lsched.formulations.slot import SlotProblem
from lsched.formulations.slot.milp.constraints import (
    add_assignment,
    add_slot_rows,
    add_symmetry,
    kv_matrix,
)
from lsched.formulations.slot.milp.objective import add_objective
from lsched.formulations.slot.milp.variables import add_cumulative_starts, add_starts
from lsched.formulations.solvers.highs import build_check

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Strengthening:
    """Which valid strengthenings to add (module docstring); all on by default."""

    skip_rows: bool = True
    symmetry: bool = True
    cliques: bool = True
    energy: bool = True


@dataclass
class SlotModel:
    """A built model and what is needed to read a schedule back.

    Attributes
    ----------
    model
        The Pyomo model: ``x`` (binary starts), ``C`` (makespan only), ``y``
        (cumulative starts of symmetric requests), constraints and ``objective``.
    problem
        The slot problem.
    deadline
        ``d_i`` used for the windows.
    groups
        Groups of interchangeable requests (sorted indices), size >= 2, for which
        symmetry rows were written.
    counts
        Rows written per family, and rows skipped (``kv_skipped``, ...).
    """

    model: pyo.ConcreteModel
    problem: SlotProblem
    deadline: IntArray
    groups: list[list[int]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def latest_start(self) -> IntArray:
        """``L_i = d_i - o_i``."""
        return self.deadline - self.problem.output_tokens

    def values(self, start: npt.ArrayLike) -> ComponentMap:
        """Values of every model variable for the schedule ``start``.

        ``start`` must satisfy ``r_i <= S_i <= L_i`` and the symmetry order
        (:meth:`~lsched.formulations.slot.SlotProblem.canonical`).
        """
        start = np.asarray(start, dtype=np.int64)
        model, problem = self.model, self.problem
        out = ComponentMap()
        for i, t in model.x:
            out[model.x[i, t]] = 1.0 if start[i] == t else 0.0
        if hasattr(model, "y"):
            for i, t in model.y:
                out[model.y[i, t]] = 1.0 if start[i] <= t else 0.0
        if hasattr(model, "C"):
            out[model.C] = float((start + problem.output_tokens).max())
        return out

    def start_of(self, value: ComponentMap) -> IntArray:
        """Start slots read from variable values (the largest ``x[i,t]`` per ``i``)."""
        n = len(self.problem)
        best = np.full(n, -1.0)
        start = np.asarray(self.problem.release, dtype=np.int64).copy()
        for (i, t), var in self.model.x.items():
            v = value[var]
            if v > best[i]:
                best[i], start[i] = v, t
        return start


def build_model(
    problem: SlotProblem,
    deadline: npt.ArrayLike,
    *,
    upper_bound: int | None = None,
    strengthening: Strengthening | None = None,
    stop_at: float | None = None,
) -> SlotModel:
    """The time-indexed model of ``problem`` with start windows ``[r_i, d_i - o_i]``.

    Parameters
    ----------
    problem
        The slot problem.
    deadline
        Safe latest completions ``d_i`` (some optimal schedule meets them).
    upper_bound
        Integer objective of a feasible schedule; bounds ``C`` for makespan.
    strengthening
        Which strengthenings to add; all by default.
    stop_at
        A ``time.monotonic()`` deadline: past it, or on a user's stop request
        (:mod:`lsched.interrupt`), the build gives up with
        :class:`~lsched.formulations.solvers.highs.BuildStopped` (checked once per
        slot, so within one slot's rows).

    Returns
    -------
    SlotModel
        The model, with the bookkeeping to map schedules in and out.

    Raises
    ------
    lsched.formulations.solvers.highs.BuildStopped
        Past ``stop_at`` or on a stop request.
    """

    # a build makes millions of small objects: Python's cyclic collector would
    # walk the growing model again and again (Pyomo's compiler pauses it too)
    with PauseGC():
        return _build(problem, deadline, upper_bound, strengthening, stop_at)


def _build(
    problem: SlotProblem,
    deadline: npt.ArrayLike,
    upper_bound: int | None,
    strengthening: Strengthening | None,
    stop_at: float | None,
) -> SlotModel:
    """:func:`build_model`, with the garbage collector paused."""
    check = build_check(stop_at)
    opts = strengthening or Strengthening()
    deadline = np.asarray(deadline, dtype=np.int64)
    latest = deadline - problem.output_tokens
    if np.any(latest < problem.release):
        i = int(np.flatnonzero(latest < problem.release)[0])
        raise ValueError(f"request {i}: deadline {deadline[i]} leaves no start slot")
    counts: dict[str, int] = defaultdict(int)
    # k_ij as one array: the rows are built from index arrays (module
    # docstring, "Building")
    kv = kv_matrix(problem)

    model = pyo.ConcreteModel(name=f"slot-time-indexed:{problem.name}")
    starts = add_starts(model, problem, latest)
    add_assignment(model, starts)
    add_slot_rows(
        model,
        problem,
        latest,
        starts,
        kv,
        skip_rows=opts.skip_rows,
        cliques=opts.cliques,
        check=check,
        counts=counts,
    )
    groups = [g.tolist() for g in problem.identical_groups()] if opts.symmetry else []
    if groups:
        add_cumulative_starts(model, problem, latest, groups, check)
        add_symmetry(model, problem, latest, groups, check, counts)
    add_objective(model, problem, latest, starts, kv, upper_bound, energy=opts.energy)
    return SlotModel(
        model=model,
        problem=problem,
        deadline=deadline,
        groups=groups,
        counts=dict(counts),
    )
