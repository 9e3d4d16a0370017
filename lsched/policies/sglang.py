"""``sglang``: SGLang's conservative admission with a decaying ``new_token_ratio``.

Sources: sgl-project/sglang, ``python/sglang/srt/managers/schedule_policy.py``
(``PrefillAdder``: ``_get_running_request_total_token_offset``, ``add_one_req``),
``scheduler.py`` (``update_running_batch``: decay, retraction, reset when idle) and
``schedule_batch.py`` (``ScheduleBatch.retract_decode``).

SGLang's own constants: ``init_new_token_ratio = min(0.7 * schedule_conservativeness,
1)`` = 0.7; ``min_new_token_ratio = 0.14 * init`` = 0.098; the ratio decays by
``(init - min) / 600`` ~= 0.001 per decode step (``SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS``
= 600); ``CLIP_MAX_NEW_TOKENS`` = 4096 tokens; ``SGLANG_RETRACT_DECODE_STEPS`` = 20.
The defaults here are 0.7, 0.1, 0.001 per iteration, 4096 and 20. Ratios are
fractions of a request's remaining output tokens.

The rule, at every iteration boundary (``M_i`` is request i's output budget, SGLang's
``max_new_tokens``: the predicted output length if the instance has predictions,
else ``max_model_len - s_i`` (at least 1), or ``clip_max_new_tokens`` when the
replica has no ``max_model_len``; ``e_i`` tokens emitted so far):

1. **Ratio.** ``ratio = max(min_new_token_ratio, r0 - decay * (n - n0))`` at
   iteration ``n``, where ``(r0, n0)`` is the last reset: ``(init, 0)`` at the start,
   ``(init, n)`` at a boundary with no running request (SGLang resets when idle),
   ``(estimate, n)`` at a retraction (step 3).
2. **Running requests**, in admission order, with one token budget
   ``max_num_batched_tokens``: a request still prefilling takes
   ``min(remaining prefill, budget left)``, a decoding one one step while budget is
   left; requests the budget does not reach keep their KV (mixed batches: SGLang's
   ``--enable-mixed-chunk``).
3. **Retraction** (decode out of memory). While the KV blocks after the plan exceed
   the capacity, the running request SGLang's ``retract_decode`` pops first is
   recompute-preempted and requeued: the fewest emitted tokens, ties the longest
   prompt, then the most recently admitted (SGLang sorts by ``(len(output_ids),
   -len(origin_input_ids))`` descending and pops from the end). The plan is redone
   as vLLM does (:func:`~lsched.policies.vllm.running_pass`). The ratio is then set
   to SGLang's estimate over the surviving requests ``min(1, (sum e_i +
   retract_decode_steps * n) / (sum M_i + 1))`` (floored by step 1), and nothing is
   admitted in that step.
4. **Admission**, waiting requests in the order of ``schedule_policy`` (below),
   while fewer than ``max_num_seqs`` requests run and budget is left. Head ``w``
   needs ``total = s_w + e_w + min(M_w, clip)`` tokens and is admitted with a
   first chunk ``min(s_w + e_w, budget left)`` only if ``total < rem_total``
   (SGLang's strict test) and the chunk's blocks fit, where ``rem_total =
   capacity_tokens - sum over running r of (k_r + ratio * min(max(M_r - e_r, 0),
   clip)) - sum over requests admitted in this step of their ``total``, ``k_r =
   max(KV tokens of r after this iteration, its prefill target)``; the first
   that fails stops admission.

Order of the waiting requests (SGLang's ``--schedule-policy``;
``schedule_policy.py``, ``SchedulePolicy.calc_priority``,
``_determine_active_policy``, ``_sort_by_longest_prefix``, read at commit
00550cd11b35 of sgl-project/sglang):

- ``fcfs`` (SGLang's default): arrival order.
- ``lpm``, longest prefix match: the waiting requests sorted by their matched
  prefix, longest first, ties in arrival order (a stable sort). Request ``w``'s
  match is ``min(h_w B, s_w, s_w + e_w - 1)`` tokens, ``h_w`` its leading hash
  blocks resident in the replica's prefix cache now (on the GPU or in its host
  tier: SGLang's match counts ``host_hit_length`` too)
  (:meth:`~lsched.policies.base.ReplicaView.cached_prefix_blocks`, ``B`` the hash
  block's tokens): what its admission would be offered
  (:mod:`lsched.evaluator.prefix`, rule 1; SGLang likewise caps
  ``num_matched_prefix_tokens`` below the whole input). When more than
  ``lpm_queue_limit`` requests wait (SGLang: ``len(waiting_queue) > 128``) or
  the replica has no prefix cache (SGLang turns ``lpm`` into ``fcfs`` when its
  tree cache is disabled), the order is ``fcfs``.

Where SGLang differs or is silent:

- SGLang sorts its waiting queue in place, so ties (and the ``fcfs`` order past
  128 waiting) keep the order of its previous sort; here ties and ``fcfs`` are
  by arrival. SGLang also defers (``temporary_deprioritized``) a request whose
  cached match is at most 32 tokens when it shares 32 tokens or more with a
  request ahead of it in the queue (its in-batch prefix caching); the view
  offers no look at other waiting requests' hashes, so that rule is left out.
- The ratio decays every iteration (SGLang: every decode step; prefill-only steps
  do not exist in mixed mode). SGLang resets to ``init`` when the scheduler idles;
  here at any boundary with no running request (which covers idling).
- A running request is charged ``k_r`` (KV after the iteration plus prefill still
  to come) in tokens, not in rounded-up pages, plus ``ratio``
  times its remaining output; a request admitted with a partial chunk is charged
  its full ``total`` (SGLang charges a truncated chunk without its output and stops
  admission; here admission also stops since the budget is spent).
- SGLang aborts a request that could never fit; lsched cannot drop requests, so
  with no running request the head of the queue is admitted whenever its chunk's
  blocks fit, whatever the reservation.

Holding (:mod:`~lsched.policies.base`). The ratio changes every iteration and a
smaller ratio can let the head of the queue in without any event, so a decode-only
batch is held only when (a) nothing waits (admission is moot until an arrival and
retraction does not read the ratio) or (b) the ratio is at its floor: then every
decode step raises a running request's charge by 1 token and lowers it by at most
``ratio <= 1``, so ``rem_total`` never grows and the head fits no better. Under
``lpm`` with a cache (b) does not hold: a held stretch may evict cached blocks,
which can reorder the queue and bring a smaller request to its head, so such a
batch is held only in case (a). The
policy's state (the last reset) changes only at boundaries with no running request
or with a retraction, neither of which falls inside a held stretch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lsched.checks import check_int
from lsched.errors import InputError
from lsched.policies.base import Batch, IntArray, ReplicaView
from lsched.policies.vllm import plan_batch, running_pass

#: The orders of the waiting requests (``SglangParams.schedule_policy``).
SCHEDULE_POLICIES: tuple[str, ...] = ("fcfs", "lpm")


def _check_ratio(value: object, name: str, low: float, high: float) -> None:
    """Raise InputError naming ``name`` unless ``low <= value <= high``."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        raise InputError(f"got {value!r}; expected a number", field=name)
    if not (low <= float(value) <= high):
        raise InputError(
            f"got {value}; expected a number in [{low}, {high}]", field=name
        )


@dataclass(frozen=True)
class SglangParams:
    """Parameters of :class:`Sglang`.

    Attributes
    ----------
    init_new_token_ratio
        Ratio after an idle period (SGLang 0.7), in (0, 1].
    min_new_token_ratio
        Floor of the ratio (SGLang 0.098), in [0, init_new_token_ratio].
    decay
        Ratio decrease per iteration (SGLang (0.7 - 0.098) / 600 ~= 0.001), >= 0.
    clip_max_new_tokens
        Cap on the output tokens reserved per request (SGLang 4096), >= 1.
    retract_decode_steps
        Decode steps per surviving request in the post-retraction ratio estimate
        (SGLang's ``SGLANG_RETRACT_DECODE_STEPS``, 20), >= 0.
    schedule_policy
        Order of the waiting requests: ``fcfs`` or ``lpm`` (module docstring).
    lpm_queue_limit
        ``lpm`` sorts while at most this many requests wait, else ``fcfs``
        (SGLang 128), >= 0.
    """

    init_new_token_ratio: float = 0.7
    min_new_token_ratio: float = 0.1
    decay: float = 0.001
    clip_max_new_tokens: int = 4096
    retract_decode_steps: int = 20
    schedule_policy: str = "fcfs"
    lpm_queue_limit: int = 128

    def __post_init__(self) -> None:
        _check_ratio(self.init_new_token_ratio, "init_new_token_ratio", 0.0, 1.0)
        if self.init_new_token_ratio <= 0:
            raise InputError(
                f"got {self.init_new_token_ratio}; expected a number in (0, 1]",
                field="init_new_token_ratio",
            )
        _check_ratio(
            self.min_new_token_ratio,
            "min_new_token_ratio",
            0.0,
            float(self.init_new_token_ratio),
        )
        _check_ratio(self.decay, "decay", 0.0, float("inf"))
        check_int(self.clip_max_new_tokens, "clip_max_new_tokens", 1)
        check_int(self.retract_decode_steps, "retract_decode_steps", 0)
        if self.schedule_policy not in SCHEDULE_POLICIES:
            raise InputError(
                f"got {self.schedule_policy!r}; expected one of "
                f"{', '.join(SCHEDULE_POLICIES)}",
                field="schedule_policy",
            )
        check_int(self.lpm_queue_limit, "lpm_queue_limit", 0)


class Sglang:
    """SGLang: reserve ``ratio`` x remaining output, retract on decode OOM."""

    def __init__(self, params: SglangParams | None = None) -> None:
        self.params = params or SglangParams()
        # the last reset of the ratio: (value, iteration)
        self._reset: tuple[float, int] = (self.params.init_new_token_ratio, 0)

    def ratio(self, iteration: int) -> float:
        """The ``new_token_ratio`` in force at ``iteration`` (step 1)."""
        value, at = self._reset
        p = self.params
        return max(p.min_new_token_ratio, value - p.decay * (iteration - at))

    def decide(self, view: ReplicaView) -> Batch:
        p = self.params
        if len(view.running) == 0:
            self._reset = (p.init_new_token_ratio, view.iteration)
        budget_max = self._budget_max(view)
        plan, retracted, used, budget = self._running(view)
        if retracted:
            gone = set(retracted)
            kept = np.array([r for r in view.running if r not in gone], np.int64)
            emitted = int(view.emitted_tokens[kept].sum())
            total_max = int(budget_max[kept].sum())
            estimate = (emitted + p.retract_decode_steps * len(kept)) / (total_max + 1)
            self._reset = (min(1.0, estimate), view.iteration)
            return plan_batch(view, plan, retracted)
        ratio = self.ratio(view.iteration)
        new, chunks = self._admit(view, ratio, budget_max, plan, used, budget)
        batch = plan_batch(view, plan | dict(zip(new, chunks, strict=True)), [])
        if len(batch.prefill) == 0:
            floor = ratio <= p.min_new_token_ratio and not self._sorts(view)
            hold = len(view.waiting) == 0 or floor
            return Batch(decode=batch.decode, hold=hold)
        return batch

    def _sorts(self, view: ReplicaView) -> bool:
        """Whether step 4 takes the ``lpm`` order (module docstring)."""
        p = self.params
        return (
            p.schedule_policy == "lpm"
            and view.cached_prefix is not None
            and len(view.waiting) <= p.lpm_queue_limit
        )

    def queue(self, view: ReplicaView) -> list[int]:
        """The waiting requests in step 4's order: ``lpm`` (the longest cached
        prefix first, ties by arrival) or ``fcfs`` (module docstring)."""
        waiting = view.waiting.tolist()
        if not self._sorts(view):
            return waiting
        block = view.prefix_block_tokens
        prompt, emitted = view.prompt_tokens, view.emitted_tokens

        def matched(w: int) -> int:
            s, e = int(prompt[w]), int(emitted[w])
            return min(view.cached_prefix_blocks(w) * block, s, s + e - 1)

        return sorted(waiting, key=lambda w: -matched(w))  # stable: ties by arrival

    def _budget_max(self, view: ReplicaView) -> IntArray:
        """``M_i`` for every request: SGLang's ``max_new_tokens``."""
        clip = self.params.clip_max_new_tokens
        if view.predicted_output_tokens is not None:
            return np.asarray(view.predicted_output_tokens, dtype=np.int64)
        if view.limits.max_model_len is None:
            return np.full(len(view.prompt_tokens), clip, dtype=np.int64)
        return np.maximum(view.limits.max_model_len - view.prompt_tokens, 1)

    def _running(self, view: ReplicaView) -> tuple[dict[int, int], list[int], int, int]:
        """Steps 2-3: plan the running requests, retracting on KV shortage."""
        limits = view.limits
        kv = view.kv
        processed = view.processed_tokens
        target = view.prefill_target_tokens
        running = view.running.tolist()
        held = {r: int(kv.blocks(processed[r])) for r in running}
        rank = {r: k for k, r in enumerate(running)}
        # first victim: fewest emitted, then longest prompt, then newest
        victims = sorted(
            running,
            key=lambda r: (
                int(view.emitted_tokens[r]),
                -int(view.prompt_tokens[r]),
                -rank[r],
            ),
        )

        def want(r: int, budget: int) -> int:
            return min(max(int(target[r] - processed[r]), 1), budget)

        def grow(r: int, c: int) -> int:
            return int(kv.blocks(processed[r] + c)) - held[r]

        return running_pass(
            kv, running, want, grow, held, victims, limits.max_num_batched_tokens
        )

    def _admit(
        self,
        view: ReplicaView,
        ratio: float,
        budget_max: IntArray,
        plan: dict[int, int],
        used: int,
        budget: int,
    ) -> tuple[list[int], list[int]]:
        """Step 4: admit the head of the queue while the reservation allows.

        ``plan`` and ``used`` are step 2's work per running request and the KV
        blocks held after it.
        """
        limits = view.limits
        clip = self.params.clip_max_new_tokens
        running = view.running
        done = np.array([plan.get(int(r), 0) for r in running], dtype=np.int64)
        # a running request's tokens: KV after the iteration plus prefill to come
        tokens = np.maximum(
            view.processed_tokens[running] + done, view.prefill_target_tokens[running]
        )
        left = budget_max[running] - view.emitted_tokens[running]
        left_out = np.minimum(np.maximum(left, 0), clip)
        kv = view.kv
        rem_total = float(kv.capacity_tokens)
        rem_total -= float(tokens.sum()) + ratio * float(left_out.sum())
        seqs = len(running)
        admitted: list[int] = []
        chunks: list[int] = []
        for w in self.queue(view):
            if seqs >= limits.max_num_seqs or budget <= 0:
                break
            need = int(view.prompt_tokens[w] + view.emitted_tokens[w])
            total = need + min(int(budget_max[w]), clip)
            c = min(need, budget)
            blocks = kv.blocks(c)
            alone = seqs == 0  # SGLang would abort a request that never fits
            if used + blocks > kv.capacity_blocks or (not alone and total >= rem_total):
                break
            admitted.append(w)
            chunks.append(c)
            used += blocks
            rem_total -= total
            budget -= c
            seqs += 1
        return admitted, chunks
