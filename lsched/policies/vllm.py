"""``vllm``: vLLM V1's scheduler (one token budget, chunked prefill, recompute).

Source: vllm-project/vllm, ``vllm/v1/core/sched/scheduler.py`` (``Scheduler.schedule``)
with the FCFS and PRIORITY request queues of ``vllm/v1/core/sched/request_queue.py``.

The rule, at every iteration boundary:

1. **One token budget** ``max_num_batched_tokens`` for the whole batch.
2. **Running requests first**, in admission order. Each wants
   ``remaining prefill`` tokens (``target - processed``; 1 for a decode), capped by
   ``long_prefill_token_threshold`` when it is > 0 and by the budget left; a
   request the budget does not reach (0 tokens) keeps its KV and is skipped.
3. **KV shortage: recompute preemption.** Scheduling running request r needs
   ``blocks(processed + c) - blocks(processed)`` new blocks. While they do not fit,
   a victim is preempted (all KV freed, back to the waiting queue; if it was already
   scheduled this step its tokens go back to the budget): the most recently
   admitted running request (``self.running.pop()``), or with ``priority=true`` the
   one with the largest ``(priority, arrival)``. If the victim is r itself, r is
   not scheduled.
4. **Waiting requests**, only if nothing was preempted in this step: while the
   budget is positive and fewer than ``max_num_seqs`` requests are running
   (``len(self.running)``, scheduled this step or not), the head of the waiting
   queue is admitted with a first chunk of ``min(s_i + e_i, threshold, budget
   left)`` tokens if its blocks fit; the first that does not fit stops admission
   (strict head-of-line blocking). The queue is FCFS (arrival order; a preempted
   request goes back to its head, which is also its arrival position since running
   requests always arrived before waiting ones) or, with ``priority=true``, ordered
   by ``(priority, arrival)`` (smaller priority value first).

Where vLLM was silent or does not apply:

- Priority ties: vLLM takes ``max`` over ``(priority, arrival_time)``, which picks
  the earliest-admitted of equal keys; here ties go to the most recently admitted
  (admission index as a third key), the reading "lowest priority, then latest".
- Priorities are read from ``view.priority`` (the instance's ``priority`` column);
  ``priority=true`` on an instance without one raises
  :class:`~lsched.errors.InputError`.

A decode-only batch with no admission and no preemption is *held*: until a
completion, an arrival or the KV limit, the running set, the budget use and so the
batch stay the same, and admission only gets harder as KV grows. For the same reason
it declares ``holds_running_when_idle`` (:mod:`lsched.policies.base`): with nothing
waiting, nothing prefilling and one decode step of every running request fitting,
the rule gives exactly that held batch, and the policy keeps no state.

This module also holds the helpers the other engine policies share
(:func:`running_pass`, :func:`optional_int`, :func:`watermark_blocks`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lsched.checks import check_int, check_optional_int
from lsched.errors import InputError
from lsched.kv import KVBlocks
from lsched.policies.base import (
    Batch,
    LoraGate,
    ReplicaView,
    decode_all,
    gated,
    running_state,
)

# -- helpers shared by the engine policies ---------------------------------------


def optional_int(owner: object, name: str, minimum: int) -> None:
    """Check the ``int | None`` field ``name`` of a frozen params object.

    Raises
    ------
    InputError
        Naming the parameter, if the value is neither ``None`` nor an integer
        ``>= minimum`` (:func:`lsched.checks.check_optional_int`).
    """
    value = check_optional_int(getattr(owner, name), name, minimum)
    object.__setattr__(owner, name, value)


def watermark_blocks(kv: KVBlocks, watermark: float, need: int) -> int:
    """Blocks that must stay free after admitting a request needing ``need``.

    vLLM's ``can_allocate`` keeps ``int(watermark * capacity)`` blocks free; a
    request that could never pass that test (``capacity - need < watermark``) is
    *ignored* (finished unserved) by vLLM. lsched cannot drop requests, so for such
    a request the watermark is waived instead (it only needs ``need`` free blocks).
    """
    mark = kv.watermark_blocks(watermark)
    return mark if kv.capacity_blocks - need >= mark else 0


def running_pass(
    kv: KVBlocks,
    order: Sequence[int],
    want: Callable[[int, int], int],
    grow: Callable[[int, int], int],
    held: dict[int, int],
    victims: Sequence[int],
    budget: int,
) -> tuple[dict[int, int], list[int], int, int]:
    """Schedule running requests one at a time, preempting when KV runs short.

    Parameters
    ----------
    kv
        The replica's block arithmetic (KV capacity in blocks).
    order
        Running requests in the order they are visited.
    want
        ``want(r, budget_left)``: tokens r would process now (0: skip r).
    grow
        ``grow(r, c)``: new blocks r needs to process ``c`` tokens.
    held
        Blocks each running request holds (or has reserved) now.
    victims
        Every running request, first victim first.
    budget
        Token budget available to these requests.

    Returns
    -------
    plan, preempted, used, budget
        Tokens per scheduled request (in visiting order), the preempted requests,
        the blocks used (held plus grown) and the budget left.
    """
    capacity = kv.capacity_blocks
    used = sum(held.values())
    plan: dict[int, int] = {}
    extra: dict[int, int] = {}
    preempted: list[int] = []
    gone: set[int] = set()
    for r in order:
        if r in gone:
            continue
        c = want(r, budget)
        if c <= 0:
            continue
        g = grow(r, c)
        while used + g > capacity:
            victim = next(v for v in victims if v not in gone)
            gone.add(victim)
            preempted.append(victim)
            used -= held[victim] + extra.pop(victim, 0)
            budget += plan.pop(victim, 0)  # vLLM V1 gives the victim's tokens back
            if victim == r:
                break
        if r in gone:
            continue
        plan[r] = c
        extra[r] = g
        used += g
        budget -= c
    return plan, preempted, used, budget


def plan_batch(view: ReplicaView, plan: dict[int, int], preempted: list[int]) -> Batch:
    """A batch from ``{request: tokens}``: prefill chunks where the request is
    still prefilling (or waiting), decode steps otherwise."""
    ids = np.fromiter(plan, dtype=np.int64, count=len(plan))
    work = np.fromiter(plan.values(), dtype=np.int64, count=len(plan))
    running = np.isin(ids, view.running)
    decoding = running & (view.processed_tokens[ids] >= view.prefill_target_tokens[ids])
    return Batch(
        prefill=ids[~decoding],
        prefill_tokens=work[~decoding],
        decode=ids[decoding],
        preempt=np.array(preempted, dtype=np.int64),
    )


# -- the policy ------------------------------------------------------------------


@dataclass(frozen=True)
class VllmParams:
    """Parameters of :class:`Vllm`.

    Attributes
    ----------
    long_prefill_token_threshold
        Largest prefill chunk one request may take per iteration; 0 means no cap
        (vLLM's ``--long-prefill-token-threshold``).
    priority
        Order the waiting queue by the instance's ``priority`` column (smaller
        first, then arrival) and preempt the lowest-priority running request
        (vLLM's ``--scheduling-policy priority``).
    """

    long_prefill_token_threshold: int = 0
    priority: bool = False

    def __post_init__(self) -> None:
        check_int(self.long_prefill_token_threshold, "long_prefill_token_threshold", 0)
        if not isinstance(self.priority, bool):
            raise InputError(
                f"got {self.priority!r}; expected true or false", field="priority"
            )


class Vllm:
    """vLLM V1: running first, then waiting, one budget, recompute preemption."""

    def __init__(self, params: VllmParams | None = None) -> None:
        self.params = params or VllmParams()

    @property
    def holds_running_when_idle(self) -> bool:
        """The standing decision of :mod:`lsched.policies.base` (not inherited: a
        subclass may admit or hold differently)."""
        return type(self) is Vllm

    def decide(self, view: ReplicaView) -> Batch:
        limits = view.limits
        budget = limits.max_num_batched_tokens
        priority = self._priority(view) if self.params.priority else None
        running = view.running
        processed = view.processed_tokens[running]
        target = view.prefill_target_tokens[running]
        if len(running) <= budget and (processed >= target).all():
            batch = decode_all(
                view,
                running,
                processed,
                budget,
                lambda *args: self._admit(view, priority, *args),
            )
            if batch is not None:
                return batch
        else:
            batch = self._without_preemption(view, priority, processed, target)
            if batch is not None:
                return batch
        plan, preempted, used, left = self._running(view, priority)
        if preempted:
            return plan_batch(view, plan, preempted)  # V1 admits nothing then
        new, chunks = self._admit(view, priority, len(running), used, left)
        batch = plan_batch(view, plan | dict(zip(new, chunks, strict=True)), [])
        if len(batch.prefill) == 0:
            return Batch(decode=batch.decode, hold=True)
        return batch

    def _without_preemption(
        self,
        view: ReplicaView,
        priority: np.ndarray | None,
        processed: np.ndarray,
        target: np.ndarray,
    ) -> Batch | None:
        """Steps 2-4 at once when every running request's share fits in KV (None
        when it does not: then :meth:`_running` goes one request at a time).

        Without a preemption each running request takes ``min(want, budget left)``
        in order, so the cumulative tokens are ``min(cumsum(want), budget)``; KV
        only grows along the way, so if the total fits, every step fit.
        """
        limits = view.limits
        budget = limits.max_num_batched_tokens
        running = view.running
        remaining = target - processed
        prefilling = remaining > 0
        want = np.where(prefilling, remaining, 1)
        threshold = self.params.long_prefill_token_threshold
        if threshold > 0:
            want = np.minimum(want, threshold)
        taken = np.minimum(np.cumsum(want), budget)
        work = taken.copy()
        work[1:] -= taken[:-1]
        # blocks held after the iteration by every running request
        kv = view.kv
        used = int(kv.blocks(processed + work).sum())
        if used > kv.capacity_blocks:
            return None
        left = budget - (int(taken[-1]) if len(taken) else 0)
        new, chunks = self._admit(view, priority, len(running), used, left)
        scheduled = work > 0
        chunked = scheduled & prefilling
        decode = running[scheduled & ~prefilling]
        if not new and not chunked.any():
            return Batch(decode=decode, hold=True)
        return Batch(
            prefill=np.concatenate([running[chunked], np.array(new, np.int64)]),
            prefill_tokens=np.concatenate([work[chunked], np.array(chunks, np.int64)]),
            decode=decode,
        )

    def _priority(self, view: ReplicaView) -> np.ndarray:
        values = view.priority
        if values is None:
            raise InputError(
                "vllm:priority=true needs each request's priority (the instance's "
                "priority column), and this replica view has none",
                field="priority",
            )
        return np.asarray(values)

    def _chunk(self, need: int, budget: int) -> int:
        threshold = self.params.long_prefill_token_threshold
        if 0 < threshold < need:
            need = threshold
        return min(need, budget)

    def _running(
        self, view: ReplicaView, priority: np.ndarray | None
    ) -> tuple[dict[int, int], list[int], int, int]:
        """Steps 2-3, one request at a time."""
        limits = view.limits
        kv = view.kv
        running, processed, need, held = running_state(view)
        if priority is None:
            victims = running[::-1]
        else:
            rank = {r: k for k, r in enumerate(running)}
            victims = sorted(
                running,
                key=lambda r: (int(priority[r]), float(view.arrival_s[r]), rank[r]),
                reverse=True,
            )

        def want(r: int, budget: int) -> int:
            return self._chunk(max(need[r], 1), budget)

        def grow(r: int, c: int) -> int:
            return kv.blocks(processed[r] + c) - held[r]

        return running_pass(
            kv,
            running,
            want,
            grow,
            held,
            victims,
            limits.max_num_batched_tokens,
        )

    def _admit(
        self,
        view: ReplicaView,
        priority: np.ndarray | None,
        seqs: int,
        used: int,
        budget: int,
    ) -> tuple[list[int], list[int]]:
        """Step 4: admit the head of the waiting queue while it fits."""
        limits = view.limits
        admitted: list[int] = []
        chunks: list[int] = []
        # each admission takes a sequence and at least one token of the budget:
        # only the head of the queue can be reached
        room = min(limits.max_num_seqs - seqs, budget)
        if room <= 0 or len(view.waiting) == 0:
            return admitted, chunks
        gate = LoraGate.of(view)
        if priority is None:
            waiting = gated(view, gate, room)
        else:
            waiting = view.waiting.tolist()
            waiting.sort(key=lambda w: (int(priority[w]), float(view.arrival_s[w]), w))
        prompt, emitted = view.prompt_tokens, view.emitted_tokens
        kv = view.kv
        capacity = kv.capacity_blocks
        for w in waiting:
            if seqs >= limits.max_num_seqs or budget <= 0:
                break
            if gate is not None and not gate.allows(w):
                continue
            c = self._chunk(int(prompt[w] + emitted[w]), budget)
            grow = kv.blocks(c)
            if used + grow > capacity:
                break
            if gate is not None:
                gate.add(w)
            admitted.append(w)
            chunks.append(c)
            used += grow
            budget -= c
            seqs += 1
        return admitted, chunks
