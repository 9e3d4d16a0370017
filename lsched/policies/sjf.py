"""``sjf`` and ``srpt``: shortest predicted output first, without and with preemption.

Both rank requests by their **predicted remaining output** ``r_i = max(pred_i -
e_i, 1)`` (``pred_i`` the predicted output length, ``e_i`` the tokens emitted so
far; a request that outlived its prediction counts as one token from the end),
ties by arrival order. They are the classical SPT and SRPT rules of single-machine
scheduling (Smith 1956; Schrage 1968, "A proof of the optimality of the shortest
remaining processing time discipline", Oper. Res. 16(3)) carried over to
continuous batching with predicted lengths, as in the length-aware schedulers of
the LLM-serving literature (e.g. Qiu et al. 2024, "Efficient interactive LLM
serving with proxy model-based sequence length prediction"; Fu et al. 2024,
"Efficient LLM scheduling by learning to rank"). The rules below are this
project's exact reading; the literature fixes only the priority order.

At every iteration boundary:

1. **Running requests**, in admission order, as in :mod:`~lsched.policies.fcfs`: a
   request still prefilling gets a chunk ``min(remaining prefill, token budget
   left)``, a decoding one one step while budget is left (chunked prefill by the
   token budget); running requests the budget does not reach keep their KV.
2. **KV shortage.** While the KV blocks held after this plan exceed the capacity,
   recompute-preempt the running request with the *longest* predicted remaining
   output (ties: the most recently admitted) and re-plan step 1 without it. A
   step that preempted here admits nothing (as vLLM).
3. **Admission**, waiting requests in ascending ``r_i``, each with a first chunk of
   ``min(s_i + e_i, budget left)`` tokens while the sequence cap, the budget and the
   KV blocks allow; the first that does not fit stops admission (head-of-line
   blocking in the predicted order).

   ``srpt`` only: when that first request ``w`` does not fit because of the KV
   blocks or the sequence cap (not the token budget, and only when budget is
   left), running requests with a *strictly longer* predicted remaining output
   than ``r_w`` are recompute-preempted, longest first (ties: most recently
   admitted), until ``w`` fits; ``w`` is then admitted and admission goes on with
   the next waiting request. If preempting all of them would not make ``w`` fit,
   none is preempted and admission stops. ``sjf`` never preempts for admission.

Holding (:mod:`~lsched.policies.base`): a decode-only batch that neither admits
nor preempts is held. Until a completion, an arrival or the KV limit the running
set, their order and the budget use stay the same; KV held only grows, so the
head of the waiting queue fits no better; and running requests' ``r_i`` only
shrink, so ``srpt`` finds no more victims (nor victims holding more of the KV
that is not theirs). The policy keeps no state between calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lsched.errors import InputError
from lsched.policies.base import Batch, ReplicaView

IntArray = npt.NDArray[np.int64]

#: How to give predictions, on the command line and in Python.
HOW_TO_PREDICT = (
    "give predictions: --predictor oracle (or noise:sigma=0.5, ...) on the command "
    "line, lsched.predictors.oracle(instance) in Python"
)
_NO_PREDICTIONS = (
    "policy {name!r} ranks requests by predicted output length but the instance "
    "has none; " + HOW_TO_PREDICT
)


def predicted_remaining(view: ReplicaView, ids: IntArray, name: str) -> IntArray:
    """``max(pred_i - e_i, 1)`` for ``ids``: predicted output tokens still to emit.

    Raises
    ------
    InputError
        If the instance carries no predictions.
    """
    pred = view.predicted_output_tokens
    if pred is None:
        raise InputError(
            _NO_PREDICTIONS.format(name=name), field="predicted_output_tokens"
        )
    return np.maximum(pred[ids] - view.emitted_tokens[ids], 1)


@dataclass
class Plan:
    """A running set and its work for the next iteration (step 1 of the rule).

    ``work[k]`` is the chunk or decode step of ``running[k]`` (0: not reached by
    the budget); ``used`` the KV blocks all of them hold after the iteration.
    """

    running: IntArray
    work: IntArray
    used: int
    budget_left: int

    @classmethod
    def of(cls, view: ReplicaView, running: IntArray) -> Plan:
        limits = view.limits
        processed = view.processed_tokens[running]
        remaining = view.prefill_target_tokens[running] - processed
        need = np.where(remaining > 0, remaining, 1)
        # each in order takes min(need, budget left): the cumulative work is
        # min(cumulative need, budget)
        taken = np.minimum(np.cumsum(need), limits.max_num_batched_tokens)
        work = taken.copy()
        work[1:] -= taken[:-1]
        used = int(view.kv.blocks(processed + work).sum())
        left = limits.max_num_batched_tokens - (int(taken[-1]) if len(taken) else 0)
        return cls(running, work, used, left)

    def blocks_of(self, view: ReplicaView, k: int) -> int:
        """KV blocks that ``running[k]`` holds after the planned iteration."""
        after = view.processed_tokens[self.running[k]] + self.work[k]
        return int(view.kv.blocks(after))


def shed(view: ReplicaView, key: IntArray) -> tuple[Plan, list[int]]:
    """Step 2: plan the running requests, preempting the largest ``key`` (ties: the
    most recently admitted) while the plan's KV exceeds the capacity.

    ``key`` is indexed like ``view.running``. A single running request always
    fits (the engine checks every peak), so some request is always kept.
    """
    running = view.running
    plan = Plan.of(view, running)
    victims: list[int] = []
    capacity = view.kv.capacity_blocks
    while plan.used > capacity:
        keys = key[np.isin(view.running, plan.running)]
        # argmax over the reversed order picks the most recently admitted on ties
        k = len(keys) - 1 - int(np.argmax(keys[::-1]))
        victims.append(int(plan.running[k]))
        plan = Plan.of(view, np.delete(plan.running, k))
    return plan, victims


def to_batch(
    view: ReplicaView,
    plan: Plan,
    admitted: list[int],
    chunks: list[int],
    preempt: list[int],
    *,
    hold_ok: bool,
) -> Batch:
    """Assemble the batch; hold when decode-only, nothing admitted or preempted
    and the caller's promise (``hold_ok``) holds."""
    scheduled = plan.work > 0
    ids, work = plan.running[scheduled], plan.work[scheduled]
    prefilling = view.prefill_target_tokens[ids] > view.processed_tokens[ids]
    if not prefilling.any() and not admitted and not preempt:
        return Batch(decode=ids, hold=hold_ok)
    return Batch(
        prefill=np.concatenate([ids[prefilling], np.array(admitted, np.int64)]),
        prefill_tokens=np.concatenate([work[prefilling], np.array(chunks, np.int64)]),
        decode=ids[~prefilling],
        preempt=np.array(preempt, dtype=np.int64),
    )


def first_chunk(view: ReplicaView, w: int, budget_left: int) -> int:
    """Tokens of ``w``'s first prefill chunk: ``min(s + e, budget left)``."""
    return min(int(view.prompt_tokens[w] + view.emitted_tokens[w]), budget_left)


def by_key(waiting: IntArray, key: IntArray) -> IntArray:
    """``waiting`` (arrival order) sorted by ``key`` ascending, ties by arrival."""
    return waiting[np.argsort(key, kind="stable")]


@dataclass(frozen=True)
class SjfParams:
    """Parameters of :class:`Sjf` (none)."""


@dataclass(frozen=True)
class SrptParams:
    """Parameters of :class:`Srpt` (none)."""


class Sjf:
    """Shortest predicted remaining output first, non-preemptive admission."""

    name = "sjf"

    def __init__(self, params: SjfParams | None = None) -> None:
        self.params = params or SjfParams()

    def decide(self, view: ReplicaView) -> Batch:
        key = predicted_remaining(view, view.running, self.name)
        plan, victims = shed(view, key)
        if victims:
            return to_batch(view, plan, [], [], victims, hold_ok=False)
        admitted, chunks, preempt = self._admit(view, plan)
        return to_batch(view, plan, admitted, chunks, preempt, hold_ok=True)

    def _admit(
        self, view: ReplicaView, plan: Plan
    ) -> tuple[list[int], list[int], list[int]]:
        """Step 3 without preemption (returns admitted, chunks, no victims)."""
        limits = view.limits
        admitted: list[int] = []
        chunks: list[int] = []
        if len(view.waiting) == 0:
            return admitted, chunks, []
        order = by_key(view.waiting, predicted_remaining(view, view.waiting, self.name))
        kv = view.kv
        seqs, used, budget = len(plan.running), plan.used, plan.budget_left
        for w in order.tolist():
            if seqs >= limits.max_num_seqs or budget == 0:
                break
            c = first_chunk(view, w, budget)
            grow = kv.blocks(c)
            if used + grow > kv.capacity_blocks:
                break
            admitted.append(w)
            chunks.append(c)
            seqs, used, budget = seqs + 1, used + grow, budget - c
        return admitted, chunks, []


class Srpt(Sjf):
    """Shortest predicted remaining output first, preempting longer running ones."""

    name = "srpt"

    def __init__(self, params: SrptParams | None = None) -> None:
        self.params = params or SrptParams()

    def _admit(
        self, view: ReplicaView, plan: Plan
    ) -> tuple[list[int], list[int], list[int]]:
        """Step 3 with preemption of strictly longer running requests."""
        limits = view.limits
        kv = view.kv
        capacity = kv.capacity_blocks
        admitted: list[int] = []
        chunks: list[int] = []
        victims: list[int] = []
        if len(view.waiting) == 0:
            return admitted, chunks, victims
        wkey = predicted_remaining(view, view.waiting, self.name)
        order = by_key(view.waiting, wkey)
        key = dict(zip(view.waiting.tolist(), wkey.tolist(), strict=True))
        kept = plan.running.tolist()
        rkey = predicted_remaining(view, plan.running, self.name).tolist()
        key.update(zip(kept, rkey, strict=True))
        # what preempting a running request gives back: its blocks and its work
        blocks = {r: plan.blocks_of(view, k) for k, r in enumerate(kept)}
        work = dict(zip(kept, plan.work.tolist(), strict=True))
        seqs, used, budget = len(kept), plan.used, plan.budget_left

        def fits(seqs: int, used: int, budget: int, w: int) -> bool:
            c = first_chunk(view, w, budget)
            return seqs < limits.max_num_seqs and used + kv.blocks(c) <= capacity

        for w in order.tolist():
            if budget == 0:
                break  # the token budget binds: no preemption for it
            chosen: list[int] = []
            if not fits(seqs, used, budget, w):
                # longest first; equal keys: the most recently admitted first
                # (a stable sort of the reversed admission order)
                longer = sorted(
                    (r for r in reversed(kept) if key[r] > key[w]),
                    key=lambda r: -key[r],
                )
                t_seqs, t_used, t_budget = seqs, used, budget
                for v in longer:
                    chosen.append(v)
                    t_seqs, t_used = t_seqs - 1, t_used - blocks[v]
                    t_budget += work[v]
                    if fits(t_seqs, t_used, t_budget, w):
                        break
                else:
                    break  # even all of them would not make room: stop
                seqs, used, budget = t_seqs, t_used, t_budget
                victims.extend(chosen)
                kept = [r for r in kept if r not in chosen]
            c = first_chunk(view, w, budget)
            admitted.append(w)
            chunks.append(c)
            seqs, used, budget = seqs + 1, used + kv.blocks(c), budget - c
        if victims:
            # every running request got its whole work (budget was left), so the
            # others' work does not change when the victims leave
            keep = ~np.isin(plan.running, victims)
            plan.running, plan.work = plan.running[keep], plan.work[keep]
        return admitted, chunks, victims
