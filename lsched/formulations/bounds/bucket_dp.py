"""The per-request dynamic programme of the bucket Lagrangian, compiled by numba.

:mod:`lsched.formulations.bounds.bucket_lagrangian` states the subproblem and
proves the DP exact; this module only computes it. numba rather than NumPy: the
DP runs over (bucket, decode steps done) with a sliding-window minimum along the
steps and a backtrack, a sequential loop per request that vectorises neither
across buckets (each bucket needs the previous) nor across requests (windows and
output lengths differ); numba runs the plain loops at C speed, O(cells) per
request, with no per-request Python overhead.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, error_model="numpy")
def _prefixes(s: float, o: int, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """``G1[D] = sum_{k <= D} (s + k)`` (KV tokens read by the first ``D`` decode
    steps) and ``G2[D] = sum_{k <= D} ceil((s + k) / beta)`` (their blocks)."""
    g1 = np.zeros(o)
    g2 = np.zeros(o)
    for k in range(1, o):
        g1[k] = g1[k - 1] + s + k
        g2[k] = g2[k - 1] + np.ceil((s + k) / beta)
    return g1, g2


@njit(cache=True, error_model="numpy")
def _prefill(
    j: int, b: int, s: float, tok: np.ndarray, att: np.ndarray, best: np.ndarray
) -> float:
    """Update the prefix minima of the prefill's token and attention prices at
    slot ``j`` (bucket ``b``); ``best`` holds (token min, its bucket, attention
    min, its bucket). Returns ``PF`` up to this bucket."""
    t = s * tok[b]
    a = s * (s + 1.0) / 2.0 * att[b]
    if j == 0 or t < best[0]:
        best[0], best[1] = t, b
    if j == 0 or a < best[2]:
        best[2], best[3] = a, b
    return best[0] + best[2]


@njit(cache=True, error_model="numpy")
def _one_request(
    lo: int, width: int, k: int, s: float, o: int, credit: np.ndarray,
    prices: tuple, lam: np.ndarray, cap: int, beta: float,
    steps: np.ndarray, reads: np.ndarray, blocks: np.ndarray, out: np.ndarray,
) -> float:  # fmt: skip
    """Subproblem of one request (slots ``lo .. lo + width - 1``, buckets ``k ..``):
    its minimum of ``prices . usage - credit`` (0: no completion); fills its
    usage per slot and ``out = (prefill bucket, attention bucket)`` (-1: none)."""
    tok, att, step, read, block = prices
    t = o - 1
    suffix = np.zeros(width + 1)
    for j in range(width - 1, -1, -1):
        suffix[j] = suffix[j + 1] + credit[lo + j]
    g1, g2 = _prefixes(s, o, beta)
    arg = np.zeros((width, t + 1), dtype=np.int32)
    where = np.zeros((width, 2), dtype=np.int64)
    value = np.full(t + 1, np.inf)
    shifted = np.empty(t + 1)
    queue = np.empty(t + 1, dtype=np.int64)
    best_pf = np.zeros(4)
    best, best_j = 0.0, -1
    for j in range(width):
        b = k + j
        value[0] = _prefill(j, b, s, tok, att, best_pf)
        where[j, 0], where[j, 1] = int(best_pf[1]), int(best_pf[3])
        if t > 0:
            unit = step[b] + lam[lo + j]
            for d in range(t + 1):
                shifted[d] = value[d] - unit * d - read[b] * g1[d] - block[b] * g2[d]
            head, tail = 0, 0
            for d in range(t + 1):  # sliding minimum of shifted over [d - cap, d]
                while tail > head and shifted[queue[tail - 1]] >= shifted[d]:
                    tail -= 1
                queue[tail] = d
                tail += 1
                if queue[head] < d - cap:
                    head += 1
                arg[j, d] = queue[head]
                phi = unit * d + read[b] * g1[d] + block[b] * g2[d]
                value[d] = shifted[queue[head]] + phi
        candidate = value[t] - suffix[j]
        if candidate < best:
            best, best_j = candidate, j
    out[0], out[1] = -1, -1
    d, j = t, best_j
    while j >= 0:  # backtrack: steps per slot, then where the prefill went
        before = arg[j, d] if d > 0 else 0
        steps[lo + j] = d - before
        reads[lo + j] = g1[d] - g1[before]
        blocks[lo + j] = g2[d] - g2[before]
        if before == 0:
            out[0], out[1] = where[j, 0], where[j, 1]
            break
        d, j = before, j - 1
    return best


@njit(cache=True, error_model="numpy")
def solve_requests(
    start: np.ndarray, width: np.ndarray, first: np.ndarray, s: np.ndarray,
    o: np.ndarray, credit: np.ndarray, prices: tuple, lam: np.ndarray, cap: int,
    beta: float,
) -> tuple:  # fmt: skip
    """Every request's subproblem (:func:`_one_request`).

    Returns
    -------
    tuple
        Per request its value and ``(prefill bucket, attention bucket)``; per slot
        its decode steps, KV tokens read and KV blocks held.
    """
    n, m = len(start), len(credit)
    values = np.zeros(n)
    where = np.full((n, 2), -1, dtype=np.int64)
    steps, reads, blocks = np.zeros(m), np.zeros(m), np.zeros(m)
    for i in range(n):
        values[i] = _one_request(
            start[i], width[i], first[i], s[i], o[i], credit, prices, lam, cap,
            beta, steps, reads, blocks, where[i],
        )  # fmt: skip
    return values, where, steps, reads, blocks


@njit(cache=True, error_model="numpy")
def project_shares(
    pi: np.ndarray, shared: np.ndarray, owner: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean projection of ``(pi_b, shared_j)`` onto ``{shared >= 0,
    sum_{j: owner_j = b} shared_j <= pi_b}`` for every bucket ``b``.

    KKT: ``pi_b + theta_b`` and ``max(shared_j - theta_b, 0)`` with ``theta_b >=
    0`` the root of ``sum_j max(shared_j - theta, 0) = pi_b + theta`` where the
    constraint is violated (found on the sorted values)."""
    buckets = len(pi)
    count = np.zeros(buckets + 1, dtype=np.int64)
    for j in range(len(owner)):
        count[owner[j] + 1] += 1
    for b in range(buckets):
        count[b + 1] += count[b]
    order = np.argsort(owner, kind="mergesort")
    theta = np.zeros(buckets)
    for b in range(buckets):
        values = -np.sort(-shared[order[count[b] : count[b + 1]]])
        total = 0.0
        for v in values:
            total += max(v, 0.0)
        if total <= pi[b]:
            continue
        running, found = 0.0, -pi[b]
        for k in range(len(values)):
            running += values[k]
            t = (running - pi[b]) / (k + 2)
            if k + 1 == len(values) or values[k + 1] <= t:
                found = t
                break
        theta[b] = max(found, 0.0)
    out = np.maximum(shared - theta[owner], 0.0)
    return pi + theta, out
