"""Scale: feasible schedules with a certified gap for traces of thousands of requests.

The exact models (slot MILP/CP-SAT, timed model) stop at tens of requests. For a
trace of 1,000 to 20,000 requests :func:`improve` searches a space of schedules
that the evaluator can replay quickly, the **priority policy with per-request
parameters** (:mod:`lsched.policies.priority`), with the evaluator's own engine as
the objective, and certifies the result against bounds valid for every schedule.

Objective and schedule space
----------------------------
The objective is the total latency ``L = sum_i (C_i - a_i)`` of the evaluator's
replay (:func:`lsched.evaluator.simulate`; one engine per replica, requests dealt
round robin). A point of the search space is a key rule ``R`` (``work``,
``prompt``, ``output``, ``arrival`` or explicit start keys) and, per request, an
offset ``theta_i``, a chunk cap ``c_i`` and a prefill budget ``p_i``: at every
iteration boundary the policy serves requests in ascending ``R_i(t) + theta_i``
(``R_i(t)`` is the *remaining* work, prompt, ... of request ``i`` at ``t``), gives
request ``i`` prefill chunks of at most ``c_i`` tokens, and puts at most ``p_j``
prefill tokens in the iteration, ``j`` the latest arrival. Every point is a
feasible schedule by construction (the policy obeys the engine's KV, batch and
budget rules). The search is offline: the keys read the true output lengths.

Start
-----
The caller's ``start_keys`` are replayed first, with ``c = p = B`` (so that no time
limit skips them). The rules are replayed with uniform settings: ``work`` with
``c in {B, 1024, 512, 384, 256}`` (``B`` the token budget; a cap below ``B``
spreads a prompt's prefill
over several iterations and lowers its attention cost ``sum_chunks c (x + c)``
from ``s^2`` towards ``s^2 / 2``), then with the best cap and ``p in {3072, 2048,
1536, 1024}`` (a prefill budget below ``B`` shortens the iterations, so the
decode tails, at the price of the per-iteration constant), then the other rules
(and ``start_keys``) with the best ``(c, p)``. The best replay is the incumbent;
all its offsets are 0.

Time windows with boundary state carried over
---------------------------------------------
Requests are grouped by arrival into windows ``W_k = {i : t_k <= a_i < t_k +
window_s}`` (per replica). The policy is non-anticipating: a decision at a
boundary ``t`` reads only requests arrived by ``t``. So the engine's state ``S_k``
at the first boundary where a request of ``W_k`` has arrived (before the policy
is asked) does not depend on ``(theta_i, c_i, p_i)`` for ``i`` in ``W_k`` or any
later window (``p_i`` is in force only once ``i`` has arrived). The search keeps
``S_k`` for every window of the incumbent (NumPy copies of the engine's state). A
move changes ``(theta, c, p)`` inside one window ``W_k`` only, restores ``S_k``
and replays the suffix: the schedule before ``S_k`` is the incumbent's, exactly,
so the suffix replay gives the exact total ``L`` of the
moved point (requests finished before ``S_k`` keep their completions). A replay
from ``W_k`` costs the suffix, not the whole trace, and records the states of the
later windows on the way, which become the incumbent's if the move is accepted.

Large-neighbourhood moves, in a random window (weights adapt to success):

* ``chunk``: one cap for the whole window, from a ladder ``B, 2048, ..., 128``;
* ``budget``: one prefill budget for the whole window, from ``B, 3072, ..., 512``
  (the load changes along a trace: full iterations in overload, shorter ones
  when the queue is short);
* ``swap``: two requests of the window exchange their keys at arrival;
* ``shift``: one request's offset moves by ``N(0, sigma_k)``, ``sigma_k`` the
  spread of the window's keys at arrival;
* ``group``: a random part of the window moves together by ``N(0, sigma_k / 2)``.

A move is kept when it lowers ``L``. The search stops before the wall-clock
limit, keeping the time of two full replays to check the final point with
:func:`lsched.evaluator.simulate` (the value returned); every replay is
interrupted at the deadline, so the limit holds whatever the trace.

Bound and certified gap
-----------------------
The bound is the best of :func:`lsched.formulations.bounds.work.work_bounds`
(critical path, fluid SRPT on the attributed work, prefill queue): each holds for
every schedule the evaluator can run, chunked or preemptive. The certified gap is
``(L - bound) / L`` (:func:`lsched.formulations.result.certified_gap`).

Limits
------
* The search explores one family of schedules (the priority policy); the best
  schedule of the instance may lie outside it. The gap is certified, not the
  optimality of the family.
* On a loaded replica the gap is mostly the bound's. Request ``i`` completes
  ``o_i - 1`` iterations after its prefill, and with a queue the iterations are
  full (a 4,096-token budget is about 0.85 s on ``llama2-70b-a100-tp4``): its
  decode tail lasts ``(o_i - 1)`` such iterations, whereas the fluid bound
  completes it when its *work* is done and charges the tail a millisecond per
  step. Shorter iterations would shorten tails but pay the per-iteration
  constant, which delays everything queued; a bound that sees this trade-off
  has to price machine time over the horizon (the fluid queue's marginal cost of
  a lost second) *and* tie each decode phase to its prefill completion, so that
  a relaxation cannot move the long tails to the cheap end of the horizon. The
  closed forms here do neither.
* Boundary states are the engine's own snapshots
  (:meth:`~lsched.evaluator.engine.ReplicaEngine.snapshot`), taken where
  :meth:`~lsched.evaluator.engine.ReplicaEngine.run` stops at a window's first
  arrival. The tests compare every replay with a fresh
  :func:`~lsched.evaluator.simulate`.
* Replicas are dealt round robin and searched independently (as the evaluator
  runs them); the joint dispatch rules are not searched.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from lsched.checks import check_number, check_seed, check_time_limit
from lsched.errors import InputError
from lsched.evaluator import check_fits, simulate
from lsched.evaluator.engine import ReplicaEngine
from lsched.evaluator.length import cut_to_length
from lsched.formulations.bounds.work import work_bounds
from lsched.formulations.result import LOG_COLUMNS, Status, certified_gap
from lsched.instance import Instance
from lsched.policies import PolicySpec
from lsched.policies.base import Batch, ReplicaView, restore_policy, snapshot_policy
from lsched.policies.priority import (
    KeyArray,
    Priority,
    PriorityParams,
    work_keys,
    work_params,
)
from lsched.profile import DeploymentProfile

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Objectives :func:`improve` optimises.
OBJECTIVES: tuple[str, ...] = ("latency",)
#: Key rules tried at the start (module docstring).
RULES: tuple[str, ...] = ("work", "prompt", "output", "arrival")
#: Move kinds of the search (module docstring).
MOVES: tuple[str, ...] = ("chunk", "budget", "swap", "shift", "group")

#: Progress callback: ``(elapsed seconds, incumbent objective or None, bound)``.
Progress = Callable[[float, float | None, float], None]

_START_CAPS = (1024, 512, 384, 256)
_START_BUDGETS = (3072, 2048, 1536, 1024)
_BUDGET_LADDER = (3072, 2048, 1536, 1024, 512)
_CAP_LADDER = (2048, 1024, 768, 512, 384, 256, 192, 128)
#: The search stops this many full replays before the deadline, and the final
#: check by the evaluator runs only if this many (fewer) replays' time is left.
_RESERVE = 2.5
_CHECK_MARGIN = 2.0


@dataclass(frozen=True)
class ScaleResult:
    """What :func:`improve` returns.

    Attributes
    ----------
    status
        ``time_limit`` (the search ran to its limit) with a schedule, or without
        one when not even a start could be replayed in time.
    objective
        Total latency ``sum_i (C_i - a_i)`` in seconds of the best point, as the
        evaluator scores it; ``None`` without a schedule.
    bound
        Best lower bound on the objective of any schedule (seconds).
    bound_name
        Which bound (``"seconds.work"``, ...).
    runtime_s
        Wall-clock seconds, bounds and the final check included.
    rule
        The key rule of the best point (``"work"``, ...), or ``None``.
    params
        One :class:`PriorityParams` per replica that reproduce the schedule on
        the instance with true output lengths as predictions (the keys read
        them): with ``inst = lsched.predictors.oracle(instance)``,
        ``simulate(inst.subset(assignment == c), profile, specs()[c],
        replicas=1)``; with one replica ``simulate(inst, profile, specs()[0])``.
    assignment
        Replica of each request (round robin).
    keys
        Each request's key at arrival, offset included: the order the search
        settled on (instance order).
    offsets, chunk_caps, prefill_budgets
        Per-request offsets, prefill chunk caps and prefill budgets (instance
        order; :class:`~lsched.policies.priority.PriorityParams`).
    start_objectives
        Objective of each start replayed, by label (``"work/c=512"``, ...).
    log
        Objective and bound over time (:data:`~lsched.formulations.result.
        LOG_COLUMNS`): one row per start and per improvement.
    info
        Counts: replays, moves tried and kept per kind, windows, whether the final
        check by :func:`~lsched.evaluator.simulate` ran.
    """

    status: Status
    objective: float | None
    bound: float
    bound_name: str
    runtime_s: float
    rule: str | None
    params: tuple[PriorityParams, ...]
    assignment: IntArray
    keys: FloatArray | None
    offsets: FloatArray | None
    chunk_caps: IntArray | None
    prefill_budgets: IntArray | None
    start_objectives: dict[str, float] = field(default_factory=dict)
    log: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=LOG_COLUMNS))
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def gap(self) -> float | None:
        """Certified gap ``(objective - bound) / objective``."""
        return certified_gap(self.objective, self.bound)

    def specs(self) -> list[PolicySpec]:
        """One policy spec per replica (for :func:`~lsched.evaluator.simulate`)."""
        return [PolicySpec("priority", p) for p in self.params]

    def summary(self) -> dict[str, Any]:
        """The JSON view: status, objective, bound, gap, runtime, rule."""
        return {
            "status": self.status.value,
            "objective": self.objective,
            "bound": self.bound if math.isfinite(self.bound) else None,
            "bound_name": self.bound_name,
            "gap": self.gap,
            "runtime_s": self.runtime_s,
            "rule": self.rule,
        }


# -- replaying one replica from a window's boundary state -----------------------------


class _OutOfTime(Exception):
    """The wall-clock deadline passed during a replay."""


class _Gate:
    """Wraps the policy to stop a replay at a wall-clock deadline."""

    def __init__(self, inner: Priority) -> None:
        self.inner = inner
        self.deadline = math.inf
        # the inner policy's standing decision (lsched.policies.base)
        self.holds_running_when_idle = (
            getattr(inner, "holds_running_when_idle", False) is True
        )

    def decide(self, view: ReplicaView) -> Batch:
        if time.perf_counter() > self.deadline:
            raise _OutOfTime
        return self.inner.decide(view)

    def snapshot(self) -> Any:
        return snapshot_policy(self.inner)

    def restore(self, state: Any) -> None:
        restore_policy(self.inner, state)


class ReplicaReplay:
    """One replica under ``priority`` with per-request offsets, chunk caps and
    prefill budgets, replayable from the boundary state of any window (module
    docstring).

    Parameters
    ----------
    instance
        The replica's requests (with the predictions the keys read).
    profile
        The deployment.
    params
        The key rule and its weights; the per-request settings live in
        :attr:`offsets`, :attr:`chunk_caps` and :attr:`prefill_budgets`
        (writable, local ids; caps and budgets start at the token budget, which
        does not bind) and may change between replays for requests of the
        replayed window and later ones.
    starts
        First local id of every window, ascending, starting at 0.
    """

    def __init__(
        self,
        instance: Instance,
        profile: DeploymentProfile,
        params: PriorityParams,
        starts: IntArray,
    ) -> None:
        self.instance = instance
        self.policy = Priority(params)
        self.offsets = np.zeros(len(instance))
        self.chunk_caps = np.full(
            len(instance), profile.max_num_batched_tokens, dtype=np.int64
        )
        self.prefill_budgets = np.full(
            len(instance), profile.max_num_batched_tokens, dtype=np.int64
        )
        self.policy.offsets = self.offsets
        self.policy.chunk_caps = self.chunk_caps
        self.policy.prefill_budgets = self.prefill_budgets
        self.gate = _Gate(self.policy)
        self.engine = ReplicaEngine(
            instance.arrival_s,
            instance.prompt_tokens,
            instance.output_tokens,
            instance.predicted_output_tokens,
            profile,
            self.gate,
            priority=instance.priority,
            tenant=instance.tenant,
        )
        self.starts = np.asarray(starts, dtype=np.int64)
        self.states: list[dict[str, Any] | None] = [None] * len(self.starts)
        self.states[0] = self.engine.snapshot()
        #: Total latency of the last accepted replay.
        self.value = math.nan

    def objective(self) -> float:
        """Total latency of the engine's current (finished) replay."""
        return float((self.engine.completion_s - self.instance.arrival_s).sum())

    def replay(self, k: int, deadline: float) -> tuple[float, list[dict[str, Any]]]:
        """Replay from window ``k``'s boundary state to the end.

        Returns the total latency and the boundary states of windows ``k + 1``,
        ... met on the way. Raises :class:`_OutOfTime` past ``deadline``.
        """
        state = self.states[k]
        if state is None:
            raise RuntimeError(f"window {k} has no boundary state")
        self.engine.restore(state)
        self.gate.deadline = deadline
        taken: list[dict[str, Any]] = []
        arrival_s = self.instance.arrival_s
        for start in self.starts[k + 1 :].tolist():
            # stop where the window's first request has arrived, before the policy
            # sees it
            self.engine.run(until_s=float(arrival_s[start]))
            taken.append(self.engine.snapshot())
        self.engine.run()
        return self.objective(), taken

    def accept(self, k: int, value: float, taken: list[dict[str, Any]]) -> None:
        """Make a replay from window ``k`` the incumbent of this replica."""
        self.value = value
        self.states[k + 1 :] = taken


# -- the search ------------------------------------------------------------------------


def _check(
    instance: Instance,
    objective: str,
    time_limit_s: float,
    seed: int,
    window_s: float | None,
    replicas: int,
    start_keys: npt.ArrayLike | None,
) -> FloatArray | None:
    if objective not in OBJECTIVES:
        raise InputError(
            f"got {objective!r}; expected one of {', '.join(OBJECTIVES)}",
            field="objective",
        )
    check_time_limit(time_limit_s, "time_limit_s")
    check_seed(seed)
    if window_s is not None:
        check_number(window_s, "window_s", 0, strict=True)
    if replicas < 1:
        raise InputError(f"got {replicas}; expected >= 1", field="replicas")
    if len(instance) == 0:
        raise InputError("expected at least one request", field="instance")
    if start_keys is None:
        return None
    keys = np.asarray(start_keys, dtype=np.float64)
    if keys.shape != (len(instance),) or not np.all(np.isfinite(keys)):
        raise InputError(
            f"expected {len(instance)} finite keys, one per request",
            field="start_keys",
        )
    return keys


def _check_length(instance: Instance, profile: DeploymentProfile) -> None:
    """InputError if the evaluator would reject a prompt or cut an output at
    ``max_model_len``: the replays here serve every request with all its
    tokens, which :func:`~lsched.evaluator.simulate` would not."""
    cut = cut_to_length(instance, profile.max_model_len)
    rejected = int(cut.rejected.sum())
    truncated = int(np.count_nonzero(cut.truncated))
    if rejected or truncated:
        raise InputError(
            f"{rejected} prompt(s) over max_model_len {cut.max_model_len} would be "
            f"rejected and {truncated} output(s) cut there by the evaluator; the "
            "search serves every request whole: clip the instance first "
            "(lsched.traces.transform.clip_lengths, --max-model-len)",
            field="max_model_len",
        )


def window_starts(arrival_s: FloatArray, window_s: float) -> IntArray:
    """First index of every non-empty window ``[a_0 + k w, a_0 + (k + 1) w)`` of a
    sorted arrival column."""
    if len(arrival_s) == 0:
        return np.zeros(1, dtype=np.int64)
    k = np.floor((arrival_s - arrival_s[0]) / window_s).astype(np.int64)
    return np.flatnonzero(np.r_[True, k[1:] != k[:-1]]).astype(np.int64)


def _fresh_keys(rule: str, params: PriorityParams, inst: Instance) -> FloatArray:
    """Each request's key at arrival under ``rule`` (nothing processed yet)."""
    if rule == "work":
        return work_keys(params, inst.prompt_tokens, inst.output_tokens)
    if rule == "prompt":
        return inst.prompt_tokens.astype(np.float64)
    if rule == "output":
        return inst.output_tokens.astype(np.float64)
    if rule == "arrival":
        return inst.arrival_s.astype(np.float64)
    assert params.keys is not None
    return params.keys.values.copy()


class _Search:
    """State of one :func:`improve` call."""

    def __init__(
        self,
        parts: list[Instance],
        profile: DeploymentProfile,
        window_s: float,
        started: float,
        deadline: float,
        bound: float,
        on_progress: Progress | None,
    ) -> None:
        self.parts = parts
        self.profile = profile
        self.starts = [window_starts(p.arrival_s, window_s) for p in parts]
        self.started = started
        self.deadline = deadline
        self.bound = bound
        self.on_progress = on_progress
        self.rows: list[tuple[float, float | None, float]] = []
        self.replays = 0
        self.last_replay_s = 0.0
        #: Wall seconds of the incumbent's replay from the start (all replicas).
        self.full_replay_s = 0.0

    def report(self, value: float | None) -> None:
        row = (time.perf_counter() - self.started, value, self.bound)
        self.rows.append(row)
        if self.on_progress is not None:
            self.on_progress(*row)

    def start(
        self,
        params: PriorityParams,
        cap: int,
        prefill: int,
        key_parts: list[FloatArray] | None,
    ) -> tuple[list[ReplicaReplay], float] | None:
        """Replay every replica from the beginning; ``None`` if out of time."""
        replays = []
        total = 0.0
        began = time.perf_counter()
        for c, part in enumerate(self.parts):
            p = params
            if key_parts is not None:
                p = replace(params, keys=KeyArray(key_parts[c]))
            rr = ReplicaReplay(part, self.profile, p, self.starts[c])
            rr.chunk_caps[:] = cap
            rr.prefill_budgets[:] = prefill
            try:
                value, taken = rr.replay(0, self.deadline)
            except _OutOfTime:
                return None
            self.replays += 1
            rr.accept(0, value, taken)
            total += value
            replays.append(rr)
        self.last_replay_s = time.perf_counter() - began
        return replays, total


def improve(
    instance: Instance,
    profile: DeploymentProfile,
    *,
    objective: str = "latency",
    time_limit_s: float,
    seed: int,
    start_keys: npt.ArrayLike | None = None,
    window_s: float | None = None,
    replicas: int | None = None,
    on_progress: Progress | None = None,
) -> ScaleResult:
    """Best priority schedule found within ``time_limit_s``, with a certified gap.

    Parameters
    ----------
    instance
        The requests (any size; thousands are the point). Its predictions are
        ignored: the search is offline and ranks by the true output lengths.
    profile
        The deployment.
    objective
        ``"latency"``: total E2E seconds ``sum_i (C_i - a_i)``.
    time_limit_s
        Wall-clock limit; the bounds (closed form, well under a second for 20,000
        requests) are computed first, every replay stops at the limit.
    seed
        Seed of the move generator.
    start_keys
        Extra start: static keys (smaller first), one per request.
    window_s
        Arrival window of the neighbourhoods; by default the trace's span / 40,
        at least 30 s.
    replicas
        Number of replicas (round robin); the profile's by default.
    on_progress
        Called with ``(elapsed s, objective, bound)``: once with no objective
        when the bound is known, then at every improvement (starts included).

    Returns
    -------
    ScaleResult

    Raises
    ------
    InputError
        On a bad argument, a request that can never fit in KV, or one that the
        evaluator would reject or cut at the profile's ``max_model_len``
        (:mod:`lsched.evaluator.length`): the search serves every request whole.
    """
    started = time.perf_counter()
    replicas = profile.replicas if replicas is None else replicas
    keys_in = _check(
        instance, objective, time_limit_s, seed, window_s, replicas, start_keys
    )
    _check_length(instance, profile)
    oracle = instance.replace(predicted_output_tokens=instance.output_tokens)
    check_fits(oracle, profile)
    deadline = started + float(time_limit_s)
    bound_name, bound = _best_bound(instance, profile, objective, replicas)

    assignment = np.arange(len(instance), dtype=np.int64) % replicas
    members = [np.flatnonzero(assignment == c) for c in range(replicas)]
    members = [m for m in members if len(m)]
    parts = [oracle.subset(m) for m in members]
    if window_s is None:
        span = float(instance.arrival_s.max() - instance.arrival_s.min())
        window_s = max(30.0, span / 40.0)
    search = _Search(parts, profile, float(window_s), started, deadline, bound,
                     on_progress)  # fmt: skip
    search.report(None)
    starts = _Starts(search, members, keys_in)
    starts.run()
    if starts.best is None:
        info = {"replays": search.replays, "verified": False}
        return _result(search, bound_name, assignment, starts.objectives, info)
    total, rule, replays = starts.best

    stats = _local_search(search, replays, rule, total, seed)
    total = stats.pop("objective")
    budget = profile.max_num_batched_tokens
    point = _point(members, replays, rule, len(instance), budget)
    total, verified = _verify(search, point.params, total, stats)
    info = stats | {"replays": search.replays, "verified": verified}
    return _result(search, bound_name, assignment, starts.objectives, info,
                   rule=rule, point=point, objective=total)  # fmt: skip


def _best_bound(
    instance: Instance, profile: DeploymentProfile, objective: str, replicas: int
) -> tuple[str, float]:
    """Name (``"seconds.work"``, ...) and value of the best of the work bounds;
    ``("", -inf)`` without one."""
    bounds = work_bounds(instance, profile, objective, replicas=replicas)
    name, bound = max(bounds.items(), key=lambda kv: kv[1], default=("", -math.inf))
    return (f"seconds.{name}" if name else ""), bound


class _Starts:
    """The start replays (module docstring): the caller's keys, then the rules
    with uniform chunk caps and prefill budgets; the best becomes the incumbent.

    Parameters
    ----------
    search
        The search state (deadline, progress log, replay count).
    members
        Instance ids of each replica's requests.
    keys_in
        The caller's start keys (instance order), or ``None``.
    """

    def __init__(
        self,
        search: _Search,
        members: list[IntArray],
        keys_in: FloatArray | None,
    ) -> None:
        self.search = search
        self.members = members
        self.keys_in = keys_in
        self.budget = search.profile.max_num_batched_tokens
        self.weights = work_params(search.profile)
        #: Objective of each start replayed, by label (``"work/c=512"``, ...).
        self.objectives: dict[str, float] = {}
        #: ``(objective, rule, replays)`` of the best start so far.
        self.best: tuple[float, str, list[ReplicaReplay]] | None = None

    def run(self) -> None:
        """Replay the starts in order until one runs out of time."""
        budget = self.budget
        # the caller's own order first: no time limit may skip it
        ok = self.keys_in is None or self.attempt("explicit", budget, budget)
        for cap in [budget] + [c for c in _START_CAPS if c < budget]:
            ok = ok and self.attempt("work", cap, budget)
        if self.best is None:
            return
        cap, _ = self.best_setting()
        for prefill in (p for p in _START_BUDGETS if p < budget):
            ok = ok and self.attempt("work", cap, prefill)
        cap, prefill = self.best_setting()
        rules = [r for r in RULES if r != "work"]
        if self.keys_in is not None:
            rules.append("explicit")
        for rule in rules:
            ok = ok and self.attempt(rule, cap, prefill)

    def attempt(self, rule: str, cap: int, prefill: int) -> bool:
        """Replay ``rule`` with chunk cap ``cap`` and prefill budget ``prefill``
        (tokens) everywhere; ``False`` if out of time."""
        key_parts = None
        if rule == "explicit":
            assert self.keys_in is not None
            key_parts = [self.keys_in[m] for m in self.members]
            params = replace(self.weights, key=rule, keys=KeyArray(key_parts[0]))
        else:
            params = replace(self.weights, key=rule)
        done = self.search.start(params, cap, prefill, key_parts)
        if done is None:
            return False
        replays, total = done
        label = rule + (f"/c={cap}" if cap < self.budget else "")
        label += f"/p={prefill}" if prefill < self.budget else ""
        self.objectives[label] = total
        if self.best is None or total < self.best[0]:
            self.best = (total, rule, replays)
            # the final check's cost
            self.search.full_replay_s = self.search.last_replay_s
            self.search.report(total)
        return True

    def best_setting(self) -> tuple[int, int]:
        """Chunk cap and prefill budget (tokens) of the best start."""
        assert self.best is not None
        rr = self.best[2][0]
        return int(rr.chunk_caps[0]), int(rr.prefill_budgets[0])


@dataclass(frozen=True)
class _Point:
    """The point found: per-request settings in instance order, and the
    parameters that reproduce it, one per replica (:class:`ScaleResult`)."""

    keys: FloatArray
    offsets: FloatArray
    chunk_caps: IntArray
    prefill_budgets: IntArray
    params: tuple[PriorityParams, ...]


def _point(
    members: list[IntArray],
    replays: list[ReplicaReplay],
    rule: str,
    n: int,
    budget: int,
) -> _Point:
    """Gather the replicas' settings of the incumbent into instance order
    (``budget``: the token budget, above which a cap or budget does not bind)."""
    offsets = np.zeros(n)
    chunk_caps = np.zeros(n, dtype=np.int64)
    prefill_budgets = np.zeros(n, dtype=np.int64)
    keys = np.zeros(n)
    params = []

    def binding(values: IntArray) -> KeyArray | None:
        return KeyArray(values) if np.any(values < budget) else None

    for m, rr in zip(members, replays, strict=True):
        offsets[m] = rr.offsets
        chunk_caps[m] = rr.chunk_caps
        prefill_budgets[m] = rr.prefill_budgets
        p = rr.policy.params
        keys[m] = _fresh_keys(rule, p, rr.instance) + rr.offsets
        params.append(
            replace(
                p,
                offsets=KeyArray(rr.offsets) if np.any(rr.offsets) else None,
                chunk_caps=binding(rr.chunk_caps),
                prefill_budgets=binding(rr.prefill_budgets),
            )
        )
    return _Point(keys, offsets, chunk_caps, prefill_budgets, tuple(params))


def _verify(
    search: _Search,
    params: tuple[PriorityParams, ...],
    total: float,
    stats: dict[str, Any],
) -> tuple[float, bool]:
    """The objective as :func:`~lsched.evaluator.simulate` scores the point, if
    time is left for it, and whether it was scored.

    Warns (and records the search's value in ``stats["replay_objective"]``) when
    the evaluator disagrees with the search's replay.
    """
    if time.perf_counter() + _CHECK_MARGIN * search.full_replay_s >= search.deadline:
        return total, False
    scored = 0.0
    for part, p in zip(search.parts, params, strict=True):
        result = simulate(part, search.profile, PolicySpec("priority", p), replicas=1)
        scored += float((result.requests["completion_s"] - part.arrival_s).sum())
    if not math.isclose(scored, total, rel_tol=1e-9):
        warnings.warn(
            f"the search's replay gave {total!r} s, the evaluator {scored!r} s; "
            "returning the evaluator's",
            RuntimeWarning,
            stacklevel=3,  # improve's caller
        )
        stats["replay_objective"] = total
    return scored, True


def _result(
    search: _Search,
    bound_name: str,
    assignment: IntArray,
    start_objectives: dict[str, float],
    info: dict[str, Any],
    *,
    rule: str | None = None,
    point: _Point | None = None,
    objective: float | None = None,
) -> ScaleResult:
    """The :class:`ScaleResult` of the search, without a schedule if ``point`` is
    ``None``."""
    return ScaleResult(
        status=Status.TIME_LIMIT,
        objective=objective,
        bound=search.bound,
        bound_name=bound_name,
        runtime_s=time.perf_counter() - search.started,
        rule=rule,
        params=() if point is None else point.params,
        assignment=assignment,
        keys=None if point is None else point.keys,
        offsets=None if point is None else point.offsets,
        chunk_caps=None if point is None else point.chunk_caps,
        prefill_budgets=None if point is None else point.prefill_budgets,
        start_objectives=start_objectives,
        log=pd.DataFrame(search.rows, columns=list(LOG_COLUMNS)),
        info=info,
    )


def _local_search(
    search: _Search,
    replays: list[ReplicaReplay],
    rule: str,
    total: float,
    seed: int,
) -> dict[str, Any]:
    """Window moves until the deadline (less the reserve for the final check)."""
    rng = np.random.default_rng(seed)
    budget = search.profile.max_num_batched_tokens
    caps = np.array([budget] + [c for c in _CAP_LADDER if c < budget])
    prefills = np.array([budget] + [p for p in _BUDGET_LADDER if p < budget])
    fresh = [_fresh_keys(rule, rr.policy.params, rr.instance) for rr in replays]
    windows = [(c, k) for c, rr in enumerate(replays) for k in range(len(rr.starts))]
    tried = dict.fromkeys(MOVES, 0)
    kept = dict.fromkeys(MOVES, 0)
    stop = search.deadline - _RESERVE * search.full_replay_s
    while windows and time.perf_counter() < stop:
        c, k = windows[int(rng.integers(len(windows)))]
        rr = replays[c]
        lo = int(rr.starts[k])
        hi = int(rr.starts[k + 1]) if k + 1 < len(rr.starts) else len(rr.instance)
        ids = np.arange(lo, hi)
        score = np.array([1.0 + 4.0 * kept[m] / (1 + tried[m]) for m in MOVES])
        move = MOVES[int(rng.choice(len(MOVES), p=score / score.sum()))]
        arrays = (rr.offsets, rr.chunk_caps, rr.prefill_budgets)
        old = [array[ids].copy() for array in arrays]
        arrival_key = fresh[c][ids] + rr.offsets[ids]
        spread = (
            float(np.std(arrival_key)) or float(np.mean(np.abs(arrival_key))) or 1.0
        )
        if move == "chunk":
            rr.chunk_caps[ids] = caps[int(rng.integers(len(caps)))]
        elif move == "budget":
            rr.prefill_budgets[ids] = prefills[int(rng.integers(len(prefills)))]
        elif move == "swap":
            if len(ids) < 2:
                continue
            i, j = rng.choice(len(ids), size=2, replace=False)
            rr.offsets[ids[i]] += arrival_key[j] - arrival_key[i]
            rr.offsets[ids[j]] += arrival_key[i] - arrival_key[j]
        elif move == "shift":
            rr.offsets[ids[int(rng.integers(len(ids)))]] += rng.normal(0.0, spread)
        else:
            part = rng.random(len(ids)) < rng.uniform(0.1, 0.5)
            rr.offsets[ids[part]] += rng.normal(0.0, spread / 2)
        if all(np.array_equal(x[ids], y) for x, y in zip(arrays, old, strict=True)):
            continue
        tried[move] += 1
        try:
            value, taken = rr.replay(k, stop)
        except _OutOfTime:
            for array, before in zip(arrays, old, strict=True):
                array[ids] = before
            break
        search.replays += 1
        candidate = total - rr.value + value
        if candidate < total:
            rr.accept(k, value, taken)
            total = candidate
            kept[move] += 1
            search.report(total)
        else:
            for array, before in zip(arrays, old, strict=True):
                array[ids] = before
    return {
        "objective": total,
        "windows": len(windows),
        "moves_tried": tried,
        "moves_kept": kept,
    }


__all__ = [
    "MOVES",
    "OBJECTIVES",
    "RULES",
    "ReplicaReplay",
    "ScaleResult",
    "improve",
    "window_starts",
]
