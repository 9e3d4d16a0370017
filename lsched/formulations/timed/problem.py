"""The timed model: slot decisions, iteration durations from the cost model.

Decisions (DESIGN.md, "The iteration model"; the same as the slot model)
-----------------------------------------------------------------------
Request ``i`` (arrival ``a_i`` seconds, prompt ``s_i``, output ``o_i``, integer
weight ``w_i >= 1``) gets a start *iteration* ``S_i >= 0``. It prefills its whole
prompt in iteration ``S_i`` and decodes in iterations ``S_i + 1 .. E_i - 1``,
``E_i = S_i + o_i``, holding ``s_i + (k - S_i)`` KV tokens in iteration ``k``
(``ceil(. / b)`` blocks). Per iteration: KV blocks ``<= M``, members ``<= N``,
prefill tokens + decode steps ``<= B``. These are the slot model's rules with
every release at 0 (arrivals act on *time*, not on iteration numbers), so
:attr:`TimedProblem.slots` holds them and their checks are shared.

Iterations carry no gaps: iterations ``0 .. K - 1`` each have at least one member
(idling is expressed in time, below). A start vector with an empty iteration
before its last one is not a timed schedule; :func:`compact` removes such
iterations, which changes no batch and never delays anything. As every iteration
holds at least one of the ``sum_i o_i`` request-iterations, ``K <= sum_i o_i``.

Time
----
Iteration ``k``'s batch has features ``phi_k = [1, P_k, Q_k, D_k, K_k, H_k]``::

    P_k = sum_{S_i = k} s_i           Q_k = sum_{S_i = k} s_i^2   (ctx_before = 0)
    D_k = #{i : S_i < k < E_i}        K_k = sum_{S_i < k < E_i} (s_i + k - S_i)
    H_k = [P_k > 0]

and lasts ``d_k = t(phi_k)`` seconds (the profile's
:class:`~lsched.profile.IterationTime`, overhead and threshold regimes included).
It starts at

    T_0 = A_0,   T_k = max(T_{k-1} + d_{k-1}, A_k),   A_k = max_{S_i = k} a_i

(``A_k = -inf`` without a prefill): it runs as soon as the previous iteration
has ended and all its members have arrived, exactly as
:func:`lsched.evaluator.fixed.replay_batch_table` replays the table of
:func:`to_batch_table`. Request ``i`` emits its first token at
``T_{S_i} + d_{S_i}`` and completes at ``C_i = T_{E_i - 1} + d_{E_i - 1}``.
Unrolled, ``T_k + d_k = max_{l <= k} (A_l + sum_{m = l}^{k} d_m)``, which is how
:func:`timed_schedule` computes it in one vectorised pass.

Objectives (seconds)
--------------------
::

    latency   sum_i w_i (C_i - a_i)
    makespan  max_i C_i - min_i a_i

:func:`timed_objective` evaluates them in float64 from the start iterations alone;
every solver reports this value for its schedule (never its own model value), and
the evaluator's replay of :func:`to_batch_table` reproduces it to rounding.

Cost-model bounds used by the formulations
------------------------------------------
Over every batch that can occur in the instance, the features lie in the box
``0 <= phi <= phi_max`` (:attr:`TimedProblem.feature_max`): ``P <= min(sum s, B)``,
``Q <= min(sum s^2, s_max P_max)``, ``D <= min(n, N, M)`` (a decode step holds a
block), ``K <= min(sum (s + o - 1), M b)`` (tokens held), ``H <= 1``. A regime of
a threshold cost model is *reachable* if its integer range of the switch feature
meets the box (all features are integers, so ``x >= theta`` iff
``x >= ceil(theta)``); the formulations model only reachable regimes. Within the
box an affine piece ``w . phi`` lies between ``sum_f min(w_f lo_f, w_f hi_f)`` and
``sum_f max(w_f lo_f, w_f hi_f)``, which gives :attr:`TimedProblem.max_duration_s`
(every iteration is at most this long) and :attr:`TimedProblem.min_duration_s`
(every non-empty iteration is at least this long: a batch has a prefill, so
``H = 1``, ``P >= s_min``, ``Q >= s_min^2``, or a decode step, so ``D >= 1``,
``K >= s_min + 1``; a max of pieces is at least each piece).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd

from lsched.checks import check_type
from lsched.errors import InputError
from lsched.evaluator.slots import score_start_slots
from lsched.formulations.slot import NO_LIMIT, SlotProblem
from lsched.instance import Instance
from lsched.profile import FEATURES, DeploymentProfile, batch_features

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: Objectives of the timed model.
OBJECTIVES: tuple[str, ...] = ("latency", "makespan")

#: Index of each feature in phi.
CONST, PREFILL, ATTENTION, DECODE, KV_READ, HAS_PREFILL = range(len(FEATURES))


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.array(array)
    array.flags.writeable = False
    return array


def _limit(value: int) -> int | None:
    return None if value >= NO_LIMIT else int(value)


def box_min(weights: FloatArray, lo: FloatArray, hi: FloatArray) -> FloatArray:
    """Least of each row of ``weights`` (pieces) dotted with phi in ``[lo, hi]``."""
    return np.minimum(weights * lo, weights * hi).sum(axis=-1)


def box_max(weights: FloatArray, lo: FloatArray, hi: FloatArray) -> FloatArray:
    """Largest of each row of ``weights`` dotted with phi in ``[lo, hi]``."""
    return np.maximum(weights * lo, weights * hi).sum(axis=-1)


@dataclass(frozen=True, eq=False)
class TimedProblem:
    """One timed-model instance: requests, one replica of a deployment, objective.

    Parameters
    ----------
    instance
        The requests (arrivals in seconds).
    profile
        Cost model, KV capacity, block size and batch limits of one replica
        (limits at or above ``10**9`` mean none, as in the slot model).
    objective
        ``"latency"`` (total weighted latency) or ``"makespan"``, seconds.
    weight
        ``w_i`` (integers >= 1) for the latency objective; all ones by default.

    Attributes
    ----------
    slots
        The iteration-space rules: a :class:`~lsched.formulations.slot.SlotProblem`
        with every arrival at 0 and this problem's capacity and limits.
    feature_max
        Upper bounds on phi over every batch that can occur (module docstring).
    regimes
        Indices of the cost model's reachable regimes, in order.
    regime_range
        Per reachable regime, the integer range ``(lo, hi)`` of the switch feature
        (``(0, feature_max)`` for a single regime).

    Raises
    ------
    InputError
        On an unknown objective, bad weights, or a request that can never run
        (peak KV above the capacity, prompt above the token budget).
    """

    instance: Instance
    profile: DeploymentProfile
    objective: str = "latency"
    weight: IntArray | None = None
    slots: SlotProblem = field(init=False, repr=False)
    feature_max: FloatArray = field(init=False, repr=False)
    regimes: tuple[int, ...] = field(init=False)
    regime_range: tuple[tuple[int, int], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not isinstance(self.instance, Instance):
            raise InputError(
                f"got {type(self.instance).__name__}; expected an Instance",
                field="instance",
            )
        if not isinstance(self.profile, DeploymentProfile):
            raise InputError(
                f"got {type(self.profile).__name__}; expected a DeploymentProfile",
                field="profile",
            )
        if self.objective not in OBJECTIVES:
            raise InputError(
                f"got {self.objective!r}; expected one of {', '.join(OBJECTIVES)}",
                field="objective",
            )
        weight = self._checked_weight()
        set_(self, "weight", _frozen(weight))
        self._check_runnable()
        profile = self.profile
        s, o = self.instance.prompt_tokens, self.instance.output_tokens
        budget = _limit(profile.max_num_batched_tokens)
        set_(
            self,
            "slots",
            SlotProblem(
                arrival=np.zeros(len(s)),
                prompt_tokens=s,
                output_tokens=o,
                weight=weight,
                kv_capacity_blocks=profile.kv_capacity_blocks,
                block_tokens=profile.block_tokens,
                max_num_seqs=_limit(profile.max_num_seqs),
                max_num_batched_tokens=budget,
                objective="latency",
                name=self.instance.name,
            ),
        )
        box = self._feature_box()
        set_(self, "feature_max", _frozen(box))
        ranges = self._regime_ranges(box)
        set_(self, "regimes", tuple(r for r, _, _ in ranges))
        set_(self, "regime_range", tuple((lo, hi) for _, lo, hi in ranges))

    def _checked_weight(self) -> IntArray:
        """``weight`` as int64 (all ones by default), or :class:`InputError`."""
        n = len(self.instance)
        if self.weight is None:
            return np.ones(n, dtype=np.int64)
        raw = np.asarray(self.weight)
        if raw.shape != (n,) or raw.dtype.kind not in "iu":
            raise InputError(
                f"got shape {raw.shape} dtype {raw.dtype}; expected {n} integers",
                field="weight",
            )
        if np.any(raw < 1):
            i = int(np.flatnonzero(raw < 1)[0])
            raise InputError(
                f"request {i}: got {raw[i]}; expected an integer >= 1",
                field="weight",
            )
        return raw.astype(np.int64)

    def _check_runnable(self) -> None:
        """:class:`InputError` on a request that can never run: its peak KV above
        the capacity, or its prompt above the token budget."""
        profile = self.profile
        s, o = self.instance.prompt_tokens, self.instance.output_tokens
        peak = profile.kv_blocks(s + o - 1)
        capacity = profile.kv_capacity_blocks
        if np.any(peak > capacity):
            i = int(np.argmax(peak))
            raise InputError(
                f"request {i} needs {peak[i]} KV blocks at its last token (prompt "
                f"{s[i]} + output {o[i]} - 1 tokens in blocks of "
                f"{profile.block_tokens}); expected <= the capacity of {capacity} "
                f"blocks on profile {profile.name}: it can never run",
                field="kv_capacity_tokens",
            )
        budget = _limit(profile.max_num_batched_tokens)
        if budget is not None and np.any(s > budget):
            i = int(np.argmax(s))
            raise InputError(
                f"request {i} has a {s[i]}-token prompt; the timed model prefills a "
                f"whole prompt in one iteration, so expected <= max_num_batched_tokens "
                f"= {budget}: it can never run",
                field="max_num_batched_tokens",
            )

    def _feature_box(self) -> FloatArray:
        """``phi_max`` (module docstring)."""
        profile = self.profile
        s, o = self.instance.prompt_tokens, self.instance.output_tokens
        n, capacity = len(s), profile.kv_capacity_blocks
        budget = _limit(profile.max_num_batched_tokens)
        seqs = _limit(profile.max_num_seqs) or n
        p_max = min(int(s.sum()), budget or int(s.sum()))
        return np.array(
            [
                1.0,
                p_max,
                min(float((s.astype(np.float64) ** 2).sum()), float(s.max()) * p_max),
                min(n, seqs, capacity),
                min(int((s + o - 1).sum()), capacity * profile.block_tokens),
                1.0,
            ],
            dtype=np.float64,
        )

    def _regime_ranges(self, box: FloatArray) -> list[tuple[int, int, int]]:
        """``(regime, lo, hi)`` for each reachable regime of the cost model: the
        integer range of its switch feature inside ``box``."""
        it = self.profile.iteration_time
        if it.num_regimes == 1:
            return [(0, 0, NO_LIMIT)]
        assert it.switch_feature is not None
        f = FEATURES.index(it.switch_feature)
        low, high = (1, 1) if f == CONST else (0, int(box[f]))
        edges = [-math.inf, *it.thresholds, math.inf]
        ranges = []
        for r in range(it.num_regimes):
            lo = max(low, _ceil(edges[r]))
            hi = min(high, _ceil(edges[r + 1]) - 1)
            if lo <= hi:
                ranges.append((r, lo, hi))
        return ranges

    @classmethod
    def from_instance(
        cls,
        instance: Instance,
        profile: DeploymentProfile,
        *,
        objective: str = "latency",
        weight: npt.ArrayLike | None = None,
    ) -> TimedProblem:
        """The timed problem of ``instance`` on one replica of ``profile``."""
        check_type(instance, "instance", Instance, "an Instance")
        check_type(profile, "profile", DeploymentProfile, "a DeploymentProfile")
        return cls(
            instance,
            profile,
            objective=objective,
            weight=None if weight is None else np.asarray(weight),
        )

    # -- data ------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.instance)

    @property
    def name(self) -> str:
        return self.instance.name or "instance"

    @property
    def arrival_s(self) -> FloatArray:
        return self.instance.arrival_s

    @property
    def prompt_tokens(self) -> IntArray:
        return self.instance.prompt_tokens

    @property
    def output_tokens(self) -> IntArray:
        return self.instance.output_tokens

    @property
    def switch_feature(self) -> int | None:
        """Index of the feature that picks the regime, or ``None`` for one regime."""
        name = self.profile.iteration_time.switch_feature
        return None if name is None else FEATURES.index(name)

    @property
    def pieces(self) -> tuple[FloatArray, ...]:
        """Max-affine pieces (overhead folded in) of each reachable regime."""
        regimes = self.profile.iteration_time.effective_regimes
        return tuple(regimes[r] for r in self.regimes)

    def feature_box(self, regime: int, case: str) -> tuple[FloatArray, FloatArray]:
        """``(lo, hi)`` of phi for non-empty batches of one kind in one regime.

        ``regime`` indexes :attr:`regimes`; ``case`` is ``"prefill"`` (a batch with
        a prefill), ``"decode"`` (decode steps only) or ``"any"`` (every batch,
        the empty one included). Empty ranges come back with ``lo > hi``.
        """
        lo = np.zeros(len(FEATURES))
        hi = self.feature_max.copy()
        s_min = float(self.prompt_tokens.min())
        if case in ("prefill", "decode"):
            lo[CONST] = 1.0
        if case == "prefill":
            lo[PREFILL], lo[ATTENTION], lo[HAS_PREFILL] = s_min, s_min**2, 1.0
        elif case == "decode":
            hi[PREFILL] = hi[ATTENTION] = hi[HAS_PREFILL] = 0.0
            lo[DECODE], lo[KV_READ] = 1.0, s_min + 1.0
        f = self.switch_feature
        if f is not None:
            r_lo, r_hi = self.regime_range[regime]
            lo[f], hi[f] = max(lo[f], r_lo), min(hi[f], r_hi)
        return lo, hi

    @property
    def min_duration_s(self) -> float:
        """A lower bound (>= 0) on every non-empty iteration's seconds."""
        best = math.inf
        for r, weights in enumerate(self.pieces):
            for case in ("prefill", "decode"):
                lo, hi = self.feature_box(r, case)
                if np.all(lo <= hi):
                    best = min(best, float(box_min(weights, lo, hi).max()))
        return max(0.0, best) if math.isfinite(best) else 0.0

    @property
    def max_duration_s(self) -> float:
        """An upper bound on every iteration's seconds."""
        return max(
            float(box_max(weights, *self.feature_box(r, "any")).max())
            for r, weights in enumerate(self.pieces)
        )

    @property
    def min_iterations(self) -> int:
        """A lower bound on the number of iterations of any timed schedule.

        ``max(max_i o_i, ceil(sum_ij k_ij / M), ceil(sum_i o_i / N),
        ceil(sum_i (s_i + o_i - 1) / B))``: request i runs in ``o_i`` consecutive
        iterations, and every iteration holds at most ``M`` of the
        ``sum_ij k_ij`` KV block-iterations, at most ``N`` of the ``sum_i o_i``
        request-iterations and at most ``B`` of the ``sum_i (s_i + o_i - 1)``
        processed tokens.
        """
        slots = self.slots
        o = slots.output_tokens
        area = sum(int(slots.kv_table(i).sum()) for i in range(len(self)))
        bound = max(int(o.max()), -(-area // slots.kv_capacity_blocks))
        if slots.max_num_seqs is not None:
            bound = max(bound, -(-int(o.sum()) // slots.max_num_seqs))
        if slots.max_num_batched_tokens is not None:
            tokens = int((slots.prompt_tokens + o - 1).sum())
            bound = max(bound, -(-tokens // slots.max_num_batched_tokens))
        return bound

    @property
    def objective_offset(self) -> float:
        """Constant of the objective: ``-sum w a`` (latency) or ``-min a``."""
        if self.objective == "latency":
            return -float(np.dot(self.weight, self.arrival_s))
        return -float(self.arrival_s.min())

    def identical_groups(self) -> list[IntArray]:
        """Groups (size >= 2) of requests equal in arrival, prompt, output and
        weight, in position order: swapping their starts changes nothing, so
        ``S_i <= S_k`` for ``i < k`` within a group loses no optimum."""
        keys = np.stack(
            [
                self.arrival_s.view(np.int64),  # exact equality of the floats
                self.prompt_tokens,
                self.output_tokens,
                self.weight,
            ],
            axis=1,
        )
        _, label, counts = np.unique(
            keys, axis=0, return_inverse=True, return_counts=True
        )
        order = np.argsort(label.ravel(), kind="stable")
        groups = np.split(order, np.cumsum(counts)[:-1])
        return [np.sort(g) for g in groups if len(g) > 1]

    def canonical(self, start: npt.ArrayLike) -> IntArray:
        """``start`` with each identical group's starts sorted by position."""
        start = np.array(start, dtype=np.int64)
        for group in self.identical_groups():
            start[group] = np.sort(start[group])
        return start


def _ceil(value: float) -> int:
    if value == math.inf:
        return NO_LIMIT
    if value == -math.inf:
        return -NO_LIMIT
    return math.ceil(value)


# -- schedules -------------------------------------------------------------------


def _as_start(problem: TimedProblem, start: npt.ArrayLike, name: str) -> IntArray:
    raw = np.asarray(start)
    n = len(problem)
    if raw.shape != (n,):
        raise InputError(
            f"got shape {raw.shape}; expected ({n},): one start iteration per request",
            field=name,
        )
    whole = raw.dtype.kind in "iu" or (
        raw.dtype.kind == "f"
        and bool(np.all(np.isfinite(raw) & (raw == np.round(raw))))
    )
    if not whole:
        raise InputError(f"got dtype {raw.dtype}; expected whole numbers", field=name)
    array = raw.astype(np.int64)
    if np.any(array < 0):
        i = int(np.flatnonzero(array < 0)[0])
        raise InputError(
            f"request {i}: got {array[i]}; expected an iteration >= 0", field=name
        )
    return array


def _members(problem: TimedProblem, start: IntArray) -> IntArray:
    """Members per iteration ``0 .. max E - 1``."""
    end = start + problem.output_tokens
    delta = np.zeros(int(end.max()) + 1, dtype=np.int64)
    np.add.at(delta, start, 1)
    np.add.at(delta, end, -1)
    return np.cumsum(delta)[:-1]


def compact(problem: TimedProblem, start: npt.ArrayLike) -> IntArray:
    """``start`` with every empty iteration removed (each later start moves
    earlier by the number of empty iterations before it)."""
    start = _as_start(problem, start, "start")
    empty = _members(problem, start) == 0
    before = np.concatenate(([0], np.cumsum(empty)))
    return start - before[start]


def check_start(
    problem: TimedProblem, start: npt.ArrayLike, *, name: str = "start"
) -> IntArray:
    """``start`` as int64 if it is a timed schedule, else :class:`InputError`.

    A timed schedule has one whole iteration ``>= 0`` per request, no empty
    iteration before its last one, and keeps the KV capacity, ``max_num_seqs`` and
    ``max_num_batched_tokens`` in every iteration (checked by the evaluator's
    vectorised scorer, :func:`lsched.evaluator.slots.score_start_slots`).
    """
    start = _as_start(problem, start, name)
    empty = np.flatnonzero(_members(problem, start) == 0)
    if len(empty):
        raise InputError(
            f"iteration {int(empty[0])} has no member ({len(empty)} empty "
            "iteration(s)); expected consecutive non-empty iterations (compact() "
            "removes empty ones)",
            field=name,
        )
    slots = problem.slots
    scores = score_start_slots(
        slots.unit_instance(),
        start[None, :],
        kv_capacity_tokens=slots.kv_capacity_blocks * slots.block_tokens,
        block_tokens=slots.block_tokens,
        max_num_seqs=slots.max_num_seqs,
        max_num_batched_tokens=slots.max_num_batched_tokens,
    )
    if not scores.feasible[0]:
        rule = str(scores.violation[0])
        raise InputError(
            f"iteration {int(scores.violation_slot[0])} breaks the {rule} limit; "
            "expected a schedule that keeps every per-iteration limit",
            field=name,
        )
    return start


def is_feasible(problem: TimedProblem, start: npt.ArrayLike) -> bool:
    """Whether :func:`check_start` accepts ``start``."""
    try:
        check_start(problem, start)
    except InputError:
        return False
    return True


@dataclass(frozen=True, eq=False)
class TimedSchedule:
    """The times of one timed schedule (module docstring), float64 seconds.

    Attributes
    ----------
    start, end
        ``S_i`` and ``E_i = S_i + o_i`` per request.
    features
        ``phi_k``, shape ``(K, 6)``.
    duration_s, start_s
        ``d_k`` and ``T_k`` per iteration.
    first_token_s, completion_s
        ``T_{S_i} + d_{S_i}`` and ``C_i`` per request.
    objective
        The problem's objective, seconds.
    """

    start: IntArray
    end: IntArray
    features: FloatArray
    duration_s: FloatArray
    start_s: FloatArray
    first_token_s: FloatArray
    completion_s: FloatArray
    objective: float

    @property
    def num_iterations(self) -> int:
        return len(self.duration_s)

    @property
    def end_s(self) -> FloatArray:
        """``T_k + d_k`` per iteration."""
        return self.start_s + self.duration_s


def iteration_features(problem: TimedProblem, start: IntArray) -> FloatArray:
    """``phi_k`` of every iteration of ``start`` (no checks), shape ``(K, 6)``."""
    s, o = problem.prompt_tokens, problem.output_tokens
    steps = o - 1  # decode steps per request
    owner = np.repeat(np.arange(len(s)), steps)
    age = np.arange(int(steps.sum())) - np.repeat(np.cumsum(steps) - steps, steps) + 1
    return batch_features(
        int((start + o).max()),
        prefill_batch=start,
        prefill_tokens=s,
        decode_batch=start[owner] + age,
        decode_kv_tokens=s[owner] + age,
    )


def timed_schedule(
    problem: TimedProblem, start: npt.ArrayLike, *, check: bool = True
) -> TimedSchedule:
    """Every time of the schedule ``start`` (start iteration per request).

    Parameters
    ----------
    problem
        The timed problem.
    start
        ``S_i`` per request.
    check
        Check that ``start`` is a timed schedule first (:func:`check_start`);
        without it, only the shape is checked and a schedule that breaks a limit
        is timed all the same.

    Raises
    ------
    InputError
        Naming ``start``, if it is not a timed schedule.
    """
    start = check_start(problem, start) if check else _as_start(problem, start, "start")
    phi = iteration_features(problem, start)
    duration = problem.profile.iteration_time(phi)
    num = len(duration)
    ready = np.full(num, -np.inf)  # A_k: latest arrival among iteration k's prefills
    np.maximum.at(ready, start, problem.arrival_s)
    total = np.cumsum(duration)
    # T_k + d_k = max_{l <= k} (A_l + d_l + ... + d_k)
    end = total + np.maximum.accumulate(ready - (total - duration))
    begin = end - duration
    first = end[start]
    done = end[start + problem.output_tokens - 1]
    a = problem.arrival_s
    if problem.objective == "latency":
        value = float(np.dot(problem.weight, done - a))
    else:
        value = float(done.max() - a.min())
    return TimedSchedule(
        start=_frozen(start),
        end=_frozen(start + problem.output_tokens),
        features=_frozen(phi),
        duration_s=_frozen(duration),
        start_s=_frozen(begin),
        first_token_s=_frozen(first),
        completion_s=_frozen(done),
        objective=value,
    )


def timed_objective(problem: TimedProblem, start: npt.ArrayLike) -> float:
    """The objective (seconds) of the schedule ``start``, recomputed exactly.

    Raises
    ------
    InputError
        If ``start`` is not a timed schedule (:func:`check_start`).
    """
    return timed_schedule(problem, start).objective


def to_batch_table(problem: TimedProblem, start: npt.ArrayLike) -> pd.DataFrame:
    """The batch table of ``start`` (for the evaluator's ``replay_batch_table``).

    One row per (iteration, request), sorted by iteration then request: columns
    ``iteration``, ``request``, ``kind`` (``"prefill"`` in ``S_i``, ``"decode"``
    after) and ``tokens`` (``s_i`` or 1). No ``start_s``: each iteration runs as
    soon as the previous one has ended and its members have arrived, which is
    the timed model's ``T_k``.

    Raises
    ------
    InputError
        If ``start`` is not a timed schedule (:func:`check_start`).
    """
    start = check_start(problem, start)
    o = problem.output_tokens
    request = np.repeat(np.arange(len(problem)), o)
    offset = np.arange(int(o.sum())) - np.repeat(np.cumsum(o) - o, o)
    iteration = start[request] + offset
    order = np.lexsort((request, iteration))
    prefill = offset == 0
    return pd.DataFrame(
        {
            "iteration": iteration[order],
            "request": request[order],
            "kind": np.where(prefill, "prefill", "decode")[order],
            "tokens": np.where(prefill, problem.prompt_tokens[request], 1)[order],
        }
    ).reset_index(drop=True)
