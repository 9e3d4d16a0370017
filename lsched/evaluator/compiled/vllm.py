"""``vllm`` compiled: the rule of :mod:`lsched.policies.vllm`, step for step.

``pp = [long_prefill_token_threshold]`` (0: no cap on a prefill chunk). No float
parameters, stateless. Only the FCFS queues are ported: with ``priority=true`` the
waiting queue and the victims are ordered by the instance's ``priority`` column,
which the kernels are not given, so :func:`~lsched.evaluator.compiled.kernel_for`
sends that rule to the Python path.

The three ways :meth:`Vllm.decide <lsched.policies.vllm.Vllm.decide>` plans the
running requests are kept apart, as there:

- nothing prefilling and every running request within the budget: each decodes
  one token, if that fits in KV;
- otherwise, each in admission order takes ``min(want, budget left)`` (``want``
  the remaining prefill, capped by the threshold, or 1), if the total fits;
- else :func:`~lsched.policies.vllm.running_pass`: one at a time with newest-first
  recompute preemption, admitting nothing if anything was preempted.

Blocks are counted as held blocks plus those the batch opens (``s[HELD_BLOCKS]``
is exact), which is the Python rule's ``sum blocks(processed + work)``.
"""

from __future__ import annotations

from numba import njit

from lsched.evaluator.compiled import core as c
from lsched.evaluator.compiled.core import (
    B_CHUNK,
    B_DECODE,
    B_PREFILL,
    BLOCK_TOKENS,
    CAPACITY_BLOCKS,
    EMITTED,
    EXTRA_BLOCKS,
    FRESH_HEAD,
    HELD_BLOCKS,
    MAX_SEQS,
    MAX_TOKENS,
    NEXT,
    NUM_DECODE,
    NUM_PREEMPT,
    NUM_PREFILL,
    NUM_PREFILLING,
    NUM_RUNNING,
    PLAN_TOKENS,
    PLANNED,
    PROCESSED,
    PROMPT,
    RUN_HEAD,
    RUN_TAIL,
    STAMP,
    TARGET,
    blocks,
)


@njit(cache=True, inline="always", error_model="numpy")
def _chunk(need: int, threshold: int, budget: int) -> int:
    """``Vllm._chunk``: ``need`` capped by the threshold (when > 0) and the budget."""
    if 0 < threshold < need:
        need = threshold
    return min(need, budget)


@njit(cache=True, error_model="numpy")
def decide(st, pp, ps) -> None:  # type: ignore[no-untyped-def]
    req, s, work = st[0], st[2], st[4]
    threshold = pp[0]
    b, cap, budget = s[BLOCK_TOKENS], s[CAPACITY_BLOCKS], s[MAX_TOKENS]
    n = s[NUM_RUNNING]
    if n <= budget and s[NUM_PREFILLING] == 0:
        # the usual case: every running request decodes one token
        decode = work[B_DECODE]
        grow = k = 0
        r = s[RUN_HEAD]
        while r >= 0:
            p = req[PROCESSED, r]
            grow += blocks(p + 1, b) - blocks(p, b)
            decode[k] = r
            k += 1
            r = req[NEXT, r]
        used = s[HELD_BLOCKS] + grow
        if used <= cap:
            s[NUM_DECODE] = n
            _admit(st, threshold, n, used, budget - n)
            return
    elif _without_preemption(st, threshold):
        return
    _running(st, threshold)


@njit(cache=True, error_model="numpy")
def _without_preemption(st, threshold: int) -> bool:  # type: ignore[no-untyped-def]
    """Every running request takes ``min(want, budget left)`` in order, and the
    head of the waiting queue is admitted; False (nothing planned) when the
    total does not fit in KV. ``Vllm._without_preemption``."""
    req, s, work = st[0], st[2], st[4]
    b, cap, left = s[BLOCK_TOKENS], s[CAPACITY_BLOCKS], s[MAX_TOKENS]
    bp, bc, bd = work[B_PREFILL], work[B_CHUNK], work[B_DECODE]
    grow = n_p = n_d = 0
    r = s[RUN_HEAD]
    # once the budget is spent the rest take nothing and open no block
    while r >= 0 and left > 0:
        p = req[PROCESSED, r]
        remaining = req[TARGET, r] - p
        if remaining > 0:
            share = _chunk(remaining, threshold, left)
            bp[n_p] = r
            bc[n_p] = share
            n_p += 1
        else:
            share = 1
            bd[n_d] = r
            n_d += 1
        grow += blocks(p + share, b) - blocks(p, b)
        left -= share
        r = req[NEXT, r]
    used = s[HELD_BLOCKS] + grow
    if used > cap:
        return False  # the rows written stay unused: the counts are still 0
    s[NUM_PREFILL] = n_p
    s[NUM_DECODE] = n_d
    _admit(st, threshold, s[NUM_RUNNING], used, left)
    return True


@njit(cache=True, error_model="numpy")
def _running(st, threshold: int) -> None:  # type: ignore[no-untyped-def]
    """KV runs short: :func:`~lsched.policies.vllm.running_pass`, running requests
    one at a time with newest-first recompute preemption; admission only if
    nothing was preempted (``Vllm._running`` and the end of ``Vllm.decide``)."""
    req, s, work = st[0], st[2], st[4]
    b, budget = s[BLOCK_TOKENS], s[MAX_TOKENS]
    stamp = s[STAMP]
    used = s[HELD_BLOCKS]
    victim = s[RUN_TAIL]
    r = s[RUN_HEAD]
    while r >= 0:
        if c.is_gone(st, r):
            r = req[NEXT, r]
            continue
        p = req[PROCESSED, r]
        want = _chunk(max(req[TARGET, r] - p, 1), threshold, budget)
        if want <= 0:
            r = req[NEXT, r]
            continue
        grow = blocks(p + want, b) - blocks(p, b)
        # vLLM V1 gives a scheduled victim's tokens back to the budget (as
        # running_pass; newest-first reaches r before any planned one)
        victim, used, budget = c.make_room(st, r, victim, used, budget, grow, False)
        if not c.is_gone(st, r):
            work[PLANNED, r] = stamp
            work[PLAN_TOKENS, r] = want
            work[EXTRA_BLOCKS, r] = grow
            used += grow
            budget -= want
        r = req[NEXT, r]
    c.push_plan(st)
    if s[NUM_PREEMPT] == 0:
        # not reached when a faster branch found the total too big (the same plan
        # without a preemption would fit); kept as the Python rule has it
        _admit(st, threshold, s[NUM_RUNNING], used, budget)


@njit(cache=True, error_model="numpy")
def _admit(st, threshold: int, seqs: int, used: int, budget: int) -> None:  # type: ignore[no-untyped-def]
    """Admit the head of the waiting queue while it fits (strict head of line);
    ``seqs`` counts every running request, scheduled or not. ``Vllm._admit``."""
    req, s = st[0], st[2]
    b, cap = s[BLOCK_TOKENS], s[CAPACITY_BLOCKS]
    # each admission takes a sequence and at least one token of the budget
    room = min(s[MAX_SEQS] - seqs, budget)
    cursor = (0, s[FRESH_HEAD])
    for _ in range(room):
        if budget <= 0:
            break
        w, cursor = c.next_waiting(st, cursor)
        if w < 0:
            break
        chunk = _chunk(req[PROMPT, w] + req[EMITTED, w], threshold, budget)
        grow = blocks(chunk, b)
        if used + grow > cap:
            break
        c.push_prefill(st, w, chunk)
        used += grow
        budget -= chunk


@njit(cache=True, error_model="numpy")
def run(st, pieces, thresholds, switch, pp, ps) -> int:  # type: ignore[no-untyped-def]
    """Replay the replica to the end; an error code (0: none)."""
    while c.boundary(st):
        decide(st, pp, ps)
        err = c.apply(st, pieces, thresholds, switch)
        if err:
            return err
    return 0
