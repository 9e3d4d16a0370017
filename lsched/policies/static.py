"""``static``: request-level (static) batching, as in FasterTransformer.

Sources: microsoft/sarathi-serve,
``sarathi/core/scheduler/faster_transformer_scheduler.py`` (decode the running
batch; admit only when it is empty) with
``sarathi/core/block_space_manager/faster_transformer_block_space_manager.py``
(Orca's block manager: ``max_model_len`` reserved per request); Yu et al., OSDI
2022, section 2.2 (request-level scheduling in FasterTransformer-style engines).

The rule, at every iteration boundary:

1. While any request of the current batch runs, **every running request decodes**
   (in admission order) and nothing is admitted, whatever arrives.
2. When nothing runs, a new batch is formed from the head of the waiting queue
   (arrival order): up to ``min(batch_size, max_num_seqs)`` requests, each with its
   whole prompt ``s_i + e_i``, while the prompts fit ``max_num_batched_tokens``
   together and the reservations fit the KV capacity (reservations as
   :mod:`lsched.policies.orca`: ``reserve`` and ``max_model_len``). The first that
   does not fit ends the batch. All of it is prefilled in one iteration.

Where the sources were silent or do not apply:

- Reservations follow FasterTransformer's block manager in Sarathi (Orca's). Where
  a too-small prediction lets the running batch outgrow the KV capacity, the most
  recently admitted request is preempted (recompute); it waits for a later batch.
  Admission still happens only when nothing runs.
- A prompt over ``max_num_batched_tokens`` can never be admitted; the engine
  reports the stall.

Every decode batch without preemption is *held*: nothing can change it before a
completion (arrivals never join a running batch) or the KV limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lsched.checks import check_int
from lsched.policies.base import Batch, ReplicaView
from lsched.policies.orca import check_reserve, reserved_admit, reserved_decode


@dataclass(frozen=True)
class StaticParams:
    """Parameters of :class:`Static`.

    Attributes
    ----------
    batch_size
        Most requests in one batch (``B``).
    reserve
        ``"max"`` (``max_model_len`` tokens per request) or ``"predicted"``
        (prompt + predicted output - 1); see :mod:`lsched.policies.orca`.
    max_model_len
        The ``L`` of the reservation; ``None``: the replica's KV capacity in tokens.
    """

    batch_size: int = 8
    reserve: str = "max"
    max_model_len: int | None = None

    def __post_init__(self) -> None:
        check_int(self.batch_size, "batch_size", 1)
        check_reserve(self)


class Static:
    """Static batching: a batch runs to completion before the next is admitted."""

    def __init__(self, params: StaticParams | None = None) -> None:
        self.params = params or StaticParams()

    def decide(self, view: ReplicaView) -> Batch:
        p = self.params
        limits = view.limits
        if len(view.running):
            decode, preempted, _, _ = reserved_decode(view, p.reserve, p.max_model_len)
            return Batch(
                decode=np.array(decode, dtype=np.int64),
                preempt=np.array(preempted, dtype=np.int64),
                hold=not preempted,
            )
        new = reserved_admit(
            view,
            p.reserve,
            p.max_model_len,
            0,
            min(p.batch_size, limits.max_num_seqs),
            0,
            limits.max_num_batched_tokens,
        )
        return Batch(
            prefill=np.array(new, dtype=np.int64),
            prefill_tokens=view.prompt_tokens[new] + view.emitted_tokens[new],
        )
