"""``fcfs`` compiled: the rule of :mod:`lsched.policies.fcfs`, step for step.

``pp = [chunked]``. Stateless.
"""

from __future__ import annotations

from numba import njit

from lsched.evaluator.compiled import core as c
from lsched.evaluator.compiled.core import (
    BLOCK_TOKENS,
    CAPACITY_BLOCKS,
    EMITTED,
    EXTRA_BLOCKS,
    FRESH_HEAD,
    MAX_SEQS,
    MAX_TOKENS,
    NEXT,
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
    req, s, work = st[0], st[2], st[4]
    chunked = pp[0] != 0
    b, cap, budget = s[BLOCK_TOKENS], s[CAPACITY_BLOCKS], s[MAX_TOKENS]
    if s[NUM_RUNNING] <= budget and s[NUM_PREFILLING] == 0:
        # the usual case: every running request decodes one token
        used = 0
        r = s[RUN_HEAD]
        while r >= 0:
            used += blocks(req[PROCESSED, r] + 1, b)
            r = req[NEXT, r]
        if used <= cap:
            r = s[RUN_HEAD]
            while r >= 0:
                c.push_decode(st, r)
                r = req[NEXT, r]
            _admit(st, chunked, s[NUM_RUNNING], used, budget - s[NUM_RUNNING])
            return
        _preempting(st, chunked)
        return
    # tokens per running request in order: min(need, budget left), or whole prompts
    stamp = s[STAMP]
    left = budget
    cum = 0
    taken_before = 0
    stopped = False
    used = 0
    scheduled = 0
    tokens_sum = 0
    r = s[RUN_HEAD]
    while r >= 0:
        remaining = req[TARGET, r] - req[PROCESSED, r]
        need = remaining if remaining > 0 else 1
        share = 0
        if chunked:
            cum += need
            taken = min(cum, budget)
            share = taken - taken_before
            taken_before = taken
        elif not stopped:
            if need <= left:
                share = need
                left -= need
            elif remaining <= 0:  # a decode step: nothing later fits either
                stopped = True
        used += blocks(req[PROCESSED, r] + share, b)
        work[PLAN_TOKENS, r] = share
        work[PLANNED, r] = stamp if share > 0 else 0
        if share > 0:
            scheduled += 1
            tokens_sum += share
        r = req[NEXT, r]
    if used > cap:
        _preempting(st, chunked)
        return
    c.push_plan(st)
    _admit(st, chunked, scheduled, used, budget - tokens_sum)


@njit(cache=True, error_model="numpy")
def _preempting(st, chunked: bool) -> None:  # type: ignore[no-untyped-def]
    """KV runs short: running requests one at a time, newest-first recompute
    preemption, no admission."""
    req, s, work = st[0], st[2], st[4]
    b, budget = s[BLOCK_TOKENS], s[MAX_TOKENS]
    stamp = s[STAMP]
    used = s[c.HELD_BLOCKS]
    victim = s[RUN_TAIL]
    r = s[RUN_HEAD]
    while r >= 0:
        work[PLANNED, r] = 0
        r = req[NEXT, r]
    r = s[RUN_HEAD]
    while r >= 0:
        if c.is_gone(st, r):
            r = req[NEXT, r]
            continue
        remaining = req[TARGET, r] - req[PROCESSED, r]
        want = 1 if remaining <= 0 else remaining
        if chunked:
            want = min(want, budget)
        if want == 0 or want > budget:
            r = req[NEXT, r]
            continue
        p = req[PROCESSED, r]
        grow = blocks(p + want, b) - blocks(p, b)
        victim, used, budget = c.make_room(st, r, victim, used, budget, grow, False)
        if not c.is_gone(st, r):
            work[PLANNED, r] = stamp
            work[PLAN_TOKENS, r] = want
            work[EXTRA_BLOCKS, r] = grow
            used += grow
            budget -= want
        r = req[NEXT, r]
    c.push_plan(st)


@njit(cache=True, error_model="numpy")
def _admit(st, chunked: bool, seqs: int, used: int, budget: int) -> None:  # type: ignore[no-untyped-def]
    """Admit the head of the waiting queue while it fits (strict head of line)."""
    req, s = st[0], st[2]
    b, cap = s[BLOCK_TOKENS], s[CAPACITY_BLOCKS]
    # each admission takes a sequence and at least one token of the budget
    room = min(s[MAX_SEQS] - seqs, budget)
    cursor = (0, s[FRESH_HEAD])
    for _ in range(room):
        if budget == 0:
            break
        w, cursor = c.next_waiting(st, cursor)
        if w < 0:
            break
        want = req[PROMPT, w] + req[EMITTED, w]
        chunk = min(want, budget) if chunked else want
        grow = blocks(chunk, b)
        if chunk > budget or used + grow > cap:
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
