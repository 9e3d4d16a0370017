"""``fcfs``: first-come-first-served continuous batching, vLLM-like.

The rule, at every iteration boundary (after vLLM V1's scheduler, simplified):

1. **Running first**, in admission order. A request still prefilling gets a chunk
   ``min(remaining prefill, token budget left)`` (the whole remainder when
   ``chunked=False``, or nothing if it does not fit); a request past its prefill
   gets one decode step while budget is left. Running requests the budget does not
   reach this iteration keep their KV and wait.
2. **KV check with recompute preemption.** Scheduling request r needs
   ``blocks(processed + work) - blocks(processed)`` new blocks. While they do not
   fit, the most recently admitted running request is preempted (all its KV freed,
   back to the waiting queue, its work this iteration cancelled); if that is r
   itself, r is not scheduled.
3. **Admission in arrival order**, only if nothing was preempted in this step:
   the head of the waiting queue is admitted with a first chunk of
   ``min(s_i + e_i, budget left)`` tokens (the whole ``s_i + e_i`` when not
   chunked) while the sequence cap, the token budget and the KV blocks allow.
   Strict head-of-line blocking: the first request that does not fit stops
   admission.

Since admission is in arrival order, every running request arrived before every
waiting one, so "newest admitted" is also "latest arrived" among the running.

A decode-only batch with no admission and no preemption is *held*
(:mod:`lsched.policies.base`): until a completion, an arrival or the KV limit, the
running set, the budget use and so the batch stay the same, and admission only gets
harder as KV grows. For the same reason it declares ``holds_running_when_idle``
(:mod:`lsched.policies.base`): with nothing waiting, nothing prefilling and one
decode step of every running request fitting, the rule above gives exactly that
held batch, and the policy keeps no state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lsched.policies.base import (
    Batch,
    LoraGate,
    ReplicaView,
    decode_all,
    gated,
    running_state,
)


@dataclass(frozen=True)
class FcfsParams:
    """Parameters of :class:`Fcfs`.

    Attributes
    ----------
    chunked
        Allow chunked prefill (a prompt split over iterations by the token
        budget). Without it a prompt longer than ``max_num_batched_tokens`` can
        never run.
    """

    chunked: bool = True


class Fcfs:
    """FCFS continuous batching with recompute preemption of the newest request."""

    def __init__(self, params: FcfsParams | None = None) -> None:
        self.params = params or FcfsParams()

    @property
    def holds_running_when_idle(self) -> bool:
        """The standing decision of :mod:`lsched.policies.base` (not inherited: a
        subclass may admit or hold differently)."""
        return type(self) is Fcfs

    def decide(self, view: ReplicaView) -> Batch:
        limits = view.limits
        running = view.running
        budget = limits.max_num_batched_tokens
        processed = view.processed_tokens[running]
        target = view.prefill_target_tokens[running]
        if len(running) <= budget and (processed >= target).all():
            batch = decode_all(
                view,
                running,
                processed,
                budget,
                lambda *args: self._admit(view, *args),
            )
            return self._preempting(view) if batch is None else batch
        remaining = target - processed
        prefilling = remaining > 0
        if self.params.chunked:
            # running in order, each taking min(need, budget left): the cumulative
            # work is min(cumulative need, budget)
            taken = np.minimum(np.cumsum(np.where(prefilling, remaining, 1)), budget)
            work = taken.copy()
            work[1:] -= taken[:-1]
        else:
            work = self._whole_prefills(remaining, budget)
        # blocks held after the iteration by every running request
        kv = view.kv
        used = int(kv.blocks(processed + work).sum())
        if used > kv.capacity_blocks:
            return self._preempting(view)
        scheduled = work > 0
        if not scheduled.all():
            running, work, prefilling = (
                running[scheduled],
                work[scheduled],
                prefilling[scheduled],
            )
        new, chunks = self._admit(view, len(running), used, budget - int(work.sum()))
        if not prefilling.any() and not new:
            return Batch(decode=running, hold=True)
        return Batch(
            prefill=np.concatenate([running[prefilling], np.array(new, np.int64)]),
            prefill_tokens=np.concatenate(
                [work[prefilling], np.array(chunks, np.int64)]
            ),
            decode=running[~prefilling],
        )

    def _preempting(self, view: ReplicaView) -> Batch:
        """The batch when KV runs short: step 2, and no admission."""
        plan, victims, _ = self._with_preemption(view)
        ids = np.array(list(plan), dtype=np.int64)
        work = np.array(list(plan.values()), dtype=np.int64)
        prefilling = view.prefill_target_tokens[ids] > view.processed_tokens[ids]
        return Batch(
            prefill=ids[prefilling],
            prefill_tokens=work[prefilling],
            decode=ids[~prefilling],
            preempt=np.array(victims, dtype=np.int64),
        )  # vLLM admits nothing in a step that preempted

    @staticmethod
    def _whole_prefills(remaining: np.ndarray, budget: int) -> np.ndarray:
        """Work per running request when a prefill may not be split."""
        work = np.zeros_like(remaining)
        for k, r in enumerate(remaining.tolist()):
            need = r if r > 0 else 1
            if need <= budget:
                work[k] = need
                budget -= need
            elif r <= 0:  # a decode step: nothing later fits either
                break
        return work

    def _with_preemption(
        self, view: ReplicaView
    ) -> tuple[dict[int, int], list[int], int]:
        """Step 2 of the rule, one request at a time (only when KV runs short)."""
        kv = view.kv
        capacity = kv.capacity_blocks
        budget = view.limits.max_num_batched_tokens
        running, processed, need, held = running_state(view)
        used = sum(held.values())
        plan: dict[int, int] = {}
        extra: dict[int, int] = {}
        preempted: list[int] = []
        gone: set[int] = set()
        for r in running:
            if r in gone:
                continue
            remaining = need[r]
            c = 1 if remaining <= 0 else remaining
            if self.params.chunked:
                c = min(c, budget)
            if c == 0 or c > budget:
                continue
            grow = kv.blocks(processed[r] + c) - held[r]
            while used + grow > capacity:
                victim = next(v for v in reversed(running) if v not in gone)
                preempted.append(victim)
                gone.add(victim)
                used -= held[victim] + extra.pop(victim, 0)
                budget += plan.pop(victim, 0)
                if victim == r:
                    break
            if r in gone:
                continue
            plan[r] = c
            extra[r] = grow
            used += grow
            budget -= c
        return plan, preempted, used

    def _admit(
        self, view: ReplicaView, seqs: int, used: int, budget: int
    ) -> tuple[list[int], list[int]]:
        """Step 3: admit the head of the waiting queue while it fits."""
        limits = view.limits
        admitted: list[int] = []
        chunks: list[int] = []
        # each admission takes a sequence and at least one token of the budget:
        # only the head of the queue can be reached
        room = min(limits.max_num_seqs - seqs, budget)
        if room <= 0 or len(view.waiting) == 0:
            return admitted, chunks
        prompt, emitted = view.prompt_tokens, view.emitted_tokens
        kv = view.kv
        capacity = kv.capacity_blocks
        chunked = self.params.chunked
        gate = LoraGate.of(view)
        for w in gated(view, gate, room):
            if budget == 0 or len(admitted) >= room:
                break
            if gate is not None and not gate.allows(w):
                continue
            want = int(prompt[w] + emitted[w])
            c = min(want, budget) if chunked else want
            grow = kv.blocks(c)
            if c > budget or used + grow > capacity:
                break
            if gate is not None:
                gate.add(w)
            admitted.append(w)
            chunks.append(c)
            used += grow
            budget -= c
        return admitted, chunks
