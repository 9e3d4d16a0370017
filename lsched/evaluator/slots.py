"""Many candidate start-slot schedules scored at once, without a loop over slots.

The slot model (DESIGN.md, "Offline formulations and bounds"; Jaillet et al. 2025,
generalised to heterogeneous prompts, KV blocks, a batch cap, a token budget and
arrivals): one iteration is one unit slot, and a schedule is a start slot
``S_i >= ceil(a_i)`` per request. Request i prefills its whole prompt in slot
``S_i`` (token 1 at its end), decodes in slots ``S_i + 1 .. S_i + o_i - 1`` and
completes at time ``E_i = S_i + o_i``. In slot ``t`` with ``S_i <= t < E_i`` it

- is in the batch (one sequence);
- processes ``s_i`` tokens if ``t = S_i`` and 1 token otherwise;
- holds ``s_i + t - S_i`` KV tokens, ``ceil((s_i + t - S_i) / b)`` blocks of
  ``b`` tokens (a completing request still holds its KV in its last slot).

:func:`lsched.evaluator.fixed.replay_start_slots` replays one such schedule through
the evaluator; this module scores ``m`` candidates (rows of an ``(m, n)`` array)
in one vectorised pass, for search methods (local search, LNS) that try many.

Objectives (per candidate; defined whether or not it is feasible)
-----------------------------------------------------------------
::

    total_latency  = sum_i (S_i + o_i - a_i)
    total_ttft     = sum_i (S_i + 1 - a_i)
    makespan       = max_i (S_i + o_i) - min_i a_i

Constraints, for every slot t
-----------------------------
::

    N(t) = #{i : S_i <= t < E_i}                       <= max_num_seqs
    B(t) = N(t) + sum_{i : S_i = t} (s_i - 1)          <= max_num_batched_tokens
    KV(t) = sum_{i : S_i <= t < E_i} ceil((s_i + t - S_i) / b)
                                                        <= floor(M / b)

Event sweep
-----------
No quantity is tabulated per slot (a horizon could be huge); each is piecewise
simple between *events*. For ``b = 1`` every request contributes three events

=========  ===========  ================  ===============
time       dN           dC                dX
=========  ===========  ================  ===============
``S_i``    +1           ``s_i - S_i``     ``s_i - 1``
``S_i+1``  0            0                 ``-(s_i - 1)``
``E_i``    -1           ``-(s_i - S_i)``  0
=========  ===========  ================  ===============

Sorted by time along each candidate's row and summed cumulatively, the totals
after the last event at time ``t_j`` hold on the segment ``[t_j, t_{j+1} - 1]``
(empty when several events share a time), where

    N(t) = N_j,   B(t) = N_j + X_j,   KV(t) = C_j + t * N_j

(``sum_i (s_i + t - S_i) = t N + sum_i (s_i - S_i)``). ``KV`` grows with ``t`` on
a segment, so its maximum is at the segment's last slot, and the first slot
breaking the capacity is ``max(t_j, floor((M - C_j) / N_j) + 1)`` when that is
still inside the segment. ``N`` and ``B`` are constant on a segment (``X`` is
non-zero only on one-slot segments, since its ``-(s_i - 1)`` follows at
``S_i + 1``). The cost is one ``argsort`` of ``3n`` events per candidate:
``O(m n log n)`` time, independent of the horizon.

For ``b > 1``, blocks are not affine in ``t``; each request instead contributes an
event at every slot where it opens a block: ``+ceil(s_i / b)`` at ``S_i``, ``+1`` at
``S_i + t`` for ``1 <= t <= o_i - 1`` with ``(s_i + t - 1) mod b = 0``, and
``-ceil((s_i + o_i - 1) / b)`` at ``E_i``. Blocks are constant between events. That
is ``L = sum_i (2 + floor((s_i + o_i - 2) / b) - floor((s_i - 1) / b))`` events,
about ``2n + sum_i o_i / b``, per candidate: ``O(m L log L)`` time and ``O(m L)``
memory (a per-slot table would take ``sum_i o_i`` per candidate). Peak KV tokens
always come from the ``b = 1`` sweep.

Candidates are processed in blocks of rows bounded by :data:`CHUNK_ELEMENTS`
events; each block is one vectorised pass, the split only bounds memory.

Violations
----------
``violation`` names the first rule a candidate breaks: ``"arrival"`` if some
``S_i < ceil(a_i)`` (checked before anything is replayed, as
:func:`~lsched.evaluator.fixed.replay_start_slots` does); otherwise the rule broken
at the earliest slot, ties in the evaluator's order of checks within one
iteration: ``"max_num_seqs"``, ``"max_num_batched_tokens"``, ``"kv"``. It is
``""`` for a feasible candidate, and ``violation_slot`` is that slot (for
``"arrival"``, the earliest offending start slot; -1 when feasible).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import numpy as np
import numpy.typing as npt

from lsched.errors import InputError
from lsched.instance import Instance

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Violation codes, in the order of checks within one slot (arrival comes first).
VIOLATIONS: tuple[str, ...] = (
    "arrival",
    "max_num_seqs",
    "max_num_batched_tokens",
    "kv",
)
#: Most events (candidates x events per candidate) swept in one vectorised block.
CHUNK_ELEMENTS = 1 << 22

_NO_SLOT = np.iinfo(np.int64).max  # "never" while taking minima


@dataclass(frozen=True, eq=False)
class SlotScores:
    """Objectives, peaks and feasibility of ``m`` start-slot schedules.

    Every array has shape ``(m,)``, one entry per candidate (row of ``starts``).

    Attributes
    ----------
    feasible
        No rule broken (arrival, ``max_num_seqs``, ``max_num_batched_tokens``,
        KV capacity).
    total_latency
        ``sum_i (S_i + o_i - a_i)``.
    makespan
        ``max_i (S_i + o_i) - min_i a_i``.
    total_ttft
        ``sum_i (S_i + 1 - a_i)``.
    peak_kv_tokens
        Most KV tokens held in one slot.
    peak_kv_blocks
        Most KV blocks held in one slot (equal to ``peak_kv_tokens`` for
        ``block_tokens = 1``).
    peak_batch_size
        Most requests in one slot's batch.
    peak_batched_tokens
        Most prefill tokens + decode steps in one slot.
    violation
        The first rule broken (module docstring), ``""`` when feasible.
    violation_slot
        Where it is broken, -1 when feasible.
    """

    feasible: BoolArray
    total_latency: FloatArray
    makespan: FloatArray
    total_ttft: FloatArray
    peak_kv_tokens: IntArray
    peak_kv_blocks: IntArray
    peak_batch_size: IntArray
    peak_batched_tokens: IntArray
    violation: npt.NDArray[np.str_]
    violation_slot: IntArray

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            getattr(self, name).flags.writeable = False

    def __len__(self) -> int:
        return len(self.feasible)


def _limit(value: Any, name: str, *, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise InputError(f"got {value!r}; expected an integer >= 1", field=name)
    return int(value)


def integer_slots(values: npt.ArrayLike, field: str) -> IntArray:
    """``values`` as an int64 array, if every entry is a whole number.

    Raises
    ------
    InputError
        Naming ``field`` and the first entry that is not a finite whole number.
    """
    array = np.asarray(values)
    if array.dtype.kind in "iu":
        return array.astype(np.int64)
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array) | (array != np.round(array))
        if not bad.any():
            return array.astype(np.int64)
        where = tuple(int(k) for k in np.argwhere(bad)[0])
        raise InputError(
            f"entry {where if len(where) > 1 else where[0]} is {array[where]}; "
            "expected whole slot numbers",
            field=field,
        )
    raise InputError(
        f"got dtype {array.dtype}; expected integer slot numbers", field=field
    )


def earliest_slots(instance: Instance) -> IntArray:
    """``ceil(a_i)``: the first slot boundary at or after each arrival."""
    return np.ceil(instance.arrival_s).astype(np.int64)


def score_start_slots(
    instance: Instance,
    starts: npt.ArrayLike,
    *,
    kv_capacity_tokens: int,
    block_tokens: int = 1,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
) -> SlotScores:
    """Score ``m`` start-slot schedules of ``instance`` in one vectorised pass.

    Parameters
    ----------
    instance
        The requests (arrivals in time units of slots).
    starts
        Start slots, shape ``(m, n)`` (one candidate per row) or ``(n,)`` (one
        candidate, scored as ``m = 1``); whole numbers.
    kv_capacity_tokens
        The memory limit ``M`` in tokens; ``floor(M / block_tokens)`` blocks.
    block_tokens
        KV block size ``b``.
    max_num_seqs, max_num_batched_tokens
        Batch limits, or ``None`` for none.

    Returns
    -------
    SlotScores
        Arrays of shape ``(m,)``.

    Raises
    ------
    InputError
        On a ``starts`` of the wrong shape or with non-integer entries, or a limit
        that is not a positive integer.
    """
    capacity = _limit(kv_capacity_tokens, "kv_capacity_tokens", optional=False)
    block = _limit(block_tokens, "block_tokens", optional=False)
    seqs = _limit(max_num_seqs, "max_num_seqs", optional=True)
    budget = _limit(max_num_batched_tokens, "max_num_batched_tokens", optional=True)
    assert capacity is not None and block is not None
    if capacity < block:
        raise InputError(
            f"got {capacity}; expected at least one block ({block} tokens)",
            field="kv_capacity_tokens",
        )
    n = len(instance)
    try:
        raw = np.asarray(starts)
    except ValueError as exc:  # ragged rows
        raise InputError(f"expected an (m, {n}) array: {exc}", field="starts") from None
    if raw.ndim == 1:
        raw = raw[np.newaxis, :]
    if raw.ndim != 2 or raw.shape[1] != n:
        raise InputError(
            f"got shape {np.shape(starts)}; expected (m, {n}) or ({n},): one start "
            "slot per request and candidate",
            field="starts",
        )
    S = integer_slots(raw, "starts")
    m = S.shape[0]
    a = instance.arrival_s
    s = instance.prompt_tokens
    o = instance.output_tokens

    completion = S + o
    total_latency = (completion - a).sum(axis=1)
    total_ttft = (S + 1 - a).sum(axis=1)
    makespan = completion.max(axis=1) - a.min()

    early = earliest_slots(instance) > S
    arrival_slot = np.where(early, S, _NO_SLOT).min(axis=1)

    sweep = _Sweep(s, o, capacity, block, seqs, budget)
    # blocks of rows only bound memory; each block is one vectorised sweep
    parts = [sweep(S[lo : lo + sweep.rows]) for lo in range(0, max(m, 1), sweep.rows)]
    peak_tokens, peak_blocks, peak_n, peak_b, first = (
        np.concatenate(p) for p in zip(*parts, strict=True)
    )  # first: (m, 3) earliest slot per rule, _NO_SLOT if never

    # arrival first; otherwise the earliest slot, ties in the engine's check order
    slot = first.min(axis=1)
    rule = np.argmin(first, axis=1) + 1  # argmin takes the first of equal minima
    any_early = arrival_slot < _NO_SLOT
    rule = np.where(any_early, 0, np.where(slot < _NO_SLOT, rule, -1))
    slot = np.where(any_early, arrival_slot, slot)
    codes = np.array((*VIOLATIONS, ""))
    return SlotScores(
        feasible=rule < 0,
        total_latency=total_latency.astype(np.float64),
        makespan=np.asarray(makespan, dtype=np.float64),
        total_ttft=total_ttft.astype(np.float64),
        peak_kv_tokens=peak_tokens,
        peak_kv_blocks=peak_blocks,
        peak_batch_size=peak_n,
        peak_batched_tokens=peak_b,
        violation=codes[rule],  # rule -1 picks the trailing ""
        violation_slot=np.where(rule < 0, -1, slot),
    )


class _Sweep:
    """The event sweeps of the module docstring for one instance and limits."""

    def __init__(
        self,
        s: IntArray,
        o: IntArray,
        capacity_tokens: int,
        block: int,
        seqs: int | None,
        budget: int | None,
    ) -> None:
        n = len(s)
        self.s, self.o, self.block = s, o, block
        self.blocks = capacity_tokens // block
        self.seqs = math.inf if seqs is None else seqs
        self.budget = math.inf if budget is None else budget
        zeros, ones = np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64)
        # b = 1 sweep: per event column, its offset from S_i and its dN, dX
        self.offset = np.concatenate([zeros, ones, o])
        self.d_count = np.concatenate([ones, zeros, -ones])
        self.d_extra = np.concatenate([s - 1, -(s - 1), zeros])
        events = 3 * n
        if block > 1:
            # block openings inside each request's decode slots: the multiples of b
            # in [s_i, s_i + o_i - 2] (token count s_i + t - 1 before slot S_i + t)
            first = -(-s // block) * block
            count = np.maximum((s + o - 2) // block - (s - 1) // block, 0)
            owner = np.repeat(np.arange(n), count)
            rank = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
            opens = first[owner] + rank * block - s[owner] + 1
            self.b_owner = np.concatenate([np.arange(n), owner, np.arange(n)])
            self.b_offset = np.concatenate([zeros, opens, o])
            held_at_start = -(-s // block)
            held_at_end = -(-(s + o - 1) // block)
            self.b_delta = np.concatenate(
                [held_at_start, np.ones(len(owner), dtype=np.int64), -held_at_end]
            )
            events = max(events, len(self.b_owner))
        self.rows = max(1, CHUNK_ELEMENTS // max(events, 1))

    def __call__(self, S: IntArray) -> tuple[IntArray, ...]:
        """Peaks and the earliest slot breaking each rule, for the rows of ``S``."""
        m = S.shape[0]
        times = np.tile(S, 3) + self.offset
        order = np.argsort(times, axis=1, kind="stable")
        t = np.take_along_axis(times, order, axis=1)
        count = np.cumsum(self.d_count[order], axis=1)
        extra = np.cumsum(self.d_extra[order], axis=1)
        const_delta = np.concatenate([self.s - S, np.zeros_like(S), S - self.s], axis=1)
        const = np.cumsum(np.take_along_axis(const_delta, order, axis=1), axis=1)
        # segment j covers slots t_j .. t_{j+1} - 1; the last one (after every end)
        # is empty
        last = np.concatenate([t[:, 1:] - 1, t[:, -1:] - 1], axis=1)
        valid = last >= t
        kv = np.where(valid, const + last * count, 0)  # KV at the segment's end
        batched = count + extra
        peak_tokens = kv.max(axis=1)
        peak_n = np.where(valid, count, 0).max(axis=1)
        peak_b = np.where(valid, batched, 0).max(axis=1)

        first = np.full((m, 3), _NO_SLOT, dtype=np.int64)
        first[:, 0] = np.where(valid & (count > self.seqs), t, _NO_SLOT).min(axis=1)
        first[:, 1] = np.where(valid & (batched > self.budget), t, _NO_SLOT).min(axis=1)
        if self.block == 1:
            peak_blocks = peak_tokens
            # first t in the segment with C + t N > capacity: t > (capacity - C) / N
            over = (self.blocks - const) // np.maximum(count, 1) + 1
            at = np.maximum(t, over)
            breaks = valid & (count > 0) & (at <= last)
            first[:, 2] = np.where(breaks, at, _NO_SLOT).min(axis=1)
        else:
            peak_blocks, first[:, 2] = self._blocks(S)
        return peak_tokens, peak_blocks, peak_n, peak_b, first

    def _blocks(self, S: IntArray) -> tuple[IntArray, IntArray]:
        """Peak KV blocks and the first slot over capacity, for ``b > 1``."""
        times = S[:, self.b_owner] + self.b_offset
        order = np.argsort(times, axis=1, kind="stable")
        t = np.take_along_axis(times, order, axis=1)
        held = np.cumsum(self.b_delta[order], axis=1)
        # the totals after event j hold until the next event time, if later
        last_event = np.zeros_like(t[:, :1], dtype=bool)
        valid = np.concatenate([t[:, 1:] > t[:, :-1], last_event], axis=1)
        held = np.where(valid, held, 0)
        over = np.where(held > self.blocks, t, _NO_SLOT).min(axis=1)
        return held.max(axis=1), over


__all__ = [
    "CHUNK_ELEMENTS",
    "VIOLATIONS",
    "SlotScores",
    "earliest_slots",
    "integer_slots",
    "score_start_slots",
]
