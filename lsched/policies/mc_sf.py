"""``mc-sf``: memory-constrained shortest first (Jaillet et al. 2025).

P. Jaillet, J. Jiang, K. Mellou, M. Molinaro, C. Podimata, Z. Zhou, "Online
Scheduling for LLM Inference with KV Cache Constraints", arXiv:2502.07115 (2025),
the MC-SF algorithm with its future memory feasibility check (their Eq. (5)); the
constant competitive ratio (their Theorem 4.3) assumes overestimating predictions
``o <= pred <= alpha * o`` (:func:`lsched.predictors.interval`). In the slot model
(one iteration per time unit, :file:`models/unit-slot.toml`) the rule is:

- the requests in progress all keep running;
- the waiting requests, in ascending predicted output, are added one at a time
  while the batch stays *feasible*: at every future slot ``t'`` at which some
  request (running or added) is predicted to complete, the KV that the requests
  still running at ``t'`` hold then is at most the capacity ``M``. The added set
  is the longest such prefix (the first failure stops).

Checking only completion slots suffices: between two completions the set of
requests is fixed and each one's KV only grows, so the peak is at the completing
slot (the completing request still holds its KV in that iteration).

This implementation, at every iteration boundary
------------------------------------------------
With ``e_j`` tokens emitted and ``r_j = max(pred_j - e_j, 1)`` predicted tokens
still to come (:func:`lsched.policies.sjf.predicted_remaining`), request ``j``
(running, or waiting and admitted now) is *predicted* to hold
``s_j + e_j + k - 1`` KV tokens in the ``k``-th iteration from now, for
``k = 1..r_j``, and to complete in iteration ``r_j`` (DESIGN.md: the iteration
that emits token ``j`` holds ``s + j - 1``; a recomputed request re-prefills
``s + e`` tokens). The feasibility check is, in blocks,

    for every K in {r_j : j in batch}:
        sum over j in batch with r_j >= K of ceil((s_j + e_j + K - 1) / b)
            <= floor(kv_fraction * kv_capacity_blocks)

1. Running requests get their work as in :mod:`~lsched.policies.fcfs` (chunked
   prefill by the token budget).
2. If the *actual* next iteration would overflow the KV (possible only when
   predictions underestimate, or with chunked prefills that the model above
   treats as finishing in one iteration), the running request with the longest
   predicted remaining output is recompute-preempted (ties: most recently
   admitted) until it fits, and nothing is admitted (as ``sjf``). The paper's
   algorithm has no such step: its running requests never overflow under its
   assumptions, and with exact predictions on a unit-slot profile this one never
   runs either.
3. Waiting requests in ascending ``r_j`` (ties: arrival order) are admitted with a
   first chunk ``min(s_j + e_j, budget left)`` while the sequence cap, the token
   budget, the actual next-iteration KV and the feasibility check allow; the
   first that fails stops admission. Exception: on an idle replica (nothing
   running) the first request is admitted even if it fails the feasibility
   check. Only a prediction whose peak ``s + e + r - 1`` exceeds the (planning)
   capacity fails it there, and every request's true peak fits (the engine
   rejects instances where one does not), so waiting for room would stall for
   ever.

Decisions the paper leaves open (its model has one replica, no block size, no
batch limits, no chunking and no preemption): blocks of ``b`` tokens (the check
is in blocks), the batch limits and chunking (step 1, as fcfs), step 2, the
clamp ``r_j >= 1`` for requests that outlive their prediction, the idle-replica
exception of step 3, ``kv_fraction``
(planning headroom for prediction error; 1 is the paper's rule), and ties.

Holding: only when no request is admitted *and* none could be until an event
(no waiting request, the sequence cap reached or the budget used up). A waiting
request that fails the check now may pass it a few iterations later with no
event in between (starting later shifts its KV past running requests'
completions), so such batches are not held.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lsched.errors import InputError
from lsched.kv import KVBlocks
from lsched.policies.base import Batch, IntArray, ReplicaView
from lsched.policies.sjf import (
    Plan,
    first_chunk,
    predicted_remaining,
    shed,
    to_batch,
)


def check_kv_fraction(value: float) -> None:
    """Raise InputError unless ``0 < value <= 1``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"got {value!r}; expected a number", field="kv_fraction")
    if not 0 < value <= 1:
        raise InputError(
            f"got {value}; expected 0 < kv_fraction <= 1", field="kv_fraction"
        )


@dataclass(frozen=True)
class McSfParams:
    """Parameters of :class:`McSf`.

    Attributes
    ----------
    kv_fraction
        Share of the KV capacity the feasibility check plans with, in (0, 1]
        (headroom for underestimated lengths); 1 is Jaillet et al.'s rule.
    """

    kv_fraction: float = 1.0

    def __post_init__(self) -> None:
        check_kv_fraction(self.kv_fraction)


class FutureKv:
    """The predicted KV profile of a batch at its completion iterations.

    ``loads[K]`` is the predicted KV blocks in the ``K``-th iteration from now,
    kept for every ``K`` at which a member completes; :meth:`fits` tells whether
    every such load (the newcomer's own completion included) stays within
    ``capacity`` with one more request, and :meth:`add` commits it.
    """

    def __init__(
        self, base: IntArray, remaining: IntArray, kv: KVBlocks, capacity: int
    ) -> None:
        # member j holds base_j + K tokens in iteration K = 1..remaining_j
        self.base = base.astype(np.int64)
        self.remaining = remaining.astype(np.int64)
        self.kv = kv
        self.capacity = capacity
        self.checkpoints = np.unique(self.remaining)
        self.loads = np.array([self._load(int(k)) for k in self.checkpoints], np.int64)

    def _load(self, k: int) -> int:
        alive = self.remaining >= k
        return int(self.kv.blocks(self.base[alive] + k).sum())

    def fits(self, base: int, remaining: int) -> tuple[bool, np.ndarray, np.ndarray]:
        """Whether a request with ``base`` and ``remaining`` fits; the checkpoints
        and loads with it added."""
        blocks = self.kv.blocks
        during = self.checkpoints <= remaining
        loads = self.loads + np.where(during, blocks(base + self.checkpoints), 0)
        checkpoints = self.checkpoints
        if not np.any(self.checkpoints == remaining):
            own = self._load(remaining) + int(blocks(np.int64(base + remaining)))
            at = int(np.searchsorted(checkpoints, remaining))
            checkpoints = np.insert(checkpoints, at, remaining)
            loads = np.insert(loads, at, own)
        return bool(np.all(loads <= self.capacity)), checkpoints, loads

    def add(
        self, base: int, remaining: int, checkpoints: np.ndarray, loads: np.ndarray
    ) -> None:
        self.base = np.append(self.base, base)
        self.remaining = np.append(self.remaining, remaining)
        self.checkpoints, self.loads = checkpoints, loads


def future_kv(view: ReplicaView, plan: Plan, name: str, kv_fraction: float) -> FutureKv:
    """The predicted KV profile of the running requests of ``plan``."""
    running = plan.running
    base = view.prompt_tokens[running] + view.emitted_tokens[running] - 1
    remaining = predicted_remaining(view, running, name)
    kv = view.kv
    return FutureKv(base, remaining, kv, kv.watermark_blocks(kv_fraction))


def admit_in_order(
    view: ReplicaView,
    plan: Plan,
    candidates: Sequence[int],
    remaining: Sequence[int],
    future: FutureKv,
) -> tuple[list[int], list[int], list[int]]:
    """Admit ``candidates`` in order while every check holds; stop at the first
    that fails. ``remaining[k]`` is the predicted remaining output of
    ``candidates[k]``; ``future`` the predicted KV profile it must fit (it is
    extended with each admitted request). Returns ids, first chunks and the
    predicted remaining outputs of the admitted requests."""
    limits = view.limits
    kv = view.kv
    ids: list[int] = []
    chunks: list[int] = []
    keys: list[int] = []
    seqs, used, budget = len(plan.running), plan.used, plan.budget_left
    for w, r in zip(candidates, remaining, strict=True):
        w, r = int(w), int(r)
        if seqs >= limits.max_num_seqs or budget == 0:
            break
        c = first_chunk(view, w, budget)
        grow = kv.blocks(c)
        if used + grow > kv.capacity_blocks:
            break
        base = int(view.prompt_tokens[w] + view.emitted_tokens[w]) - 1
        ok, checkpoints, loads = future.fits(base, r)
        if not ok:
            if not ids and len(plan.running) == 0:
                # an idle replica admits the head alone: it fits by itself
                # (the engine checks every true peak), whatever its prediction
                ids, chunks, keys = [w], [c], [r]
            break
        future.add(base, r, checkpoints, loads)
        ids.append(w)
        chunks.append(c)
        keys.append(r)
        seqs, used, budget = seqs + 1, used + grow, budget - c
    return ids, chunks, keys


def admissible_prefix(
    view: ReplicaView, plan: Plan, name: str, kv_fraction: float
) -> tuple[list[int], list[int], list[int]]:
    """Step 3: the longest prefix of the waiting requests (ascending predicted
    remaining output) that passes every check; returns ids, first chunks and the
    predicted remaining outputs of that prefix."""
    key = predicted_remaining(view, view.waiting, name)
    order = np.argsort(key, kind="stable")
    future = future_kv(view, plan, name, kv_fraction)
    return admit_in_order(view, plan, view.waiting[order], key[order], future)


def admission_blocked(view: ReplicaView, plan: Plan) -> bool:
    """True if no request can be admitted before the next event (hold promise)."""
    return (
        len(view.waiting) == 0
        or len(plan.running) >= view.limits.max_num_seqs
        or plan.budget_left == 0
    )


class McSf:
    """Memory-constrained shortest first with a future KV feasibility check."""

    name = "mc-sf"

    def __init__(self, params: McSfParams | None = None) -> None:
        self.params = params or McSfParams()

    def decide(self, view: ReplicaView) -> Batch:
        key = predicted_remaining(view, view.running, self.name)
        plan, victims = shed(view, key)
        if victims:
            return to_batch(view, plan, [], [], victims, hold_ok=False)
        ids, chunks = self._choose(view, plan)
        return to_batch(
            view, plan, ids, chunks, [], hold_ok=admission_blocked(view, plan)
        )

    def _choose(self, view: ReplicaView, plan: Plan) -> tuple[list[int], list[int]]:
        if admission_blocked(view, plan):
            return [], []
        ids, chunks, _ = admissible_prefix(
            view, plan, self.name, self.params.kv_fraction
        )
        return ids, chunks
