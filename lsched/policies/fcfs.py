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
harder as KV grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lsched.policies.base import Batch, ReplicaView


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

    def decide(self, view: ReplicaView) -> Batch:
        limits = view.limits
        running = view.running
        processed = view.processed_tokens[running]
        remaining = view.prefill_target_tokens[running] - processed
        prefilling = remaining > 0
        budget = limits.max_num_batched_tokens
        if not prefilling.any() and len(running) <= budget:
            work = np.ones_like(processed)  # the usual case: every one decodes
        elif self.params.chunked:
            # running in order, each taking min(need, budget left): the cumulative
            # work is min(cumulative need, budget)
            taken = np.minimum(np.cumsum(np.where(prefilling, remaining, 1)), budget)
            work = taken.copy()
            work[1:] -= taken[:-1]
        else:
            work = self._whole_prefills(remaining, budget)
        # blocks held after the iteration by every running request
        used = int((-(-(processed + work) // limits.block_tokens)).sum())
        if used > limits.kv_capacity_blocks:
            plan, victims, used = self._with_preemption(view)
            ids = np.array(list(plan), dtype=np.int64)
            work = np.array(list(plan.values()), dtype=np.int64)
            prefilling = view.prefill_target_tokens[ids] > view.processed_tokens[ids]
            return Batch(
                prefill=ids[prefilling],
                prefill_tokens=work[prefilling],
                decode=ids[~prefilling],
                preempt=np.array(victims, dtype=np.int64),
            )  # vLLM admits nothing in a step that preempted
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
        limits = view.limits
        processed = view.processed_tokens
        target = view.prefill_target_tokens
        budget = limits.max_num_batched_tokens
        running = view.running.tolist()
        held = {r: int(limits.kv_blocks(processed[r])) for r in running}
        used = sum(held.values())
        plan: dict[int, int] = {}
        extra: dict[int, int] = {}
        preempted: list[int] = []
        for r in running:
            if r in preempted:
                continue
            remaining = int(target[r] - processed[r])
            c = 1 if remaining <= 0 else remaining
            if self.params.chunked:
                c = min(c, budget)
            if c == 0 or c > budget:
                continue
            grow = int(limits.kv_blocks(processed[r] + c)) - held[r]
            while used + grow > limits.kv_capacity_blocks:
                victim = next(v for v in reversed(running) if v not in preempted)
                preempted.append(victim)
                used -= held[victim] + extra.pop(victim, 0)
                budget += plan.pop(victim, 0)
                if victim == r:
                    break
            if r in preempted:
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
        for w in view.waiting.tolist():
            if seqs >= limits.max_num_seqs or budget == 0:
                break
            want = int(view.prompt_tokens[w] + view.emitted_tokens[w])
            c = min(want, budget) if self.params.chunked else want
            grow = -(-c // limits.block_tokens)
            if c > budget or used + grow > limits.kv_capacity_blocks:
                break
            admitted.append(w)
            chunks.append(c)
            used += grow
            budget -= c
            seqs += 1
        return admitted, chunks
