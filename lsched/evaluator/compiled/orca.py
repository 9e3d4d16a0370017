"""``orca`` compiled: the rule of :mod:`lsched.policies.orca`, step for step.

``pp = [seq_cap, reserve_predicted, ceiling_tokens]``: the most requests running
(``min(max_num_seqs, max_batch)``), 1 for ``reserve="predicted"`` (0: ``"max"``),
and the reservation's ceiling ``L`` capped by the KV capacity. Stateless.
"""

from __future__ import annotations

from numba import njit

from lsched.evaluator.compiled import core as c
from lsched.evaluator.compiled.core import (
    B_DECODE,
    BLOCK_TOKENS,
    CAPACITY_BLOCKS,
    EMITTED,
    FRESH_HEAD,
    HELD_BLOCKS,
    MAX_SEQS,
    MAX_TOKENS,
    NEXT,
    NUM_DECODE,
    NUM_RUNNING,
    PREDICTED,
    PROCESSED,
    PROMPT,
    RUN_HEAD,
    RUN_TAIL,
    blocks,
)


@njit(cache=True, error_model="numpy")
def _reservation(req, r: int, pp, capacity_tokens: int) -> int:  # type: ignore[no-untyped-def]
    """Reserved tokens of ``r``: ``L`` or its predicted peak, never less than its
    whole prompt and never more than the capacity."""
    return _reserve(
        req[PROMPT, r], req[PREDICTED, r], req[EMITTED, r], pp[1], pp[2],
        capacity_tokens,
    )  # fmt: skip


@njit(cache=True, inline="always", error_model="numpy")
def _reserve(
    prompt: int, predicted: int, emitted: int, by_prediction: int, ceiling: int,
    capacity_tokens: int,
) -> int:  # fmt: skip
    tokens = min(prompt + predicted - 1, ceiling) if by_prediction else ceiling
    return min(max(tokens, prompt + emitted), capacity_tokens)


@njit(cache=True, error_model="numpy")
def decide(st, pp, ps) -> None:  # type: ignore[no-untyped-def]
    req, s = st[0], st[2]
    b, cap = s[BLOCK_TOKENS], s[CAPACITY_BLOCKS]
    capacity_tokens = cap * b
    by_prediction, ceiling = pp[1], pp[2]
    n = min(s[NUM_RUNNING], s[MAX_SEQS], s[MAX_TOKENS])
    # step 1: the first n running requests decode; the blocks reserved by all
    decode = st[4][B_DECODE]
    grow = reserved = k = 0
    r = s[RUN_HEAD]
    while r >= 0:
        p = req[PROCESSED, r]
        if k < n:
            grow += blocks(p + 1, b) - blocks(p, b)
            decode[k] = r
        res = _reserve(
            req[PROMPT, r], req[PREDICTED, r], req[EMITTED, r], by_prediction,
            ceiling, capacity_tokens,
        )  # fmt: skip
        reserved += blocks(max(res, p), b)
        k += 1
        r = req[NEXT, r]
    s[NUM_DECODE] = n
    if s[HELD_BLOCKS] + grow > cap:
        _preempting(st, n)
        return  # no admission in a step that preempts
    # step 2: whole prompts from the head of the waiting queue while reserved fit
    budget = s[MAX_TOKENS] - n
    seqs = s[NUM_RUNNING]
    cursor = (0, s[FRESH_HEAD])
    while seqs < pp[0]:
        w, cursor = c.next_waiting(st, cursor)
        if w < 0:
            break
        chunk = req[PROMPT, w] + req[EMITTED, w]
        need = blocks(_reservation(req, w, pp, capacity_tokens), b)
        if chunk > budget or reserved + need > cap:
            break
        c.push_prefill(st, w, chunk)
        reserved += need
        budget -= chunk
        seqs += 1


@njit(cache=True, error_model="numpy")
def _preempting(st, n: int) -> None:  # type: ignore[no-untyped-def]
    """A too-small prediction: the first ``n`` running requests decode with
    vLLM's newest-first recompute preemption where KV runs short."""
    req, s = st[0], st[2]
    b = s[BLOCK_TOKENS]
    s[NUM_DECODE] = 0
    used = s[HELD_BLOCKS]
    victim = s[RUN_TAIL]
    k = 0
    r = s[RUN_HEAD]
    while k < n:
        if not c.is_gone(st, r):
            p = req[PROCESSED, r]
            g = blocks(p + 1, b) - blocks(p, b)
            victim, used, _ = c.make_room(st, r, victim, used, 0, g, False)
            if not c.is_gone(st, r):
                used += g
        r = req[NEXT, r]
        k += 1
    k = 0
    r = s[RUN_HEAD]
    while k < n:
        if not c.is_gone(st, r):
            c.push_decode(st, r)
        r = req[NEXT, r]
        k += 1


@njit(cache=True, error_model="numpy")
def run(st, pieces, thresholds, switch, pp, ps) -> int:  # type: ignore[no-untyped-def]
    """Replay the replica to the end; an error code (0: none)."""
    while c.boundary(st):
        decide(st, pp, ps)
        err = c.apply(st, pieces, thresholds, switch)
        if err:
            return err
    return 0
