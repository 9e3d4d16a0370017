"""``sarathi`` compiled: the rule of :mod:`lsched.policies.sarathi`, step for step.

``pp = [budget, watermark_blocks]``: the token budget ``B = min(chunk,
max_num_batched_tokens)`` and the blocks an admission must leave free,
``int(watermark * capacity_blocks)`` (:meth:`lsched.kv.KVBlocks.watermark_blocks`,
computed on the Python side). No float parameters; stateless.

KV is counted as Sarathi's block manager does: admission reserves the blocks of
the whole prompt, so a running request mid-prefill counts ``blocks(target)``
blocks, not the ``blocks(processed)`` the engine's ``s[HELD_BLOCKS]`` counts. The
policy's count is ``sum blocks(max(processed, target))`` over running requests.
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
    GONE,
    HELD_BLOCKS,
    MAX_SEQS,
    NEXT,
    NUM_DECODE,
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


@njit(cache=True, error_model="numpy")
def decide(st, pp, ps) -> None:  # type: ignore[no-untyped-def]
    req, s = st[0], st[2]
    b, cap, budget = s[BLOCK_TOKENS], s[CAPACITY_BLOCKS], pp[0]
    n = s[NUM_RUNNING]
    if s[NUM_PREFILLING] == 0 and n <= budget:
        # the usual case: every running request decodes one token (nothing is
        # reserved beyond what it holds, so the policy's count is the engine's)
        decode = st[4][B_DECODE]
        used = k = 0
        r = s[RUN_HEAD]
        while r >= 0:
            used += blocks(req[PROCESSED, r] + 1, b)
            decode[k] = r
            k += 1
            r = req[NEXT, r]
        if used <= cap:
            s[NUM_DECODE] = n
            _admit(st, pp, n, used, budget - n)
            return
    _running(st, pp)


@njit(cache=True, error_model="numpy")
def _running(st, pp) -> None:  # type: ignore[no-untyped-def]
    """Steps 1-2 one request at a time (``running_pass``): decodes, then partial
    prefills, each in admission order, preempting newest-first where KV runs
    short; step 3 only if nothing was preempted."""
    req, s, work = st[0], st[2], st[4]
    b, cap = s[BLOCK_TOKENS], s[CAPACITY_BLOCKS]
    stamp = s[STAMP]
    left = pp[0]
    partials = s[NUM_PREFILLING] > 0
    # the policy's blocks: a partial prefill counts its whole target, reserved
    used = s[HELD_BLOCKS]
    if partials:
        r = s[RUN_HEAD]
        while r >= 0:
            p, t = req[PROCESSED, r], req[TARGET, r]
            if p < t:
                used += blocks(t, b) - blocks(p, b)
            r = req[NEXT, r]
    bd, bp, bc = work[B_DECODE], work[B_PREFILL], work[B_CHUNK]
    victim = s[RUN_TAIL]
    preempted = False
    n_d = 0
    # step 1: decodes, one token each while budget is left
    r = s[RUN_HEAD]
    while r >= 0:
        p = req[PROCESSED, r]
        if p >= req[TARGET, r] and work[GONE, r] != stamp and left > 0:
            g = blocks(p + 1, b) - blocks(p, b)
            if used + g > cap:
                victim, used, left = c.make_room(st, r, victim, used, left, g, True)
                preempted = True
            if work[GONE, r] != stamp:
                work[PLANNED, r] = stamp
                work[PLAN_TOKENS, r] = 1
                work[EXTRA_BLOCKS, r] = g
                used += g
                left -= 1
                bd[n_d] = r
                n_d += 1
        r = req[NEXT, r]
    # step 2: partial prefills, min(remaining, budget left); their blocks are
    # reserved, so they grow nothing
    n_p = 0
    if partials:
        r = s[RUN_HEAD]
        while r >= 0:
            p, t = req[PROCESSED, r], req[TARGET, r]
            if p < t and work[GONE, r] != stamp and left > 0:
                chunk = min(t - p, left)
                if used > cap:
                    victim, used, left = c.make_room(st, r, victim, used, left, 0, True)
                    preempted = True
                if work[GONE, r] != stamp:
                    work[PLANNED, r] = stamp
                    work[PLAN_TOKENS, r] = chunk
                    work[EXTRA_BLOCKS, r] = 0
                    left -= chunk
                    bp[n_p] = r
                    bc[n_p] = chunk
                    n_p += 1
            r = req[NEXT, r]
    if preempted:
        # victims planned before they were chosen leave the batch; no admission
        # in a step that preempts
        k = 0
        for j in range(n_d):
            if work[GONE, bd[j]] != stamp:
                bd[k] = bd[j]
                k += 1
        n_d = k
        k = 0
        for j in range(n_p):
            if work[GONE, bp[j]] != stamp:
                bp[k] = bp[j]
                bc[k] = bc[j]
                k += 1
        n_p = k
    s[NUM_DECODE] = n_d
    s[NUM_PREFILL] = n_p
    if not preempted:
        _admit(st, pp, s[NUM_RUNNING], used, left)


@njit(cache=True, error_model="numpy")
def _admit(st, pp, seqs: int, used: int, budget: int) -> None:  # type: ignore[no-untyped-def]
    """Step 3: admit the head of the waiting queue while its whole prompt's blocks
    fit with the watermark to spare (waived for a request that could never pass
    it) and budget is left; the first that does not fit stops admission."""
    req, s = st[0], st[2]
    b, cap, mark = s[BLOCK_TOKENS], s[CAPACITY_BLOCKS], pp[1]
    cursor = (0, s[FRESH_HEAD])
    while seqs < s[MAX_SEQS] and budget > 0:
        w, cursor = c.next_waiting(st, cursor)
        if w < 0:
            break
        whole = req[PROMPT, w] + req[EMITTED, w]
        need = blocks(whole, b)
        spare = mark if cap - need >= mark else 0
        if cap - used - need < spare:
            break
        chunk = min(whole, budget)
        c.push_prefill(st, w, chunk)
        used += need
        budget -= chunk
        seqs += 1


@njit(cache=True, error_model="numpy")
def run(st, pieces, thresholds, switch, pp, ps) -> int:  # type: ignore[no-untyped-def]
    """Replay the replica to the end; an error code (0: none)."""
    while c.boundary(st):
        decide(st, pp, ps)
        err = c.apply(st, pieces, thresholds, switch)
        if err:
            return err
    return 0
