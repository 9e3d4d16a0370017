"""Replicas: Pang et al. 2025's minimum-makespan assignment, then sequencing.

B. Pang, K. Li, R. She, F. Wang, "Hybrid offline-online scheduling method for large
language model inference optimization", arXiv:2502.15763 (2025), offline stage: every
request is present at time 0; assign each to one of ``C`` identical replicas
("clients") so as to minimise the largest replica load, a request's load being its
estimated processing time; then each replica runs its own requests. This module gives
that bin packing (MILP and CP-SAT, with a lower bound and an LPT warm start), the
sequencing of each replica (the evaluator under online policies, or the slot model),
and an exact *joint* slot model that chooses replicas and start slots together, to
measure what the two-stage decomposition loses.

Per-request load (:func:`request_loads_s`)
------------------------------------------
Request ``i`` (prompt ``s_i``, output ``o_i``; DESIGN.md, "The iteration model")
runs ``o_i`` iterations ``j = 0..o_i-1``: in ``j = 0`` it prefills its ``s_i`` tokens
(and holds ``s_i`` KV tokens), in ``j >= 1`` it takes one decode step that holds and
reads ``s_i + j`` tokens. Its own features in iteration ``j`` are

    j = 0:   P = s_i,  Q = s_i^2,  D = 0,  K = 0
    j >= 1:  P = 0,    Q = 0,      D = 1,  K = s_i + j

while ``const`` (1 per iteration) and ``H`` (1 per iteration with a prefill) are
shared by the batch. In the offline setting a replica is saturated until its tail,
so each iteration is full on its scarcest resource: KV blocks (``M``), sequences
(``N = max_num_seqs``) or batched tokens (``B = max_num_batched_tokens``). The
request's *share* of iteration ``j``, in which it holds ``k`` KV tokens and processes
``c`` tokens, is therefore

    u_ij = max(ceil(k / b) / M,  1 / N,  c / B),

and it pays that share of the fixed costs. Its load is the sum over its iterations
of the dearest piece ``p`` of any regime of the profile (overheads folded in,
:attr:`IterationTime.effective_regimes`):

    load_i = sum_{j=0}^{o_i-1}  max_p  w_p . [u_ij, P, Q, D, K, [j = 0] u_ij]
                                                                  (seconds)

Why this choice: an iteration lasts ``max_p w_p . sum_i phi_i`` with the batch's
features summed, so per-token work is additive across requests and only the fixed
cost must be apportioned; apportioning it by the binding resource is what a
saturated replica does. Taking the piece per (request, iteration) follows the phase
of the request: its prefill is compute-bound, its decode steps memory-bound (on
``llama-65b-pang2025`` a GSM8K request's prefill costs about 0.16 s on the compute
piece, its 75 decode steps about 0.07 s on the memory piece; pricing the request's
totals on one piece would drop one phase). ``sum_i max_p`` is at least
``max_p sum_i``, with equality when the batch's requests share a dominant piece (a
decode-only batch), so the estimate is tight on decode iterations and a little high
on mixed ones. Measured on GSM8K-like instances (``gsm8k``, all at 0, LPT, FCFS
replayed): at ``n = 1000, C = 4`` replica loads are 58.8-59.1 s against busy times
of 57.2-60.3 s on ``llama-65b-pang2025``, and 27.4 s against 31.7-32.1 s on
``llama2-70b-h100-tp4``; at ``n = 100, C = 4`` (25 requests per replica, far from
saturating the KV) 5.9 s against 8.5-10.3 s. A token count ``s + o`` would ignore
that decode cost grows with context and that KV, not tokens, limits batches. On the
``unit-slot`` profile (``w = [1, 0, ...]``, no batch limits) the load is the
request's KV area over ``M``, ``sum_j ceil((s_i + j) / b) / M`` slots, and the
energy argument (at most ``M`` blocks per slot) makes a replica's load a lower bound
on its makespan when all requests arrive at 0. Loads are estimates for balancing;
the real makespan is the evaluator's (:func:`sequence`). ``load="tokens"`` gives
``s_i + o_i``, and any per-request array may be passed.

The assignment problem (:func:`assign`)
---------------------------------------
Loads ``l_i >= 0``, replicas ``c = 0..C-1``, booleans ``x_ic`` (``i`` on ``c``)::

    min T   s.t.   sum_c x_ic = 1              (every request on one replica)
                   sum_i l_i x_ic <= T         (every replica's load)

Replicas are identical, so with requests ranked by decreasing load (LPT order, ties
by position) the request of rank ``k`` may go only to replicas ``0..k``
(``x_ic = 0`` for ``c > rank(i)``): relabelling the replicas in the order in which
they first receive a request, in rank order, turns any assignment into one that
meets this, with the same loads. Both backends start from LPT (each request, largest
first, to the least-loaded replica, ties to the lowest id), which meets it too.

The solvers see integer loads: the loads themselves when they are integers (token
counts, KV areas), else ``w_i = round(l_i / q)`` on a grid ``q = max_i l_i / G``
(``load_steps``, ``G = 1000`` by default). An integer objective lets both backends
stop at an absolute gap below one unit (CP-SAT natively; HiGHS with ``mip_abs_gap =
1 - 1e-6``). The reported objective is always the true ``max_c sum_{i on c} l_i`` of
the returned assignment (the solver's or LPT's, whichever is smaller on the true
loads), and the reported bound stays valid for the true loads: the larger of
:func:`assignment_lower_bound` and ``q B - E+``, with ``B`` the solver's integer bound
and ``E+ = sum_i max(0, q w_i - l_i)`` the most rounding can have added to a
replica. ``OPTIMAL`` means optimal for the integer loads: exactly optimal when the
loads are integers, otherwise within the reported certified gap, which is then at
most ``sum_i |q w_i - l_i| <= n q / 2`` in absolute terms. Why ``G = 1000``: the
loads are estimates good to a few per cent, and on 100-1000 GSM8K requests over 4
replicas the rounded problem is proved optimal in under 2 s by CP-SAT with
certified gaps below 1e-4 (HiGHS in 2-13 s), while ``G = 10^6`` (gaps near 1e-7)
was not proved by either in 30 s (``benchmarks/replicas/README.md``).

Lower bound (:func:`assignment_lower_bound`)
--------------------------------------------
With ``l_(1) >= l_(2) >= ...`` the loads in decreasing order::

    T* >= max( sum_i l_i / C,   l_(1),
               max_{k >= 1, kC + 1 <= n}  l_(kC-k+1) + ... + l_(kC+1) )

The last family is the pigeonhole bound: of the ``kC + 1`` largest requests some
replica gets ``k + 1``, which weigh at least the ``k + 1`` smallest of them; ``k = 1``
is the classic ``l_(C) + l_(C+1)`` bound behind LPT's 4/3 guarantee. For integer
loads the total bound is rounded up.

Sequencing (:func:`sequence`, :func:`sequence_slots`)
-----------------------------------------------------
:func:`sequence` replays the instance with the assignment (static dispatch) under
each given policy in :func:`lsched.evaluator.simulate` and keeps the policy with the
smallest makespan. :func:`sequence_slots` (``unit-slot`` profiles) solves the slot
model of every replica's requests (:mod:`lsched.formulations.slot`, CP-SAT) and
replays the combined start slots through the evaluator.

The joint slot model (:func:`solve_joint`)
------------------------------------------
The slot model of :mod:`lsched.formulations.slot` with ``C`` replicas: start slot
``S_i >= r_i`` and replica booleans ``y_ic`` (``sum_c y_ic = 1``); request ``i`` runs
in slots ``S_i .. S_i + o_i - 1`` of its replica, holding ``k_ij = ceil((s_i + j) /
b)`` blocks in slot ``S_i + j``, and for every replica ``c`` and slot ``t``::

    sum_{i : y_ic = 1, S_i <= t < S_i + o_i} k_{i, t - S_i}  <= M

(and the batch cap and token budget likewise, per replica). CP-SAT model: the KV
staircase of request ``i`` is one optional fixed-size interval ``[S_i + j, S_i +
o_i)`` per step ``j`` where ``k_ij`` rises, present iff ``y_ic``, with demand the rise,
and one cumulative of capacity ``M`` per replica: exactly the rule above (the
``interval`` formulation of :mod:`lsched.formulations.slot.cpsat.build`, made optional).
Objectives as in the slot model (makespan ``max_i (S_i + o_i) - min_i a_i``, total
latency, total TTFT). Symmetry: replicas are ordered by first use in position order
(``y_kc <= sum_{k' < k} y_{k',c-1}``), and identical requests start in position order;
both hold together in some optimum (sort each identical group's (start, replica)
pairs by start, then relabel replicas by first use). Start domains end at the safe
horizon ``max_i r_i + sum_i o_i``: in an optimal schedule no replica has an empty slot
after the last release (closing it keeps every rule and no completion gets later),
so every completion is at most that. For the makespan objective the domains are also
cut at the incumbent's makespan.

The decomposition (:func:`decompose`) assigns by KV area (the unit-slot load times
``M``, integers, so the bin packing is exact) and solves each replica's slot model;
:func:`decomposition_loss` compares it with the joint optimum. Every multi-replica
slot schedule here is checked replica by replica by the evaluator's independent
scorer and replayed through :func:`lsched.evaluator.fixed.replay_start_slots`; the
replayed objective is in ``info["replayed_objective"]``.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyomo.environ as pyo
from ortools.sat.python import cp_model

from lsched.checks import (
    check_int,
    check_seed,
    check_time_limit,
    check_workers,
)
from lsched.errors import InputError
from lsched.evaluator import SimulationResult, assign_replicas, simulate
from lsched.evaluator.fixed import check_unit_slots, replay_start_slots
from lsched.formulations.result import (
    CPSAT_OTHER_LIMITS,
    Status,
    Stop,
    certified_gap,
    combined_status,
    cpsat_stop,
    decide_status,
)
from lsched.formulations.slot import SlotProblem, cpsat
from lsched.formulations.slot.incumbent import best_heuristic, is_feasible
from lsched.formulations.solvers import highs as _highs
from lsched.formulations.solvers.cpsat import configured_solver, solve_stoppable
from lsched.instance import Instance
from lsched.policies import PolicySpec, parse_policy
from lsched.profile import DeploymentProfile

__all__ = [
    "BACKENDS",
    "DEFAULT_LOAD_STEPS",
    "AssignmentResult",
    "DecompositionLoss",
    "ReplicaSchedule",
    "SequenceResult",
    "assign",
    "assignment_lower_bound",
    "decompose",
    "decomposition_loss",
    "kv_areas",
    "lpt",
    "request_loads_s",
    "sequence",
    "sequence_slots",
    "solve_joint",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: Backends of :func:`assign`.
BACKENDS: tuple[str, ...] = ("cpsat", "milp")
#: Grid steps of the largest load when non-integer loads are rounded for the solvers.
DEFAULT_LOAD_STEPS = 1000
#: Integer loads are used as they are while their total stays below this (exact
#: in float64 and far inside CP-SAT's int64 range).
_EXACT_TOTAL = 2**50


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.array(array)
    array.flags.writeable = False
    return array


# -- loads --------------------------------------------------------------------------


#: Request-iterations handled per vectorised block (bounds the memory of a pass).
_BLOCK_ITERATIONS = 1 << 20


def _blocks(output: IntArray) -> list[slice]:
    """Consecutive request ranges of about ``_BLOCK_ITERATIONS`` iterations each."""
    ends = np.cumsum(output)
    cuts = np.searchsorted(
        ends, np.arange(_BLOCK_ITERATIONS, int(ends[-1]), _BLOCK_ITERATIONS)
    )
    edges = np.unique(np.concatenate([[0], cuts + 1, [len(output)]]))
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def _ages(output: IntArray) -> tuple[IntArray, IntArray]:
    """(request, j) for every iteration ``j = 0..o_i-1`` of every request."""
    owner = np.repeat(np.arange(len(output), dtype=np.int64), output)
    starts = np.cumsum(output) - output
    age = np.arange(int(output.sum()), dtype=np.int64) - np.repeat(starts, output)
    return owner, age


def kv_areas(instance: Instance, block_tokens: int = 1) -> IntArray:
    """KV blocks each request holds, summed over its slots: ``sum_j ceil((s+j)/b)``."""
    b = check_int(block_tokens, "block_tokens", 1)
    s, o = instance.prompt_tokens, instance.output_tokens
    if b == 1:
        return o * s + o * (o - 1) // 2
    area = np.zeros(len(instance), dtype=np.int64)
    for part in _blocks(o):
        owner, age = _ages(o[part])
        blocks = -(-(s[part][owner] + age) // b)
        area[part] = np.bincount(owner, weights=blocks, minlength=len(o[part]))
    return area


def request_loads_s(
    instance: Instance, profile: DeploymentProfile, *, predicted: bool = False
) -> FloatArray:
    """Estimated processing time of every request on one replica (seconds).

    The module docstring's ``load_i = sum_j max_p w_p . phi_ij``: each iteration of
    the request priced at its dearest piece, fixed costs shared by the scarcest
    resource.

    Parameters
    ----------
    instance
        The requests.
    profile
        Iteration time, KV capacity, block size and batch limits.
    predicted
        Use ``predicted_output_tokens`` instead of the true output lengths (what an
        offline planner knows).

    Returns
    -------
    numpy.ndarray
        float64, one load per request, ``>= 0``.

    Raises
    ------
    InputError
        If ``predicted`` and the instance has no predictions.
    """
    if predicted:
        if instance.predicted_output_tokens is None:
            raise InputError(
                "the instance has no predictions; attach some (lsched.predictors) "
                "or use the true lengths",
                field="predicted_output_tokens",
            )
        instance = instance.replace(output_tokens=instance.predicted_output_tokens)
    pieces = np.concatenate(profile.iteration_time.effective_regimes, axis=0)
    s, o = instance.prompt_tokens, instance.output_tokens
    load = np.zeros(len(instance), dtype=np.float64)
    for part in _blocks(o):
        owner, age = _ages(o[part])
        prompt = s[part][owner]
        held = prompt + age
        prefill = age == 0
        share = np.maximum.reduce(
            [
                profile.kv_blocks(held) / profile.kv_capacity_blocks,
                np.full(len(owner), 1.0 / profile.max_num_seqs),
                np.where(prefill, prompt, 1) / profile.max_num_batched_tokens,
            ]
        )
        features = np.stack(
            [
                share,
                np.where(prefill, prompt, 0),
                np.where(prefill, prompt * prompt, 0),
                ~prefill,
                np.where(prefill, 0, held),
                np.where(prefill, share, 0.0),
            ],
            axis=1,
        ).astype(np.float64)
        cost = np.maximum((features @ pieces.T).max(axis=1), 0.0)
        load[part] = np.bincount(owner, weights=cost, minlength=len(o[part]))
    return load


def _resolve_loads(
    instance: Instance, profile: DeploymentProfile, load: Any
) -> FloatArray:
    n = len(instance)
    if load is None or (isinstance(load, str) and load == "profile"):
        return request_loads_s(instance, profile)
    if isinstance(load, str):
        if load == "tokens":
            return (instance.prompt_tokens + instance.output_tokens).astype(np.float64)
        raise InputError(
            f"got {load!r}; expected 'profile', 'tokens' or one load per request",
            field="load",
        )
    try:
        array = np.asarray(load, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"expected numbers: {exc}", field="load") from None
    if array.shape != (n,):
        raise InputError(
            f"got shape {array.shape}; expected {n} loads (one per request)",
            field="load",
        )
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        i = int(np.flatnonzero(~np.isfinite(array) | (array < 0))[0])
        raise InputError(
            f"request {i}: got {array[i]}; expected a finite load >= 0", field="load"
        )
    return array


def _check_loads(load_s: npt.ArrayLike, replicas: int) -> tuple[FloatArray, int]:
    load = np.asarray(load_s, dtype=np.float64)
    if load.ndim != 1 or len(load) == 0:
        raise InputError("expected a non-empty 1-D array of loads", field="load")
    if not np.all(np.isfinite(load)) or np.any(load < 0):
        i = int(np.flatnonzero(~np.isfinite(load) | (load < 0))[0])
        raise InputError(
            f"request {i}: got {load[i]}; expected a finite load >= 0", field="load"
        )
    return load, check_int(replicas, "replicas", 1)


# -- heuristic and bound --------------------------------------------------------------


def _rank_order(load: FloatArray) -> IntArray:
    """Requests by decreasing load, ties by position (LPT order)."""
    return np.lexsort((np.arange(len(load)), -load)).astype(np.int64)


def lpt(load_s: npt.ArrayLike, replicas: int) -> IntArray:
    """Longest processing time first: each request, largest first, to the replica
    with the least load so far (ties to the lowest id).

    Parameters
    ----------
    load_s
        Load per request (``>= 0``).
    replicas
        ``C >= 1``.

    Returns
    -------
    numpy.ndarray
        Replica id per request (int64). Meets the rank symmetry breaking of the
        module docstring.
    """
    load, replicas = _check_loads(load_s, replicas)
    heap = [(0.0, c) for c in range(replicas)]
    where = np.zeros(len(load), dtype=np.int64)
    for i in _rank_order(load).tolist():
        total, c = heapq.heappop(heap)
        where[i] = c
        heapq.heappush(heap, (total + float(load[i]), c))
    return where


def assignment_lower_bound(load_s: npt.ArrayLike, replicas: int) -> float:
    """A lower bound on the minimum largest replica load (module docstring).

    ``max(sum / C, max load, max_k (sum of the k + 1 smallest of the kC + 1
    largest loads))``; the first term rounded up when every load is an integer.

    Parameters
    ----------
    load_s
        Load per request (``>= 0``).
    replicas
        ``C >= 1``.
    """
    load, replicas = _check_loads(load_s, replicas)
    n = len(load)
    total = float(load.sum())
    average = total / replicas
    if np.all(load == np.round(load)) and total < _EXACT_TOTAL:
        average = float(math.ceil(average - 1e-9))
    ordered = np.sort(load)[::-1]
    prefix = np.concatenate([[0.0], np.cumsum(ordered)])
    k = np.arange(1, (n - 1) // replicas + 1)
    pigeonhole = prefix[k * replicas + 1] - prefix[k * replicas - k]
    return float(max(average, ordered[0], pigeonhole.max(initial=0.0)))


# -- results --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class AssignmentResult:
    """A replica assignment and how good it is proven to be.

    Attributes
    ----------
    status
        :class:`~lsched.formulations.result.Status` (module docstring on
        ``OPTIMAL``).
    objective
        Largest replica load of ``assignment``, in the loads' unit (seconds for
        profile loads).
    bound
        Proven lower bound on the smallest possible largest load.
    runtime_s
        Wall-clock seconds of the whole call.
    assignment
        Replica id per request (int64, read-only).
    replica_load_s
        Load of every replica (``replicas`` entries).
    load_s
        The per-request loads that were balanced.
    replicas
        ``C``.
    solver
        ``"cpsat"``, ``"milp"`` or ``"lpt"`` (LPT already met the bound).
    info
        Solver figures: ``load_step`` (the grid ``q``; 1 when exact), ``exact``,
        ``lpt_objective``, solver status, model size.
    """

    status: Status
    objective: float
    bound: float
    runtime_s: float
    assignment: IntArray
    replica_load_s: FloatArray
    load_s: FloatArray
    replicas: int
    solver: str
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, c = len(self.load_s), self.replicas
        where = np.asarray(self.assignment)
        if where.shape != (n,) or np.any((where < 0) | (where >= c)):
            raise InputError(
                f"expected {n} replica ids in 0..{c - 1}", field="assignment"
            )
        if np.shape(self.replica_load_s) != (c,):
            raise InputError(f"expected {c} replica loads", field="replica_load_s")
        object.__setattr__(self, "assignment", _frozen(where.astype(np.int64)))
        for name in ("replica_load_s", "load_s"):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            object.__setattr__(self, name, _frozen(value))

    @property
    def gap(self) -> float | None:
        """Certified relative gap ``(objective - bound) / objective``."""
        return certified_gap(self.objective, self.bound)

    def summary(self) -> dict[str, Any]:
        """The JSON view."""
        return {
            "status": self.status.value,
            "objective": self.objective,
            "bound": self.bound if math.isfinite(self.bound) else None,
            "gap": self.gap,
            "runtime_s": self.runtime_s,
            "replicas": self.replicas,
            "solver": self.solver,
        }


@dataclass(frozen=True, eq=False)
class SequenceResult:
    """The best policy for a fixed assignment, as the evaluator scored it.

    Attributes
    ----------
    policy
        Label of the best policy (smallest makespan; ties to the first given).
    makespan_s, busy_fraction
        Its evaluator metrics.
    assignment
        Replica id per request.
    replicas
        ``C``.
    table
        One row per policy tried (index ``policy``), every evaluator metric.
    simulation
        The best policy's :class:`~lsched.evaluator.SimulationResult`.
    """

    policy: str
    makespan_s: float
    busy_fraction: float
    assignment: IntArray
    replicas: int
    table: pd.DataFrame
    simulation: SimulationResult

    def __post_init__(self) -> None:
        where = np.asarray(self.assignment, dtype=np.int64)
        object.__setattr__(self, "assignment", _frozen(where))


@dataclass(frozen=True, eq=False)
class ReplicaSchedule:
    """A slot-model schedule on ``C`` replicas: start slot and replica per request.

    Attributes
    ----------
    status
        :class:`~lsched.formulations.result.Status`.
    objective
        Slot-model objective of the schedule (slots, constants included, as
        :meth:`SlotProblem.objective_value`).
    bound
        Proven lower bound: over every joint schedule for :func:`solve_joint`; over
        the schedules *with this assignment* for :func:`sequence_slots` and
        :func:`decompose`.
    runtime_s
        Wall-clock seconds.
    start
        Start slot per request (int64, read-only).
    assignment
        Replica id per request (int64, read-only).
    replicas
        ``C``.
    solver
        Which method produced it.
    info
        ``replayed_objective`` (the evaluator's), per-replica statuses, solver
        figures.
    """

    status: Status
    objective: float
    bound: float
    runtime_s: float
    start: IntArray
    assignment: IntArray
    replicas: int
    solver: str
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        start = np.asarray(self.start, dtype=np.int64)
        where = np.asarray(self.assignment, dtype=np.int64)
        if start.shape != where.shape:
            raise InputError(
                f"got {start.shape} starts and {where.shape} replica ids; expected "
                "one of each per request",
                field="start",
            )
        object.__setattr__(self, "start", _frozen(start))
        object.__setattr__(self, "assignment", _frozen(where))

    @property
    def gap(self) -> float | None:
        """Certified relative gap."""
        return certified_gap(self.objective, self.bound)


@dataclass(frozen=True, eq=False)
class DecompositionLoss:
    """The joint slot optimum against assignment-then-sequencing.

    Attributes
    ----------
    joint
        :func:`solve_joint`'s schedule (started from the decomposition's).
    decomposition
        :func:`decompose`'s schedule.
    """

    joint: ReplicaSchedule
    decomposition: ReplicaSchedule

    @property
    def loss(self) -> float:
        """``decomposition / joint - 1``: what the decomposition loses against the
        best joint schedule found (exact when the joint one is optimal)."""
        return _ratio(self.decomposition.objective, self.joint.objective) - 1.0

    @property
    def loss_upper(self) -> float:
        """``decomposition / joint bound - 1``: a proven upper bound on the loss."""
        return _ratio(self.decomposition.objective, self.joint.bound) - 1.0

    def summary(self) -> dict[str, Any]:
        """The JSON view."""
        return {
            "joint_status": self.joint.status.value,
            "joint_objective": self.joint.objective,
            "joint_bound": self.joint.bound,
            "decomposition_status": self.decomposition.status.value,
            "decomposition_objective": self.decomposition.objective,
            "loss": self.loss,
            "loss_upper": self.loss_upper,
            "joint_runtime_s": self.joint.runtime_s,
            "decomposition_runtime_s": self.decomposition.runtime_s,
        }


def _ratio(a: float, b: float) -> float:
    if b > 0:
        return a / b
    return 1.0 if a <= b else math.inf


# -- the assignment problem -----------------------------------------------------------


def _integer_loads(load: FloatArray, steps: int) -> tuple[IntArray, float, float]:
    """Integer loads ``w``, grid ``q`` and ``E+ = sum max(0, q w - l)``."""
    top = float(load.max())
    if top == 0.0:
        return np.zeros(len(load), dtype=np.int64), 1.0, 0.0
    if np.all(load == np.round(load)) and float(load.sum()) < _EXACT_TOTAL:
        return load.astype(np.int64), 1.0, 0.0
    q = top / steps
    w = np.rint(load / q).astype(np.int64)
    excess = float(np.maximum(q * w - load, 0.0).sum())
    return w, q, excess


def _allowed(rank: IntArray, replicas: int) -> list[list[int]]:
    """Replicas each request may use: ``0..min(rank, C-1)``."""
    return [list(range(min(int(r), replicas - 1) + 1)) for r in rank]


@dataclass
class _Outcome:
    stop: Stop
    where: IntArray | None
    bound: float  # integer bound of the quantised problem (-inf if none)
    info: dict[str, Any]


def _assign_cpsat(
    w: IntArray,
    allowed: list[list[int]],
    replicas: int,
    lower: int,
    upper: int,
    hint: IntArray,
    time_limit: float,
    num_workers: int,
    seed: int,
    params: dict[str, Any],
) -> _Outcome:
    model = cp_model.CpModel()
    n = len(w)
    x = [{c: model.new_bool_var(f"x{i}_{c}") for c in allowed[i]} for i in range(n)]
    for i in range(n):
        model.add_exactly_one(x[i].values())
    total = int(w.sum())
    loads = []
    for c in range(replicas):
        terms = [(int(w[i]), x[i][c]) for i in range(n) if c in x[i]]
        load = model.new_int_var(0, min(upper, total), f"load{c}")
        model.add(load == sum(k * v for k, v in terms))
        loads.append(load)
    model.add(sum(loads) == total)  # redundant: helps the LP and propagation
    makespan = model.new_int_var(lower, upper, "makespan")
    model.add_max_equality(makespan, loads)
    model.minimize(makespan)
    for i in range(n):
        for c, v in x[i].items():
            model.add_hint(v, int(hint[i] == c))
    solver = configured_solver(max(0.0, time_limit), num_workers, seed, params)
    code, interrupted = solve_stoppable(solver, model)
    where = None
    if code in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        where = np.array(
            [next(c for c, v in x[i].items() if solver.value(v)) for i in range(n)],
            dtype=np.int64,
        )
    stop = cpsat_stop(
        solver.status_name(code),
        interrupted=interrupted,
        other_limits=bool(CPSAT_OTHER_LIMITS & params.keys()),
    )
    bound = float(solver.best_objective_bound)
    if not math.isfinite(bound):
        bound = -math.inf
    return _Outcome(
        stop,
        where,
        bound,
        {
            "cpsat_status": solver.status_name(code),
            "branches": solver.num_branches,
            "conflicts": solver.num_conflicts,
            "variables": sum(len(a) for a in allowed) + replicas + 1,
        },
    )


def _assign_milp(
    w: IntArray,
    allowed: list[list[int]],
    replicas: int,
    lower: int,
    upper: int,
    hint: IntArray,
    deadline: float,
    num_workers: int,
    seed: int,
    params: dict[str, Any],
) -> _Outcome:
    n = len(w)
    pairs = [(i, c) for i in range(n) for c in allowed[i]]
    model = pyo.ConcreteModel()
    model.x = pyo.Var(pairs, within=pyo.Binary)
    model.makespan = pyo.Var(within=pyo.NonNegativeIntegers, bounds=(lower, upper))
    model.assign = pyo.Constraint(
        range(n), rule=lambda m, i: sum(m.x[i, c] for c in allowed[i]) == 1
    )
    on = [[i for i in range(n) if c in allowed[i]] for c in range(replicas)]
    model.replica_load = pyo.Constraint(
        range(replicas),
        rule=lambda m, c: sum(int(w[i]) * m.x[i, c] for i in on[c]) <= m.makespan,
    )
    model.objective = pyo.Objective(expr=model.makespan, sense=pyo.minimize)
    loaded = _highs.load(model)
    index = {id(model.x[p]): p for p in pairs}
    start = np.array(
        [
            float(hint[index[id(v)][0]] == index[id(v)][1])
            if id(v) in index
            else float(upper)  # the makespan column: LPT's load is the upper end
            for v in loaded.columns
        ],
        dtype=np.float64,
    )
    outcome = _highs.run(
        loaded,
        deadline=deadline,
        threads=num_workers,
        seed=seed,
        options={"mip_rel_gap": 0.0, "mip_abs_gap": 1.0 - 1e-6, **params},
        start=start,
        start_objective=float(upper),
    )
    where = None
    if outcome.values is not None:
        chosen = np.zeros((n, replicas))
        for v, value in zip(loaded.columns, outcome.values, strict=True):
            if id(v) in index:
                i, c = index[id(v)]
                chosen[i, c] = value
        where = chosen.argmax(axis=1).astype(np.int64)
    bound = outcome.bound
    bound = float(math.ceil(bound - 1e-6)) if math.isfinite(bound) else -math.inf
    return _Outcome(
        outcome.stop,
        where,
        bound,
        {
            **loaded.size,
            "highs_status": outcome.model_status,
            "nodes": outcome.nodes,
            "interrupted": outcome.interrupted,
        },
    )


def _packing_inputs(
    instance: Instance,
    profile: DeploymentProfile,
    replicas: int,
    backend: str,
    time_limit: float,
    num_workers: int,
    seed: int,
    load: npt.ArrayLike | str | None,
    load_steps: int,
) -> tuple[Any, ...]:
    """The checked arguments and loads of a packing model (:func:`assign` and
    :func:`lsched.formulations.pang_offline.assign_ordered`): start time,
    deadline, replicas, workers, seed, loads in seconds, integer loads ``w`` on
    the grid ``q`` with its ``excess``, and each request's LPT rank."""
    began = time.monotonic()
    deadline = began + check_time_limit(time_limit)
    if backend not in BACKENDS:
        raise InputError(
            f"got {backend!r}; expected one of {', '.join(BACKENDS)}", field="backend"
        )
    replicas = check_int(replicas, "replicas", 1)
    num_workers = check_workers(num_workers)
    seed = check_seed(seed)
    load_s = _resolve_loads(instance, profile, load)
    steps = check_int(load_steps, "load_steps", 1)
    w, q, excess = _integer_loads(load_s, steps)
    rank = np.empty(len(w), dtype=np.int64)
    rank[_rank_order(load_s)] = np.arange(len(w))
    return began, deadline, replicas, num_workers, seed, load_s, w, q, excess, rank


def assign(
    instance: Instance,
    profile: DeploymentProfile,
    replicas: int,
    *,
    backend: str = "cpsat",
    time_limit: float = 60.0,
    num_workers: int = 2,
    seed: int = 0,
    load: npt.ArrayLike | str | None = None,
    load_steps: int = DEFAULT_LOAD_STEPS,
    **params: Any,
) -> AssignmentResult:
    """Minimum-makespan assignment of requests to ``replicas`` identical replicas.

    Parameters
    ----------
    instance
        The requests (Pang et al.: all present at time 0; arrivals are ignored).
    profile
        Prices the default loads (:func:`request_loads_s`).
    replicas
        ``C >= 1``.
    backend
        ``"cpsat"`` (OR-Tools) or ``"milp"`` (Pyomo + HiGHS).
    time_limit
        Wall-clock seconds for the whole call.
    num_workers
        CP-SAT workers or HiGHS threads.
    seed
        The solver's random seed.
    load
        ``None`` or ``"profile"`` (:func:`request_loads_s`), ``"tokens"``
        (``s_i + o_i``) or one load ``>= 0`` per request.
    load_steps
        Grid steps of the largest load when the loads are not integers (module
        docstring): finer is more exact and slower to prove.
    **params
        Further CP-SAT parameters or HiGHS options.

    Returns
    -------
    AssignmentResult
        Never raises on a time-out: LPT's assignment at worst. When LPT already
        meets :func:`assignment_lower_bound` no solver runs (``solver="lpt"``).

    Raises
    ------
    InputError
        On a bad backend, replica count, time limit or load.
    """
    began, deadline, replicas, num_workers, seed, load_s, w, q, excess, rank = (
        _packing_inputs(
            instance, profile, replicas, backend, time_limit, num_workers, seed,
            load, load_steps,
        )
    )  # fmt: skip
    start = lpt(load_s, replicas)
    float_bound = assignment_lower_bound(load_s, replicas)
    lower = math.ceil(assignment_lower_bound(w, replicas) - 1e-9)
    upper = int(np.bincount(start, weights=w, minlength=replicas).max())

    def loads_of(where: IntArray) -> FloatArray:
        return np.bincount(where, weights=load_s, minlength=replicas)

    info: dict[str, Any] = {
        "load_step": q,
        "exact": excess == 0.0 and bool(np.all(q * w == load_s)),
        "lpt_objective": float(loads_of(start).max()),
    }
    if upper <= lower:
        outcome = _Outcome(Stop.FINISHED, start, float(lower), {})
        solver_name = "lpt"
    else:
        allowed = _allowed(rank, replicas)
        remaining = deadline - time.monotonic()
        if backend == "cpsat":
            outcome = _assign_cpsat(
                w, allowed, replicas, lower, upper, start, remaining,
                num_workers, seed, params,
            )  # fmt: skip
        else:
            outcome = _assign_milp(
                w, allowed, replicas, lower, upper, start, deadline,
                num_workers, seed, params,
            )  # fmt: skip
        solver_name = backend
    info |= outcome.info
    found = start
    if outcome.where is not None and (
        np.bincount(outcome.where, weights=w, minlength=replicas).max() < upper
    ):
        found = outcome.where
    integer_objective = int(np.bincount(found, weights=w, minlength=replicas).max())
    integer_bound = max(float(lower), min(outcome.bound, float(integer_objective)))
    # a bound short of the objective after a finished search: a relaxed gap
    status = decide_status(outcome.stop, float(integer_objective), integer_bound)
    # with rounded loads, LPT can still be better on the true ones
    best = found if loads_of(found).max() <= loads_of(start).max() else start
    replica_load = loads_of(best)
    objective = float(replica_load.max())
    bound = min(objective, max(float_bound, q * integer_bound - excess))
    return AssignmentResult(
        status=status,
        objective=objective,
        bound=bound,
        runtime_s=time.monotonic() - began,
        assignment=best,
        replica_load_s=replica_load,
        load_s=load_s,
        replicas=replicas,
        solver=solver_name,
        info=info,
    )


# -- sequencing -----------------------------------------------------------------------


def _assignment_of(
    instance: Instance,
    profile: DeploymentProfile,
    assignment: AssignmentResult | npt.ArrayLike,
    replicas: int | None,
) -> tuple[IntArray, int]:
    if isinstance(assignment, AssignmentResult):
        if replicas is not None and replicas != assignment.replicas:
            raise InputError(
                f"got {replicas}; the assignment is over {assignment.replicas}",
                field="replicas",
            )
        replicas, assignment = assignment.replicas, assignment.assignment
    replicas = profile.replicas if replicas is None else replicas
    return assign_replicas(instance, replicas, assignment), replicas


def sequence(
    instance: Instance,
    profile: DeploymentProfile,
    assignment: AssignmentResult | npt.ArrayLike,
    *,
    policy: str | PolicySpec | Sequence[str | PolicySpec] = "mc-sf",
    replicas: int | None = None,
) -> SequenceResult:
    """Run every replica's requests under each policy; keep the best makespan.

    Parameters
    ----------
    instance
        The requests. Length-aware policies (``mc-sf``, ``sjf``, ...) read
        ``predicted_output_tokens``; attach them first (e.g.
        :func:`lsched.predictors.oracle`).
    profile
        The deployment.
    assignment
        An :class:`AssignmentResult` or one replica id per request.
    policy
        A policy, or several to choose from.
    replicas
        ``C``; the assignment's, else the profile's.

    Returns
    -------
    SequenceResult
        Scored by :func:`lsched.evaluator.simulate` with static dispatch.

    Raises
    ------
    InputError
        On an empty policy list, a bad assignment or a policy that needs
        predictions the instance lacks.
    """
    where, replicas = _assignment_of(instance, profile, assignment, replicas)
    policies = [policy] if isinstance(policy, str | PolicySpec) else list(policy)
    if not policies:
        raise InputError("expected at least one policy", field="policy")
    specs = [parse_policy(p) if isinstance(p, str) else p for p in policies]
    runs = [
        simulate(
            instance, profile, spec, replicas=replicas, assignment=where,
            dispatch="static",
        )
        for spec in specs
    ]  # fmt: skip
    best = min(range(len(runs)), key=lambda k: runs[k].metrics["makespan_s"])
    chosen = runs[best]
    return SequenceResult(
        policy=chosen.policy,
        makespan_s=float(chosen.metrics["makespan_s"]),
        busy_fraction=float(chosen.metrics["busy_fraction"]),
        assignment=where,
        replicas=replicas,
        table=pd.concat([r.metrics_frame for r in runs]),
        simulation=chosen,
    )


def _unit_problem(
    instance: Instance, profile: DeploymentProfile, objective: str
) -> SlotProblem:
    check_unit_slots(profile)
    return SlotProblem.from_instance(instance, profile, objective=objective)


def _combined(
    problem: SlotProblem, where: IntArray, replicas: int, start: IntArray
) -> tuple[bool, float]:
    """(feasible on every replica, the evaluator's replayed objective)."""
    feasible = all(
        is_feasible(problem.subproblem(ids), start[ids])
        for c in range(replicas)
        if len(ids := np.flatnonzero(where == c))
    )
    result = replay_start_slots(
        problem.unit_instance(),
        problem.unit_profile(),
        start,
        replicas=replicas,
        assignment=where,
    )
    first = result.requests["first_token_s"].to_numpy()
    done = result.requests["completion_s"].to_numpy()
    a, w = problem.arrival, problem.weight
    if problem.objective == "latency":
        value = float(np.dot(w, done - a))
    elif problem.objective == "ttft":
        value = float(np.dot(w, first - a))
    else:
        value = float(done.max() - a.min())
    return feasible, value


def sequence_slots(
    instance: Instance,
    profile: DeploymentProfile,
    assignment: AssignmentResult | npt.ArrayLike,
    *,
    replicas: int | None = None,
    objective: str = "makespan",
    time_limit: float = 10.0,
    num_workers: int = 2,
    seed: int = 0,
) -> ReplicaSchedule:
    """Solve the slot model of every replica's requests (CP-SAT), then combine.

    Parameters
    ----------
    instance
        The requests, arrivals in slots.
    profile
        A unit-slot profile (``load_profile("unit-slot").replace(
        kv_capacity_tokens=M)``).
    assignment
        An :class:`AssignmentResult` or one replica id per request.
    replicas
        ``C``; the assignment's, else the profile's.
    objective
        ``"makespan"``, ``"latency"`` or ``"ttft"``.
    time_limit
        Seconds per replica's solve.
    num_workers, seed
        CP-SAT's.

    Returns
    -------
    ReplicaSchedule
        ``OPTIMAL`` when every replica is solved to optimality (optimal for this
        assignment); ``bound`` bounds the schedules with this assignment.

    Raises
    ------
    InputError
        If the profile is not unit-slot, or on a bad assignment.
    """
    began = time.monotonic()
    problem = _unit_problem(instance, profile, objective)
    where, replicas = _assignment_of(instance, profile, assignment, replicas)
    start = np.zeros(len(problem), dtype=np.int64)
    bounds, statuses = [], []
    for c in range(replicas):
        ids = np.flatnonzero(where == c)
        if len(ids) == 0:
            continue
        sub = problem.subproblem(ids)
        result = cpsat.solve(
            sub, time_limit=time_limit, num_workers=num_workers, seed=seed
        )
        assert result.start is not None  # a feasible incumbent always exists
        start[ids] = result.start
        bounds.append(result.bound - sub.objective_offset)
        statuses.append(result.status)
    integer_bound = max(bounds) if objective == "makespan" else sum(bounds)
    integer_bound = min(integer_bound, problem.integer_objective(start))
    feasible, replayed = _combined(problem, where, replicas, start)
    return ReplicaSchedule(
        status=combined_status(statuses),
        objective=problem.objective_value(start),
        bound=integer_bound + problem.objective_offset,
        runtime_s=time.monotonic() - began,
        start=start,
        assignment=where,
        replicas=replicas,
        solver="cpsat/per-replica",
        info={
            "replayed_objective": replayed,
            "feasible": feasible,
            "replica_status": [s.value for s in statuses],
        },
    )


def decompose(
    instance: Instance,
    profile: DeploymentProfile,
    replicas: int,
    *,
    objective: str = "makespan",
    backend: str = "cpsat",
    time_limit: float = 10.0,
    num_workers: int = 2,
    seed: int = 0,
) -> ReplicaSchedule:
    """Pang et al.'s two stages in the slot model: bin packing by KV area, then
    each replica's slot optimum.

    Parameters
    ----------
    instance, profile
        As :func:`sequence_slots` (unit-slot profile).
    replicas
        ``C``.
    objective
        Slot-model objective of the second stage.
    backend
        Of the assignment (:func:`assign`).
    time_limit
        Seconds for the assignment, and again per replica's solve.
    num_workers, seed
        The solvers'.

    Returns
    -------
    ReplicaSchedule
        ``info["assignment"]`` holds the :class:`AssignmentResult`.
    """
    began = time.monotonic()
    problem = _unit_problem(instance, profile, objective)
    area = kv_areas(instance, problem.block_tokens)
    packing = assign(
        instance, profile, replicas, backend=backend, time_limit=time_limit,
        num_workers=num_workers, seed=seed, load=area,
    )  # fmt: skip
    schedule = sequence_slots(
        instance, profile, packing, objective=objective, time_limit=time_limit,
        num_workers=num_workers, seed=seed,
    )  # fmt: skip
    return ReplicaSchedule(
        status=schedule.status,
        objective=schedule.objective,
        bound=schedule.bound,
        runtime_s=time.monotonic() - began,
        start=schedule.start,
        assignment=schedule.assignment,
        replicas=replicas,
        solver=f"{packing.solver}+cpsat/per-replica",
        info=schedule.info | {"assignment": packing},
    )


# -- the joint model ------------------------------------------------------------------


def _canonical(
    problem: SlotProblem, start: IntArray, where: IntArray
) -> tuple[IntArray, IntArray]:
    """Identical requests in start order, replicas numbered by first use."""
    start, where = start.copy(), where.copy()
    for group in problem.identical_groups():
        order = np.argsort(start[group], kind="stable")
        start[group], where[group] = start[group][order], where[group][order]
    _, first = np.unique(where, return_index=True)
    used = where[np.sort(first)]
    label = np.empty(int(where.max()) + 1, dtype=np.int64)
    label[used] = np.arange(len(used))
    return start, label[where]


def _initial_joint(
    problem: SlotProblem, replicas: int
) -> tuple[str, IntArray, IntArray]:
    """A feasible joint schedule: LPT on KV areas, best heuristic per replica."""
    area = np.array([int(problem.kv_table(i).sum()) for i in range(len(problem))])
    where = lpt(area, replicas)
    start = np.zeros(len(problem), dtype=np.int64)
    for c in range(replicas):
        ids = np.flatnonzero(where == c)
        if len(ids):
            _, start[ids] = best_heuristic(problem.subproblem(ids))
    return "lpt+heuristic", start, where


def _joint_model(
    problem: SlotProblem, replicas: int, latest_end: int
) -> tuple[cp_model.CpModel, list[Any], list[list[Any]]]:
    model = cp_model.CpModel()
    n, big_c = len(problem), replicas
    o, s, r = problem.output_tokens, problem.prompt_tokens, problem.release
    start = [
        model.new_int_var(int(r[i]), latest_end - int(o[i]), f"S{i}") for i in range(n)
    ]
    y = [[model.new_bool_var(f"y{i}_{c}") for c in range(big_c)] for i in range(n)]
    for i in range(n):
        model.add_exactly_one(y[i])
        for c in range(big_c):  # replicas numbered by first use in position order
            if c > i:
                model.add(y[i][c] == 0)
            elif c > 0:
                model.add(y[i][c] <= sum(y[k][c - 1] for k in range(i)))
    for group in problem.identical_groups():
        for a, b in itertools.pairwise(group.tolist()):
            model.add(start[a] <= start[b])
    seqs = problem.max_num_seqs is not None and problem.max_num_seqs < n
    budget = problem.max_num_batched_tokens is not None and (
        problem.max_num_batched_tokens < n + int((s - 1).sum())
    )
    for c in range(big_c):
        steps, demands, whole, prefill, extra = [], [], [], [], []
        for i in range(n):
            rise = np.diff(problem.kv_table(i), prepend=0)
            for j in np.flatnonzero(rise).tolist():
                iv = model.new_optional_fixed_size_interval_var(
                    start[i] + j, int(o[i]) - j, y[i][c], f"kv{i}_{j}_{c}"
                )
                steps.append(iv)
                demands.append(int(rise[j]))
                if j == 0:
                    whole.append(iv)
            if budget and s[i] > 1:
                prefill.append(
                    model.new_optional_fixed_size_interval_var(
                        start[i], 1, y[i][c], f"pf{i}_{c}"
                    )
                )
                extra.append(int(s[i]) - 1)
        model.add_cumulative(steps, demands, problem.kv_capacity_blocks)
        if seqs:
            model.add_cumulative(whole, [1] * n, problem.max_num_seqs)
        if budget:
            model.add_cumulative(
                whole + prefill, [1] * n + extra, problem.max_num_batched_tokens
            )
    end = [start[i] + int(o[i]) for i in range(n)]
    w = problem.weight.tolist()
    if problem.objective == "latency":
        model.minimize(sum(w[i] * end[i] for i in range(n)))
    elif problem.objective == "ttft":
        model.minimize(sum(w[i] * start[i] for i in range(n)))
    else:
        makespan = model.new_int_var(int((r + o).max()), latest_end, "makespan")
        model.add_max_equality(makespan, end)
        model.minimize(makespan)
    return model, start, y


def solve_joint(
    instance: Instance,
    profile: DeploymentProfile,
    replicas: int,
    *,
    objective: str = "makespan",
    time_limit: float = 60.0,
    num_workers: int = 2,
    seed: int = 0,
    initial: ReplicaSchedule | tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    **params: Any,
) -> ReplicaSchedule:
    """The exact joint slot model: replica and start slot of every request (CP-SAT).

    Meant for small instances (tens of requests); see the module docstring.

    Parameters
    ----------
    instance
        The requests, arrivals in slots.
    profile
        A unit-slot profile with the instance's KV capacity.
    replicas
        ``C >= 1``.
    objective
        ``"makespan"``, ``"latency"`` or ``"ttft"``.
    time_limit
        Wall-clock seconds for the whole call.
    num_workers, seed
        CP-SAT's.
    initial
        A feasible schedule to start from (a :class:`ReplicaSchedule` or
        ``(start, assignment)``); by default LPT on KV areas with the best
        heuristic per replica.
    **params
        Further CP-SAT parameters.

    Returns
    -------
    ReplicaSchedule
        Never worse than ``initial``; ``bound`` bounds every joint schedule.

    Raises
    ------
    InputError
        If the profile is not unit-slot, or ``initial`` is not feasible.
    """
    began = time.monotonic()
    check_time_limit(time_limit)
    replicas = check_int(replicas, "replicas", 1)
    problem = _unit_problem(instance, profile, objective)
    if initial is None:
        source, start, where = _initial_joint(problem, replicas)
    else:
        source = "initial"
        if isinstance(initial, ReplicaSchedule):
            pair = (initial.start, initial.assignment)
        else:
            pair = initial
        start = np.asarray(pair[0], dtype=np.int64)
        where = assign_replicas(instance, replicas, pair[1])
        if start.shape != (len(problem),) or not all(
            is_feasible(problem.subproblem(ids), start[ids])
            for c in range(replicas)
            if len(ids := np.flatnonzero(where == c))
        ):
            raise InputError(
                "expected a feasible schedule: one start slot per request that keeps "
                "every slot-model rule on its replica",
                field="initial",
            )
    start, where = _canonical(problem, start, where)
    upper = problem.integer_objective(start)
    latest_end = int(problem.release.max() + problem.output_tokens.sum())
    if problem.objective == "makespan":
        latest_end = min(latest_end, upper)
    model, svars, y = _joint_model(problem, replicas, latest_end)
    for i, var in enumerate(svars):
        model.add_hint(var, int(start[i]))
        for c in range(replicas):
            model.add_hint(y[i][c], int(where[i] == c))
    remaining = time_limit - (time.monotonic() - began)
    solver = configured_solver(max(0.0, remaining), num_workers, seed, params)
    code, interrupted = solve_stoppable(solver, model)
    if code in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        found = np.array([solver.value(v) for v in svars], dtype=np.int64)
        found_where = np.array(
            [next(c for c in range(replicas) if solver.value(y[i][c])) for i in
             range(len(problem))],
            dtype=np.int64,
        )  # fmt: skip
        if problem.integer_objective(found) <= upper:
            start, where, source = found, found_where, "cpsat"
    integer = problem.integer_objective(start)
    if code == cp_model.OPTIMAL:
        bound = float(integer)
    else:
        bound = solver.best_objective_bound if code != cp_model.MODEL_INVALID else -1.0
        bound = bound if math.isfinite(bound) else -math.inf
    if problem.objective == "makespan":
        bound = max(bound, float((problem.release + problem.output_tokens).max()))
    bound = min(bound, float(integer))
    stop = cpsat_stop(
        solver.status_name(code),
        interrupted=interrupted,
        other_limits=bool(CPSAT_OTHER_LIMITS & params.keys()),
    )
    status = decide_status(stop, float(integer), bound)
    feasible, replayed = _combined(problem, where, replicas, start)
    return ReplicaSchedule(
        status=status,
        objective=problem.objective_value(start),
        bound=bound + problem.objective_offset,
        runtime_s=time.monotonic() - began,
        start=start,
        assignment=where,
        replicas=replicas,
        solver="cpsat/joint-interval",
        info={
            "replayed_objective": replayed,
            "feasible": feasible,
            "source": source,
            "cpsat_status": solver.status_name(code),
            "branches": solver.num_branches,
            "horizon": latest_end,
        },
    )


def decomposition_loss(
    instance: Instance,
    profile: DeploymentProfile,
    replicas: int,
    *,
    objective: str = "makespan",
    time_limit: float = 30.0,
    num_workers: int = 2,
    seed: int = 0,
) -> DecompositionLoss:
    """What bin packing then per-replica sequencing loses against the joint optimum.

    Runs :func:`decompose` (each stage under ``time_limit``), then
    :func:`solve_joint` from its schedule (so the joint one is never worse).

    Parameters
    ----------
    instance, profile, replicas, objective
        As :func:`solve_joint` (a unit-slot profile).
    time_limit
        Seconds for each solve.
    num_workers, seed
        CP-SAT's.
    """
    parts = decompose(
        instance, profile, replicas, objective=objective, time_limit=time_limit,
        num_workers=num_workers, seed=seed,
    )  # fmt: skip
    joint = solve_joint(
        instance, profile, replicas, objective=objective, time_limit=time_limit,
        num_workers=num_workers, seed=seed, initial=parts,
    )  # fmt: skip
    return DecompositionLoss(joint=joint, decomposition=parts)
