"""``sorted-f``: batches chosen by the Sorted-F metric (Wang, Ye, Zhou 2025).

M. Wang, Y. Ye, Z. Zhou, "LLM Serving Optimization with Variable Prefill and
Decode Lengths", arXiv:2508.06133 (2025). Their offline algorithm Sorted-F
repeatedly forms, among the requests not yet scheduled, the feasible batch ``X``
minimising the selection metric

    F(X) = (sum over i in X of o_i) / |X|^2

(balancing batch size against the decode work that the batch delays others by),
and they prove a constant competitive ratio on total latency for a backlog at
``t = 0`` with exact lengths. Here ``o_i`` is the *predicted* output.

How this implementation makes it online (the paper is offline; this reading is
the project's), at every iteration boundary:

1. Running requests as in :mod:`~lsched.policies.mc_sf` (kept; chunked prefill by
   the token budget; recompute preemption of the longest predicted remaining
   output only if the actual next iteration would overflow the KV).
2. Candidates: the longest prefix ``w_1, ..., w_K`` of the waiting requests in
   ascending predicted remaining output ``r`` (ties: arrival order) that passes
   the checks of ``mc-sf`` (sequence cap, token budget, next-iteration KV and the
   future KV feasibility check at every predicted completion of the running and
   added requests): the feasible batches considered are its prefixes, the
   cheapest feasible batch of each size when prompts are alike.
3. Admit the prefix of size ``k`` in ``1..K`` that minimises
   ``F_k = (r_1 + ... + r_k) / k^2`` (exact integer comparison; ties: the larger
   ``k``). Running requests do not enter ``F``: the batch is the group admitted
   together, as the paper's batches are.

With ``K = 0`` nothing is admitted. The rest of the prefix stays waiting and is
considered again at the next boundary, with whatever has arrived by then.
``kv_fraction`` and holding are as in ``mc-sf``.
"""

from __future__ import annotations

from dataclasses import dataclass

from lsched.policies.base import ReplicaView
from lsched.policies.mc_sf import (
    McSf,
    admissible_prefix,
    admission_blocked,
    check_kv_fraction,
)
from lsched.policies.sjf import Plan


@dataclass(frozen=True)
class SortedFParams:
    """Parameters of :class:`SortedF`.

    Attributes
    ----------
    kv_fraction
        Share of the KV capacity the feasibility check plans with, in (0, 1].
    """

    kv_fraction: float = 1.0

    def __post_init__(self) -> None:
        check_kv_fraction(self.kv_fraction)


def best_prefix(remaining: list[int]) -> int:
    """Size ``k >= 1`` of the prefix minimising ``sum(remaining[:k]) / k^2``
    (ties: the larger ``k``); 0 for an empty list."""
    best_k, best_sum, total = 0, 0, 0
    for k, r in enumerate(remaining, start=1):
        total += r
        # total / k^2 <= best_sum / best_k^2, in integers
        if best_k == 0 or total * best_k * best_k <= best_sum * k * k:
            best_k, best_sum = k, total
    return best_k


class SortedF(McSf):
    """Admit the prefix of the MC-SF-feasible candidates that minimises F."""

    name = "sorted-f"

    def __init__(self, params: SortedFParams | None = None) -> None:
        self.params = params or SortedFParams()

    def _choose(self, view: ReplicaView, plan: Plan) -> tuple[list[int], list[int]]:
        if admission_blocked(view, plan):
            return [], []
        ids, chunks, keys = admissible_prefix(
            view, plan, self.name, self.params.kv_fraction
        )
        k = best_prefix(keys)
        return ids[:k], chunks[:k]
