"""dLoRA's dynamic batching: merged or unmerged batches, an AIMD threshold.

dLoRA (Wu et al., OSDI 2024) runs each iteration either *merged*, one adapter
folded into the base weights (the base model's speed, requests of that adapter
only), or *unmerged*, any requests with their adapters computed beside the base
model (slower). Restated from LLMServe/dLoRA-artifact ``vllm/core/scheduler.py``
(``Scheduler._credit_schedule``, its batch path, and
``_adjust_merge_threshold``); the times are its ``merge_time`` 0.015 s,
``unmerge_time`` 0.027 s and ``switch_cost`` 0.02 s, the AIMD steps
``aimd_add`` 0.05 and ``aimd_mul`` 1.1, and the thresholds start at
``merge_right_threshold`` 1 and ``merge_left_threshold`` = ``speed_rate`` =
``merge_time / unmerge_time``.

At each boundary, with ``Q`` the replica's unfinished arrived requests (running
or waiting), ``F = min(|Q|, max_num_seqs)`` (the FCFS batch's size) and
``n_a`` the requests of ``Q`` with adapter ``a`` (``m`` the adapter with the
most, the lowest code on ties):

1. merged on ``a`` and ``n_a >= left * F``: stay merged on ``a``
   (``num_iters += 1``);
2. else if ``n_m >= right * F``: adjust the thresholds, merge ``m``
   (``num_iters = 1``);
3. else run unmerged (a *virtual switch* is counted when ``m`` differs from the
   last one seen unmerged); coming from merged, adjust the thresholds and
   ``num_iters = 1``, else ``num_iters += 1``.

In each case ``merge_cnt += min(n, max_num_seqs)`` (``n``: the requests of the
merged adapter, or of ``m``) and ``unmerge_cnt += F``. Adjusting (AIMD), when
``num_iters > 0``: ``t_merge = merge_time * num_iters``, ``t_unmerge =
unmerge_time * num_iters``, plus ``switch_cost`` to ``t_merge`` if merged, else
to ``t_unmerge`` and ``switch_cost * virtual switches`` to ``t_merge``; with
``x_merge = merge_cnt / t_merge`` and ``x_unmerge = unmerge_cnt / t_unmerge``:
merged: ``right -= aimd_add`` if ``x_merge > x_unmerge`` and ``right - aimd_add
> left``, ``right *= aimd_mul`` if ``x_merge < x_unmerge``; unmerged: ``left
+= aimd_add`` if ``x_unmerge > x_merge`` and ``left + aimd_add < right``,
``left /= aimd_mul`` if ``x_unmerge < x_merge``; then the counts reset.

The batches, in lsched's model (:mod:`lsched.policies.base`): the unmerged batch
is vLLM V1's (:class:`~lsched.policies.vllm.Vllm`, admitting by ``max_loras``);
the merged batch is vLLM V1's over the requests of the merged adapter only (the
others keep their KV and their places, taken out of the KV capacity and the
``max_num_seqs`` it sees, so the running requests stay within both; a waiting
request of that adapter is admitted only if the running requests' adapters
allow it), marked ``merged`` so that the engine charges the base model's time
and the profile's ``merge_switch_s`` on a change of mode
(:mod:`lsched.evaluator.adapters`). An empty merged batch falls back to the
unmerged one. Not modelled: dLoRA's starvation credits (``lora_credit``), its
``ready`` queue beyond lsched's running requests, and swapping.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from lsched.checks import check_number
from lsched.policies.base import Batch, ReplicaView
from lsched.policies.vllm import Vllm

#: dLoRA's Llama-7B times (module docstring), seconds.
MERGE_TIME_S, UNMERGE_TIME_S, SWITCH_COST_S = 0.015, 0.027, 0.02


@dataclass(frozen=True)
class DloraParams:
    """Parameters of :class:`Dlora` (dLoRA's defaults, module docstring)."""

    aimd_add: float = 0.05
    aimd_mul: float = 1.1
    merge_time_s: float = MERGE_TIME_S
    unmerge_time_s: float = UNMERGE_TIME_S
    switch_cost_s: float = SWITCH_COST_S

    def __post_init__(self) -> None:
        check_number(self.aimd_add, "aimd_add", 0, strict=True)
        check_number(self.aimd_mul, "aimd_mul", 1, strict=True)
        for name in ("merge_time_s", "unmerge_time_s"):
            check_number(getattr(self, name), name, 0, strict=True)
        check_number(self.switch_cost_s, "switch_cost_s", 0)


class Dlora:
    """dLoRA: merged or unmerged batches with an AIMD threshold."""

    def __init__(self, params: DloraParams | None = None) -> None:
        self.params = params or DloraParams()
        self.fcfs = Vllm()
        self.merged = -1  # the merged adapter's code, -1: unmerged
        self.right = 1.0
        self.left = self.params.merge_time_s / self.params.unmerge_time_s
        self.num_iters = 0
        self.merge_cnt = self.unmerge_cnt = self.virtual = 0
        self.max_model = -1

    def decide(self, view: ReplicaView) -> Batch:
        if view.adapter is None:  # no adapters: vLLM's batch
            return self.fcfs.decide(view)
        queued = np.concatenate([view.running, view.waiting])
        if not len(queued):  # dLoRA returns an empty batch, its state unchanged
            return self.fcfs.decide(view)
        seqs = view.limits.max_num_seqs
        fcfs = min(len(queued), seqs)
        codes = view.adapter[queued]
        counts = np.bincount(codes[codes >= 0], minlength=1)
        m = int(counts.argmax())
        mode = self._mode(counts, m, fcfs, seqs)
        if mode >= 0:
            batch = self._merged_batch(view, mode)
            if not batch.is_empty:
                return batch
        return self.fcfs.decide(view)

    def _mode(self, counts: np.ndarray, m: int, fcfs: int, seqs: int) -> int:
        """Rules 1-3: the adapter to merge, or -1 (unmerged)."""
        a = self.merged
        if a >= 0 and a < len(counts) and counts[a] >= self.left * fcfs > 0:
            self.num_iters += 1
            chosen = a
        elif counts[m] >= self.right * fcfs > 0:
            self._adjust()
            self.merged, self.num_iters, chosen = m, 1, m
        else:
            if self.max_model != m:
                self.virtual += 1
                self.max_model = m
            if self.merged >= 0:
                self._adjust()
                self.merged, self.num_iters = -1, 1
            else:
                self.num_iters += 1
            chosen = -1
        n = counts[chosen] if chosen >= 0 else counts[m]
        self.merge_cnt += min(int(n), seqs)
        self.unmerge_cnt += fcfs
        return chosen

    def _adjust(self) -> None:
        """dLoRA's ``_adjust_merge_threshold`` (module docstring)."""
        p = self.params
        if self.num_iters == 0:
            return
        t_merge = p.merge_time_s * self.num_iters
        t_unmerge = p.unmerge_time_s * self.num_iters
        if self.merged >= 0:
            t_merge += p.switch_cost_s
        else:
            t_unmerge += p.switch_cost_s
            t_merge += p.switch_cost_s * self.virtual
        x_merge, x_unmerge = self.merge_cnt / t_merge, self.unmerge_cnt / t_unmerge
        if self.merged >= 0:
            if x_merge > x_unmerge and self.right - p.aimd_add > self.left:
                self.right -= p.aimd_add
            elif x_merge < x_unmerge:
                self.right *= p.aimd_mul
        elif x_unmerge > x_merge and self.left + p.aimd_add < self.right:
            self.left += p.aimd_add
        elif x_unmerge < x_merge:
            self.left /= p.aimd_mul
        self.merge_cnt = self.unmerge_cnt = self.virtual = 0
        self.max_model = -1

    def _merged_batch(self, view: ReplicaView, a: int) -> Batch:
        """vLLM V1's batch over the requests of adapter ``a``, marked merged
        (module docstring)."""
        codes = view.adapter
        assert codes is not None
        running = view.running[codes[view.running] == a]
        others = view.running[codes[view.running] != a]
        waiting = view.waiting[codes[view.waiting] == a]
        used = {int(c) for c in codes[view.running] if c >= 0}
        if a not in used and len(used) >= (view.limits.max_loras or 1):
            waiting = waiting[:0]  # its adapter cannot join the running ones
        seqs = view.limits.max_num_seqs - len(others)
        if seqs < 1:
            return Batch()
        kv = view.kv
        held = int(kv.blocks(view.processed_tokens[others]).sum())
        limits = dataclasses.replace(
            view.limits, kv_capacity_blocks=kv.capacity_blocks - held, max_num_seqs=seqs
        )
        sub = dataclasses.replace(
            view, running=running, waiting=waiting, limits=limits, kv_held=None
        )
        batch = self.fcfs.decide(sub)
        return dataclasses.replace(batch, merged=True, hold=False)
