"""Closed-form bounds in seconds that see a prefix cache: every distinct block
computed once.

With a prefix cache (issue 18; DESIGN.md, "Clusters") a request whose first
``h`` hash blocks are cached starts its prefill at ``processed = min(h B, s_i -
1)`` tokens, ``B`` the hash block (``params["prefix_block_tokens"]``), so the
prefill work of :mod:`~lsched.formulations.bounds.work` (every prompt token
computed by its own request) is no bound for a cached run. This module counts
only the computations that every schedule makes, whatever its cache (size,
eviction, placement): the work of an unbounded cache that is never wrong.

The schedules
-------------
Any schedule of the evaluator on one colocated pool in which every cached token
was computed by an earlier request (what the validator checks) and a request's
cached tokens are held in its own KV blocks (the KV ledger's convention: it
holds ``processed`` tokens), preempted and chunked ones included; with no cache
they are the schedules of :mod:`~lsched.formulations.bounds.work`.

A cache with a host tier (rule 5 of :mod:`lsched.evaluator.prefix`) gives
schedules of this kind: a block in the host cache was written there by the
request that computed it (write-through), so a host hit's tokens were computed
by an earlier request, and once copied they are held in the request's own KV
blocks as a GPU hit's are. The copy only lengthens the iteration that admits the
request: every iteration still lasts at least the cost model's time of its batch,
so a replica still processes at most one second of work per second and the
critical-path bounds below, which use only lower bounds on iteration times, hold
as they are (the validator checks both: cached tokens from resident blocks, and
each run's duration as its iterations' time plus its copies').

Computations every schedule makes
---------------------------------
Block ``k`` of request ``r`` covers positions ``kB + 1 .. min((k + 1) B, s_r)``
(none when ``kB >= s_r``: such a hash is ignored). A *computation* is a request
computing the token at a position in one iteration. Three disjoint sets of them
occur in every schedule:

(a) *final tokens*: each request ``i`` computes position ``s_i`` (at most ``s_i
    - 1`` tokens are ever cached);
(b) *first computations*: for each distinct hash ``X``, take the first request
    ``r`` to process X's positions. X was not cached when ``r`` was admitted
    (only computed tokens are cached), so ``h_r <= k`` and ``r`` computes all
    ``L_r(X)`` tokens of X. Count ``L_X - e_X`` of them, ``L_X`` the least length
    of X over its occurrences, ``e_X = 1`` if X holds the final position of some
    request (then r's own final token may be among them, counted in (a)) and 0
    otherwise, at positions no smaller than ``start_X + 1 .. start_X + L_X -
    e_X``, ``start_X`` the least ``kB`` over X's occurrences;
(c) *unhashed tokens*: positions ``n_i B + 1 .. s_i - 1`` of a request with
    fewer hashes ``n_i`` than blocks, which no cache holds.

Each computation at position ``t`` is charged ``per_token + per_position t``,
each request ``fixed_i`` once (:class:`~lsched.formulations.bounds.work.WorkTerms`:
``Q = c (x + c)`` of a chunk of ``c`` tokens after ``x`` is at least the sum of
its positions, cached context included, so ``u_Q t`` holds per computation).

Attribution and the bounds
--------------------------
A computation of (b) is charged to the *earliest-arriving* request ``j``
containing X (the lowest index among ties), those of (a) and (c) to their own
request. Every computation charged to ``j`` takes place in ``[a_j, f_j]`` (its
first token): (a) and (c) are ``j``'s own; X's first computation is by a request
arriving no earlier than ``a_j``, and ends before ``j``'s prefill passes X (``j``
computes X, or finds it cached). So ``j``'s cached prefill work ``p^pre_j``
(``fixed_j`` plus its computations) is done within ``[a_j, f_j]``, and its decode
work ``p^dec_j`` within ``[f_j, C_j]``, on ``C`` replicas that process at most
one second of work per second: the fluid arguments of
:mod:`~lsched.formulations.bounds.work` (Schrage's SRPT) hold with ``p^pre``
replaced. The critical path of ``j``'s prefill: before its first prefill ``j``
has computed nothing, so it finds cached at most ``m_j`` blocks, the leading
run of its hashes that other requests hold too, and computes positions ``x_j +
1 .. s_j``, ``x_j = min(m_j B, s_j - 1)``, in iterations that each last at least
``u_0 + u_H`` plus ``u_P + u_Q t`` per position ``t`` (:func:`first_prefill`);
its decode steps alone are unchanged.

The chain of a request's prompt: every position ``1..s_j`` is computed before
``f_j``, by ``j`` or, for a cached block, by the request that computed it, whose
own earlier positions came the same way. Following where each position came
from gives iterations that compute disjoint ranges covering ``1..s_j``, each
starting after the one before ended (a range is computed once the positions
before it are held or cached), the first one by a request holding ``j``'s first
hash. So ``f_j >= c_j + q^pre_j``, ``c_j`` the earliest arrival among the
requests holding ``j``'s first hash (:func:`chain_start`) and ``q^pre_j`` the
whole prompt's prefill alone of :mod:`~lsched.formulations.bounds.work` (each
iteration at least ``u_0 + u_H``, each position ``u_P + u_Q t``). The earliest
first token is the larger of the two bounds; the earliest completion adds the
decode steps alone. This assumes a hash names its block's tokens and positions
(chained hashes, as vLLM's and Mooncake's are).

``cached_work`` (latency, makespan)
    ``work`` with the cached prefill work.
``cached_prefill_queue`` (latency)
    ``prefill_queue`` with the cached prefill work.

Without shared hashes (every hash in one request, its blocks those of its
prompt) the computations are each request's ``s_i`` tokens at positions ``1..s_i``
and both bounds equal their uncached counterparts.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from lsched.errors import InputError
from lsched.formulations.bounds.work import (
    check_inputs,
    fluid_latency,
    fluid_makespan,
    request_figures,
    work_terms,
)
from lsched.instance import Instance
from lsched.profile import FEATURES, DeploymentProfile

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_CONST, _P, _Q, _D, _K, _H = range(len(FEATURES))


def _run_sums(first: IntArray, count: IntArray) -> IntArray:
    """``first + (first + 1) + ... + (first + count - 1)`` (0 where ``count`` is 0)."""
    return count * first + count * (count - 1) // 2


def block_tokens_of(instance: Instance) -> int | None:
    """The hash block size ``B`` of an instance with prefix hashes, else ``None``."""
    block = instance.params.get("prefix_block_tokens")
    if instance.prefix_hash_offsets is None or not isinstance(block, int):
        return None
    return block if block >= 1 else None


class _Blocks:
    """Every hash occurrence that covers prompt tokens, with where it lies."""

    def __init__(self, instance: Instance, block: int) -> None:
        offsets, values = instance.prefix_hash_offsets, instance.prefix_hash_values
        if offsets is None or values is None:
            raise InputError("expected prefix block hashes", field="prefix_hashes")
        s = instance.prompt_tokens.astype(np.int64)
        self.s, self.n, self.counts = s, len(s), np.diff(offsets)
        owner = np.repeat(np.arange(self.n), self.counts)
        index = np.arange(len(values)) - np.repeat(offsets[:-1], self.counts)
        start = index * block
        length = np.minimum(start + block, s[owner]) - start
        covered = length > 0  # a hash past the prompt covers nothing
        self.owner, self.index = owner[covered], index[covered]
        self.start, self.length = start[covered], length[covered]
        self.final = s[self.owner] <= self.start + block  # holds position s_owner
        self.values = values[covered]
        self.unique, self.group = np.unique(self.values, return_inverse=True)

    def shared(self) -> npt.NDArray[np.bool_]:
        """Whether each occurrence's hash is in another request too."""
        pairs = np.unique(np.stack([self.group, self.owner]), axis=1)
        requests = np.bincount(pairs[0], minlength=len(self.unique))
        return requests[self.group] > 1


def cached_computations(instance: Instance, block: int) -> tuple[IntArray, IntArray]:
    """Computations charged to each request (module docstring, (a) to (c)).

    Returns
    -------
    (tokens, position sums)
        Per request: how many computations, and the sum of their positions.
    """
    b = _Blocks(instance, block)
    # (b): per distinct hash, its earliest-arriving request (arrivals are sorted)
    # and its least length and start over its occurrences
    k = len(b.unique)
    first_owner = np.full(k, b.n, dtype=np.int64)
    least_length = np.full(k, np.iinfo(np.int64).max, dtype=np.int64)
    least_start = least_length.copy()
    holds_final = np.zeros(k, dtype=bool)
    np.minimum.at(first_owner, b.group, b.owner)
    np.minimum.at(least_length, b.group, b.length)
    np.minimum.at(least_start, b.group, b.start)
    np.logical_or.at(holds_final, b.group, b.final)
    counted = least_length - holds_final
    tokens = np.bincount(first_owner, weights=counted, minlength=b.n)
    sums = np.bincount(
        first_owner, weights=_run_sums(least_start + 1, counted), minlength=b.n
    )
    # (a) the final token, (c) positions n_i B + 1 .. s_i - 1 beyond the hashes
    s = b.s
    unhashed = np.maximum(s - 1 - b.counts * block, 0)
    tail = _run_sums(b.counts * block + 1, unhashed)
    tokens = np.rint(tokens).astype(np.int64) + 1 + unhashed
    sums = np.rint(sums).astype(np.int64) + s + tail
    return tokens, sums


def chain_start(instance: Instance, block: int) -> FloatArray:
    """The earliest arrival among the requests holding each request's first
    hash (its own arrival if it has none): no computation of its chain starts
    earlier (module docstring)."""
    b = _Blocks(instance, block)
    first_owner = np.full(len(b.unique), b.n, dtype=np.int64)
    np.minimum.at(first_owner, b.group, b.owner)
    start = instance.arrival_s.astype(np.float64)
    heads = b.index == 0
    start[b.owner[heads]] = start[first_owner[b.group[heads]]]
    return start


def first_prefill(instance: Instance, block: int) -> tuple[IntArray, IntArray]:
    """Tokens each request computes in its first prefill, at least, and the sum
    of their positions.

    Before its first prefill a request has computed nothing, so it can find
    cached only hashes that another request holds too: at most ``m_i``, the
    leading run of such hashes, so ``processed <= min(m_i B, s_i - 1)``.
    """
    b = _Blocks(instance, block)
    run = b.counts.copy()  # the first index whose hash is in no other request
    alone = ~b.shared()
    np.minimum.at(run, b.owner[alone], b.index[alone])
    cached = np.minimum(run * block, b.s - 1)
    computed = b.s - cached
    return computed, _run_sums(cached + 1, computed)


def cached_work_bounds(
    instance: Instance,
    profile: DeploymentProfile,
    objective: str = "latency",
    *,
    replicas: int | None = None,
) -> dict[str, float]:
    """Bounds in seconds on the objective of any schedule with any prefix cache.

    Parameters
    ----------
    instance
        The requests, with prefix hashes and ``params["prefix_block_tokens"]``.
    profile, objective, replicas
        As :func:`~lsched.formulations.bounds.work.work_bounds`.

    Returns
    -------
    dict[str, float]
        ``cached_work`` and, for latency, ``cached_prefill_queue`` (module
        docstring); empty if the cost model has no usable under-estimator.

    Raises
    ------
    InputError
        An unknown objective, fewer than one replica, or no prefix hashes.
    """
    replicas = profile.replicas if replicas is None else replicas
    check_inputs(instance, objective, replicas)
    block = block_tokens_of(instance)
    if block is None:
        raise InputError(
            "expected prefix hashes and params['prefix_block_tokens'] >= 1",
            field="prefix_hashes",
        )
    found, figures = work_terms(instance, profile), request_figures(instance, profile)
    if found is None or figures is None:
        return {}
    candidates, terms = found
    tokens, sums = cached_computations(instance, block)
    first, first_sums = first_prefill(instance, block)
    q_pre = np.max(
        [u[_CONST] + u[_H] + u[_P] * first + u[_Q] * first_sums for u in candidates],
        axis=0,
    )
    q_dec = figures.decode_alone
    a = instance.arrival_s.astype(np.float64)
    first_token = np.maximum(
        a + q_pre, chain_start(instance, block) + figures.prefill_alone
    )
    finish = first_token + q_dec
    works = [(t.prefill(tokens, sums), t.decode) for t in terms]
    if objective == "makespan":
        start = float(a.min())
        path = float(finish.max() - start)
        fluid = max(fluid_makespan(a, (p + d) / replicas, start) for p, d in works)
        return {"cached_work": max(fluid, path)}
    best_work = best_queue = 0.0
    for pre, dec in works:
        best_work = max(best_work, fluid_latency(a, (pre + dec) / replicas, finish))
        queue = fluid_latency(a, pre / replicas, first_token) + float(q_dec.sum())
        best_queue = max(best_queue, queue)
    total_a = float(a.sum())
    return {
        "cached_work": best_work - total_a,
        "cached_prefill_queue": best_queue - total_a,
    }


__all__ = [
    "block_tokens_of",
    "cached_computations",
    "cached_work_bounds",
    "chain_start",
    "first_prefill",
]
