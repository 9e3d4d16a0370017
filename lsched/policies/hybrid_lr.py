"""``hybrid-lr``: Pang et al.'s hybrid method, re-derived from the time model.

B. Pang, K. Li, R. She, F. Wang, "Hybrid Offline-online Scheduling Method for
Large Language Model Inference Optimization", arXiv:2502.15763 (2025): an offline
bin packing of the requests over the clients, then per client an online rule
(sorted order, preemption, and a Lagrangian comparison of inserting prefills
against continuing the decodes at every iteration). Their formula was not
reachable from this project; :mod:`lsched.policies.hybrid` is one reading of it
that loses to the vLLM baseline in their setting (see that module for why). This
module derives the online rule again, from a relaxation of the *makespan*
problem with the deployment's own iteration-time model, and every step of the
derivation is this project's.

Derivation
----------
1. **Problem (one client, its requests fixed by the offline stage).** Iterations
   ``t = 1..T``; iteration ``t`` runs ``P_t`` prefill tokens (attention pairs
   ``Q_t``), ``D_t`` decode steps reading ``K_t`` KV tokens, and holds ``KV_t``
   tokens. On a roofline profile (such as ``llama-65b-pang2025``) its duration is
   the max of a compute piece and a memory piece::

       min  sum_t tau_t
       s.t. tau_t >= a (P_t + D_t) + b (Q_t + K_t)        (compute; mu_t)
            tau_t >= m0 + m1 (K_t + P_t)                  (memory;  nu_t)
            KV_t  <= M                                    (KV;  lambda_t)
            every prompt prefilled, then decoded o_i times, one step per
            iteration.

   With all requests present at ``t = 0`` the busy time is the makespan.
2. **Relaxation.** Dualise the three constraints. Stationarity in ``tau_t`` gives
   ``mu_t + nu_t = 1``; complementary slackness gives ``mu_t = 1`` where the
   compute piece binds (compute-bound iteration), ``nu_t = 1`` where the memory
   piece binds::

       L = sum_t [ mu_t (a (P_t + D_t) + b (Q_t + K_t))
                 + nu_t (m0 + m1 (K_t + P_t)) + lambda_t (KV_t - M) ].

3. **Price of a prefill token in iteration t** (the Lagrangian's derivative):
   ``mu_t a + nu_t m1`` (plus the KV it will hold, priced by ``lambda``). In a
   memory-bound iteration (``nu_t = 1``) it costs ``m1`` (5.12e-7 s on
   ``llama-65b-pang2025``, 400 times less than ``a`` = 2.03e-4 s): nearly free.
   In a compute-bound one it costs ``a`` there *or in any later compute-bound
   iteration*: the prompt must be processed anyway, so beyond the point where the
   iteration turns compute-bound inserting now and deferring cost the same.
   Hence the comparison of inserting prefill against decoding: **insert prefill
   tokens into every iteration up to its balance point** ``N_t``, the token load
   at which ``mu_t`` switches from 0 to 1,

       a (P + D_t) + b (Q + K_t) = m0 + m1 (K_t + P),

   and no further: the prefill supply is finite, and each token spent past the
   balance point is one less to fill the slack of a later iteration, which then
   runs memory-bound (decode-only iterations are the waste: ``m0 + m1 K`` seconds
   for ``D`` steps whose compute is ``a D``).
4. **KV multiplier.** ``lambda_t`` prices the KV a request will hold. With
   predicted output lengths the relaxed problem's KV trajectory of the running
   requests is known (member ``j`` holds ``s_j + e_j + k - 1`` tokens in the
   ``k``-th iteration from now until it completes), so the dual step is exact:
   ``lambda = 0`` while the predicted peak of the running set plus the newcomer
   stays within ``M`` (complementary slackness), and the newcomer is refused
   otherwise (the subgradient step ``lambda <- max(0, lambda + s (peak / M -
   1))`` in the limit ``s -> infinity``: any positive violation prices it out).
   This is the future-KV check of :mod:`lsched.policies.mc_sf`. In this setting
   filling to the balance point keeps some 20 requests in flight, far from ``M``,
   so ``lambda`` stays 0 and no request is preempted.
5. **Order (the "online sorting").** Once the last prompt is prefilled, the
   remaining iterations are decode-only and memory-bound: their number is the
   largest remaining output of the requests then running. Admitting the longest
   predicted outputs first (longest processing time, LPT) leaves the short ones
   for the end and shortens that tail; Pang et al.'s rule sorts too, and
   ``order=shortest`` gives the ascending order for comparison.
6. **Preemption.** Where predictions underestimate and the actual next iteration
   would overflow the KV, the running request with the longest predicted
   remaining output is recompute-preempted (:func:`lsched.policies.sjf.shed`) and
   nothing is admitted in that step.

The rule, at every iteration boundary
-------------------------------------
1. Every running request that has finished its prefill decodes one step (``D``,
   reading ``K`` = the KV tokens they hold).
2. The prefill target is ``N = max(0, ceil((m0 + (m1 - b) K - a D) / (a - m1)))``
   tokens (the balance point of step 3, ``Q`` left out; at least
   ``min_prefill_tokens`` when nothing decodes, so an idle replica starts),
   capped by the token budget ``max_num_batched_tokens - D``. On
   ``llama-65b-pang2025`` that is 125 tokens with nothing decoding and an empty
   KV, about 140 to 230 in this setting.
3. Running requests still prefilling get chunks of it first (admission order);
   then waiting requests, longest predicted output first, are admitted with a
   chunk of what is left while the sequence cap, the KV blocks of this iteration
   and the predicted future KV allow (step 4); the first that fails stops
   admission. An idle replica admits its head whatever the prediction.
4. Holding: a decode-only batch is held when nothing waits (or the sequence cap
   binds); until a completion nothing changes the decision.

Measured (issue 23; ``./run python benchmarks/bounds/trace_pang.py --seeds 0 1 2
--packing --policies hybrid-lr hybrid-lr:order=shortest vllm hybrid``): on the
bin packing's replicas the mean makespan of seeds 0-2 is 87.6 s against 113.4 s
for ``vllm`` and 124.3 s for ``hybrid`` (bounds 86.6-87.0 s). Prefill chunks of
~140 tokens ride with ~16 decode steps; 99.3 % of the time is compute-bound
(``vllm`` 82.3 %); 41 decode-only iterations instead of ~1,200; KV at 33 %
(``lambda = 0`` throughout) and no preemption. With ``order=shortest`` the
makespan is 94.3 s: the last prompts are then the longest outputs, and the
decode-only tail after them grows from 0.6 s to 8.2 s.

The coefficients ``a, b, m0, m1`` are parameters because a policy sees the
limits, not the cost model (:class:`~lsched.policies.base.ReplicaView`); the
defaults are those of ``llama-65b-pang2025`` and :func:`roofline_params` reads them
from any profile whose iteration time is such a two-piece roofline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lsched.errors import InputError
from lsched.policies.base import Batch, ReplicaView
from lsched.policies.mc_sf import FutureKv
from lsched.policies.sjf import predicted_remaining, shed

# llama-65b-pang2025's pieces (models/llama-65b-pang2025.toml)
_A = 2.03194368e-04
_B = 4.096e-09
_M0 = 0.0255022112
_M1 = 5.12e-07


def _check_positive(value: object, name: str, *, strict: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"got {value!r}; expected a number", field=name)
    if not math.isfinite(value) or value < 0 or (strict and value == 0):
        bound = "> 0" if strict else ">= 0"
        raise InputError(f"got {value}; expected a finite number {bound}", field=name)


@dataclass(frozen=True)
class HybridLrParams:
    """Parameters of :class:`HybridLr` (module docstring, step 1).

    Attributes
    ----------
    token_s
        ``a``: compute seconds per prefill token or decode step.
    attention_s
        ``b``: compute seconds per KV token read by a decode step.
    overhead_s
        ``m0``: memory-piece constant (weights read once per iteration).
    kv_s
        ``m1``: memory seconds per KV token read or written.
    min_prefill_tokens
        Prefill tokens of an iteration with nothing decoding (an idle replica).
    order
        ``longest`` (LPT, the derivation's step 5) or ``shortest`` predicted
        output first.
    """

    token_s: float = _A
    attention_s: float = _B
    overhead_s: float = _M0
    kv_s: float = _M1
    min_prefill_tokens: int = 1
    order: str = "longest"

    def __post_init__(self) -> None:
        _check_positive(self.token_s, "token_s", strict=True)
        _check_positive(self.attention_s, "attention_s")
        _check_positive(self.overhead_s, "overhead_s")
        _check_positive(self.kv_s, "kv_s")
        if not self.kv_s < self.token_s:
            raise InputError(
                f"got kv_s {self.kv_s} >= token_s {self.token_s}; a prefill token "
                "must cost more compute than memory time",
                field="kv_s",
            )
        value = self.min_prefill_tokens
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(
                f"got {value!r}; expected an integer >= 1", field="min_prefill_tokens"
            )
        if self.order not in ("longest", "shortest"):
            raise InputError(
                f"got {self.order!r}; expected longest or shortest", field="order"
            )


def roofline_params(profile: object) -> dict[str, float]:
    """``token_s, attention_s, overhead_s, kv_s`` of a two-piece roofline profile.

    The profile's single regime must be the max of a compute piece (no constant,
    equal prefill-token and decode-step coefficients) and a memory piece (a
    constant and a KV-read coefficient), as in ``llama-65b-pang2025``.

    Raises
    ------
    InputError
        If the profile's iteration time is not of that form.
    """
    time = profile.iteration_time  # type: ignore[attr-defined]
    if len(time.regimes) != 1 or time.regimes[0].shape[0] != 2:
        raise InputError("expected one regime of two pieces", field="iteration_time")
    # columns: const, prefill_tokens, prefill_attention, decode_steps, kv_read, ...
    pieces = sorted(time.regimes[0].tolist(), key=lambda row: row[0])
    compute, memory = pieces
    if compute[0] != 0 or compute[1] != compute[3] or memory[0] <= 0:
        raise InputError(
            "expected a compute piece and a memory piece", field="iteration_time"
        )
    return {
        "token_s": compute[1],
        "attention_s": compute[4],
        "overhead_s": memory[0],
        "kv_s": memory[4],
    }


def roofline_spec(profile: object, **extra: object) -> str:
    """The ``hybrid-lr:...`` policy text with ``profile``'s coefficients."""
    params = {**roofline_params(profile), **extra}
    return "hybrid-lr:" + ",".join(f"{k}={v!r}" for k, v in params.items())


class HybridLr:
    """Offline order + fill every iteration to its balance point with prefill."""

    name = "hybrid-lr"

    def __init__(self, params: HybridLrParams | None = None) -> None:
        self.params = params or HybridLrParams()

    def prefill_target(self, decode_steps: int, kv_read_tokens: int) -> int:
        """``N``: prefill tokens that bring the iteration to its balance point."""
        p = self.params
        slack = p.overhead_s + (p.kv_s - p.attention_s) * kv_read_tokens
        slack -= p.token_s * decode_steps
        tokens = max(0, math.ceil(slack / (p.token_s - p.kv_s)))
        if decode_steps == 0:
            tokens = max(tokens, p.min_prefill_tokens)
        return tokens

    def decide(self, view: ReplicaView) -> Batch:
        key = predicted_remaining(view, view.running, self.name)
        plan, victims = shed(view, key)
        if victims:
            # as sjf: the plan's work for the survivors, nothing admitted
            kept = plan.work > 0
            ids, work = plan.running[kept], plan.work[kept]
            pre = view.prefill_target_tokens[ids] > view.processed_tokens[ids]
            return Batch(
                prefill=ids[pre],
                prefill_tokens=work[pre],
                decode=ids[~pre],
                preempt=np.array(victims, np.int64),
            )
        return self._plan(view, key)

    def _plan(self, view: ReplicaView, key: np.ndarray) -> Batch:
        limits = view.limits
        kv = view.kv
        running = view.running
        processed = view.processed_tokens[running]
        left = view.prefill_target_tokens[running] - processed
        prefilling = left > 0
        decode = running[~prefilling]
        k_read = int(processed[~prefilling].sum())
        budget = limits.max_num_batched_tokens - len(decode)
        target = min(self.prefill_target(len(decode), k_read), budget)
        ids: list[int] = []
        chunks: list[int] = []
        # continuing prefills first, in admission order
        work = np.zeros(len(running), np.int64)
        work[~prefilling] = 1
        for k in np.flatnonzero(prefilling).tolist():
            if target == 0:
                break
            c = min(int(left[k]), target)
            work[k] = c
            ids.append(int(running[k]))
            chunks.append(c)
            target -= c
        used = int(kv.blocks(processed + work).sum())
        admitted = 0
        waiting = view.waiting
        seqs = len(running)
        if target > 0 and len(waiting) and seqs < limits.max_num_seqs:
            remaining = predicted_remaining(view, waiting, self.name)
            sign = -1 if self.params.order == "longest" else 1
            order = np.argsort(sign * remaining, kind="stable")
            base = view.prompt_tokens[running] + view.emitted_tokens[running] - 1
            future = FutureKv(base, key, kv, kv.capacity_blocks)
            for k in order.tolist():
                if target == 0 or seqs >= limits.max_num_seqs:
                    break
                w = int(waiting[k])
                c = min(int(view.prompt_tokens[w] + view.emitted_tokens[w]), target)
                grow = int(kv.blocks(c))
                if used + grow > kv.capacity_blocks:
                    break
                r = int(remaining[k])
                b = int(view.prompt_tokens[w] + view.emitted_tokens[w]) - 1
                ok, checkpoints, loads = future.fits(b, r)
                if not ok and not (seqs == 0 and admitted == 0):
                    break
                future.add(b, r, checkpoints, loads)
                ids.append(w)
                chunks.append(c)
                used, seqs, target = used + grow, seqs + 1, target - c
                admitted += 1
        if not ids:
            hold = len(waiting) == 0 or seqs >= limits.max_num_seqs
            return Batch(decode=decode, hold=hold)
        return Batch(
            prefill=np.array(ids, np.int64),
            prefill_tokens=np.array(chunks, np.int64),
            decode=decode,
        )
