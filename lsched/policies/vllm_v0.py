"""``vllm-v0``: vLLM V0's default scheduler (prefill-first), and DistServe's
colocated-vLLM simulator mode.

Sources: vllm-project/vllm, ``vllm/core/scheduler.py`` (``Scheduler._schedule_default``,
``_schedule_prefills``, ``_schedule_running``) and ``vllm/core/block_manager.py``
(``can_allocate`` with ``watermark_blocks``); LLMServe/DistServe,
``simdistserve/base/worker.py`` (``Worker.run``, ``Worker.has_back_pressure``,
``_enter_prefill``, ``_enter_decodes``) for the colocated mode.

The rule (``kv_limit=true``, vLLM V0), at every iteration boundary:

0. **Back pressure** (only when ``back_pressure_tokens`` is set; default ``None``,
   off): if the context tokens of the decode queue exceed it, step 1 is skipped
   and the iteration decodes (step 2).
1. **Prefill first.** Walk the waiting queue in arrival order (a preempted request
   goes back to its head, which is its arrival position). Request w is taken with
   its whole prompt ``s_w + e_w`` while the prefill token budget
   (``min(prefill_token_budget, max_num_batched_tokens)``) covers it, fewer than
   ``max_num_seqs`` requests would be running (V0 counts the running ones), and its
   blocks fit with ``int(watermark * capacity)`` blocks to spare. The first that
   does not fit stops the walk (no skipping, no chunking). If any was taken, the
   iteration is **prefill-only**.
2. Otherwise **decode**: requests from the head of the decode queue, one step each,
   while the batch holds fewer than ``max_num_seqs`` requests and
   ``max_num_batched_tokens`` tokens and, when ``decode_context_cap`` is set, the
   sum of their context tokens after the step (``processed + 1``) fits the cap.
   When a step needs a block and none is free, the most recently admitted running
   request is preempted (recompute, back to the head of the waiting queue); if that
   is the request itself, it is not scheduled.
3. The decode queue holds the running requests: one that finishes its prefill joins
   its tail; a decode batch taken from its head goes back to its tail in the same
   order (DistServe's ``_exit_decode``). When every running request decodes the
   order does not change.

Swap (``preemption=swap``; the default ``recompute`` is what vLLM V0 does for
single-sequence requests, which every lsched request is; swap is what it does
for beam search and parallel sampling, ``Scheduler._preempt``): the victim of
step 2 is swapped out to the host tier (:mod:`lsched.tiers`) instead, unless the
host tier has no room for it (vLLM then aborts with "lack of CPU swap space";
lsched recomputes it). While a request is on the host, no prompt is prefilled
(``_schedule_default``: prefills only ``if not self.swapped``). A step that
preempted nothing swaps requests back in (``_schedule_swapped``) from the head of
the swapped queue (oldest swap-out first) while they fit with the watermark to
spare (``can_swap_in``; here the block their next step opens is counted too, so
that the step fits) and the batch has room; they decode in that same iteration
and join the decode queue's tail. Swaps are blocking, as in vLLM V0 (the worker
runs ``cache_engine.swap_in/swap_out`` before the forward pass): a victim's blocks
must be free for the step that needed them. The host tier's memory is vLLM's
``--swap-space`` (the profile's or cluster's ``[host]``; 4 GiB per GPU by
default). Asynchronous swap is FastServe's (``fastserve:swap=true``), whose rule
keeps free blocks ahead of need.

DistServe's colocated mode (``kv_limit=false``; with ``prefill_token_budget`` and
``decode_context_cap``, DistServe uses 50000 for the latter): the policy applies no
KV limit at all: no watermark, no KV check on admission, no preemption; the prefill
walk counts only the prefill batch against ``max_num_seqs``
(``prefill_max_batch_size``). The engine still enforces the profile's KV capacity
and raises :class:`~lsched.policies.base.PolicyError` if a batch overflows it:
**raise the profile's capacity** (``profile.replace(kv_capacity_tokens=...)``) to
model DistServe's unbounded memory.

Back pressure is DistServe's (LLMServe/DistServe, ``simdistserve/base/worker.py``,
``Worker.run`` and the property ``Worker.has_back_pressure``)::

    threshold = int(self.decode_max_batch_size * self.decode_back_pressure)
    return sum(r.current_context_len for r in self.decode_queue) > threshold
    ...
    if self.prefill_queue and not self.has_back_pressure:
        yield from self.do_prefill()
    else:
        yield from self.do_decode()

It is checked at the top of every iteration of ``Worker.run``, before the prefill
batch is built. ``decode_back_pressure`` is 0.9 and ``decode_max_batch_size`` is
``10**7`` (the default, and what ``benchmarks/simulate_dist.py`` passes), so
simdistserve's threshold is 9,000,000 tokens. The comparison is strict (``>``): a
count equal to the threshold does not block. ``current_context_len`` is
``prefill_lens + max(0, counter)`` (``simdistserve/base/request.py``): the prompt
plus the decode steps done, which is lsched's ``processed_tokens``. In the colocated
mode (one worker, its own ``next_worker``) no batch is in flight at that check, so
``decode_queue`` holds every request whose prefill has finished and that has not
finished, including those prefilled in the iteration just ended (``_exit_prefill``
appends them before the next check): here, every running request. So the count is
``processed_tokens`` summed over ``view.running``.

A decode batch of every running request, with no preemption, is *held*. Until a
completion, an arrival, the KV limit or, with ``decode_context_cap``, the first
iteration that would leave the batch more context than the cap
(``Batch.hold_context_tokens``), the batch stays the same: every request decodes,
so the queue order does not change; the batch's context after the step grows by
its size every iteration, so the whole batch fits the cap up to that iteration and
not after (a batch of one sets no such event: the head always goes); and the waiting
head cannot start fitting (KV only fills, the budgets are fixed). Back pressure
keeps this true: within a held stretch the count only grows (every decode step
adds a token per running request; only a completion or a preemption, which is
never held, lowers it), so once it blocks prefill it blocks until a completion;
while it does not block, step 1 runs as without it and the waiting head does not
fit, as above, whether or not the count crosses the threshold during the stretch.

Per-decision work
-----------------
A call costs work in proportion to what it decides and to what changed since the
last call, not to the running set:

- The decode queue is a deque of ``(id, stamp)`` entries. The requests of a
  prefill batch join its tail at the next call, each with a fresh stamp (every
  running request was admitted by this policy's own prefill batches, which the
  engine runs before calling it again). A request leaves it lazily, when its entry
  reaches the head: a preempted one has its stamp withdrawn when it is preempted
  (so after a readmission its old entry is stale and it is never queued twice), a
  finished one holds no KV (``processed_tokens`` is 0 past the prefill only when
  done).
- The KV blocks and context tokens held are the view's running totals
  (``ReplicaView.kv_blocks_held``, ``kv_tokens_held``), the victims of preemption
  the last ids of ``view.running``, and the waiting queue is walked one request at
  a time.

Where the sources were silent or do not apply:

- V0 *ignores* (finishes unserved) a prompt over the token budget or a request that
  could never pass the watermark test; lsched cannot drop requests. The watermark
  is waived for the latter (:func:`lsched.policies.vllm.watermark_blocks`); the
  former can never be prefilled, so the policy decodes instead and stalls (a
  PolicyError from the engine) once nothing else can run.
- DistServe loops on an empty prefill batch when the head prompt exceeds the
  prefill budget; here the policy decodes instead, as above.
- DistServe stops a decode batch at the first request over the context cap, which
  can leave it empty; here the head of the decode queue always decodes.
- vLLM V0 has no back pressure; ``back_pressure_tokens`` applies in either mode
  (with ``kv_limit=true`` a recomputed request counts its ``s + e`` tokens once
  readmitted, as it holds them; DistServe never preempts).
- V0 asserts ``max_num_batched_tokens >= max_num_seqs`` so all running requests
  decode together; lsched's profiles need not, and the decode queue then rotates as
  DistServe's does.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from lsched.errors import InputError
from lsched.policies.base import Batch, ReplicaView
from lsched.policies.vllm import optional_int, watermark_blocks


@dataclass(frozen=True)
class VllmV0Params:
    """Parameters of :class:`VllmV0`.

    Attributes
    ----------
    watermark
        Fraction of KV blocks a prefill admission must leave free (vLLM V0's
        ``watermark``, default 0.01). Unused when ``kv_limit`` is false.
    kv_limit
        Apply vLLM's KV checks and preemption; false gives DistServe's colocated
        simulator, which has no memory limit (raise the profile's capacity).
    prefill_token_budget
        Prompt tokens per prefill iteration (DistServe's ``prefill_max_tokens``);
        ``None``: the profile's ``max_num_batched_tokens`` (which also caps it).
    decode_context_cap
        Cap on the context tokens of a decode batch (DistServe's
        ``decode_max_tokens``, 50000 in its colocated runs); ``None``: no cap.
    back_pressure_tokens
        DistServe's back pressure: no prefill while the running requests' context
        tokens (``processed_tokens`` summed) exceed this (strictly); they decode
        instead. simdistserve uses 9,000,000 (``Worker.has_back_pressure``);
        ``None`` (default): off.
    preemption
        ``recompute`` (default, vLLM V0 for single sequences) or ``swap`` (to the
        host tier, blocking; see the module docstring).
    """

    watermark: float = 0.01
    kv_limit: bool = True
    prefill_token_budget: int | None = None
    decode_context_cap: int | None = None
    back_pressure_tokens: int | None = None
    preemption: str = "recompute"

    @property
    def swaps(self) -> bool:
        """Whether the policy may swap to the host tier."""
        return self.preemption == "swap"

    def __post_init__(self) -> None:
        if self.preemption not in ("recompute", "swap"):
            raise InputError(
                f"got {self.preemption!r}; expected recompute or swap",
                field="preemption",
            )

        if isinstance(self.watermark, bool) or not 0.0 <= self.watermark < 1.0:
            raise InputError(
                f"got {self.watermark!r}; expected a number in [0, 1)",
                field="watermark",
            )
        if not isinstance(self.kv_limit, bool):
            raise InputError(
                f"got {self.kv_limit!r}; expected true or false", field="kv_limit"
            )
        optional_int(self, "prefill_token_budget", 1)
        optional_int(self, "decode_context_cap", 1)
        optional_int(self, "back_pressure_tokens", 1)


class VllmV0:
    """vLLM V0 prefill-first scheduling (or DistServe's colocated simulator)."""

    def __init__(self, params: VllmV0Params | None = None) -> None:
        self.params = params or VllmV0Params()
        # the decode queue: (id, stamp) entries, live while the request runs on
        # the admission that stamped it (module docstring, "Per-decision work")
        self._queue: deque[tuple[int, int]] = deque()
        self._stamp: dict[int, int] = {}  # queued id -> stamp of its admission
        self._stamps = 0  # stamps handed out
        self._admitted: list[int] = []  # the last prefill batch: joins next call
        self._returned = 0  # the last decode batch, at the queue's tail

    def decide(self, view: ReplicaView) -> Batch:
        self._join()
        on_host = len(view.swapped) > 0  # V0 prefills only with none swapped
        new = [] if on_host or self._back_pressure(view) else self._prefills(view)
        if new:
            self._admitted = new
            self._returned = 0
            return Batch(
                prefill=np.array(new, dtype=np.int64),
                prefill_tokens=view.prompt_tokens[new] + view.emitted_tokens[new],
            )
        return self._decodes(view)

    def _join(self) -> None:
        """Step 3: the requests of the last prefill batch join the tail, in
        admission order (one that finished in that iteration is dropped later)."""
        for r in self._admitted:
            self._stamps += 1
            self._stamp[r] = self._stamps
            self._queue.append((r, self._stamps))
        self._admitted = []

    def _enqueue(self, ids: list[int]) -> None:
        """``ids`` join the decode queue's tail, each with a fresh stamp."""
        for r in ids:
            self._stamps += 1
            self._stamp[r] = self._stamps
            self._queue.append((r, self._stamps))

    def adopt(self, ids: list[int]) -> None:
        """Requests that arrived prefilled (on a decode replica of a disaggregated
        cluster, :mod:`lsched.evaluator.disagg`) join the decode queue ahead of
        the decode batch that ran while they arrived: DistServe's decode worker
        appends an arrival to its queue at once, and the batch in flight goes
        back at its end (``forward_decode``, ``_exit_decode``)."""
        back = [self._queue.pop() for _ in range(self._returned)]
        self._enqueue(ids)
        self._queue.extend(reversed(back))

    def _back_pressure(self, view: ReplicaView) -> bool:
        """Step 0: the decode queue's context tokens exceed the threshold."""
        threshold = self.params.back_pressure_tokens
        return threshold is not None and view.kv_tokens_held > threshold

    def _prefills(self, view: ReplicaView) -> list[int]:
        """Step 1: whole prompts from the head of the waiting queue."""
        limits = view.limits
        p = self.params
        budget = limits.max_num_batched_tokens
        if p.prefill_token_budget is not None:
            budget = min(budget, p.prefill_token_budget)
        seqs = len(view.running) if p.kv_limit else 0
        kv = view.kv
        used = -1  # blocks held, read when first needed
        taken: list[int] = []
        for w in view.waiting:  # one at a time: the walk stops early
            w = int(w)
            c = int(view.prompt_tokens[w] + view.emitted_tokens[w])
            if c > budget or seqs >= limits.max_num_seqs:
                break
            if p.kv_limit:
                if used < 0:
                    used = view.kv_blocks_held
                need = kv.blocks(c)
                spare = watermark_blocks(kv, p.watermark, need)
                if kv.capacity_blocks - used - need < spare:
                    break
                used += need
            taken.append(w)
            budget -= c
            seqs += 1
        return taken

    def _decodes(self, view: ReplicaView) -> Batch:
        """Steps 2-3: a decode batch from the head of the decode queue."""
        limits = view.limits
        p = self.params
        processed = view.processed_tokens
        running = view.running
        seq_cap = min(limits.max_num_seqs, limits.max_num_batched_tokens)
        cap = p.decode_context_cap
        kv = view.kv
        capacity = kv.capacity_blocks
        used = view.kv_blocks_held if p.kv_limit else 0
        queue, stamp = self._queue, self._stamp
        batch: list[tuple[int, int]] = []  # queue entries
        grown: dict[int, int] = {}
        preempted: list[int] = []
        swapped_out: list[int] = []
        host_free = view.host_capacity_blocks - view.host_used_blocks
        context = 0
        while queue and len(batch) < seq_cap:
            r, s = queue[0]
            if stamp.get(r) != s:  # preempted (here or before): its entry is stale
                queue.popleft()
                continue
            before = int(processed[r])
            if before == 0:  # finished: it holds no KV
                queue.popleft()
                del stamp[r]
                continue
            after = before + 1
            # DistServe stops at the first request over the cap; the head always goes
            if cap is not None and batch and context + after > cap:
                break
            queue.popleft()
            if p.kv_limit:
                g = kv.blocks(after) - kv.blocks(before)
                while used + g > capacity:
                    # V0: running_queue.pop(), the most recently admitted; the
                    # victims so far are the last ones of view.running
                    victim = int(running[len(running) - 1 - len(preempted)])
                    preempted.append(victim)
                    victim_blocks = kv.blocks(int(processed[victim]))
                    if p.preemption == "swap" and victim_blocks <= host_free:
                        swapped_out.append(victim)
                        host_free -= victim_blocks
                    entry = (victim, stamp.pop(victim))
                    g_victim = grown.pop(victim, None)
                    used -= kv.blocks(int(processed[victim])) + (g_victim or 0)
                    if g_victim is not None:  # in the batch: it leaves it
                        batch.remove(entry)
                        context -= int(processed[victim]) + 1
                    if victim == r:
                        break
                if r not in stamp:
                    continue
                grown[r] = g
                used += g
            batch.append((r, s))
            context += after
        everyone = len(batch) == len(running) and not preempted
        swap_in = [] if preempted else self._swap_ins(view, used, seq_cap - len(batch))
        if not batch and not preempted and not swap_in:
            self._returned = 0
            return Batch()  # nothing runs (the engine idles or reports a stall)
        # the batch goes back to the tail of the queue, in order
        queue.extend(batch)
        self._returned = len(batch)
        # swapped-in requests decode in this iteration, then join the tail
        self._enqueue(swap_in)
        self._returned += len(swap_in)
        recompute = [r for r in preempted if r not in set(swapped_out)]
        return Batch(
            decode=np.array([r for r, _ in batch] + swap_in, dtype=np.int64),
            preempt=np.array(recompute, dtype=np.int64),
            swap_out=np.array(swapped_out, dtype=np.int64),
            swap_in=np.array(swap_in, dtype=np.int64),
            hold=everyone and not swap_in,
            # the cap binds from two requests on (the head always goes)
            hold_context_tokens=cap if cap is not None and len(batch) > 1 else None,
        )

    def _swap_ins(self, view: ReplicaView, used: int, room: int) -> list[int]:
        """Swapped requests from the head that fit beside ``used`` blocks with the
        watermark to spare, their next step included, ``room`` at most."""
        kv = view.kv
        spare = kv.watermark_blocks(self.params.watermark)
        taken: list[int] = []
        for r in view.swapped.tolist():
            if len(taken) >= room:
                break
            after = kv.blocks(int(view.swapped_tokens[r]) + 1)  # with its step
            if kv.capacity_blocks - used - after < spare:
                break
            used += after
            taken.append(r)
        return taken
