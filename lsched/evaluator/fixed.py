"""Fixed offline schedules replayed through the evaluator.

Formulations (slot MILP / CP-SAT, timed plans, local search) produce schedules,
not policies; the evaluator is the referee (DESIGN.md), so a schedule is turned
into a policy that replays it and is scored by :func:`lsched.evaluator.simulate`
like any online policy: same engine, same limits, same metrics, same log. A
schedule that breaks a rule fails the way a faulty policy does, with a
:class:`~lsched.policies.PolicyError` from the engine (KV, batch limits) or from
the replaying policy (a schedule the engine cannot follow).

Start slots (the slot model)
----------------------------
Jaillet et al. 2025's non-preemptive continuous batching, one iteration = one
unit slot. Request i started at the integer slot ``S_i >= ceil(a_i)`` prefills its
whole prompt in slot ``S_i`` (token 1 at time ``S_i + 1``), decodes in slots
``S_i + 1 .. S_i + o_i - 1`` and completes at ``S_i + o_i``; in slot ``S_i + t`` it
holds ``s_i + t`` KV tokens (``t = 0 .. o_i - 1``). :class:`StartSlots`, at a
boundary ``t``, prefills the requests with ``S_i = t`` and decodes every running
one. With no start at ``t`` the batch is decode-only and *held* until the next
start slot (``wake_at_s``), so the engine covers the stretch in closed form; with
nothing running it idles until the next start. The evaluator's times equal the
slot model's only if every iteration lasts exactly one time unit
(:func:`check_unit_slots`; the ``unit-slot`` profile): boundaries are then the
integers, and the policy checks at every decision that each running request has
emitted ``t - S_i`` tokens.

Batch tables (explicit iterations, optionally timed)
----------------------------------------------------
A table with one row per (iteration, request): columns ``iteration`` (0, 1, 2, ...
consecutive), ``request`` (instance position), ``kind`` (``"prefill"`` or
``"decode"``), ``tokens`` (the chunk size; 1 for a decode step) and optionally
``start_s`` (per iteration, NaN for none). Iteration ``k`` runs as soon as
iteration ``k - 1`` has ended, its ``start_s`` (if any) is reached and all its
members have arrived; until then the replica idles (an empty batch with
``wake_at_s``). :func:`batch_table_params` checks the table: the columns and their
types, consecutive iterations, one row per request and iteration, and per request
a prefill of exactly ``s_i`` tokens in chunks followed by exactly ``o_i - 1``
decode steps (no preemption). :class:`BatchTable` replays it; iteration ``k`` is the
replica's ``k``-th iteration (``ReplicaView.iteration``), so the policy's position
does not depend on how often it is called. A run of identical decode-only
iterations (none with a ``start_s`` still ahead) is *held*, so that the engine
covers it in closed form, when the engine is sure to stop where the run ends: a
member completes there, or, given the cost model, a wake-up in the middle of the
run's last iteration (the engine stops at the first boundary at or after it; half
an iteration leaves room for any rounding). Times are then the engine's own
closed-form sums, so replaying an online policy's log reproduces its times and
runs exactly. Without the cost model, runs that end otherwise go one iteration
at a time.

Replicas
--------
The policies work on one replica's local ids (``0..m-1`` in arrival order), per
the policy contract; with one replica local ids are instance positions. The
engine does not tell a policy which replica it serves, so for ``replicas > 1``
(start slots with an explicit ``assignment``) :class:`ScheduleSpec` hands out one
prepared policy per non-empty replica in replica order, the order in which
:func:`~lsched.evaluator.simulate` builds them, and each checks at its first
decision that its replica holds the requests it was prepared for (same arrivals
and prompts), raising :class:`~lsched.policies.PolicyError` otherwise. Batch
tables are single-replica.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from lsched.errors import InputError
from lsched.evaluator import SimulationResult, assign_replicas, simulate
from lsched.evaluator.length import cut_to_length
from lsched.evaluator.slots import earliest_slots, integer_slots, score_start_slots
from lsched.instance import Instance
from lsched.policies import (
    Batch,
    Policy,
    PolicyContext,
    PolicyError,
    PolicySpec,
    ReplicaView,
)
from lsched.profile import FEATURES, DeploymentProfile, IterationTime

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Columns of a batch table (``start_s`` is optional).
TABLE_COLUMNS: tuple[str, ...] = ("iteration", "request", "kind", "tokens")
KINDS: tuple[str, ...] = ("prefill", "decode")
_CONST, _D, _K = (
    FEATURES.index(f) for f in ("const", "decode_steps", "kv_read_tokens")
)


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.array(array)  # a private copy, so the caller cannot change it later
    array.flags.writeable = False
    return array


def check_unit_slots(profile: DeploymentProfile) -> None:
    """Raise unless every iteration of ``profile`` lasts exactly one time unit.

    The time is ``max_p (w_p . phi)`` per regime, overhead folded in, over
    features ``phi = [1, P, Q, D, K, H]`` with ``P, Q, D, K, H >= 0``. It is 1 for
    every batch when, in every regime, one piece is exactly ``[1, 0, 0, 0, 0, 0]``
    and no piece has a constant above 1 or a positive feature weight.

    Raises
    ------
    InputError
        Naming ``iteration_time`` and the profile.
    """
    for r, weights in enumerate(profile.iteration_time.effective_regimes):
        features = weights[:, 1:]
        unit = (weights[:, 0] == 1.0) & np.all(features == 0.0, axis=1)
        if not unit.any() or (weights[:, 0] > 1.0).any() or (features > 0.0).any():
            raise InputError(
                f"profile {profile.name!r} (regime {r}) does not give every "
                "iteration exactly one time unit; slot schedules need a unit-slot "
                "profile, e.g. load_profile('unit-slot').replace(kv_capacity_tokens=M)",
                field="iteration_time",
            )


# -- handing prepared policies to replicas -----------------------------------------


class _OnReplica:
    """Delegates to a prepared policy after checking it got the right replica."""

    def __init__(
        self, policy: Policy, replica: int, arrival_s: FloatArray, prompt: IntArray
    ) -> None:
        self.policy = policy
        self.replica = replica
        self.expected: tuple[FloatArray, IntArray] | None = (arrival_s, prompt)

    def decide(self, view: ReplicaView) -> Batch:
        if self.expected is not None:
            arrival, prompt = self.expected
            if not (
                np.array_equal(view.arrival_s, arrival)
                and np.array_equal(view.prompt_tokens, prompt)
            ):
                raise PolicyError(
                    f"the schedule prepared for replica {self.replica} "
                    f"({len(arrival)} requests) was handed a replica with "
                    f"{len(view.arrival_s)} other requests: simulate it with the "
                    "replicas and assignment it was prepared for"
                )
            self.expected = None
        return self.policy.decide(view)


@dataclass(frozen=True, eq=False)
class ScheduleSpec(PolicySpec):
    """A :class:`~lsched.policies.PolicySpec` that replays a fixed schedule.

    ``params`` holds one parameter object per replica (``None`` for a replica
    that serves nothing); :meth:`make` builds the policy of the replica its
    context names. Not in the policy registry: a schedule is data, not a
    ``name:key=value`` string.

    Attributes
    ----------
    build
        Makes a policy from one replica's parameters.
    arrival_s, prompt_tokens
        Per replica, the requests it must serve (checked at the first decision).
    """

    build: Callable[[Any], Policy]
    arrival_s: tuple[FloatArray | None, ...]
    prompt_tokens: tuple[IntArray | None, ...]

    def make(self, context: PolicyContext | None = None) -> Policy:
        k = 0 if context is None else context.replica
        if k >= len(self.params) or self.params[k] is None:
            raise PolicyError(
                f"the schedule has no requests for replica {k}: simulate it with "
                "the replicas and assignment it was prepared for"
            )
        arrival_s, prompt = self.arrival_s[k], self.prompt_tokens[k]
        assert arrival_s is not None and prompt is not None
        return _OnReplica(self.build(self.params[k]), k, arrival_s, prompt)

    @property
    def label(self) -> str:
        return self.name


# -- start slots -----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class StartSlotsParams:
    """Parameters of :class:`StartSlots`: one replica's start slots.

    Attributes
    ----------
    start_slots
        ``S_i`` per local request id (whole numbers >= 0).
    """

    start_slots: IntArray

    def __post_init__(self) -> None:
        slots = integer_slots(self.start_slots, "start_slots")
        if slots.ndim != 1:
            raise InputError(
                f"got shape {slots.shape}; expected one start slot per request",
                field="start_slots",
            )
        if np.any(slots < 0):
            i = int(np.flatnonzero(slots < 0)[0])
            raise InputError(
                f"request {i}: got {slots[i]}; expected a slot >= 0",
                field="start_slots",
            )
        object.__setattr__(self, "start_slots", _frozen(slots))


class StartSlots:
    """Replays start slots on a unit-slot replica (module docstring)."""

    def __init__(self, params: StartSlotsParams) -> None:
        self.slots = params.start_slots
        self.order = np.argsort(self.slots, kind="stable")  # equal slots: by id
        self.sorted = self.slots[self.order]
        self.started = 0  # requests started so far, a prefix of ``order``

    def decide(self, view: ReplicaView) -> Batch:
        t = view.now_s
        if len(view.arrival_s) != len(self.slots):
            raise PolicyError(
                f"{len(self.slots)} start slots for a replica with "
                f"{len(view.arrival_s)} requests"
            )
        lo = int(np.searchsorted(self.sorted, t, side="left"))
        hi = int(np.searchsorted(self.sorted, t, side="right"))
        if self.started < lo:  # a start slot passed without a boundary at it
            i = int(self.order[self.started])
            raise PolicyError(
                f"request {i} is due to start at slot {self.slots[i]}, but the "
                f"replica reached no boundary there (next one at t = {t}); every "
                "iteration must last exactly one time unit"
            )
        running = view.running
        if len(running):
            # unit iterations: a request started at S has emitted t - S tokens
            lag = view.emitted_tokens[running] - (t - self.slots[running])
            if not float(t).is_integer() or np.any(lag != 0):
                raise PolicyError(
                    f"at t = {t}, running requests {running.tolist()} started at "
                    f"slots {self.slots[running].tolist()} have emitted "
                    f"{view.emitted_tokens[running].tolist()} tokens; one per slot "
                    "needs iterations of exactly one time unit"
                )
        due = self.order[lo:hi]  # empty unless t is a start slot
        upcoming = float(self.sorted[hi]) if hi < len(self.sorted) else None
        if len(due) == 0:
            if len(running) == 0:
                return Batch(wake_at_s=upcoming)
            # decode-only until the next start (or a completion, the engine's event)
            return Batch(decode=running, hold=True, wake_at_s=upcoming)
        late = due[due >= view.num_arrived]
        if len(late):
            i = int(late[0])
            raise PolicyError(
                f"request {i} starts at slot {self.slots[i]}, before its arrival at "
                f"{float(view.arrival_s[i])}"
            )
        self.started = hi
        return Batch(
            prefill=due, prefill_tokens=view.prompt_tokens[due].copy(), decode=running
        )


def check_start_slots(instance: Instance, start_slots: npt.ArrayLike) -> IntArray:
    """``start_slots`` as int64, checked: one whole slot ``>= ceil(a_i)`` per request.

    Raises
    ------
    InputError
        Naming ``start_slots`` and the first offending request.
    """
    n = len(instance)
    if np.shape(start_slots) != (n,):
        raise InputError(
            f"got shape {np.shape(start_slots)}; expected ({n},): one start slot per "
            "request",
            field="start_slots",
        )
    slots = integer_slots(start_slots, "start_slots")
    early = np.flatnonzero(slots < earliest_slots(instance))
    if len(early):
        i = int(early[0])
        raise InputError(
            f"request {i} starts at slot {slots[i]}, before its arrival at "
            f"{float(instance.arrival_s[i])} (earliest slot "
            f"{int(earliest_slots(instance)[i])}); {len(early)} request(s) start "
            "too early",
            field="start_slots",
        )
    return slots


def start_slots_spec(
    instance: Instance,
    profile: DeploymentProfile,
    start_slots: npt.ArrayLike,
    *,
    replicas: int = 1,
    assignment: npt.ArrayLike | None = None,
) -> ScheduleSpec:
    """A policy spec replaying ``start_slots`` (for :func:`simulate`).

    Parameters
    ----------
    instance, profile
        The requests and a unit-slot deployment (:func:`check_unit_slots`).
    start_slots
        ``S_i`` per request (instance position).
    replicas, assignment
        With ``replicas > 1``, the replica of every request (required: a slot
        schedule is per replica). Pass the same values to :func:`simulate`.

    Raises
    ------
    InputError
        On a non-unit profile, bad slots (:func:`check_start_slots`), a missing
        or bad assignment, or a request that the evaluator would reject or cut
        at the profile's ``max_model_len`` (:mod:`lsched.evaluator.length`).
    """
    check_unit_slots(profile)
    _as_served(instance, profile, cut_ok=False)
    slots = check_start_slots(instance, start_slots)
    if replicas > 1 and assignment is None:
        raise InputError(
            f"a start-slot schedule on {replicas} replicas needs the replica of "
            "every request",
            field="assignment",
        )
    where = assign_replicas(instance, replicas, assignment)
    groups = [ids if len(ids := np.flatnonzero(where == c)) else None
              for c in range(replicas)]  # fmt: skip
    return ScheduleSpec(
        "start-slots",
        tuple(None if g is None else StartSlotsParams(slots[g]) for g in groups),
        build=StartSlots,
        arrival_s=tuple(None if g is None else instance.arrival_s[g] for g in groups),
        prompt_tokens=tuple(
            None if g is None else instance.prompt_tokens[g] for g in groups
        ),
    )


def replay_start_slots(
    instance: Instance,
    profile: DeploymentProfile,
    start_slots: npt.ArrayLike,
    *,
    replicas: int = 1,
    assignment: npt.ArrayLike | None = None,
    log: bool = False,
) -> SimulationResult:
    """Replay a slot-model schedule through the evaluator.

    Parameters
    ----------
    instance
        The requests (arrivals in time units).
    profile
        A unit-slot profile with the instance's limits, e.g.
        ``load_profile("unit-slot").replace(kv_capacity_tokens=M)``.
    start_slots
        ``S_i >= ceil(a_i)`` per request.
    replicas, assignment
        One replica by default; for more, the replica of every request.
    log
        Keep the iteration log.

    Returns
    -------
    SimulationResult
        Request i has ``first_token_s = S_i + 1`` and ``completion_s = S_i + o_i``.

    Raises
    ------
    InputError
        See :func:`start_slots_spec`; also a request that can never fit in KV.
    PolicyError
        If the schedule breaks the KV capacity or a batch limit.
    """
    spec = start_slots_spec(
        instance, profile, start_slots, replicas=replicas, assignment=assignment
    )
    try:
        return simulate(
            instance, profile, spec, replicas=replicas, assignment=assignment, log=log
        )
    except PolicyError as exc:
        # the engine names the rule, not the time: add the slot where it breaks
        where = assign_replicas(instance, replicas, assignment)
        slots = integer_slots(start_slots, "start_slots")
        for c in range(replicas):
            ids = np.flatnonzero(where == c)
            if len(ids) == 0:
                continue
            scores = score_start_slots(
                instance.subset(ids),
                slots[ids],
                kv_capacity_tokens=profile.kv_capacity_tokens,
                block_tokens=profile.block_tokens,
                max_num_seqs=profile.max_num_seqs,
                max_num_batched_tokens=profile.max_num_batched_tokens,
            )
            if not scores.feasible[0]:
                raise PolicyError(
                    f"{exc} (the start-slot schedule breaks "
                    f"{scores.violation[0]} at slot {scores.violation_slot[0]}"
                    f"{f' on replica {c}' if replicas > 1 else ''})"
                ) from exc
        raise


def _as_served(
    instance: Instance, profile: DeploymentProfile, *, cut_ok: bool
) -> Instance:
    """``instance`` as the evaluator serves it on ``profile``, outputs cut at its
    ``max_model_len`` (:mod:`lsched.evaluator.length`). InputError for a prompt
    over it (the evaluator rejects it, and the replica's requests, which a fixed
    schedule numbers, would not be the schedule's), and, unless ``cut_ok``, for
    an output it cuts (a slot-model schedule runs every request to ``o_i``)."""
    cut = cut_to_length(instance, profile.max_model_len)
    if cut.rejected.any():
        i = int(np.flatnonzero(cut.rejected)[0])
        raise InputError(
            f"request {i}'s prompt of {int(instance.prompt_tokens[i])} tokens is "
            f"over max_model_len {cut.max_model_len}: the evaluator rejects it "
            f"({int(cut.rejected.sum())} such request(s)); leave it out of the "
            "instance",
            field="max_model_len",
        )
    if not cut_ok and cut.truncated.any():
        i = int(np.flatnonzero(cut.truncated)[0])
        raise InputError(
            f"request {i} would emit {int(cut.served.output_tokens[i])} of its "
            f"{int(instance.output_tokens[i])} tokens at max_model_len "
            f"{cut.max_model_len}; a start-slot schedule runs every request to "
            "its last token",
            field="max_model_len",
        )
    return cut.served


# -- batch tables ------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class BatchTableParams:
    """Parameters of :class:`BatchTable`: iterations as CSR arrays (local ids).

    Rows ``offsets[k]:offsets[k + 1]`` are the members of iteration ``k``, sorted by
    request. Build them with :func:`batch_table_params`, which checks the table.

    Attributes
    ----------
    offsets
        ``K + 1`` non-decreasing row offsets from 0.
    request, prefill, tokens
        Per row: request id, whether it is a prefill chunk, tokens (1 per decode).
    start_s
        Per iteration, the earliest start in seconds, NaN for none.
    iteration_time
        The replica's cost model, or ``None``. Only used to hold runs of
        repeated decode iterations that end without a completion (the module
        docstring); without it such runs go one iteration at a time.
    """

    offsets: IntArray
    request: IntArray
    prefill: BoolArray
    tokens: IntArray
    start_s: FloatArray
    iteration_time: IterationTime | None = None

    def __post_init__(self) -> None:
        rows = len(self.request)
        if (
            not (len(self.prefill) == len(self.tokens) == rows)
            or len(self.offsets) != len(self.start_s) + 1
        ):
            raise InputError(
                "expected request/prefill/tokens of one length and one start_s per "
                "iteration",
                field="batch_table",
            )
        for name in ("offsets", "request", "prefill", "tokens", "start_s"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))

    @property
    def num_iterations(self) -> int:
        return len(self.start_s)


def _table_column(table: pd.DataFrame, name: str, minimum: int | None) -> np.ndarray:
    """Column ``name`` as int64 values ``>= minimum``, or (``minimum=None``) as
    float64 values ``>= 0`` or NaN; InputError naming the column and row."""
    values = table[name].to_numpy()
    expected = (
        "a finite number >= 0 (or NaN: no constraint)"
        if minimum is None
        else f"an integer >= {minimum}"
    )
    if values.dtype.kind not in "iuf":
        raise InputError(f"got dtype {values.dtype}; expected {expected}", field=name)
    numbers = values.astype(np.float64)
    if minimum is None:
        bad = np.isinf(numbers) | (numbers < 0)  # NaN passes: no constraint
    else:
        bad = ~np.isfinite(numbers) | (numbers != np.round(numbers))
        bad |= numbers < minimum
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"row {table.index[r]}: got {values[r]}; expected {expected}", field=name
        )
    return numbers if minimum is None else values.astype(np.int64)


def batch_table_params(
    table: pd.DataFrame,
    instance: Instance,
    *,
    iteration_time: IterationTime | None = None,
) -> BatchTableParams:
    """Check a batch table against ``instance`` and turn it into parameters.

    Parameters
    ----------
    table
        Columns ``iteration``, ``request``, ``kind``, ``tokens`` and optionally
        ``start_s`` (module docstring); rows in any order.
    instance
        The requests the table serves (one replica: ids are instance positions).
    iteration_time
        The cost model of the profile it will be replayed on (see
        :class:`BatchTableParams`).

    Raises
    ------
    InputError
        Naming the column (``field``) and the row (its index label) of the first
        problem: a missing column, a value of the wrong type or range, iterations
        that are not 0, 1, 2, ... without gaps, a request twice in one iteration,
        ``start_s`` differing within an iteration, a decode step before the
        request's prefill is complete, or a request whose prefill chunks do not add
        up to its prompt or whose decode steps are not ``o_i - 1``.
    """
    iteration, request, tokens, prefill, start, label = _table_rows(
        table, len(instance)
    )

    # canonical order: by iteration, then request (stable for equal pairs)
    order = np.lexsort((request, iteration))
    iteration, request, tokens, prefill, start = (
        x[order] for x in (iteration, request, tokens, prefill, start)
    )
    label = label[order]
    offsets = _iteration_offsets(iteration, request, start, label)
    _check_conservation(instance, request, prefill, tokens, iteration, label)
    return BatchTableParams(
        offsets=offsets.astype(np.int64),
        request=request,
        prefill=prefill,
        tokens=tokens,
        start_s=start[offsets[:-1]],
        iteration_time=iteration_time,
    )


def _table_rows(
    table: pd.DataFrame, n: int
) -> tuple[IntArray, IntArray, IntArray, BoolArray, FloatArray, pd.Index]:
    """The rows of a batch table, checked one by one against ``n`` requests:
    ``iteration``, ``request``, ``tokens``, whether each is a prefill chunk,
    ``start_s`` (NaN where not given) and the index labels, in table order."""
    if not isinstance(table, pd.DataFrame):
        raise InputError(
            f"got {type(table).__name__}; expected a pandas DataFrame",
            field="batch_table",
        )
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(
            f"missing column(s) {missing}; expected {list(TABLE_COLUMNS)} and "
            "optionally start_s",
            field=missing[0],
        )
    if len(table) == 0:
        raise InputError("the table has no rows", field="batch_table")
    iteration = _table_column(table, "iteration", 0)
    request = _table_column(table, "request", 0)
    tokens = _table_column(table, "tokens", 1)
    kind = table["kind"].astype(str).to_numpy()
    label = table.index
    unknown = np.flatnonzero(~np.isin(kind, KINDS))
    if len(unknown):
        r = int(unknown[0])
        raise InputError(
            f"row {label[r]}: got {kind[r]!r}; expected 'prefill' or 'decode'",
            field="kind",
        )
    if np.any(request >= n):
        r = int(np.flatnonzero(request >= n)[0])
        raise InputError(
            f"row {label[r]}: got {request[r]}; expected a request in 0..{n - 1}",
            field="request",
        )
    prefill = kind == "prefill"
    if np.any(~prefill & (tokens != 1)):
        r = int(np.flatnonzero(~prefill & (tokens != 1))[0])
        raise InputError(
            f"row {label[r]}: a decode step has {tokens[r]} tokens; expected 1",
            field="tokens",
        )
    if "start_s" in table.columns:
        start = _table_column(table, "start_s", None)
    else:
        start = np.full(len(table), np.nan)
    return iteration, request, tokens, prefill, start, label


def _iteration_offsets(
    iteration: IntArray, request: IntArray, start: FloatArray, label: pd.Index
) -> IntArray:
    """Row offsets of each iteration in rows sorted by (iteration, request),
    after checking that the iterations are 0, 1, 2, ... without gaps, that no
    request is twice in one iteration and that each has one ``start_s``."""
    steps = np.diff(iteration, prepend=-1)
    if iteration[0] != 0 or np.any(steps > 1):
        r = 0 if iteration[0] != 0 else int(np.flatnonzero(steps > 1)[0])
        gap = 0 if r == 0 else int(iteration[r - 1]) + 1
        raise InputError(
            f"row {label[r]}: iteration {iteration[r]}, but iteration {gap} has no "
            "rows; expected consecutive iterations 0, 1, 2, ...",
            field="iteration",
        )
    twice = np.flatnonzero((steps == 0) & (np.diff(request, prepend=-1) == 0))
    if len(twice):
        r = int(twice[0])
        raise InputError(
            f"row {label[r]}: request {request[r]} appears twice in iteration "
            f"{iteration[r]}; expected at most one row per request and iteration",
            field="request",
        )
    num_iterations = int(iteration[-1]) + 1
    offsets = np.searchsorted(iteration, np.arange(num_iterations + 1))
    differs = (steps == 0) & ~(
        (start == np.roll(start, 1)) | (np.isnan(start) & np.isnan(np.roll(start, 1)))
    )
    if differs.any():
        r = int(np.flatnonzero(differs)[0])
        raise InputError(
            f"row {label[r]}: start_s {start[r]} differs from {start[r - 1]} in the "
            f"same iteration {iteration[r]}; expected one start_s per iteration",
            field="start_s",
        )
    return offsets


def _earlier_in_group(keys: IntArray, values: IntArray) -> tuple[IntArray, BoolArray]:
    """Per row, the sum of ``values`` over earlier rows with the same key, and
    whether the row is its key's last."""
    order = np.argsort(keys, kind="stable")
    ordered = values[order]
    cum = np.cumsum(ordered) - ordered  # exclusive prefix sums
    sorted_keys = keys[order]
    head = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    lengths = np.diff(np.append(head, len(keys)))
    earlier = np.empty_like(cum)
    earlier[order] = cum - np.repeat(cum[head], lengths)
    last = np.zeros(len(keys), dtype=bool)
    last[order[np.append(head[1:], len(keys)) - 1]] = True
    return earlier, last


def _check_conservation(
    instance: Instance,
    request: IntArray,
    prefill: BoolArray,
    tokens: IntArray,
    iteration: IntArray,
    label: pd.Index,
) -> None:
    """Per request: prefill chunks adding up to ``s_i``, then ``o_i - 1`` decodes."""
    n = len(instance)
    prompt, output = instance.prompt_tokens, instance.output_tokens
    chunk = np.where(prefill, tokens, 0)
    # rows are in iteration order: prompt tokens processed by and before each row
    before, _ = _earlier_in_group(request, chunk)
    processed = before + chunk
    counts = np.bincount(request, minlength=n)
    early = ~prefill & (processed < prompt[request])
    if early.any():
        r = int(np.flatnonzero(early)[0])
        i = int(request[r])
        raise InputError(
            f"row {label[r]}: request {i} decodes in iteration {iteration[r]} "
            f"before its prefill is complete ({processed[r]} of its "
            f"{prompt[i]} prompt tokens processed)",
            field="kind",
        )
    too_much = prefill & (processed > prompt[request])
    if too_much.any():
        r = int(np.flatnonzero(too_much)[0])
        i = int(request[r])
        raise InputError(
            f"row {label[r]}: request {i}'s prefill chunks reach {processed[r]} "
            f"tokens in iteration {iteration[r]}; its prompt has {prompt[i]} (a "
            "batch table has no preemption)",
            field="tokens",
        )
    chunked = np.bincount(request, weights=chunk, minlength=n)
    decodes = np.bincount(request[~prefill], minlength=n)
    wrong = np.flatnonzero((chunked != prompt) | (decodes != output - 1))
    if len(wrong):
        i = int(wrong[0])
        what = (
            "never appears"
            if counts[i] == 0
            else (
                f"has {int(chunked[i])} prefill tokens and {decodes[i]} decode step(s)"
            )
        )
        raise InputError(
            f"request {i} {what}; expected {prompt[i]} prefill tokens (its prompt) "
            f"and {output[i] - 1} decode step(s) (output {output[i]} - 1)",
            field="request",
        )


class BatchTable:
    """Replays a batch table on one replica (module docstring)."""

    def __init__(self, params: BatchTableParams) -> None:
        self.p = params
        off, request = params.offsets, params.request
        K, rows = params.num_iterations, len(request)
        sizes = np.diff(off)
        it_of_row = np.repeat(np.arange(K), sizes)
        # KV tokens a row's request holds before it: its earlier rows' tokens
        self.before, last = _earlier_in_group(request, params.tokens)
        # a request's last row is its completion (batch_table_params checks that)
        self.completes = np.bincount(it_of_row[last], minlength=K) > 0
        decode_only = np.bincount(it_of_row[params.prefill], minlength=K) == 0
        # iteration k + 1 repeats iteration k: both decode-only, the same members
        # (rows sorted by request, so compare row r with row r + size)
        nxt = np.arange(rows) + np.repeat(sizes, sizes)
        inside = nxt < rows
        row_same = np.zeros(rows, dtype=bool)
        row_same[inside] = request[inside] == request[nxt[inside]]
        mismatches = np.bincount(it_of_row[~row_same], minlength=K)
        same = np.zeros(K, dtype=bool)
        same[:-1] = (
            (sizes[:-1] == sizes[1:])
            & decode_only[:-1]
            & decode_only[1:]
            & (mismatches[:-1] == 0)
        )
        breaks = np.flatnonzero(~same)  # includes the last iteration
        self.run_end = breaks[np.searchsorted(breaks, np.arange(K))]

    def decide(self, view: ReplicaView) -> Batch:
        p = self.p
        k = view.iteration
        if k >= p.num_iterations:
            raise PolicyError(
                f"all {p.num_iterations} iterations of the table have run, but "
                f"{len(view.running) + len(view.waiting)} arrived request(s) are "
                "unfinished"
            )
        lo, hi = int(p.offsets[k]), int(p.offsets[k + 1])
        ids = p.request[lo:hi]
        start = float(p.start_s[k])
        if start > view.now_s:  # NaN compares False: no constraint
            return Batch(wake_at_s=start)
        if ids[-1] >= view.num_arrived:  # sorted: the last id arrives last
            return Batch()  # idle until the next arrival
        prefill = p.prefill[lo:hi]
        held = view.processed_tokens[ids]
        diverged = np.flatnonzero(held != self.before[lo:hi])
        if len(diverged):
            j = int(diverged[0])
            raise PolicyError(
                f"table iteration {k}: request {ids[j]} holds {held[j]} KV tokens; "
                f"the table expects {self.before[lo + j]} (the replay left the table)"
            )
        decode = ids[~prefill]
        if len(decode):
            past = np.isin(decode, view.running) & (
                view.processed_tokens[decode] >= view.prefill_target_tokens[decode]
            )
            if not past.all():
                raise PolicyError(
                    f"table iteration {k}: decode of request "
                    f"{decode[~past][0]} before its prefill is complete"
                )
        if len(decode) == len(ids):
            hold, wake = self._hold(k, decode, view)
            return Batch(decode=decode, hold=hold, wake_at_s=wake)
        return Batch(
            prefill=ids[prefill], prefill_tokens=p.tokens[lo:hi][prefill], decode=decode
        )

    def _hold(
        self, k: int, decode: IntArray, view: ReplicaView
    ) -> tuple[bool, float | None]:
        """Whether the engine may run decode iteration ``k`` and its repeats as one
        stretch, and the wake-up that ends the stretch where the repeats end."""
        p = self.p
        end = int(self.run_end[k])
        later = np.flatnonzero(p.start_s[k + 1 : end + 1] > view.now_s)
        if len(later):  # the replica must wait before iteration k + 1 + later[0]
            end = k + int(later[0])
        if end == k:
            return False, None
        if end == self.run_end[k] and self.completes[end]:
            return True, None  # a member's completion stops the engine there
        if p.iteration_time is None:
            return False, None
        # wake in the middle of the run's last iteration: the engine stops at the
        # first boundary at or after it, the run's end, whatever the rounding
        d, r = len(decode), end - k + 1
        phi = np.zeros((r, len(FEATURES)))
        phi[:, _CONST] = 1.0
        phi[:, _D] = d
        # iteration j reads K_0 + j d tokens (each member one more per iteration)
        phi[:, _K] = (view.processed_tokens[decode] + 1).sum() + d * np.arange(r)
        elapsed = np.cumsum(p.iteration_time(phi))
        return True, view.now_s + 0.5 * (elapsed[-2] + elapsed[-1])


def batch_table_spec(
    table: pd.DataFrame, instance: Instance, profile: DeploymentProfile | None = None
) -> ScheduleSpec:
    """A one-replica policy spec replaying ``table`` (:func:`batch_table_params`).

    Give the ``profile`` it will be simulated on to hold every run of repeated
    decode iterations (a different profile makes the replay leave the table:
    :class:`~lsched.policies.PolicyError`) and to check each request's decode
    steps against the tokens it emits there: ``min(o_i, L - s_i + 1)`` at the
    profile's ``max_model_len`` ``L`` (:mod:`lsched.evaluator.length`); a prompt
    over ``L``, which the evaluator rejects, is an :class:`InputError`.
    """
    iteration_time = None if profile is None else profile.iteration_time
    checked = instance
    if profile is not None:  # the outputs the evaluator serves there
        checked = _as_served(instance, profile, cut_ok=True)
    return ScheduleSpec(
        "batch-table",
        (batch_table_params(table, checked, iteration_time=iteration_time),),
        build=BatchTable,
        arrival_s=(instance.arrival_s,),
        prompt_tokens=(instance.prompt_tokens,),
    )


def replay_batch_table(
    instance: Instance,
    profile: DeploymentProfile,
    table: pd.DataFrame,
    *,
    log: bool = False,
) -> SimulationResult:
    """Replay an explicit per-iteration batch table (one replica).

    Parameters
    ----------
    instance
        The requests.
    profile
        Any deployment; iteration times come from its cost model.
    table
        Columns ``iteration``, ``request``, ``kind``, ``tokens`` and optionally
        ``start_s`` (module docstring).
    log
        Keep the iteration log.

    Raises
    ------
    InputError
        On a malformed table (:func:`batch_table_params`) or a request that can
        never fit in KV.
    PolicyError
        If an iteration breaks the KV capacity or a batch limit.
    """
    spec = batch_table_spec(table, instance, profile)
    return simulate(instance, profile, spec, replicas=1, log=log)


__all__ = [
    "KINDS",
    "TABLE_COLUMNS",
    "BatchTable",
    "BatchTableParams",
    "ScheduleSpec",
    "StartSlots",
    "StartSlotsParams",
    "batch_table_params",
    "batch_table_spec",
    "check_start_slots",
    "check_unit_slots",
    "replay_batch_table",
    "replay_start_slots",
    "start_slots_spec",
]
