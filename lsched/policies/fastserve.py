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
short it is preempted by **recompute** (FastServe instead swaps KV to host memory;
lsched's policies model recompute only).

Holding (:mod:`~lsched.policies.base`): levels change as requests decode, without
an event, so a decode-only batch is held only when nothing waits and every running
request is in it: until an arrival, a completion or the KV limit the batch is then
all running requests whatever their levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lsched.policies.base import Batch, IntArray, ReplicaView
from lsched.policies.vllm import check_int, plan_batch


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
    """

    levels: int = 4
    base_quantum: int = 4
    prefill_tokens_per_unit: int = 256

    def __post_init__(self) -> None:
        check_int(self.levels, "levels", 1)
        check_int(self.base_quantum, "base_quantum", 1)
        check_int(self.prefill_tokens_per_unit, "prefill_tokens_per_unit", 1)


class FastServe:
    """Skip-join MLFQ: highest levels first, pause or recompute lower ones."""

    def __init__(self, params: FastServeParams | None = None) -> None:
        self.params = params or FastServeParams()

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
        ids = np.concatenate([running, view.waiting])
        level = self.levels(view, ids)
        order = ids[np.lexsort((ids, view.arrival_s[ids], level))].tolist()
        rank = {r: k for k, r in enumerate(order)}
        is_running = set(running.tolist())
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
        if len(batch.prefill) == 0 and not preempt:
            hold = len(view.waiting) == 0 and len(batch.decode) == len(running)
            return Batch(decode=batch.decode, hold=hold)
        return batch
