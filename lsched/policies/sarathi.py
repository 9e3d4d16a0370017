"""``sarathi``: Sarathi-Serve's stall-free batching with a fixed chunk budget.

Source: microsoft/sarathi-serve, ``sarathi/core/scheduler/sarathi_scheduler.py``
(``SarathiScheduler._schedule``) with the block manager of
``sarathi/core/block_space_manager/vllm_block_space_manager.py`` and
``base_block_space_manager.py``; Agrawal et al., "Taming Throughput-Latency
Tradeoff in LLM Inference with Sarathi-Serve", OSDI 2024, section 4.

The rule, at every iteration boundary, with the token budget
``B = min(chunk, max_num_batched_tokens)``:

1. **Running decodes first**, in admission order (= arrival order), one token each
   while budget is left. Before each, if its next token needs a new block and none
   is free, the most recently admitted running request not yet visited is
   preempted (recompute; its KV or reservation freed, back to the head of the
   waiting queue); if there is none, the request preempts itself.
2. **Ongoing (partial) prefills**, in admission order: a chunk of
   ``min(remaining prompt, budget left)`` tokens (skipped at 0).
3. **New prefills** from the head of the waiting queue (arrival order): while
   fewer than ``max_num_seqs`` requests are running, the request's whole prompt
   (``s_i + e_i``) fits in the free blocks with ``int(watermark * capacity)``
   blocks to spare, and budget is left, it is admitted with a chunk of
   ``min(s_i + e_i, budget left)``. The first that does not fit stops admission.

KV accounting follows Sarathi's block manager: admission *allocates the blocks of
the whole prompt* (``get_num_initial_blocks`` = the prompt's logical blocks), so a
partial prefill never needs new blocks; a decode step allocates a block when the
last one is full.

Where the source was silent or does not apply:

- Sarathi adds every running decode to the batch without looking at the budget
  (the budget is meant to exceed the decode count); lsched's engine caps each
  batch at ``max_num_batched_tokens``, so decodes beyond the budget wait (keep
  their KV) this iteration. The batch never exceeds ``B`` tokens.
- Sarathi's ``can_append_slot`` asks for one free block before *every* decode step;
  here a block is asked for only when the step needs one (as vLLM does), which is
  the same with ``block_tokens = 1``.
- A request that could never pass the watermark test is admitted without it
  (:func:`lsched.policies.vllm.watermark_blocks`): Sarathi would block on it.
- A request preempted in step 1 goes back to the head of the waiting queue and
  could never fit in the blocks just freed, so nothing is admitted in a step that
  preempted (as in Sarathi, where the preempted head blocks admission).

A decode-only batch in which no running request is mid-prefill is *held*: until
a completion, an arrival or the KV limit the running set, the budget use and so
the batch stay the same; admission only gets harder as KV grows; and with no
reservations outstanding the blocks the policy counts are the blocks the engine
counts, so the policy cannot preempt before the engine's KV event.
"""

from __future__ import annotations

from dataclasses import dataclass

from lsched.checks import check_int
from lsched.errors import InputError
from lsched.policies.base import Batch, LoraGate, ReplicaView, decode_all
from lsched.policies.vllm import plan_batch, running_pass, watermark_blocks


@dataclass(frozen=True)
class SarathiParams:
    """Parameters of :class:`Sarathi`.

    Attributes
    ----------
    chunk
        Token budget per iteration (Sarathi-Serve's ``chunk_size``), decodes
        included; also capped by the profile's ``max_num_batched_tokens``.
    watermark
        Fraction of the KV blocks an admission must leave free (Sarathi's block
        manager default 0.01).
    """

    chunk: int = 512
    watermark: float = 0.01

    def __post_init__(self) -> None:
        check_int(self.chunk, "chunk", 1)
        if isinstance(self.watermark, bool) or not 0.0 <= self.watermark < 1.0:
            raise InputError(
                f"got {self.watermark!r}; expected a number in [0, 1)",
                field="watermark",
            )


class Sarathi:
    """Sarathi-Serve: decodes, then ongoing prefills, then new prefills."""

    def __init__(self, params: SarathiParams | None = None) -> None:
        self.params = params or SarathiParams()

    def decide(self, view: ReplicaView) -> Batch:
        limits = view.limits
        kv = view.kv
        budget = min(self.params.chunk, limits.max_num_batched_tokens)
        running = view.running
        processed = view.processed_tokens[running]
        target = view.prefill_target_tokens[running]
        prefilling = processed < target
        if not prefilling.any() and len(running) <= budget:
            batch = decode_all(
                view,
                running,
                processed,
                budget,
                lambda *args: self._admit(view, *args),
            )
            if batch is not None:
                return batch
        ids = running.tolist()
        # the whole prompt is reserved at admission (Sarathi's block manager)
        held = {
            r: kv.blocks(max(p, t))
            for r, p, t in zip(ids, processed.tolist(), target.tolist(), strict=True)
        }
        decoders = [r for r, f in zip(ids, prefilling.tolist(), strict=True) if not f]
        partial = [r for r, f in zip(ids, prefilling.tolist(), strict=True) if f]
        proc = view.processed_tokens
        tgt = view.prefill_target_tokens

        def want(r: int, left: int) -> int:
            if proc[r] >= tgt[r]:
                return min(1, left)
            return min(int(tgt[r] - proc[r]), left)

        def grow(r: int, c: int) -> int:
            if proc[r] < tgt[r]:
                return 0  # reserved at admission
            return int(kv.blocks(proc[r] + c)) - held[r]

        plan, preempted, used, left = running_pass(
            kv, decoders + partial, want, grow, held, ids[::-1], budget
        )
        if preempted:
            return plan_batch(view, plan, preempted)
        new, chunks = self._admit(view, len(ids), used, left)
        batch = plan_batch(view, plan | dict(zip(new, chunks, strict=True)), [])
        if len(batch.prefill) == 0 and not prefilling.any():
            return Batch(decode=batch.decode, hold=True)
        return batch

    def _admit(
        self, view: ReplicaView, seqs: int, used: int, budget: int
    ) -> tuple[list[int], list[int]]:
        """Step 3: admit the head of the waiting queue while it fits."""
        limits = view.limits
        kv = view.kv
        admitted: list[int] = []
        chunks: list[int] = []
        gate = LoraGate.of(view)
        for w in view.waiting.tolist():
            if seqs >= limits.max_num_seqs or budget <= 0:
                break
            if gate is not None and not gate.allows(w):
                continue
            whole = int(view.prompt_tokens[w] + view.emitted_tokens[w])
            need = kv.blocks(whole)
            spare = watermark_blocks(kv, self.params.watermark, need)
            if kv.capacity_blocks - used - need < spare:
                break
            c = min(whole, budget)
            if gate is not None:
                gate.add(w)
            admitted.append(w)
            chunks.append(c)
            used += need
            budget -= c
            seqs += 1
        return admitted, chunks
