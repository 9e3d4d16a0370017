"""Requests that do not fit ``max_model_len`` (DESIGN.md, "Rejection").

A serving engine refuses a prompt longer than its context and stops a sequence
that reaches it; lsched's replay does the same, once, before any replica runs:

1. **Rejection.** A request whose prompt has ``s_i > L`` tokens is rejected at
   arrival and never routed; it is counted (``num_rejected``) with the reason
   ``prompt s_i tokens > max_model_len L``. Source: vLLM V0,
   ``Scheduler._schedule_prefills`` (``vllm/core/scheduler.py``) marks a waiting
   prompt longer than its prompt limit ``FINISHED_IGNORED`` ("Input prompt (%d
   tokens) is too long and exceeds limit of %d") and never schedules it.
   (vLLM V0's limit is ``min(max_model_len, max_num_batched_tokens)`` without
   chunked prefill; lsched rejects on ``max_model_len`` alone and leaves a
   prompt over the token budget to the policy: one that prefills whole prompts
   then stalls, and the stall names the request and the limit it breaks.)
2. **Truncation.** A served request emits at most ``L - s_i + 1`` tokens:
   vLLM V0's ``StopChecker.maybe_stop_sequence``
   (``vllm/engine/output_processor/stop_checker.py``) finishes a sequence with
   ``FINISHED_LENGTH_CAPPED`` as soon as ``seq.get_len() > max_model_len``
   (prompt plus the output tokens so far), i.e. after the token that brings it
   to ``L + 1`` tokens. So the request emits ``o_i' = min(o_i, L - s_i + 1)``
   tokens and its KV peaks at ``s_i + o_i' - 1 <= L`` tokens. The engines run it
   with ``o_i'``; its record keeps ``truncated_tokens = o_i - o_i'`` and the run
   counts the requests cut (``num_truncated``). Latency, TPOT and throughput
   count the tokens emitted. (vLLM V1's ``check_stop`` caps one token earlier,
   at ``num_tokens >= max_model_len``; lsched follows V0, the engine its
   policies are ported from.)

A predicted output length is capped the same way, ``min(pred, L - s_i + 1)``: a
predictor that knows the engine knows the cap (as in
:mod:`lsched.traces.transform`).

``L`` is the ``max_model_len`` of the request's pool's profile. On a cluster
whose pools differ it is the smallest over the pools, for every request: a
router may send a request to any pool, and lsched takes the conservative choice
rather than letting the route decide what the request is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lsched.errors import InputError
from lsched.instance import Instance


@dataclass(frozen=True)
class LengthCut:
    """An instance cut to ``max_model_len`` (module docstring).

    Attributes
    ----------
    max_model_len
        ``L``.
    served
        The instance the engines run: outputs ``min(o_i, L - s_i + 1)`` and
        predictions capped alike; a rejected request keeps its own (it never
        runs). ``served is instance`` when nothing changes.
    rejected
        Per request, ``s_i > L``.
    truncated
        Per request, the tokens cut, ``o_i - o_i'`` (0 for a rejected request).
    """

    max_model_len: int
    served: Instance
    rejected: np.ndarray
    truncated: np.ndarray

    @property
    def reasons(self) -> dict[int, str]:
        """The reason of every request rejected for length."""
        prompt, cap = self.served.prompt_tokens, self.max_model_len
        return {
            i: rejection_reason(int(prompt[i]), cap)
            for i in np.flatnonzero(self.rejected).tolist()
        }

    @property
    def admitted(self) -> np.ndarray:
        """Positions of the requests not rejected for length."""
        return np.flatnonzero(~self.rejected)


def rejection_reason(prompt: int, max_model_len: int) -> str:
    """The ``rejected`` text of a prompt over ``max_model_len``."""
    return f"prompt {prompt} tokens > max_model_len {max_model_len}"


def cluster_max_model_len(cluster: Any) -> int:
    """``L`` of a cluster: the smallest ``max_model_len`` over its pools."""
    return min(int(pool.profile.max_model_len) for pool in cluster.pools)


def cut_to_length(instance: Instance, max_model_len: int) -> LengthCut:
    """Reject the prompts over ``max_model_len`` and cap the outputs (module
    docstring)."""
    cap = int(max_model_len)
    prompt, output = instance.prompt_tokens, instance.output_tokens
    rejected = prompt > cap
    room = cap - prompt + 1  # tokens a served request may emit
    emitted = np.where(rejected, output, np.minimum(output, room))
    truncated = np.where(rejected, 0, output - emitted).astype(np.int64)
    changes: dict[str, np.ndarray] = {}
    if truncated.any():
        changes["output_tokens"] = emitted
    predicted = instance.predicted_output_tokens
    if predicted is not None:
        capped = np.where(rejected, predicted, np.minimum(predicted, room))
        if (capped != predicted).any():
            changes["predicted_output_tokens"] = capped
    served = instance.replace(**changes) if changes else instance
    for array in (rejected, truncated):
        array.flags.writeable = False
    return LengthCut(cap, served, rejected, truncated)


def served_requests(instance: Instance, max_model_len: int) -> Instance:
    """The requests as the evaluator serves them at ``max_model_len``: prompts
    over it left out, outputs (and predictions) cut; ``instance`` itself when
    nothing changes. For comparisons that must see the same requests in every
    run (bounds, offline solves and policies: DESIGN.md, "Rejection")."""
    cut = cut_to_length(instance, max_model_len)
    if not cut.rejected.any():
        return cut.served
    if cut.rejected.all():
        raise InputError(
            f"every prompt is over max_model_len {cut.max_model_len}: no request "
            "can be served",
            field="max_model_len",
        )
    return cut.served.subset(cut.admitted)
