"""Time-indexed MILP of the slot model, built as a Pyomo ``ConcreteModel``.

Data and rules are those of :mod:`lsched.formulations.slot`: request ``i`` has
release ``r_i``, prompt ``s_i``, output ``o_i``, weight ``w_i`` and KV table
``k_ij`` (``j = 0..o_i-1``, nondecreasing); ``M`` KV blocks, batch cap ``N`` and
token budget ``B`` (both optional). Safe deadlines ``d_i``
(:func:`lsched.formulations.slot.horizon.deadlines`) bound every start to the window

    T_i = {r_i, ..., L_i},   L_i = d_i - o_i.

Variables
---------
``x[i,t] in {0,1}`` for ``t in T_i``: request ``i`` starts in slot ``t``. For the
makespan objective one continuous ``C`` (the latest completion).

Constraints
-----------
::

    sum_{t in T_i} x[i,t] = 1                                       (assign, per i)
    sum_i sum_{j : tau-j in T_i} k_ij x[i,tau-j]          <= M      (KV, per tau)
    sum_i sum_{j : tau-j in T_i}      x[i,tau-j]          <= N      (batch, per tau)
    sum_i sum_{j : tau-j in T_i} (1 + [j=0](s_i-1)) x[i,tau-j] <= B (budget, per tau)

The KV rows are the "aggregated memory constraints": one row per slot ``tau``
holding every request that may be running there, each at the offset
``j = tau - t`` it would have if started at ``t``.

Objectives (the integer objective of :meth:`SlotProblem.integer_objective`)
---------------------------------------------------------------------------
::

    latency   min sum_i w_i sum_t (t + o_i) x[i,t]
    ttft      min sum_i w_i sum_t  t        x[i,t]
    makespan  min C,   C >= sum_t (t + o_i) x[i,t]   for every i

Strengthening (:class:`Strengthening`; each can be switched off to measure it)
-------------------------------------------------------------------------------
``skip_rows``
    A KV row at ``tau`` is written only if the largest load it can carry,
    ``sum_i k_{i, min(o_i-1, tau-r_i)}`` over the requests that can run at
    ``tau`` (``k`` is nondecreasing, so the latest offset is the largest), is
    above ``M``; batch rows only if more than ``N`` requests can run at ``tau``;
    budget rows only if ``sum_i max(s_i if tau in T_i else 1)`` is above ``B``.
    Skipped rows can never be violated, so the model is the same polytope with
    fewer rows.
``symmetry``
    Requests with equal ``(r_i, s_i, o_i, w_i)`` (hence equal windows) are
    interchangeable. In each such group ``i_1 < i_2 < ...`` the cumulative start
    ``y[i,t] = sum_{t' <= t} x[i,t']`` (continuous, defined by ``y[i,r_i] =
    x[i,r_i]`` and ``y[i,t] = y[i,t-1] + x[i,t]``, so the rows stay sparse) must
    satisfy ``y[i_a,t] >= y[i_{a+1},t]``: the lower index starts no later. Any
    schedule becomes one that satisfies it by permuting the group's starts.
``cliques``
    For ``c = 1, 2``: at most ``c`` running requests can each hold more than
    ``M / (c+1)`` blocks, so per slot ``tau``
    ``sum_{(i,j) : k_ij > M/(c+1)} x[i,tau-j] <= c`` (written only when more than
    ``c`` requests could hold such an amount in ``tau``). The LP relaxation of the
    KV row alone allows up to ``(c+1) - epsilon`` of them.
``energy``
    Makespan only: every request-slot is processed in ``[min_i r_i, C)`` with at
    most ``M`` blocks per slot, so ``C >= min_i r_i + ceil(sum_ij k_ij / M)``;
    also ``C >= max_i (r_i + o_i)`` and ``C <= U`` (the heuristic's makespan).

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
index arithmetic, and the row goes to Pyomo as one ``LinearExpression`` of its
coefficients and variables, not term by term through ``quicksum`` and operator
overloading; Python's cyclic garbage collector is paused meanwhile (it would walk
the growing model again and again). The model is the same, row for row
(``benchmarks/milp_build``: an order-free fingerprint of the compiled matrices);
the build is 4.5-14 times faster (Jaillet n = 60, 1.4-4.8 million nonzeros:
0.9-3.8 s against 8-30 s on a loaded 2-core machine), and Pyomo's compilation to
matrices (:func:`lsched.formulations.solvers.highs.load`, 2-9 s there, unchanged) is
now most of the time.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyomo.environ as pyo
from pyomo.common.collections import ComponentMap
from pyomo.common.gc_manager import PauseGC
from pyomo.core.expr.numeric_expr import LinearExpression

from lsched.formulations.slot import SlotProblem
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


def _ranges(owner: IntArray, lo: IntArray, hi: IntArray) -> tuple[IntArray, IntArray]:
    """Every ``(owner[k], j)`` with ``lo[k] <= j <= hi[k]``, in order: two arrays."""
    length = hi - lo + 1
    total = int(length.sum())
    first = np.cumsum(length) - length
    who = np.repeat(owner, length)
    return who, np.repeat(lo - first, length) + np.arange(total)


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
    check = build_check(stop_at)
    opts = strengthening or Strengthening()
    deadline = np.asarray(deadline, dtype=np.int64)
    n = len(problem)
    r = problem.release
    o = problem.output_tokens
    s = problem.prompt_tokens
    w = problem.weight
    latest = deadline - o
    if np.any(latest < r):
        i = int(np.flatnonzero(latest < r)[0])
        raise ValueError(f"request {i}: deadline {deadline[i]} leaves no start slot")
    tables = [problem.kv_table(i) for i in range(n)]
    capacity = problem.kv_capacity_blocks
    counts: dict[str, int] = defaultdict(int)
    # k_ij as one array, zero past o_i: the rows below are built from index
    # arrays, not term by term (module docstring, "Building")
    kv = np.zeros((n, int(o.max())), dtype=np.int64)
    for i, table in enumerate(tables):
        kv[i, : len(table)] = table

    model = pyo.ConcreteModel(name=f"slot-time-indexed:{problem.name}")
    index = [(i, t) for i in range(n) for t in range(int(r[i]), int(latest[i]) + 1)]
    model.x = pyo.Var(index, domain=pyo.Binary)
    x = model.x
    xs = list(x.values())  # in the order of index
    width = latest - r + 1
    base = np.cumsum(width) - width  # position of x[i, r_i] in xs

    def row(columns: IntArray, coefs: IntArray | None = None) -> LinearExpression:
        """``sum coefs[k] * xs[columns[k]]`` (coefficients 1 by default)."""
        terms = [xs[c] for c in columns.tolist()]
        if coefs is None:
            return LinearExpression(terms)
        return LinearExpression(linear_coefs=coefs.tolist(), linear_vars=terms)

    model.assign = pyo.Constraint(
        range(n),
        rule=lambda m, i: row(base[i] + np.arange(width[i])) == 1,
    )

    # Per slot tau: the requests that may run there and their offset range.
    first_slot = int(r.min())
    last_slot = int((latest + o).max()) - 1
    model.kv = pyo.ConstraintList()
    model.batch = pyo.ConstraintList()
    model.budget = pyo.ConstraintList()
    model.clique = pyo.ConstraintList()
    cap_seqs = problem.max_num_seqs
    cap_tokens = problem.max_num_batched_tokens
    # first offset at which request i holds more than M / (c + 1) blocks
    first_big = {c: np.argmax((c + 1) * kv > capacity, axis=1) for c in (1, 2)}
    for tau in range(first_slot, last_slot + 1):
        check()
        # offsets j with tau - j in [r_i, L_i] and 0 <= j < o_i
        lo = np.maximum(0, tau - latest)
        hi = np.minimum(o - 1, tau - r)
        running = np.flatnonzero(lo <= hi)
        if len(running) < 2:
            continue
        lo, hi = lo[running], hi[running]
        # every (request, offset) running in tau, requests ascending, then offsets
        who, offset = _ranges(running, lo, hi)
        columns = base[who] + tau - offset - r[who]
        peak = int(kv[running, hi].sum())
        if peak > capacity or not opts.skip_rows:
            model.kv.add(row(columns, kv[who, offset]) <= capacity)
            counts["kv"] += 1
        else:
            counts["kv_skipped"] += 1
        if cap_seqs is not None:
            if len(running) > cap_seqs or not opts.skip_rows:
                model.batch.add(row(columns) <= cap_seqs)
                counts["batch"] += 1
            else:
                counts["batch_skipped"] += 1
        if cap_tokens is not None:
            most = int(np.where(lo == 0, s[running], 1).sum())
            if most > cap_tokens or not opts.skip_rows:
                coefs = np.where(offset == 0, s[who], 1)
                model.budget.add(row(columns, coefs) <= cap_tokens)
                counts["budget"] += 1
            else:
                counts["budget_skipped"] += 1
        if opts.cliques:
            for c in (1, 2):
                # k > M / (c + 1)  <=>  (c + 1) k > M
                big = (c + 1) * kv[running, hi] > capacity
                if np.count_nonzero(big) <= c:
                    continue
                held = running[big]
                who_big, offset_big = _ranges(
                    held, np.maximum(lo[big], first_big[c][held]), hi[big]
                )
                model.clique.add(
                    row(base[who_big] + tau - offset_big - r[who_big]) <= c
                )
                counts[f"clique{c}"] += 1

    groups = [g.tolist() for g in problem.identical_groups()] if opts.symmetry else []
    if groups:
        y_index = [
            (i, t)
            for group in groups
            for i in group
            for t in range(int(r[i]), int(latest[i]))  # y[i, L_i] = 1 always
        ]
        model.y = pyo.Var(y_index, bounds=(0, 1))
        y = model.y
        model.cumulative = pyo.ConstraintList()
        model.symmetry = pyo.ConstraintList()
        for group in groups:
            check()
            for i in group:
                for t in range(int(r[i]), int(latest[i])):
                    previous = y[i, t - 1] if t > r[i] else 0
                    model.cumulative.add(y[i, t] == previous + x[i, t])
            for a, b in itertools.pairwise(group):
                for t in range(int(r[a]), int(latest[a])):
                    model.symmetry.add(y[a, t] >= y[b, t])
                    counts["symmetry"] += 1

    if problem.objective == "makespan":
        lower = int((r + o).max())
        if opts.energy:
            area = sum(int(table.sum()) for table in tables)
            lower = max(lower, first_slot + -(-area // capacity))
        upper = None if upper_bound is None else float(upper_bound)
        model.C = pyo.Var(bounds=(float(lower), upper))
        model.makespan = pyo.Constraint(
            range(n),
            rule=lambda m, i: (
                row(base[i] + np.arange(width[i]), r[i] + np.arange(width[i]) + o[i])
                <= m.C
            ),
        )
        model.objective = pyo.Objective(expr=model.C, sense=pyo.minimize)
    else:
        shift = o if problem.objective == "latency" else np.zeros(n, dtype=np.int64)
        who = np.repeat(np.arange(n), width)
        slot = np.concatenate([np.arange(r[i], latest[i] + 1) for i in range(n)])
        model.objective = pyo.Objective(
            expr=row(np.arange(len(xs)), w[who] * (slot + shift[who])),
            sense=pyo.minimize,
        )
    return SlotModel(
        model=model,
        problem=problem,
        deadline=deadline,
        groups=groups,
        counts=dict(counts),
    )
