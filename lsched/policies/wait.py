"""``wait``: threshold batching with known output lengths (WAIT, Ao et al. 2025).

R. Ao, G. Luo, D. Simchi-Levi, X. Wang, "Optimizing LLM Inference: Fluid-Guided
Online Scheduling with Memory Constraints", arXiv:2504.11320 (2025): WAIT
("Waiting for Accumulated Inference Threshold"), the rule for known output
lengths. The paper's full text was not reachable here beyond its abstract; the
rule below follows the authors' simulator code
(github.com/Luoxiaogan/vidur_or,
``vidur/scheduler/replica_scheduler/booking_limit_replica_scheduler.py``,
``BookingLimitReplicaScheduler._get_next_batch``): requests in progress always
continue; new requests are admitted only once the number waiting has reached a
threshold, and then at most that many per batch.

The rule, at every iteration boundary (one request type: the paper's per-type
thresholds ``n_j`` from its fluid model are replaced by one ``threshold``)
-----------------------------------------------------------------------------
1. **Running requests** as :mod:`~lsched.policies.sjf` (chunked prefill by the
   token budget; on KV shortage recompute-preempt the longest predicted remaining
   output, and admit nothing in that step).
2. **Trigger.** Admission is *open* when at least ``threshold`` requests are
   waiting, or when the oldest waiting request has waited ``max_wait_s`` (a
   flush, so that a tail of fewer than ``threshold`` requests is not held for
   ever; the authors' code instead flushes once all requests have arrived, which
   an online policy cannot know). Otherwise nothing is admitted and the policy
   asks to be woken (``wake_at_s``) when the oldest request's wait reaches
   ``max_wait_s``; on an idle replica the batch is empty and the replica idles.
3. **Admission** when open: at most ``threshold`` waiting requests in arrival
   order, each with a first chunk ``min(s + e, budget left)``, while the sequence
   cap, the budget, the next iteration's KV and the *known-length* KV check of
   :mod:`~lsched.policies.mc_sf` (at every predicted completion of the batch the
   predicted KV fits the capacity, which is how known lengths keep WAIT free of
   evictions) allow; the first that fails stops admission. On an idle replica the
   first request is admitted even if it fails the predicted check (as mc-sf).

Holding: a decode-only batch that admits nothing is held when admission is closed
(it stays closed until an arrival or the wake time, both events) or blocked
(no waiting request, the sequence cap reached or no budget left). A batch that
failed only the predicted KV check is not held (starting later may pass it).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from lsched.checks import check_int
from lsched.errors import InputError
from lsched.policies.base import ARRIVAL_TOLERANCE_S, Batch, ReplicaView
from lsched.policies.mc_sf import admission_blocked, admit_in_order, future_kv
from lsched.policies.sjf import Plan, predicted_remaining, shed, to_batch


def check_wait(value: object) -> None:
    """Raise InputError naming ``max_wait_s`` unless it is a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"got {value!r}; expected a number", field="max_wait_s")
    if not (math.isfinite(value) and value >= 0):
        raise InputError(
            f"got {value}; expected a finite number >= 0", field="max_wait_s"
        )


@dataclass(frozen=True)
class WaitParams:
    """Parameters of :class:`Wait`.

    Attributes
    ----------
    threshold
        Waiting requests that open admission, and the most admitted per batch
        (the paper's threshold ``n``).
    max_wait_s
        Longest time, seconds, the oldest waiting request waits for the threshold
        before admission opens anyway.
    """

    threshold: int = 4
    max_wait_s: float = 1.0

    def __post_init__(self) -> None:
        check_int(self.threshold, "threshold", 1)
        check_wait(self.max_wait_s)


class Wait:
    """WAIT: accumulate ``threshold`` waiting requests, then admit them together."""

    name = "wait"

    def __init__(self, params: WaitParams | None = None) -> None:
        self.params = params or WaitParams()

    def decide(self, view: ReplicaView) -> Batch:
        key = predicted_remaining(view, view.running, self.name)
        plan, victims = shed(view, key)
        if victims:
            return to_batch(view, plan, [], [], victims, hold_ok=False)
        if admission_blocked(view, plan):
            return to_batch(view, plan, [], [], [], hold_ok=True)
        waiting = view.waiting
        due = float(view.arrival_s[waiting[0]]) + self.params.max_wait_s
        open_ = (
            len(waiting) >= self.params.threshold
            or view.now_s + ARRIVAL_TOLERANCE_S >= due
        )
        if not open_:
            batch = to_batch(view, plan, [], [], [], hold_ok=True)
            return dataclasses.replace(batch, wake_at_s=due)
        ids, chunks = self._admit(view, plan)
        return to_batch(view, plan, ids, chunks, [], hold_ok=False)

    def _admit(self, view: ReplicaView, plan: Plan) -> tuple[list[int], list[int]]:
        """Step 3: up to ``threshold`` waiting requests in arrival order."""
        candidates = view.waiting[: self.params.threshold]
        remaining = predicted_remaining(view, candidates, self.name)
        future = future_kv(view, plan, self.name, 1.0)
        ids, chunks, _ = admit_in_order(view, plan, candidates, remaining, future)
        return ids, chunks
