"""``hybrid``: offline sort, preemptive online batching, Lagrangian prefill insertion.

Y. Pang et al., "Hybrid Offline-online Scheduling Method for Large Language Model
Inference Optimization", 2025: requests are first ordered offline (by predicted
output length), then scheduled online iteration by iteration with preemption, and
at every iteration a Lagrangian comparison decides whether to insert prefills
into the batch or to keep decoding. Their exact formula is not in this project's
sources; the rule below is *derived* here from a Lagrangian relaxation, and every
step of the derivation is this project's.

Derivation
----------
1. **Problem.** One replica, iterations ``t = 1..T``. Minimise the busy time
   ``sum_t tau_t`` (with a backlog, the makespan) plus the delay the batch's
   requests suffer, subject to ``KV_t <= M`` (KV tokens held, capacity) in every
   iteration. The policy cannot see the cost model (:class:`ReplicaView` has only
   the limits), so iteration time is measured in *token units* through the token
   budget proxy ``tau_t = A + (P_t + D_t)``: ``A`` tokens of fixed per-iteration
   cost (``overhead_tokens``) plus one unit per prefill token or decode step.
2. **Relaxation.** Price the KV constraint with a multiplier ``lambda >= 0`` per
   unit of *capacity-iteration* (holding all of ``M`` for one iteration):
   ``L(lambda) = sum_t [tau_t + theta * d_t * P_t + lambda * (KV_t / M - rho)]``,
   with ``d_t`` the requests already in the batch that a prefill delays,
   ``theta`` the weight of that delay (``delay_weight``) and ``rho`` the target
   utilisation (``target_kv``; ``rho < 1`` keeps the subgradient from being
   always negative, since the engine never lets ``KV_t`` exceed ``M``).
3. **Marginal value of inserting waiting request ``w`` now** (first chunk ``c_w``
   tokens, predicted remaining output ``r_w``) versus deferring it, with everything
   else fixed (a myopic, one-request exchange argument):
   - its prefill tokens ``c_w`` are paid either way (the same ``P`` term later);
   - its ``r_w`` decode steps fill idle slots of iterations that run anyway: the
     running batch runs for ``H`` more iterations (``H`` = the largest predicted
     remaining output among running and already inserted requests), so
     ``min(r_w, H)`` of its steps share their fixed cost ``A`` instead of paying
     it in iterations of their own later: a saving of ``A * min(r_w, H)``;
   - the prefill lengthens this iteration for each of the ``d`` requests already
     in it: a cost ``theta * c_w * d``;
   - it holds KV from now on: ``sum_{j=1..r_w} (s_w + e_w + j - 1)`` token-
     iterations, priced ``lambda / M``; deferred, the same KV is held later,
     when (myopically) the price is taken to be 0.
4. **Rule.** Insert ``w`` iff the Lagrangian benefit
   ``Delta_w = A * min(r_w, H) - theta * c_w * d - lambda * KV_w / M > 0``.
   On an idle replica (nothing running) deferring only leaves the replica idle,
   which adds to the makespan, so the head is inserted whatever ``Delta``.
5. **Multiplier.** After each decision that is not held, ``lambda`` takes a
   projected subgradient step on the observed KV use: ``lambda <- max(0, lambda +
   step * (u - rho))`` with ``u`` the share of the KV blocks held after the
   planned batch. When KV runs above ``rho`` the price rises and fewer, shorter
   requests are inserted; below it the price falls back to 0.

The rule, at every iteration boundary
-------------------------------------
1. **Offline sort**: waiting requests in ascending predicted remaining output
   ``r_w = max(pred_w - e_w, 1)`` (:func:`lsched.policies.sjf.predicted_remaining`;
   predictions needed), ties by arrival.
2. **Preemptive online step**: running requests as :mod:`~lsched.policies.sjf`
   (chunked prefill by the token budget; on KV shortage recompute-preempt the
   longest predicted remaining output and insert nothing in that step).
3. **Insertion**: in the sorted order, each ``w`` whose first chunk fits the
   sequence cap, the token budget and the next iteration's KV is inserted iff
   ``Delta_w > 0`` (with ``d`` and ``H`` updated by each insertion; the idle
   exception above); the first that fails stops insertion.
4. **Multiplier step** (derivation, step 5).

Why it loses in the Pang et al. 2025 setting (issue 23)
-------------------------------------------------------
In :mod:`lsched.studies.pang2025` (1,000 GSM8K-like requests at ``t = 0``, two
``llama-65b-pang2025`` replicas) this rule is about 9 % *slower* than the vLLM
baseline, where Pang et al. report 5 % faster. Traces of seeds 0-2
(``./run python benchmarks/bounds/trace_pang.py --seeds 0 1 2 --packing
--policies hybrid vllm``; makespans of the packing, time summed over both
replicas):

=============================  =========  =========
figure (mean of seeds 0-2)     ``vllm``   ``hybrid``
=============================  =========  =========
makespan (s)                   113.4      124.3
decode-only iterations         1,181      2,045
time in decode-only iter. (s)  49.6       82.5
decode steps per iteration     45.1       27.6
KV utilisation (time mean)     91.6 %     57.0 %
compute-bound share of time    82.3 %     72.7 %
=============================  =========  =========

The rule holds prefills back: KV sits 43 % empty, the batch decodes 28 requests
instead of 45, and the extra decode-only iterations run memory-bound (about
0.04 s for a few dozen steps whose compute is under 0.01 s). At its ~500 refusals
per run (``Delta_w <= 0``):

- **``H`` caps the gain in 99 % of them** (median ``H`` = 16 against ``r_w`` = 57):
  with the ascending offline sort the running batch holds the shortest
  requests, so ``A min(r_w, H)`` is small exactly when the queue holds the
  longer ones;
- **``theta c_w d`` alone outweighs the gain in 95-98 %** (median 1,930 against
  1,020 token units): whole ~760-token GSM8K prompts times ~25 running requests;
  these refusals stand with ``lambda = 0``;
- ``lambda`` is positive in 73-75 % of them but decides only 2-5 %.

The deeper cause is the objective: in token units with a fixed cost ``A`` per
iteration, a prefill token always costs one unit and delays the batch. On a
roofline profile it costs almost nothing while the iteration is memory-bound
(decodes alone leave the compute units idle) and the same in any compute-bound
iteration; and delaying running requests by a prefill does not lengthen the
makespan. :mod:`lsched.policies.hybrid_lr` derives the rule again from that
model and beats the baseline by ~23 %. This rule is kept as ``hybrid``: it is a
faithful reading of the paper's description (sort, preempt, Lagrangian insert
vs decode) that simply loses here.

Holding and state: a decode-only batch that inserts nothing is held. Until an
event, ``H`` only shrinks, ``d``, ``c_w``, ``r_w`` and the order stay fixed, KV only
grows and ``lambda`` does not change (it moves only at calls whose batch is not
held, which every engine makes at the same boundaries), so ``Delta`` of the head
only falls and a refusal stands.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lsched.errors import InputError
from lsched.policies.base import Batch, ReplicaView
from lsched.policies.sjf import Plan, first_chunk, predicted_remaining, shed, to_batch


def _check_number(value: object, name: str, *, upper: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"got {value!r}; expected a number", field=name)
    if not (math.isfinite(value) and value >= 0):
        raise InputError(f"got {value}; expected a finite number >= 0", field=name)
    if upper is not None and not value <= upper:
        raise InputError(f"got {value}; expected 0 <= {name} <= {upper}", field=name)


@dataclass(frozen=True)
class HybridParams:
    """Parameters of :class:`Hybrid` (the module docstring derives each).

    Attributes
    ----------
    overhead_tokens
        ``A``: fixed cost of one iteration in token units (prefill tokens or
        decode steps of equal time).
    delay_weight
        ``theta``: cost per prefill token per request already in the batch.
    lambda0
        Initial KV multiplier ``lambda`` (per capacity-iteration, token units).
    step
        Subgradient step size for ``lambda``.
    target_kv
        ``rho``: KV utilisation, in [0, 1], above which ``lambda`` rises.
    """

    overhead_tokens: float = 64.0
    delay_weight: float = 0.1
    lambda0: float = 0.0
    step: float = 1000.0
    target_kv: float = 0.9

    def __post_init__(self) -> None:
        _check_number(self.overhead_tokens, "overhead_tokens")
        _check_number(self.delay_weight, "delay_weight")
        _check_number(self.lambda0, "lambda0")
        _check_number(self.step, "step")
        _check_number(self.target_kv, "target_kv", upper=1.0)


def kv_token_iterations(base: int, remaining: int) -> float:
    """``sum_{j=1..r} (base + j)``: predicted KV token-iterations (``base = s+e-1``)."""
    return remaining * base + remaining * (remaining + 1) / 2


class Hybrid:
    """Offline sort + preemptive online batching + Lagrangian prefill insertion."""

    name = "hybrid"

    def __init__(self, params: HybridParams | None = None) -> None:
        self.params = params or HybridParams()
        self.lam = float(self.params.lambda0)

    def benefit(
        self, c: int, remaining: int, base: int, d: int, horizon: int, kv_tokens: int
    ) -> float:
        """``Delta_w`` of the derivation (step 4), in token units."""
        p = self.params
        gain = p.overhead_tokens * min(remaining, horizon)
        delay = p.delay_weight * c * d
        price = self.lam * kv_token_iterations(base, remaining) / kv_tokens
        return gain - delay - price

    def decide(self, view: ReplicaView) -> Batch:
        key = predicted_remaining(view, view.running, self.name)
        plan, victims = shed(view, key)
        if victims:
            batch = to_batch(view, plan, [], [], victims, hold_ok=False)
        else:
            ids, chunks = self._insert(view, plan, key)
            batch = to_batch(view, plan, ids, chunks, [], hold_ok=True)
        if not batch.hold:
            self._step(view, batch)
        return batch

    def _insert(
        self, view: ReplicaView, plan: Plan, key: np.ndarray
    ) -> tuple[list[int], list[int]]:
        """Step 3: insert in the sorted order while feasible and ``Delta > 0``."""
        limits = view.limits
        ids: list[int] = []
        chunks: list[int] = []
        waiting = view.waiting
        if len(waiting) == 0:
            return ids, chunks
        kept = np.isin(view.running, plan.running)
        horizon = int(key[kept].max()) if kept.any() else 0
        d = int((plan.work > 0).sum())
        kv = view.kv
        kv_tokens = kv.capacity_tokens
        remaining = predicted_remaining(view, waiting, self.name)
        order = np.argsort(remaining, kind="stable")
        seqs, used, budget = len(plan.running), plan.used, plan.budget_left
        for k in order.tolist():
            w = int(waiting[k])
            if seqs >= limits.max_num_seqs or budget == 0:
                break
            c = first_chunk(view, w, budget)
            grow = kv.blocks(c)
            if used + grow > kv.capacity_blocks:
                break
            r = int(remaining[k])
            base = int(view.prompt_tokens[w] + view.emitted_tokens[w]) - 1
            idle = len(plan.running) == 0 and not ids
            if not idle and self.benefit(c, r, base, d, horizon, kv_tokens) <= 0:
                break
            ids.append(w)
            chunks.append(c)
            seqs, used, budget = seqs + 1, used + grow, budget - c
            d += 1
            horizon = max(horizon, r)
        return ids, chunks

    def _step(self, view: ReplicaView, batch: Batch) -> None:
        """Step 4: projected subgradient step on the KV use after ``batch``."""
        kv = view.kv
        after = view.processed_tokens.copy()
        after[batch.preempt] = 0
        after[batch.decode] += 1
        after[batch.prefill] += batch.prefill_tokens
        ids = np.concatenate(
            [view.running[~np.isin(view.running, batch.preempt)], batch.prefill]
        )
        used = int(kv.blocks(after[np.unique(ids)]).sum())
        u = used / kv.capacity_blocks
        p = self.params
        self.lam = max(0.0, self.lam + p.step * (u - p.target_kv))
