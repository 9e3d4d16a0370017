"""``vtc``: Virtual Token Counter fair sharing across tenants (Sheng et al. 2024).

Y. Sheng, S. Cao, D. Li, B. Zhu, Z. Li, D. Zhuo, J. E. Gonzalez, I. Stoica,
"Fairness in Serving Large Language Models", OSDI '24 (arXiv:2401.00588), the VTC
algorithm (their Algorithm 2), read together with the authors' reference
implementation ``slora/server/router/vtc_req_queue.py`` of
github.com/Ying1123/VTC-artifact (``VTCReqQueue``, linear cost function).

The rule
--------
Every tenant ``u`` (the instance's ``tenant`` column) has a counter ``c_u`` of the
weighted service it received on this replica:

- **admission** of a request of ``u`` with prompt ``s``: ``c_u += input_weight * s``
  (charged once per request; a recompute re-admission is not charged again, the
  recomputation is the system's cost, not service to the tenant);
- **every output token emitted** for ``u``: ``c_u += output_weight`` (the first
  token, emitted by the iteration that finishes the prefill, included);
- **lift**: when a request of ``u`` *arrives* while ``u`` has no waiting request,
  ``c_u = max(c_u, min{c_v : v != u has a waiting request})`` (unchanged if no
  other tenant is waiting). A tenant that was idle cannot bank credit.

A tenant is *backlogged* while it has a waiting (not yet admitted) request, as in
the artifact's per-tenant queues.

At every iteration boundary:

1. **Lifts** for the requests that arrived since the previous call, one at a time
   in arrival order (a preempted request back in the queue counts as waiting but
   triggers no lift: the paper lifts on arrival only).
2. **Running requests** exactly as :mod:`~lsched.policies.fcfs` (chunked prefill
   by the token budget, recompute preemption of the most recently admitted request
   on KV shortage; a step that preempted admits nothing).
3. **Admission** (the artifact's ``generate_new_batch``): repeatedly take the
   backlogged tenant with the smallest counter (ties: the tenant whose oldest
   waiting request arrived first), its oldest waiting request ``w``; admit it with
   a first chunk ``min(s_w + e_w, budget left)`` if the sequence cap, the token
   budget and the KV blocks allow, charge ``c_u``, and repeat; the first request
   that does not fit stops admission (head-of-line blocking in VTC order, as the
   artifact's ``break``).

Where this departs from the paper: counters are per replica (one policy object per
replica); lifts and admissions happen at iteration boundaries with the counters of
that boundary; the KV check is the iteration model's (fcfs) rather than S-LoRA's
reservation of each request's ``max_output_len``.

Fairness guarantee (the paper's Theorem: for two tenants ``f, g`` backlogged
during ``[t1, t2)``, ``|W_f(t1, t2) - W_g(t1, t2)| <= 2U`` with ``W`` the weighted
service and ``U = max(input_weight * L_input, output_weight * M)``, ``L_input`` the
longest prompt and ``M`` the most tokens a batch can hold); the tests check it on
a two-tenant overload case.

State and holding
-----------------
The service part of every counter is recomputed from the view at each call
(``input_weight * s_i`` over requests this policy admitted, ``output_weight * e_i``
over arrived requests), so it does not depend on how often ``decide`` is called.
The only other state (the lift offsets, the set of admitted requests and the
number of arrivals seen) changes only at calls that see an arrival or admit, which
happen at the same boundaries in every engine.

A decode-only batch that neither admits nor preempts is held only when admission
is blocked until an event: no waiting request, the sequence cap reached, the budget
used up, or no waiting request's first chunk fits in the KV left. (Otherwise the
counters, which grow with every decode step, could change which tenant is served
next and so the batch.) Until an event the waiting set, the scheduled running set
and the budget are fixed and KV only grows, so a blocked admission stays blocked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lsched.errors import InputError
from lsched.policies.base import Batch, IntArray, PolicyContext, ReplicaView
from lsched.policies.fcfs import Fcfs, FcfsParams


def _check_weight(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise InputError(f"got {value!r}; expected a number >= 0", field=name)
    if not (np.isfinite(value) and value >= 0):
        raise InputError(f"got {value}; expected a finite number >= 0", field=name)


@dataclass(frozen=True)
class VtcParams:
    """Parameters of :class:`Vtc`.

    Attributes
    ----------
    input_weight
        Counter charge per prompt token at admission (the paper's ``w_p``).
    output_weight
        Counter charge per output token emitted (the paper's ``w_q``; the paper's
        default, after OpenAI's prices, is twice the input weight).
    """

    input_weight: float = 1.0
    output_weight: float = 2.0

    def __post_init__(self) -> None:
        _check_weight(self.input_weight, "input_weight")
        _check_weight(self.output_weight, "output_weight")
        if self.input_weight == 0 and self.output_weight == 0:
            raise InputError(
                "input_weight and output_weight are both 0; expected one > 0",
                field="output_weight",
            )


class Vtc(Fcfs):
    """Virtual Token Counter: admit from the least-served backlogged tenant."""

    name = "vtc"

    def __init__(
        self, params: VtcParams | None = None, context: PolicyContext | None = None
    ) -> None:
        super().__init__(FcfsParams(chunked=True))
        self.vtc = params or VtcParams()
        # every tenant of the workload, sorted; None: taken from the replica's
        # tenant column at the first call (a policy built without a context)
        self._tenants = None if context is None else context.tenants
        self._codes = np.zeros(0, dtype=np.int64)  # tenant index per arrived request
        self._lift = np.zeros(0)  # lift offset per tenant
        self._charged = np.zeros(0, dtype=bool)  # admitted at least once
        self._seen = 0  # arrivals seen at the previous call
        self._blocked = True  # set by _admit: nothing can be admitted before an event

    # -- counters ----------------------------------------------------------------

    def _setup(self, view: ReplicaView) -> IntArray:
        """Tenant codes of the arrived requests (read only as they arrive, so the
        policy works on a replica whose requests are routed to it one by one)."""
        if view.tenant is None:
            raise InputError(
                "policy 'vtc' shares service across tenants but the instance "
                "has no tenant column",
                field="tenant",
            )
        if self._tenants is None:
            self._tenants = tuple(str(t) for t in np.unique(view.tenant))
        if len(self._lift) == 0:
            self._lift = np.zeros(len(self._tenants))
            self._charged = np.zeros(len(view.tenant), dtype=bool)
        seen, n = len(self._codes), view.num_arrived
        if n > seen:
            names = np.asarray(view.tenant[seen:n]).astype(str)
            new = np.searchsorted(np.array(self._tenants), names).astype(np.int64)
            self._codes = np.concatenate([self._codes, new])
        return self._codes

    def counters(self, view: ReplicaView) -> np.ndarray:
        """Every tenant's counter ``c_u`` at this boundary (indexed by tenant code)."""
        codes = self._setup(view)
        n = view.num_arrived
        p = self.vtc
        served = np.where(self._charged[:n], p.input_weight * view.prompt_tokens[:n], 0)
        served = served + p.output_weight * view.emitted_tokens[:n]
        return self._lift + np.bincount(
            codes[:n], weights=served, minlength=len(self._lift)
        )

    def _apply_lifts(self, view: ReplicaView) -> None:
        """Step 1: lift the counter of each tenant a new arrival makes backlogged."""
        codes = self._setup(view)
        new = range(self._seen, view.num_arrived)
        self._seen = view.num_arrived
        if not new:
            return
        counters = self.counters(view)
        old = view.waiting[view.waiting < new.start]
        queued = np.bincount(codes[old], minlength=len(self._lift))
        for r in new:
            u = int(codes[r])
            if queued[u] == 0:
                others = (queued > 0) & (np.arange(len(queued)) != u)
                if others.any():
                    floor = float(counters[others].min())
                    if floor > counters[u]:
                        self._lift[u] += floor - counters[u]
                        counters[u] = floor
            queued[u] += 1

    # -- the policy ----------------------------------------------------------------

    def decide(self, view: ReplicaView) -> Batch:
        self._apply_lifts(view)
        self._blocked = True
        batch = super().decide(view)
        if batch.hold and not self._blocked:
            return Batch(decode=batch.decode)
        return batch

    def _admit(
        self, view: ReplicaView, seqs: int, used: int, budget: int
    ) -> tuple[list[int], list[int]]:
        """Step 3: admit from the least-served backlogged tenant while it fits."""
        limits = view.limits
        admitted: list[int] = []
        chunks: list[int] = []
        waiting = view.waiting
        if len(waiting) == 0 or seqs >= limits.max_num_seqs or budget == 0:
            return admitted, chunks  # blocked until an event
        first = np.minimum(
            view.prompt_tokens[waiting] + view.emitted_tokens[waiting], budget
        )
        kv = view.kv
        capacity = kv.capacity_blocks
        if int(kv.blocks(first).min()) + used > capacity:
            return admitted, chunks  # nothing fits, and KV only grows until an event
        self._blocked = False
        codes = self._setup(view)
        counters = self.counters(view)
        queues: dict[int, list[int]] = {}
        for w in waiting.tolist():
            queues.setdefault(int(codes[w]), []).append(w)
        for q in queues.values():
            q.reverse()  # pop() gives the oldest
        while queues and seqs < limits.max_num_seqs and budget > 0:
            u = min(queues, key=lambda t: (counters[t], queues[t][-1]))
            w = queues[u][-1]
            c = min(int(view.prompt_tokens[w] + view.emitted_tokens[w]), budget)
            grow = kv.blocks(c)
            if used + grow > capacity:
                break
            queues[u].pop()
            if not queues[u]:
                del queues[u]
            if not self._charged[w]:
                self._charged[w] = True
                counters[u] += self.vtc.input_weight * float(view.prompt_tokens[w])
            admitted.append(w)
            chunks.append(c)
            used += grow
            budget -= c
            seqs += 1
        return admitted, chunks
