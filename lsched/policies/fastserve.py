"""``fastserve``: FastServe's skip-join multi-level feedback queue with preemption.

Source: Wu et al. 2023, "Fast Distributed Inference Serving for Large Language
Models" (FastServe), section 4.1 ("Skip-join MLFQ"): ``K`` queues with quanta that
double from level to level; a new job enters the highest-priority queue whose
quantum covers its first-iteration (prefill) time instead of the top one (skip-
join); a job that uses up its level's quantum is demoted one level; the scheduler
serves the highest non-empty queues first and preempts lower-priority jobs.

Units (this project's reading; the paper measures quanta in seconds). Service is
counted in *decode iterations*: level ``k`` (0 = highest priority) has quantum
``Q_k = base_quantum * 2**k`` iterations; a prefill of ``s_i`` prompt tokens costs
``u_i = ceil(s_i / prefill_tokens_per_unit)`` units (``prefill_tokens_per_unit``
prompt tokens take about as long as one decode iteration). Then, from the view alone
(no state):

- join level ``j_i`` = the smallest ``k`` with ``Q_k >= u_i`` (the last level if
  none);
- attained service ``A_i = u_i + (e_i - 1)`` once the first token is out (``e_i >=
  1``), else 0; a recomputed prefill is not counted again;
- level = start at ``j_i`` with ``A_i``; while not at the last level and the rest is
  ``>= Q_k``, subtract ``Q_k`` and go down one level.

At every iteration boundary, every arrived unfinished request (running or waiting)
is ranked by ``(level, arrival, id)`` and the batch is filled in that order while
fewer than ``max_num_seqs`` are in it and token budget is left: a running request
gets ``min(remaining prefill, budget left)`` tokens or one decode step, a waiting
one a first chunk ``min(s_i + e_i, budget left)``. When its new KV blocks do not
fit, running requests *ranked after it* and not in the batch are recompute-
preempted, lowest-ranked first, until it fits; if preempting all of them would not
make it fit, nothing more is preempted and filling stops. A request preempted in
this step is skipped when its turn comes.

Preemption model: a lower-ranked running request left out of the batch is *paused*
and keeps its KV (FastServe keeps it on the GPU while memory allows); when KV is
short it is preempted by **recompute**.

With ``swap=true``, FastServe's proactive KV management (LLMServe/FastServe
``fastserve/scheduler.py``; ``serving-systems.md``, "Swap and offload") on the
replica's host tier (:mod:`lsched.tiers`), after the batch is planned as above:

- new requests are admitted only while at least 10 % of the host tier is free
  (``host_free_fraction``);
- with ``F`` the free blocks after the planned iteration, it keeps ``R =
  min(max_num_seqs, capacity // 2)`` blocks free (FastServe keeps
  ``max_batch_size`` free blocks, one decode step of a full batch; the half
  keeps the reserve from swallowing the memory where ``max_num_seqs`` is large,
  as on unit slots): while ``F < R`` it swaps out the lowest-ranked running
  request left out of the batch, counting its blocks as free (asynchronously
  they free when its copy ends);
- only requests past their prefill are swapped out (FastServe swaps the KV of
  jobs waiting to decode);
- only when it swapped nothing out, it swaps swapped requests back in, highest
  rank first, while ``F - blocks >= R`` (``blocks``: its KV and its next step's),
  or, when nothing would run, the highest-ranked one if it fits at all (so that
  a swapped request always comes back); with asynchronous copies they run from
  the boundary after their copy, with blocking ones they decode in this
  iteration (as many as the batch limits leave room for);
- copies are asynchronous (``swap_mode=async``, FastServe's own CUDA streams);
  ``swap_mode=blocking`` gives the same rule with vLLM V0's copies, to compare.

Holding (:mod:`~lsched.policies.base`): levels change as requests decode, without
an event, so a decode-only batch is held only when nothing waits and every running
request is in it: until an arrival, a completion or the KV limit the batch is then
all running requests whatever their levels. With ``swap=true`` nothing is held
(the reserve can run out during a stretch, which is no event).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from lsched.checks import check_int
from lsched.errors import InputError
from lsched.policies.base import Batch, IntArray, ReplicaView
from lsched.policies.vllm import plan_batch
from lsched.tiers import check_swap_mode

#: FastServe admits new requests only while this share of host swap space is free.
HOST_FREE_FRACTION = 0.1


@dataclass(frozen=True)
class FastServeParams:
    """Parameters of :class:`FastServe`.

    Attributes
    ----------
    levels
        Number of queues ``K >= 1``.
    base_quantum
        Quantum of the top level, in decode iterations (>= 1); level ``k`` has
        ``base_quantum * 2**k``.
    prefill_tokens_per_unit
        Prompt tokens whose prefill counts as one decode iteration of service
        (>= 1); sets the join level.
    swap
        Swap to the host tier with FastServe's rules (module docstring); false:
        recompute only.
    swap_mode
        ``async`` (FastServe) or ``blocking`` (:data:`lsched.tiers.SWAP_MODES`).
    """

    levels: int = 4
    base_quantum: int = 4
    prefill_tokens_per_unit: int = 256
    swap: bool = False
    swap_mode: str = "async"

    @property
    def swaps(self) -> bool:
        """Whether the policy may swap to the host tier."""
        return self.swap

    def __post_init__(self) -> None:
        if not isinstance(self.swap, bool):
            raise InputError(f"got {self.swap!r}; expected true or false", field="swap")
        check_swap_mode(self.swap_mode)
        check_int(self.levels, "levels", 1)
        check_int(self.base_quantum, "base_quantum", 1)
        check_int(self.prefill_tokens_per_unit, "prefill_tokens_per_unit", 1)


class FastServe:
    """Skip-join MLFQ: highest levels first, pause or recompute lower ones."""

    def __init__(self, params: FastServeParams | None = None) -> None:
        self.params = params or FastServeParams()
        self.swap_mode = self.params.swap_mode  # read by the engine

    def levels(self, view: ReplicaView, ids: IntArray) -> IntArray:
        """The queue level of each request in ``ids`` (0 = highest priority)."""
        p = self.params
        quanta = p.base_quantum * 2 ** np.arange(p.levels, dtype=np.int64)
        units = -(-view.prompt_tokens[ids] // p.prefill_tokens_per_unit)
        join = np.searchsorted(quanta, units, side="left")  # first Q_k >= u
        join = np.minimum(join, p.levels - 1)
        emitted = view.emitted_tokens[ids]
        rest = np.where(emitted >= 1, units + emitted - 1, 0)
        level = join.copy()
        for k in range(p.levels - 1):
            down = (level == k) & (rest >= quanta[k])
            rest = np.where(down, rest - quanta[k], rest)
            level = np.where(down, k + 1, level)
        return level

    def decide(self, view: ReplicaView) -> Batch:
        limits = view.limits
        running = view.running
        order = self._ranked(view, np.concatenate([running, view.waiting]))
        rank = {r: k for k, r in enumerate(order)}
        is_running = set(running.tolist())
        swap = self.params.swap
        # FastServe admits new requests only while enough host space is free
        admit = not swap or (
            view.host_capacity_blocks - view.host_used_blocks
            >= HOST_FREE_FRACTION * view.host_capacity_blocks
        )
        processed = view.processed_tokens
        kv = view.kv
        held = {r: int(kv.blocks(processed[r])) for r in is_running}
        free = kv.capacity_blocks - sum(held.values())
        budget = limits.max_num_batched_tokens
        plan: dict[int, int] = {}
        preempt: list[int] = []
        for i in order:
            if len(plan) >= limits.max_num_seqs or budget <= 0:
                break
            if i in preempt:
                continue  # preempted for a higher-ranked request in this step
            if i in is_running:
                left = int(view.prefill_target_tokens[i] - processed[i])
                c = min(max(left, 1), budget)
                g = int(kv.blocks(processed[i] + c)) - held[i]
            elif not admit:
                continue
            else:
                c = min(int(view.prompt_tokens[i] + view.emitted_tokens[i]), budget)
                g = kv.blocks(c)
            if g > free:
                pool = [
                    r
                    for r in reversed(order)
                    if r in is_running
                    and rank[r] > rank[i]
                    and r not in plan
                    and r not in preempt
                ]
                if free + sum(held[r] for r in pool) < g:
                    break
                while g > free:
                    r = pool.pop(0)
                    preempt.append(r)
                    free += held[r]
            plan[i] = c
            free -= g
            budget -= c
        batch = plan_batch(view, plan, preempt)
        if swap:
            return self._swaps(view, batch, order, free, held, plan, preempt)
        if len(batch.prefill) == 0 and not preempt:
            hold = len(view.waiting) == 0 and len(batch.decode) == len(running)
            return Batch(decode=batch.decode, hold=hold)
        return batch

    def _swaps(
        self,
        view: ReplicaView,
        batch: Batch,
        order: list[int],
        free: int,
        held: dict[int, int],
        plan: dict[int, int],
        preempt: list[int],
    ) -> Batch:
        """FastServe's proactive swaps around the planned ``batch`` (``free``:
        the free blocks after it; module docstring)."""
        kv = view.kv
        reserve = min(view.limits.max_num_seqs, kv.capacity_blocks // 2)
        idle = len(held) == len(preempt) and not plan  # nothing would run
        host_free = view.host_capacity_blocks - view.host_used_blocks
        decoding = view.processed_tokens >= view.prefill_target_tokens
        out: list[int] = []
        for r in reversed(order):  # lowest rank first
            if free >= reserve:
                break
            idle_r = r in held and r not in plan and r not in preempt
            if idle_r and decoding[r] and held[r] <= host_free:
                out.append(r)
                free += held[r]
                host_free -= held[r]
        back: list[int] = []
        if not out:
            room = self._room(view, batch)
            for r in self._ranked(view, view.swapped):
                # its blocks and its next decode step's
                need = kv.blocks(int(view.swapped_tokens[r]) + 1)
                if len(back) >= room or free - need < (
                    0 if idle and not back else reserve
                ):
                    break
                back.append(r)
                free -= need
        swap_out = np.array(out, dtype=np.int64)
        swap_in = np.array(back, dtype=np.int64)
        if self.swap_mode == "async":
            return dataclasses.replace(batch, swap_out=swap_out, swap_in=swap_in)
        # blocking: a request swapped in decodes in this iteration, and a batch
        # that swaps must run one
        decode = np.concatenate([batch.decode, swap_in])
        if len(batch.prefill) + len(decode) == 0:
            return batch
        return dataclasses.replace(
            batch, decode=decode, swap_out=swap_out, swap_in=swap_in
        )

    def _room(self, view: ReplicaView, batch: Batch) -> int:
        """Requests that could join ``batch`` with a decode step: all with
        asynchronous copies (they run later), else within the batch limits."""
        if self.swap_mode == "async":
            return view.limits.max_num_seqs
        members = len(batch.prefill) + len(batch.decode)
        tokens = int(batch.prefill_tokens.sum()) + len(batch.decode)
        limits = view.limits
        return min(
            limits.max_num_seqs - members, limits.max_num_batched_tokens - tokens
        )

    def _ranked(self, view: ReplicaView, ids: IntArray) -> list[int]:
        """``ids`` by (level, arrival, id)."""
        if not len(ids):
            return []
        level = self.levels(view, ids)
        return ids[np.lexsort((ids, view.arrival_s[ids], level))].tolist()
