"""The conflict-clique LP: a completion-time-indexed LP with pairwise-conflict cuts.

A lower bound for the slot model (:mod:`lsched.formulations.slot`), latency and
TTFT, for non-preemptive schedules that prefill each prompt whole on one replica
(issue 22). Notation of :mod:`lsched.formulations.slot.problem`: request ``j``
has release ``r_j``, prompt ``s_j``, output ``o_j``, weight ``w_j`` and KV table
``k_jm`` (``m = 0..o_j-1``, nondecreasing); it starts at ``S_j``, runs in slots
``S_j .. S_j + o_j - 1`` and completes at ``E_j = S_j + o_j``.

The LP
------
A binary ``x[j,c]`` says ``E_j = c``, for ``c`` in the window
``r_j + o_j <= c <= d_j`` with ``d_j`` the safe deadlines of
:func:`lsched.formulations.slot.horizon.deadlines` from the best heuristic's
integer objective ``U`` (as the slot MILP). Request ``j`` completing at ``c``
holds ``k_{j, t - c + o_j}`` blocks in slot ``t`` for ``c - o_j <= t < c``,
processes ``s_j`` tokens in its first slot and one in each other. Rows::

    sum_c x[j,c] = 1                                          every request
    sum_{j,c} k_{j, t-c+o_j} x[j,c]                  <= M      every slot t (KV)
    sum_{j,c : c-o_j <= t < c} x[j,c]                <= N      batch cap, if set
    sum_{j,c : c-o_j <= t < c} x[j,c]
        + sum_{j : c - o_j = t} (s_j - 1) x[j,c]     <= B      token budget, if set

(a row whose left side cannot exceed its right side, each request at its
largest coefficient, is not written). Objective, the solvers' integer part
(:attr:`~lsched.formulations.slot.SlotProblem.objective_offset` added back):
latency ``sum w_j c x[j,c]``; TTFT ``sum w_j (c - o_j) x[j,c]``. Makespan is out
of scope: its LP (``C >= sum_c c x[j,c]``) is weak, and the slot MILP's LP
(``slot.lp``) carries the energy bounds on ``C`` that make it strong.

Conflicts
---------
Two placements ``(i, c)`` and ``(k, c')`` (``i != k``) *conflict* when the two
requests alone, completing at ``c`` and ``c'``, break a per-slot rule. Write
``D = c' - c`` and ``peak_j = k_{j, o_j - 1}``. They share a slot iff
``-(o_i - 1) <= D <= o_k - 1``. The rule checked here:

KV (any block size)
    With ``D >= 0`` (i ends first), both run in i's last slot ``c - 1`` and,
    tables being nondecreasing, hold the most together there: ``peak_i +
    k_{k, o_k - 1 - D}``. So they conflict iff ``k_{k, o_k-1-D} > M - peak_i``,
    i.e. ``0 <= D <= cnt(i, k) - 1`` with ``cnt(i, k) = #{m : k_km > M -
    peak_i}`` (the largest entries of k's table, so a prefix of ``D``). With
    ``D < 0`` the same with i and k swapped. For block size 1 this is issue 22's
    ``0 <= D <= min(o_k, peak_i + peak_k - M) - 1``.
Batch cap ``N = 1``
    Any shared slot. (``N >= 2`` gives no pairwise conflict; it is used only by
    the LP rows.)
Token budget ``B``
    In the first shared slot, the later starter prefills while the other runs:
    ``s_i + s_k > B`` if they start together, else ``s_later + 1 > B``.
Same request
    ``(i, c)`` and ``(i, c')`` with ``c != c'`` conflict (one completion each).

Why the bound is valid
----------------------
Some optimal schedule has ``E_j <= d_j`` for every ``j`` (latency and TTFT:
every optimal schedule; :mod:`lsched.formulations.slot.horizon`). Its incidence
vector ``x[j, E_j] = 1`` satisfies every LP row (they are the slot model's rules
written per completion) and its objective is the optimum. For a clique ``Q``
(placements that conflict pairwise), ``sum_{(j,c) in Q} x[j,c] <= 1`` holds for
it too: the chosen placements are one per request, and two chosen placements
``(i, E_i), (k, E_k)`` never conflict, because removing requests from a feasible
schedule keeps it feasible (every per-slot term is nonnegative), so the two
alone keep every rule. Hence that schedule is feasible for the LP with any set
of clique rows, and every LP optimum, at every round, is ``<=`` the optimum. The
objective has integer coefficients, so ``ceil(z - 1e-6)`` is still a bound (as
the slot MILP rounds its LP). Rows only tighten the LP: the rounds' values are
nondecreasing, and the best reached is returned when time runs out.

Separation
----------
On the LP support (``x > 1e-6``), a greedy clique from each support placement
(in decreasing ``x``): add the candidate of largest ``x`` that conflicts with
every member, until none. A clique of weight above ``1 + 1e-6`` is violated; it
is extended to a maximal clique over every column (support first by ``x``, then
by reduced cost), which does not change its violation and cuts more later. The
conflict test is vectorised (:class:`ConflictRule`); the rows are added to the
loaded HiGHS model (``addRows``) and the LP re-solved from its basis (dual
simplex), until no violated clique is found, the round limit or the time limit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import highspy
import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from lsched.formulations.slot import SlotProblem
from lsched.formulations.slot.horizon import deadlines
from lsched.formulations.slot.incumbent import starting_schedule
from lsched.formulations.solvers import highs as highs_run
from lsched.formulations.solvers.highs import LoadedModel
from lsched.interrupt import requested

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: LP values below this are zero for separation.
SUPPORT_TOL = 1e-6
#: A clique is violated when its LP weight exceeds ``1 + VIOLATION_TOL``.
VIOLATION_TOL = 1e-6


@dataclass(frozen=True)
class Columns:
    """The LP's columns: placement ``(request[q], completion[q])`` for column ``q``."""

    request: IntArray
    completion: IntArray

    def __len__(self) -> int:
        return len(self.request)


class ColumnIndex:
    """Where each request's columns lie in a :class:`Columns` (requests in order,
    completions consecutive), to list the columns near a placement.

    Parameters
    ----------
    problem
        The slot problem.
    cols
        Its columns, from :func:`completion_columns`.
    """

    def __init__(self, problem: SlotProblem, cols: Columns) -> None:
        n = len(problem)
        self.output = problem.output_tokens
        self.first = np.searchsorted(cols.request, np.arange(n))
        self.count = np.bincount(cols.request, minlength=n)
        self.lo = problem.release + problem.output_tokens  # completion of `first`
        self.hi = self.lo + self.count - 1

    def near(self, k: int, c: int) -> IntArray:
        """Columns, ascending, of request ``k`` and of every request completing so
        that it shares a slot with ``(k, c)``: ``c - o_k + 1 <= c' <= c + o_i - 1``.

        Two placements of different requests conflict only if they share a slot
        (module docstring, "Conflicts"), so these hold every column that
        conflicts with ``(k, c)``.
        """
        lo = np.maximum(self.lo, c - self.output[k] + 1)
        hi = np.minimum(self.hi, c + self.output - 1)
        lo[k], hi[k] = self.lo[k], self.hi[k]
        width = np.maximum(hi - lo + 1, 0)
        start = self.first + lo - self.lo
        total = int(width.sum())
        shift = np.repeat(start - (np.cumsum(width) - width), width)
        return shift + np.arange(total)


def completion_columns(problem: SlotProblem, deadline: IntArray) -> Columns:
    """Every ``(j, c)`` with ``r_j + o_j <= c <= d_j``, requests in order."""
    lo = problem.release + problem.output_tokens
    width = np.asarray(deadline, dtype=np.int64) - lo + 1
    if np.any(width < 1):
        j = int(np.flatnonzero(width < 1)[0])
        raise ValueError(f"request {j}: deadline {deadline[j]} leaves no completion")
    request = np.repeat(np.arange(len(problem)), width)
    first = np.cumsum(width) - width
    completion = np.repeat(lo - first, width) + np.arange(int(width.sum()))
    return Columns(request, completion.astype(np.int64))


class ConflictRule:
    """Which pairs of placements conflict (module docstring, "Conflicts").

    Parameters
    ----------
    problem
        The slot problem.
    """

    def __init__(self, problem: SlotProblem) -> None:
        self.problem = problem
        self.output = problem.output_tokens
        self.prompt = problem.prompt_tokens
        self.seqs = problem.max_num_seqs
        self.budget = problem.max_num_batched_tokens
        peak = problem.peak_blocks
        slack = problem.kv_capacity_blocks - peak  # M - peak_i
        n = len(problem)
        #: cnt[i, k] = #{m : k_km > M - peak_i} (<= o_k; zero iff cnt[k, i] is)
        self.count = np.empty((n, n), dtype=np.int64)
        for k in range(n):
            table = problem.kv_table(k)
            self.count[:, k] = len(table) - np.searchsorted(table, slack, "right")
        #: (i, c), (k, c + D) conflict by KV (or share a slot, if N = 1) iff
        #: D <= reach[i, k] and -D <= reach[k, i]
        self.reach = self.count - 1
        if self.seqs == 1:
            self.reach = np.broadcast_to(self.output - 1, (n, n)).copy()

    def conflicts(
        self, i: IntArray, c: IntArray, k: IntArray, c2: IntArray
    ) -> BoolArray:
        """Whether ``(i, c)`` and ``(k, c2)`` conflict, elementwise (broadcast).

        KV: with ``D >= 0`` the rule is ``D <= cnt(i, k) - 1`` (and ``cnt(i, k)
        <= o_k`` makes the slot shared), with ``D < 0`` ``-D <= cnt(k, i) - 1``;
        as ``cnt(i, k) = 0`` iff ``cnt(k, i) = 0`` (both say ``peak_i + peak_k
        <= M``), that is ``D <= reach[i, k]`` and ``-D <= reach[k, i]``. With
        ``N = 1`` reach is ``o - 1``: any shared slot.
        """
        d = c2 - c
        out = (d <= self.reach[i, k]) & (-d <= self.reach[k, i])
        if self.budget is not None:
            o_i, o_k = self.output[i], self.output[k]
            shared = (d >= 1 - o_i) & (d <= o_k - 1)
            s_i, s_k = self.prompt[i], self.prompt[k]
            later = (d - o_k) - (-o_i)  # S_k - S_i
            tokens = np.where(later == 0, s_i + s_k, np.where(later > 0, s_k, s_i) + 1)
            out |= shared & (tokens > self.budget)
        same = i == k
        return np.where(same, d != 0, out)


def _slot_entries(
    problem: SlotProblem, cols: Columns
) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """Per (column, slot it runs in): the column, the slot, the request's KV there
    and its tokens there (``s_j`` in its first slot, else 1)."""
    o = problem.output_tokens[cols.request]
    total = int(o.sum())
    column = np.repeat(np.arange(len(cols)), o)
    offset = np.arange(total) - np.repeat(np.cumsum(o) - o, o)
    slot = np.repeat(cols.completion - o, o) + offset
    kv = np.zeros((len(problem), int(problem.output_tokens.max())), dtype=np.int64)
    for j in range(len(problem)):
        kv[j, : problem.output_tokens[j]] = problem.kv_table(j)
    who = cols.request[column]
    blocks = kv[who, offset]
    tokens = np.where(offset == 0, problem.prompt_tokens[who], 1)
    return column, slot, blocks, tokens


def _needed(
    slot: IntArray, who: IntArray, value: IntArray, n: int, horizon: int, rhs: float
) -> BoolArray:
    """Slots whose row can exceed ``rhs`` (each request at its largest value)."""
    most = np.zeros((horizon, n), dtype=np.int64)
    np.maximum.at(most, (slot, who), value)
    return most.sum(axis=1) > rhs


def slot_rows(problem: SlotProblem, cols: Columns) -> tuple[sp.csr_matrix, FloatArray]:
    """The KV, batch-cap and token-budget rows (``<=``) that can bind, and their
    right sides (module docstring, "The LP")."""
    column, slot, blocks, tokens = _slot_entries(problem, cols)
    n, horizon = len(problem), int(cols.completion.max())
    who = cols.request[column]
    families = [(blocks, float(problem.kv_capacity_blocks))]
    if problem.max_num_seqs is not None:
        families.append((np.ones_like(blocks), float(problem.max_num_seqs)))
    if problem.max_num_batched_tokens is not None:
        families.append((tokens, float(problem.max_num_batched_tokens)))
    parts, rhs = [], []
    for value, limit in families:
        keep = _needed(slot, who, value, n, horizon, limit)
        row_of = np.cumsum(keep) - 1
        on = keep[slot]
        parts.append(
            sp.csr_matrix(
                (value[on], (row_of[slot[on]], column[on])),
                shape=(int(keep.sum()), len(cols)),
            )
        )
        rhs.append(np.full(int(keep.sum()), limit))
    return sp.vstack(parts, format="csr"), np.concatenate(rhs)


def column_cost(problem: SlotProblem, cols: Columns) -> FloatArray:
    """The integer objective per column: ``w_j c`` (latency) or ``w_j (c - o_j)``
    (TTFT)."""
    w = problem.weight[cols.request]
    if problem.objective == "latency":
        return (w * cols.completion).astype(np.float64)
    start = cols.completion - problem.output_tokens[cols.request]
    return (w * start).astype(np.float64)


def load_lp(
    problem: SlotProblem, cols: Columns, cost: FloatArray | None = None
) -> LoadedModel:
    """The LP of the module docstring, passed to HiGHS (columns in ``[0, 1]``),
    minimising ``cost`` (:func:`column_cost` by default)."""
    n, m = len(problem), len(cols)
    cost = column_cost(problem, cols) if cost is None else cost
    assign = sp.csr_matrix((np.ones(m), (cols.request, np.arange(m))), shape=(n, m))
    rows, rhs = slot_rows(problem, cols)
    a = sp.vstack([assign, rows], format="csc")
    lower = np.concatenate([np.ones(n), np.full(len(rhs), -highspy.kHighsInf)])
    upper = np.concatenate([np.ones(n), rhs])
    solver = highs_run.pass_model(a, cost, (np.zeros(m), np.ones(m)), (lower, upper))
    size = {"variables": m, "constraints": a.shape[0], "nonzeros": int(a.nnz)}
    return LoadedModel(solver, columns=[], offset=0.0, size={**size, "integers": 0})


# -- separation ---------------------------------------------------------------------


def _greedy(conflict: BoolArray, weight: FloatArray, seed: int) -> list[int]:
    """A clique of ``conflict`` from ``seed``, adding the heaviest candidate."""
    members = [seed]
    candidate = conflict[seed].copy()
    while candidate.any():
        pick = int(np.argmax(np.where(candidate, weight, -1.0)))
        members.append(pick)
        candidate &= conflict[pick]
    return members


def _extend(
    rule: ConflictRule,
    cols: Columns,
    index: ColumnIndex,
    members: IntArray,
    priority: FloatArray,
) -> IntArray:
    """``members`` (columns, pairwise conflicting) extended to a maximal clique
    over every column, the candidate of highest ``priority`` first (ties: the
    lowest column). Candidates start from the columns near the first member
    (:meth:`ColumnIndex.near`), a superset of those that conflict with it."""
    r, c = cols.request, cols.completion
    candidate = index.near(int(r[members[0]]), int(c[members[0]]))
    for q in members:
        candidate = candidate[rule.conflicts(r[candidate], c[candidate], r[q], c[q])]
    chosen = list(members)
    cand_r, cand_c, cand_p = r[candidate], c[candidate], priority[candidate]
    while len(candidate):
        at = int(np.argmax(cand_p))
        pick = int(candidate[at])
        chosen.append(pick)
        keep = rule.conflicts(cand_r, cand_c, cand_r[at], cand_c[at])
        candidate, cand_r, cand_c = candidate[keep], cand_r[keep], cand_c[keep]
        cand_p = cand_p[keep]
    return np.sort(np.asarray(chosen, dtype=np.int64))


def separate(
    rule: ConflictRule,
    cols: Columns,
    value: FloatArray,
    reduced_cost: FloatArray,
    *,
    max_cuts: int,
) -> list[IntArray]:
    """Violated cliques of the LP solution ``value`` (module docstring,
    "Separation"), each extended to a maximal clique: at most ``max_cuts``
    distinct ones, as sorted column arrays."""
    support = np.flatnonzero(value > SUPPORT_TOL)
    support = support[np.argsort(-value[support], kind="stable")]
    index = ColumnIndex(rule.problem, cols)
    r, c = cols.request[support], cols.completion[support]
    conflict = rule.conflicts(r[:, None], c[:, None], r[None, :], c[None, :])
    weight = value[support]
    # support first by value, then the columns the LP is closest to using
    priority = np.where(
        value > SUPPORT_TOL, 1.0 + value, 1.0 / (2.0 + np.maximum(reduced_cost, 0.0))
    )
    covered = np.zeros(len(support), dtype=bool)
    found: dict[tuple[int, ...], IntArray] = {}
    for seed in range(len(support)):
        if covered[seed]:
            continue
        members = _greedy(conflict, weight, seed)
        if weight[members].sum() <= 1.0 + VIOLATION_TOL:
            continue
        covered[members] = True
        clique = _extend(rule, cols, index, support[members], priority)
        found.setdefault(tuple(clique.tolist()), clique)
        if len(found) >= max_cuts:
            break
    return list(found.values())


def add_cliques(solver: highspy.Highs, cliques: list[IntArray]) -> None:
    """``sum_{q in Q} x_q <= 1`` for every clique ``Q``, added to the loaded LP."""
    sizes = np.array([len(q) for q in cliques], dtype=np.int64)
    starts = (np.cumsum(sizes) - sizes).astype(np.int32)
    index = np.concatenate(cliques).astype(np.int32)
    solver.addRows(
        len(cliques),
        np.full(len(cliques), -highspy.kHighsInf),
        np.ones(len(cliques)),
        len(index),
        starts,
        index,
        np.ones(len(index)),
    )


# -- the bound ----------------------------------------------------------------------


@dataclass(frozen=True)
class CliqueBound:
    """What :func:`clique_lp` reached.

    Attributes
    ----------
    bound
        The best LP value, rounded up, in problem units (``-inf`` if no LP was
        solved in time).
    lp_bound
        The first LP's (no cliques), rounded up, in problem units.
    rounds
        Rounds of cliques added and re-solved.
    cuts
        Clique rows added.
    converged
        Whether the last LP had no violated clique found.
    seconds
        Wall-clock seconds, the heuristic and the build included.
    """

    bound: float
    lp_bound: float
    rounds: int
    cuts: int
    converged: bool
    seconds: float


def _solve(loaded: LoadedModel, deadline: float) -> tuple[float, FloatArray] | None:
    """The LP's optimal value and column values, or ``None`` if it was not
    proved optimal by ``deadline`` (or a stop came)."""
    outcome = highs_run.run(loaded, deadline=deadline)
    if outcome.model_status != "Optimal" or outcome.values is None:
        return None
    if outcome.interrupted or requested():
        return None
    return outcome.bound, outcome.values


def clique_lp(
    problem: SlotProblem,
    *,
    time_limit: float = 60.0,
    upper_bound: int | None = None,
    cliques: bool = True,
    max_rounds: int = 500,
    max_cuts: int | None = None,
) -> CliqueBound:
    """The conflict-clique LP bound (module docstring); latency and TTFT.

    Parameters
    ----------
    problem
        The slot problem (makespan: ``-inf``, out of scope).
    time_limit
        Wall-clock seconds for everything; the best bound reached is returned.
    upper_bound
        Integer objective of a feasible schedule, for the safe deadlines; the
        best heuristic's by default.
    cliques
        Add clique rows; ``False`` gives the plain LP.
    max_rounds
        Most rounds of separation.
    max_cuts
        Most cliques per round; ``max(20, n)`` by default.
    """
    began = time.monotonic()
    deadline = began + float(time_limit)
    if problem.objective not in ("latency", "ttft") or time_limit <= 0:
        return CliqueBound(-math.inf, -math.inf, 0, 0, False, 0.0)
    if upper_bound is None:
        upper_bound = problem.integer_objective(starting_schedule(problem, None)[1])
    cols = completion_columns(problem, deadlines(problem, upper_bound))
    rule = ConflictRule(problem)
    loaded = load_lp(problem, cols)
    max_cuts = max(20, len(problem)) if max_cuts is None else max_cuts
    values: list[float] = []
    rounds = cuts = 0
    converged = False
    while time.monotonic() < deadline and not requested():
        solved = _solve(loaded, deadline)
        if solved is None:
            break
        values.append(solved[0])
        if not cliques or rounds >= max_rounds:
            converged = not cliques
            break
        reduced = np.asarray(loaded.highs.getSolution().col_dual, dtype=np.float64)
        found = separate(rule, cols, solved[1], reduced, max_cuts=max_cuts)
        if not found:
            converged = True
            break
        add_cliques(loaded.highs, found)
        rounds, cuts = rounds + 1, cuts + len(found)
    offset = problem.objective_offset

    def rounded(value: float) -> float:
        return math.ceil(value - 1e-6) + offset

    return CliqueBound(
        bound=rounded(max(values)) if values else -math.inf,
        lp_bound=rounded(values[0]) if values else -math.inf,
        rounds=rounds,
        cuts=cuts,
        converged=converged,
        seconds=time.monotonic() - began,
    )
