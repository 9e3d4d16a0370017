"""``vllm-v0`` compiled: the rule of :mod:`lsched.policies.vllm_v0`, step for step.

``pp = [kv_limit, watermark_blocks, prefill_budget, context_cap, back_pressure]``:
1 to apply vLLM's KV checks and preemption (0: DistServe's colocated mode), the
blocks an admission leaves free (``int(watermark * capacity_blocks)``, as
:meth:`lsched.kv.KVBlocks.watermark_blocks`), the prefill token budget
(``min(prefill_token_budget, max_num_batched_tokens)``), the decode batch's
context cap and the back-pressure threshold (``-1``: none).

``ps`` holds the decode queue, a ring buffer of request ids, so that a decode
iteration costs its batch, not the running set (DistServe's colocated runs decode
tens of requests out of thousands running):

- ``ps[HEAD]``, ``ps[TAIL]``: absolute positions of the ring's first entry and
  one past its last (entry ``pos`` lives at ``ring[pos % len(ring)]``);
- ``ps[LIVE : LIVE + m]``: per request, the position of its live entry (``-1``:
  none); ``ring = ps[LIVE + m :]``, ``2 m + 8`` slots.

Entries are removed lazily: an entry is live only while its request runs and the
request's ``LIVE`` position is the entry's own, so a finished request's entry, a
preempted one's and the old entry of a request preempted and admitted again are
skipped where the walk meets them. Only a prefill adds entries (a decode batch
goes back to the tail after leaving the head); when the ring is full, its live
entries are compacted to the front, at most ``m`` of them, so compaction is
amortized O(1) per entry.

The rule's other sums are the core's running totals: the running requests'
context tokens (back pressure) are ``s[HELD_TOKENS]``, their blocks
``s[HELD_BLOCKS]``.
"""

from __future__ import annotations

from numba import njit

from lsched.evaluator.compiled import core as c
from lsched.evaluator.compiled.core import (
    B_DECODE,
    B_PREEMPT,
    BLOCK_TOKENS,
    CAPACITY_BLOCKS,
    EMITTED,
    EXTRA_BLOCKS,
    FRESH_HEAD,
    GONE,
    HELD_BLOCKS,
    HELD_TOKENS,
    MAX_SEQS,
    MAX_TOKENS,
    NUM_DECODE,
    NUM_PREEMPT,
    NUM_PREFILL,
    NUM_RUNNING,
    PLANNED,
    PROCESSED,
    PROMPT,
    RUN_TAIL,
    RUNNING,
    STAMP,
    STATUS,
    blocks,
)

# pp
KV_LIMIT, WATERMARK_BLOCKS, PREFILL_BUDGET, CONTEXT_CAP, BACK_PRESSURE = 0, 1, 2, 3, 4
# ps: the decode queue's ends, then the live positions and the ring
HEAD, TAIL, LIVE = 0, 1, 2


def ring_slots(m: int) -> int:
    """Slots of the decode queue's ring for ``m`` requests: room for every one
    live and as many dead, so that compaction is rare."""
    return 2 * m + 8


@njit(cache=True, error_model="numpy")
def decide(st, pp, ps) -> None:  # type: ignore[no-untyped-def]
    s = st[2]
    # step 0: DistServe's back pressure on the running requests' context tokens
    pressed = 0 <= pp[BACK_PRESSURE] < s[HELD_TOKENS]
    if not pressed and _prefills(st, pp, ps):  # step 1: a prefill-only iteration
        return
    _decodes(st, pp, ps)  # steps 2-3


@njit(cache=True, error_model="numpy")
def _prefills(st, pp, ps) -> bool:  # type: ignore[no-untyped-def]
    """Step 1: whole prompts from the head of the waiting queue; whether any was
    taken. They join the decode queue's tail now, in admission order: nothing
    else moves it before the next decision, where the Python rule appends them."""
    req, s, work = st[0], st[2], st[4]
    kv_limit = pp[KV_LIMIT] != 0
    b, cap, mark = s[BLOCK_TOKENS], s[CAPACITY_BLOCKS], pp[WATERMARK_BLOCKS]
    budget = pp[PREFILL_BUDGET]
    # V0 counts the running requests; DistServe only its prefill batch
    seqs = s[NUM_RUNNING] if kv_limit else 0
    used = s[HELD_BLOCKS]
    bp, bc = work[c.B_PREFILL], work[c.B_CHUNK]
    n = 0
    cursor = (0, s[FRESH_HEAD])
    while True:
        w, cursor = c.next_waiting(st, cursor)
        if w < 0:
            break
        chunk = req[PROMPT, w] + req[EMITTED, w]
        if chunk > budget or seqs >= s[MAX_SEQS]:
            break
        if kv_limit:
            need = blocks(chunk, b)
            # waived for a request that could never pass it (vllm.watermark_blocks)
            spare = mark if cap - need >= mark else 0
            if cap - used - need < spare:
                break
            used += need
        bp[n] = w
        bc[n] = chunk
        n += 1
        budget -= chunk
        seqs += 1
    s[NUM_PREFILL] = n
    if n == 0:
        return False
    m = req.shape[1]
    live, ring = ps[LIVE : LIVE + m], ps[LIVE + m :]
    if ps[TAIL] - ps[HEAD] + n > len(ring):
        _compact(req, ps, live, ring)
    for k in range(n):
        _push(ps, live, ring, bp[k])
    return True


@njit(cache=True, error_model="numpy")
def _decodes(st, pp, ps) -> None:  # type: ignore[no-untyped-def]
    """Steps 2-3: a decode batch from the head of the decode queue, preempting
    the most recently admitted running request where KV runs short (``kv_limit``);
    the batch goes back to the tail in order."""
    req, s, work = st[0], st[2], st[4]
    kv_limit = pp[KV_LIMIT] != 0
    b, capacity = s[BLOCK_TOKENS], s[CAPACITY_BLOCKS]
    seq_cap = min(s[MAX_SEQS], s[MAX_TOKENS])
    context_cap = pp[CONTEXT_CAP]
    stamp = s[STAMP]
    m = req.shape[1]
    live, ring = ps[LIVE : LIVE + m], ps[LIVE + m :]
    size = len(ring)
    decode, preempt = work[B_DECODE], work[B_PREEMPT]
    used = s[HELD_BLOCKS]
    victim = s[RUN_TAIL]
    n = count = context = n_pre = 0  # n: rows written; count: rows still in
    pos, tail = ps[HEAD], ps[TAIL]
    while pos < tail:
        r = ring[pos % size]
        if live[r] != pos or req[STATUS, r] != RUNNING:
            pos += 1  # finished, preempted (maybe in this decision), or readmitted
            continue
        if count >= seq_cap:
            break
        p = req[PROCESSED, r]
        after = p + 1
        # DistServe stops at the first request over the cap; the head always goes
        if context_cap >= 0 and count > 0 and context + after > context_cap:
            break
        pos += 1  # r leaves the head: back to the tail in the batch, or gone
        if kv_limit:
            g = blocks(after, b) - blocks(p, b)
            while used + g > capacity:
                # V0: running_queue.pop(), the most recently admitted
                victim = c.next_victim(st, victim)
                preempt[n_pre] = victim
                n_pre += 1
                live[victim] = -1
                used -= blocks(req[PROCESSED, victim], b)
                if work[PLANNED, victim] == stamp:  # leaves the batch
                    used -= work[EXTRA_BLOCKS, victim]
                    count -= 1
                    context -= req[PROCESSED, victim] + 1
                if victim == r:
                    break
            if work[GONE, r] == stamp:
                continue
            work[EXTRA_BLOCKS, r] = g
            used += g
        work[PLANNED, r] = stamp
        decode[n] = r
        n += 1
        count += 1
        context += after
    ps[HEAD] = pos
    s[NUM_PREEMPT] = n_pre
    # the batch, less the victims taken from it, back to the tail in order; it
    # left the head, so the ring does not grow
    k = 0
    for j in range(n):
        r = decode[j]
        if work[GONE, r] != stamp:
            decode[k] = r
            k += 1
            _push(ps, live, ring, r)
    s[NUM_DECODE] = k


@njit(cache=True, inline="always", error_model="numpy")
def _push(ps, live, ring, r: int) -> None:  # type: ignore[no-untyped-def]
    """``r`` joins the decode queue's tail."""
    pos = ps[TAIL]
    ring[pos % len(ring)] = r
    live[r] = pos
    ps[TAIL] = pos + 1


@njit(cache=True, error_model="numpy")
def _compact(req, ps, live, ring) -> None:  # type: ignore[no-untyped-def]
    """Drop the dead entries, keeping the live ones in order from the head."""
    size = len(ring)
    head, tail = ps[HEAD], ps[TAIL]
    w = head  # trails pos: overwrites only entries already read
    for pos in range(head, tail):
        r = ring[pos % size]
        if live[r] == pos and req[STATUS, r] == RUNNING:
            ring[w % size] = r
            live[r] = w
            w += 1
    ps[TAIL] = w


@njit(cache=True, error_model="numpy")
def run(st, pieces, thresholds, switch, pp, ps) -> int:  # type: ignore[no-untyped-def]
    """Replay the replica to the end; an error code (0: none)."""
    while c.boundary(st):
        decide(st, pp, ps)
        err = c.apply(st, pieces, thresholds, switch)
        if err:
            return err
    return 0
