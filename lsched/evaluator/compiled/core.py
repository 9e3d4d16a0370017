"""The compiled engine's state and the moves every policy shares (numba).

State of one replica, ``m`` requests in arrival order (local ids):

- ``req[FIELD, i]`` (int64): prompt, output, predicted output (0 if none),
  emitted, processed (the KV tokens held), prefill target, status, preemptions,
  recomputed tokens, and the running list's links (``NEXT``/``PREV``, admission
  order; ``-1`` ends it);
- ``tim[FIELD, i]`` (float64): arrival, admission, first token, completion (s);
- ``s[...]`` (int64) and ``f[...]`` (float64): the counters below;
- ``work[ROW, i]`` (int64): a decision's marks and numbers per request (stamped
  with ``s[STAMP]``, so nothing is cleared between decisions), the requeued list
  ``work[REQUEUED, : s[NUM_REQUEUED]]`` (preempted requests waiting again,
  sorted: their arrival order) and the batch.

Never-admitted arrivals are ``s[FRESH_HEAD] .. s[NUM_ARRIVED]`` less those
admitted out of order (their admission time is set).

Every counter is kept up to date by the move that changes it, so a move costs
what it touches: admitting, preempting or finishing a request is O(1) (the running
list is doubly linked) and an iteration costs its batch. KV blocks held
``sum ceil(processed / b)`` are exact at all times.

A policy's decision fills the batch rows: ``B_PREFILL``/``B_CHUNK`` the prefill
ids and chunks, ``B_DECODE`` the decode ids, ``B_PREEMPT`` the preemptions, their
lengths in ``s[NUM_PREFILL]``, ``s[NUM_DECODE]``, ``s[NUM_PREEMPT]``.
:func:`apply` checks it against the rules of :mod:`lsched.policies.base`, runs
it and returns an error code (0: none) that the Python side turns into
:class:`~lsched.policies.base.PolicyError`.

The state travels as one tuple ``st = (req, tim, s, f, work)``: few arrays, as
numba counts references on every array passed to a call.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# req rows
PROMPT, OUTPUT, PREDICTED, EMITTED, PROCESSED, TARGET = 0, 1, 2, 3, 4, 5
STATUS, PREEMPTIONS, RECOMPUTED, NEXT, PREV = 6, 7, 8, 9, 10
REQ_ROWS = 11
# tim rows
ARRIVAL, ADMITTED, FIRST, COMPLETION = 0, 1, 2, 3
TIM_ROWS = 4
# s: integer counters
NUM_ARRIVED, RUN_HEAD, RUN_TAIL, NUM_RUNNING, HELD_BLOCKS = 0, 1, 2, 3, 4
HELD_TOKENS, DONE, ITERATIONS, NUM_PREFILLING, FRESH_HEAD = 5, 6, 7, 8, 9
NUM_REQUEUED = 10
# limits, set once
CAPACITY_BLOCKS, BLOCK_TOKENS, MAX_SEQS, MAX_TOKENS, STAMP = 11, 12, 13, 14, 15
# the batch's lengths: prefill chunks, decode steps, preemptions
NUM_PREFILL, NUM_DECODE, NUM_PREEMPT = 16, 17, 18
S_SIZE = 19
# work rows: a decision's per-request marks and numbers (stamped with s[STAMP]),
# the requeued list and the batch
GONE, PLANNED, PLAN_TOKENS, EXTRA_BLOCKS, REQUEUED = 0, 1, 2, 3, 4
B_PREFILL, B_CHUNK, B_DECODE, B_PREEMPT = 5, 6, 7, 8
WORK_ROWS = 9
# f: float counters
NOW, BUSY, KV_TOKEN_SECONDS, WAKE = 0, 1, 2, 3
F_SIZE = 4
# status
WAITING, RUNNING, DONE_STATUS = 0, 1, 2
# error codes (the Python side words them)
OK, E_SEQS, E_TOKENS, E_KV, E_STALL, E_TIME, E_BATCH = 0, 1, 2, 3, 4, 5, 6

ARRIVAL_TOLERANCE_S = 1e-9  # as lsched.policies.base


@njit(cache=True, inline="always", error_model="numpy")
def blocks(tokens: int, b: int) -> int:
    """Blocks holding ``tokens`` tokens: ``ceil(tokens / b)``."""
    return (tokens + b - 1) // b


@njit(cache=True, error_model="numpy")
def new_state(arrival_s, prompt, output, predicted, limits):  # type: ignore[no-untyped-def]
    """The state bundle of a replica with nothing arrived (``limits``: capacity
    blocks, block tokens, max seqs, max tokens): ``(req, tim, s, f, work)``."""
    m = len(arrival_s)
    req = np.zeros((REQ_ROWS, m), dtype=np.int64)
    req[PROMPT] = prompt
    req[OUTPUT] = output
    req[PREDICTED] = predicted
    req[NEXT] = -1
    req[PREV] = -1
    tim = np.full((TIM_ROWS, m), np.nan)
    tim[ARRIVAL] = arrival_s
    s = np.zeros(S_SIZE, dtype=np.int64)
    s[RUN_HEAD] = -1
    s[RUN_TAIL] = -1
    s[CAPACITY_BLOCKS] = limits[0]
    s[BLOCK_TOKENS] = limits[1]
    s[MAX_SEQS] = limits[2]
    s[MAX_TOKENS] = limits[3]
    f = np.zeros(F_SIZE)
    f[NOW] = arrival_s[0] if m else 0.0
    f[WAKE] = -np.inf
    return req, tim, s, f, np.zeros((WORK_ROWS, m), dtype=np.int64)


@njit(cache=True, error_model="numpy")
def boundary(st) -> bool:  # type: ignore[no-untyped-def]
    """Go to the next boundary where the policy decides: take the arrivals, skip
    an idle gap, clear the batch and stamp the decision. False once all are done."""
    req, tim, s, f = st[0], st[1], st[2], st[3]
    m = tim.shape[1]
    while s[DONE] < m:
        arrive_at(tim, s, f[NOW])
        if s[NUM_RUNNING] == 0 and not has_waiting(req, tim, s):
            f[NOW] = max(f[NOW], tim[ARRIVAL, s[NUM_ARRIVED]])
            continue
        s[NUM_PREFILL : NUM_PREEMPT + 1] = 0
        s[STAMP] += 1
        f[WAKE] = -np.inf
        return True
    return False


# -- queues -------------------------------------------------------------------------


@njit(cache=True, error_model="numpy")
def arrive_at(tim, s, now: float) -> None:  # type: ignore[no-untyped-def]
    """Every request with ``arrival <= now + tolerance`` has arrived."""
    m = tim.shape[1]
    k = s[NUM_ARRIVED]
    limit = now + ARRIVAL_TOLERANCE_S
    while k < m and tim[ARRIVAL, k] <= limit:
        k += 1
    s[NUM_ARRIVED] = k


@njit(cache=True, error_model="numpy")
def has_waiting(req, tim, s) -> bool:  # type: ignore[no-untyped-def]
    """Whether any arrived request waits (advances the fresh head past admitted
    ones)."""
    if s[NUM_REQUEUED] > 0:
        return True
    k = s[FRESH_HEAD]
    while k < s[NUM_ARRIVED] and not math.isnan(tim[ADMITTED, k]):
        k += 1
    s[FRESH_HEAD] = k
    return k < s[NUM_ARRIVED]


@njit(cache=True, error_model="numpy")
def next_waiting(st, cursor):  # type: ignore[no-untyped-def]
    """The waiting request after ``cursor`` in arrival order, and the cursor past
    it; ``-1`` when none is left. Start from ``(0, s[FRESH_HEAD])``: the
    requeued list and the fresh range are merged by id, skipping requests
    admitted out of order. Costs what it returns."""
    tim, s, requeued = st[1], st[2], st[4][REQUEUED]
    a, k = cursor
    arrived = s[NUM_ARRIVED]
    while k < arrived and not math.isnan(tim[ADMITTED, k]):
        k += 1
    if a < s[NUM_REQUEUED] and (k >= arrived or requeued[a] < k):
        return requeued[a], (a + 1, k)
    if k < arrived:
        return k, (a, k + 1)
    return -1, (a, k)


# -- moves --------------------------------------------------------------------------


@njit(cache=True, error_model="numpy")
def _unlink(req, s, r: int) -> None:  # type: ignore[no-untyped-def]
    nxt, prv = req[NEXT, r], req[PREV, r]
    if prv >= 0:
        req[NEXT, prv] = nxt
    else:
        s[RUN_HEAD] = nxt
    if nxt >= 0:
        req[PREV, nxt] = prv
    else:
        s[RUN_TAIL] = prv
    req[NEXT, r] = -1
    req[PREV, r] = -1
    s[NUM_RUNNING] -= 1


@njit(cache=True, error_model="numpy")
def _free(req, s, r: int) -> int:  # type: ignore[no-untyped-def]
    """Free the KV of ``r``; return its tokens."""
    p = req[PROCESSED, r]
    s[HELD_BLOCKS] -= blocks(p, s[BLOCK_TOKENS])
    s[HELD_TOKENS] -= p
    req[PROCESSED, r] = 0
    return p


@njit(cache=True, error_model="numpy")
def preempt(req, s, requeued, r: int) -> bool:  # type: ignore[no-untyped-def]
    """Recompute-preempt the running request ``r``; False if it is not running."""
    if r < 0 or r >= s[NUM_ARRIVED] or req[STATUS, r] != RUNNING:
        return False
    _unlink(req, s, r)
    if req[PROCESSED, r] < req[TARGET, r]:
        s[NUM_PREFILLING] -= 1
    req[RECOMPUTED, r] += _free(req, s, r)
    req[PREEMPTIONS, r] += 1
    req[STATUS, r] = WAITING
    # sorted insertion: the requeued list is short
    k = s[NUM_REQUEUED]
    while k > 0 and requeued[k - 1] > r:
        requeued[k] = requeued[k - 1]
        k -= 1
    requeued[k] = r
    s[NUM_REQUEUED] += 1
    return True


@njit(cache=True, error_model="numpy")
def admit(req, tim, s, requeued, r: int, now: float) -> None:  # type: ignore[no-untyped-def]
    """Make the waiting request ``r`` running (it joins the running list's tail)."""
    req[STATUS, r] = RUNNING
    req[TARGET, r] = req[PROMPT, r] + req[EMITTED, r]
    if math.isnan(tim[ADMITTED, r]):
        tim[ADMITTED, r] = now
        if r == s[FRESH_HEAD]:  # the fresh range starts at its first unadmitted
            k = r + 1
            while k < s[NUM_ARRIVED] and not math.isnan(tim[ADMITTED, k]):
                k += 1
            s[FRESH_HEAD] = k
    else:  # back from a preemption: leaves the requeued list
        n = s[NUM_REQUEUED]
        k = 0
        while requeued[k] != r:
            k += 1
        requeued[k : n - 1] = requeued[k + 1 : n]
        s[NUM_REQUEUED] = n - 1
    tail = s[RUN_TAIL]
    req[PREV, r] = tail
    req[NEXT, r] = -1
    if tail >= 0:
        req[NEXT, tail] = r
    else:
        s[RUN_HEAD] = r
    s[RUN_TAIL] = r
    s[NUM_RUNNING] += 1
    s[NUM_PREFILLING] += 1


@njit(cache=True, error_model="numpy")
def finish(req, tim, s, r: int, end: float) -> None:  # type: ignore[no-untyped-def]
    """``r`` emitted its last token at ``end``: free its KV."""
    _unlink(req, s, r)
    _free(req, s, r)
    tim[COMPLETION, r] = end
    req[STATUS, r] = DONE_STATUS
    s[DONE] += 1


# -- one iteration --------------------------------------------------------------------


@njit(cache=True, error_model="numpy")
def seconds(pieces, thresholds, switch, x1, x2, x3, x4, x5):  # type: ignore[no-untyped-def]
    """Iteration time of the features ``phi = (1, x1, ..., x5)``: the max of the
    affine pieces of its regime, each summed in feature order (as the Python
    engine does, to the last bit)."""
    regime = 0
    if len(thresholds):
        x = (1.0, x1, x2, x3, x4, x5)[switch] if switch else 1.0
        regime = np.searchsorted(thresholds, x, side="right")
    best = -np.inf
    for k in range(pieces.shape[1]):
        t = (
            pieces[regime, k, 0] * 1.0
            + pieces[regime, k, 1] * x1
            + pieces[regime, k, 2] * x2
            + pieces[regime, k, 3] * x3
            + pieces[regime, k, 4] * x4
            + pieces[regime, k, 5] * x5
        )
        best = max(best, t)
    return best


@njit(cache=True, error_model="numpy")
def apply(st, pieces, thresholds, switch):  # type: ignore[no-untyped-def]
    """Check the batch in the buffers against the rules and run it for one
    iteration (or idle); an error code."""
    req, tim, s, f, work = st
    requeued, bp, bc = work[REQUEUED], work[B_PREFILL], work[B_CHUNK]
    bd, bx = work[B_DECODE], work[B_PREEMPT]
    for k in range(s[NUM_PREEMPT]):
        if not preempt(req, s, requeued, bx[k]):
            return E_BATCH
    n_p, n_d = s[NUM_PREFILL], s[NUM_DECODE]
    if n_p + n_d == 0:
        return _idle(tim, s, f)
    if n_p + n_d > s[MAX_SEQS]:
        return E_SEQS
    b = s[BLOCK_TOKENS]
    # the features (DESIGN.md): prefill tokens, their attention sum c (p + c),
    # decode steps, KV read by the decode steps; and the blocks they open
    tokens = q = kv_read = grow = 0
    for k in range(n_p):
        r, c = bp[k], bc[k]
        if r < 0 or r >= s[NUM_ARRIVED] or c < 1 or req[STATUS, r] == DONE_STATUS:
            return E_BATCH
        if req[STATUS, r] == WAITING:
            if c > req[PROMPT, r] + req[EMITTED, r]:
                return E_BATCH
        elif c > req[TARGET, r] - req[PROCESSED, r]:
            return E_BATCH
        p = req[PROCESSED, r]
        grow += blocks(p + c, b) - blocks(p, b)
        tokens += c
        q += c * (p + c)
    for k in range(n_d):
        r = bd[k]
        if r < 0 or r >= s[NUM_ARRIVED] or req[STATUS, r] != RUNNING:
            return E_BATCH
        p = req[PROCESSED, r]
        if p < req[TARGET, r]:
            return E_BATCH
        grow += blocks(p + 1, b) - blocks(p, b)
        kv_read += p
    if tokens + n_d > s[MAX_TOKENS]:
        return E_TOKENS
    if s[HELD_BLOCKS] + grow > s[CAPACITY_BLOCKS]:
        return E_KV
    dt = seconds(
        pieces, thresholds, switch, float(tokens), float(q), float(n_d),
        float(kv_read + n_d), 1.0 if n_p else 0.0,
    )  # fmt: skip
    if not dt > 0:
        return E_TIME
    now = f[NOW]
    end = now + dt
    s[HELD_BLOCKS] += grow
    s[HELD_TOKENS] += tokens + n_d
    f[BUSY] += dt
    f[KV_TOKEN_SECONDS] += s[HELD_TOKENS] * dt
    f[NOW] = end
    s[ITERATIONS] += 1
    for k in range(n_p):
        r = bp[k]
        if req[STATUS, r] == WAITING:
            admit(req, tim, s, requeued, r, now)
        p = req[PROCESSED, r] + bc[k]
        req[PROCESSED, r] = p
        if p == req[TARGET, r]:
            s[NUM_PREFILLING] -= 1
            if math.isnan(tim[FIRST, r]):  # token 1, not a recompute
                tim[FIRST, r] = end
            req[EMITTED, r] += 1
            if req[EMITTED, r] >= req[OUTPUT, r]:
                finish(req, tim, s, r, end)
    for k in range(n_d):
        r = bd[k]
        req[PROCESSED, r] += 1
        req[EMITTED, r] += 1
        if req[EMITTED, r] >= req[OUTPUT, r]:
            finish(req, tim, s, r, end)
    return OK


@njit(cache=True, error_model="numpy")
def _idle(tim, s, f) -> int:  # type: ignore[no-untyped-def]
    """An empty batch: wait for the next arrival or the policy's wake-up."""
    upcoming = np.inf
    if s[NUM_ARRIVED] < tim.shape[1]:
        upcoming = tim[ARRIVAL, s[NUM_ARRIVED]]
    if f[WAKE] > f[NOW]:
        upcoming = min(upcoming, f[WAKE])
    if upcoming == np.inf:
        return E_STALL
    f[NOW] = upcoming
    return OK


# -- helpers of decisions ------------------------------------------------------------


@njit(cache=True, error_model="numpy")
def next_victim(st, ptr: int) -> int:  # type: ignore[no-untyped-def]
    """The most recently admitted running request at or before ``ptr`` (in the
    running list) not yet preempted in this decision; marks it gone. vLLM's
    recompute victim: ``running_queue.pop()``."""
    req, s, work = st[0], st[2], st[4]
    stamp = s[STAMP]
    while work[GONE, ptr] == stamp:
        ptr = req[PREV, ptr]
    work[GONE, ptr] = stamp
    return ptr


@njit(cache=True, error_model="numpy")
def make_room(st, r: int, victim: int, used: int, left: int, grow: int, reserved: bool):  # type: ignore[no-untyped-def]
    """Preempt the newest running requests not yet gone (from ``victim`` back)
    until ``grow`` more blocks fit or ``r`` itself is preempted: one step of
    :func:`lsched.policies.vllm.running_pass`. A victim holds ``ceil(p / b)``
    blocks, or ``ceil(max(p, target) / b)`` when its prompt is ``reserved``
    (Sarathi's block manager); one already planned in this decision gives back
    its growth and tokens. Returns the victim pointer, blocks used and budget
    left after."""
    req, s, work = st[0], st[2], st[4]
    b, cap, stamp = s[BLOCK_TOKENS], s[CAPACITY_BLOCKS], s[STAMP]
    while used + grow > cap:
        victim = next_victim(st, victim)
        push_preempt(st, victim)
        held = req[PROCESSED, victim]
        if reserved:
            held = max(held, req[TARGET, victim])
        used -= blocks(held, b)
        if work[PLANNED, victim] == stamp:
            used -= work[EXTRA_BLOCKS, victim]
            left += work[PLAN_TOKENS, victim]
            work[PLANNED, victim] = 0
        if victim == r:
            break
    return victim, used, left


@njit(cache=True, error_model="numpy")
def is_gone(st, r: int) -> bool:  # type: ignore[no-untyped-def]
    """Whether ``r`` was preempted in this decision."""
    return st[4][GONE, r] == st[2][STAMP]


@njit(cache=True, error_model="numpy")
def push_prefill(st, r: int, c: int) -> None:  # type: ignore[no-untyped-def]
    s = st[2]
    st[4][B_PREFILL][s[NUM_PREFILL]] = r
    st[4][B_CHUNK][s[NUM_PREFILL]] = c
    s[NUM_PREFILL] += 1


@njit(cache=True, error_model="numpy")
def push_decode(st, r: int) -> None:  # type: ignore[no-untyped-def]
    s = st[2]
    st[4][B_DECODE][s[NUM_DECODE]] = r
    s[NUM_DECODE] += 1


@njit(cache=True, error_model="numpy")
def push_preempt(st, r: int) -> None:  # type: ignore[no-untyped-def]
    s = st[2]
    st[4][B_PREEMPT][s[NUM_PREEMPT]] = r
    s[NUM_PREEMPT] += 1


@njit(cache=True, error_model="numpy")
def push_plan(st) -> None:  # type: ignore[no-untyped-def]
    """The planned running requests (marked ``PLANNED``, not gone), in running
    order, as prefill chunks where still prefilling, decode steps otherwise."""
    req, s, work = st[0], st[2], st[4]
    stamp = s[STAMP]
    r = s[RUN_HEAD]
    while r >= 0:
        if work[PLANNED, r] == stamp and work[GONE, r] != stamp:
            if req[PROCESSED, r] < req[TARGET, r]:
                push_prefill(st, r, work[PLAN_TOKENS, r])
            else:
                push_decode(st, r)
        r = req[NEXT, r]
