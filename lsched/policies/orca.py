"""``orca``: Orca's iteration-level batching with KV reserved at admission.

Sources: Yu et al., "Orca: A Distributed Serving System for Transformer-Based
Generative Models", OSDI 2022, section 4.2 (iteration-level scheduling; a request
is scheduled only if the slots for its maximum length can be reserved, so no
request is ever evicted); microsoft/sarathi-serve,
``sarathi/core/scheduler/orca_scheduler.py`` and
``sarathi/core/block_space_manager/orca_block_space_manager.py`` (each request
allocates ``ceil(max_model_len / block_size)`` blocks, watermark 0).

The rule, at every iteration boundary:

1. **Every running request decodes**, in admission order (prompts are prefilled
   whole, so every running request is past its prefill), while the batch holds
   fewer than ``max_num_seqs`` requests and ``max_num_batched_tokens`` tokens.
2. **Admission** from the head of the waiting queue (arrival order): request w is
   admitted with its whole prompt ``s_w + e_w`` while fewer than
   ``min(max_num_seqs, max_batch)`` requests would be running, the prompt fits the
   token budget left, and its *reservation* fits in the blocks not yet reserved.
   The first that does not fit stops admission.

The reservation of request i, in tokens (``L`` = ``max_model_len``, or the replica's
KV capacity in tokens when it is not given):

- ``reserve="max"`` (Orca): ``L``;
- ``reserve="predicted"``: ``min(L, s_i + p_i - 1)``, the peak KV if the predicted
  output length ``p_i`` is right;

never less than ``s_i + e_i`` (the prompt must fit) and never more than the KV
capacity. A running request holds ``max(reservation, processed)`` tokens' blocks.

While every request's reservation covers its peak (``reserve="max"`` with
``L >= s_i + o_i - 1``, or exact predictions) the policy **never preempts** and KV
never overflows. Where a prediction is too small a request outgrows its
reservation; when the KV actually in use would then overflow, the most recently
admitted running request is preempted (recompute), the only preemption Orca-in-
lsched makes.

Where the sources were silent or do not apply:

- ``L`` is the ``max_model_len`` parameter, else the profile's (``ReplicaLimits``),
  capped by the KV capacity. Were neither given, ``L`` would be the capacity, so under
  ``reserve="max"`` requests run one at a time.
- Orca has no token budget; lsched's engine caps every batch at
  ``max_num_batched_tokens``, so admissions must fit it (a prompt over it can never
  be admitted, and the engine reports the stall).

A decode-only batch with no admission and no preemption is *held*: reservations
only grow, the budgets are fixed and preemption waits for the engine's KV event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lsched.errors import InputError
from lsched.policies.base import Batch, ReplicaView
from lsched.policies.vllm import optional_int, running_pass

RESERVE_MODES = ("max", "predicted")


def check_reserve(owner: Any) -> None:
    """Validate the ``reserve`` and ``max_model_len`` fields of a params object."""
    if owner.reserve not in RESERVE_MODES:
        raise InputError(
            f"got {owner.reserve!r}; expected one of {', '.join(RESERVE_MODES)}",
            field="reserve",
        )
    optional_int(owner, "max_model_len", 1)


def reservations(
    view: ReplicaView, ids: list[int], reserve: str, max_model_len: int | None
) -> np.ndarray:
    """Reserved tokens of ``ids`` (see the module docstring)."""
    limits = view.limits
    capacity = view.kv.capacity_tokens
    # the parameter, else the deployment's context limit, never above the capacity
    if max_model_len is None:
        max_model_len = limits.max_model_len
    ceiling = capacity if max_model_len is None else min(max_model_len, capacity)
    index = np.array(ids, dtype=np.int64)
    whole = view.prompt_tokens[index] + view.emitted_tokens[index]
    if reserve == "max":
        tokens = np.full(len(ids), ceiling, dtype=np.int64)
    else:
        if view.predicted_output_tokens is None:
            raise InputError(
                "reserve=predicted needs predicted output lengths in the instance",
                field="reserve",
            )
        peak = view.prompt_tokens[index] + view.predicted_output_tokens[index] - 1
        tokens = np.minimum(peak, ceiling)
    return np.minimum(np.maximum(tokens, whole), capacity)


def reserved_decode(
    view: ReplicaView, reserve: str, max_model_len: int | None
) -> tuple[list[int], list[int], int, int]:
    """Decode every running request (step 1), preempting only on real overflow.

    Returns the decoding ids, the preempted ids, the blocks reserved by the
    requests still running and the token budget left.
    """
    limits = view.limits
    kv = view.kv
    running = view.running.tolist()
    processed = view.processed_tokens
    n = min(len(running), limits.max_num_seqs, limits.max_num_batched_tokens)
    decode = running[:n]
    ids = np.array(decode, dtype=np.int64)
    held = kv.blocks(processed[view.running])
    grow = kv.growth(processed[ids], 1)
    preempted: list[int] = []
    if int(held.sum() + grow.sum()) > kv.capacity_blocks:
        # a too-small prediction: vLLM's newest-first recompute preemption
        held_map = dict(zip(running, held.tolist(), strict=True))
        plan, preempted, _, _ = running_pass(
            kv,
            decode,
            lambda r, left: 1,
            lambda r, c: int(kv.blocks(processed[r] + c)) - held_map[r],
            held_map,
            running[::-1],
            n,
        )
        decode = list(plan)
    alive = [r for r in running if r not in preempted]
    reserved = 0
    if alive:
        res = reservations(view, alive, reserve, max_model_len)
        reserved = int(kv.blocks(np.maximum(res, processed[alive])).sum())
    return decode, preempted, reserved, limits.max_num_batched_tokens - len(decode)


def reserved_admit(
    view: ReplicaView,
    reserve: str,
    max_model_len: int | None,
    seqs: int,
    seq_cap: int,
    reserved: int,
    budget: int,
) -> list[int]:
    """Step 2: whole prompts from the head of the waiting queue while they fit."""
    waiting = view.waiting.tolist()
    if not waiting:
        return []
    kv = view.kv
    need = kv.blocks(reservations(view, waiting, reserve, max_model_len))
    taken: list[int] = []
    for w, blocks in zip(waiting, need.tolist(), strict=True):
        c = int(view.prompt_tokens[w] + view.emitted_tokens[w])
        if seqs >= seq_cap or c > budget:
            break
        if reserved + blocks > kv.capacity_blocks:
            break
        taken.append(w)
        reserved += blocks
        budget -= c
        seqs += 1
    return taken


@dataclass(frozen=True)
class OrcaParams:
    """Parameters of :class:`Orca`.

    Attributes
    ----------
    max_batch
        Most requests running at once (Orca's ``max_bs``); ``None``: the profile's
        ``max_num_seqs``.
    reserve
        ``"max"`` (reserve ``max_model_len`` tokens per request, as Orca) or
        ``"predicted"`` (prompt + predicted output - 1).
    max_model_len
        The ``L`` of the reservation; ``None``: the replica's KV capacity in tokens.
    """

    max_batch: int | None = None
    reserve: str = "max"
    max_model_len: int | None = None

    def __post_init__(self) -> None:
        optional_int(self, "max_batch", 1)
        check_reserve(self)


class Orca:
    """Orca: iteration-level batching, maximum KV reserved at admission."""

    def __init__(self, params: OrcaParams | None = None) -> None:
        self.params = params or OrcaParams()

    def decide(self, view: ReplicaView) -> Batch:
        p = self.params
        limits = view.limits
        seq_cap = limits.max_num_seqs
        if p.max_batch is not None:
            seq_cap = min(seq_cap, p.max_batch)
        decode, preempted, reserved, budget = reserved_decode(
            view, p.reserve, p.max_model_len
        )
        new: list[int] = []
        if not preempted:
            new = reserved_admit(
                view,
                p.reserve,
                p.max_model_len,
                len(view.running),
                seq_cap,
                reserved,
                budget,
            )
        return Batch(
            prefill=np.array(new, dtype=np.int64),
            prefill_tokens=view.prompt_tokens[new] + view.emitted_tokens[new],
            decode=np.array(decode, dtype=np.int64),
            preempt=np.array(preempted, dtype=np.int64),
            hold=not new and not preempted,
        )
