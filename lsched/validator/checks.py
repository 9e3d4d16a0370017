"""The per-run rules: run order, shape, features, batch limits, duration and KV
capacity."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lsched.profile import DeploymentProfile
from lsched.validator.replay import _Log, _Replay
from lsched.validator.report import (
    _DECODE,
    _PREFILL,
    Features,
    FloatArray,
    IntArray,
    _close_array,
    _Collector,
)
from lsched.validator.swaps import _SwapKV


def _check_order(log: _Log, replicas: int, out: _Collector) -> None:
    """Per replica, in run id order: each run starts at or after the previous end."""
    run_ids, start, end = log.run_ids, log.start, log.end
    for rep in range(replicas):
        index = np.flatnonzero(log.replica == rep)
        early = np.flatnonzero(start[index[1:]] < end[index[:-1]])
        for j in early.tolist():
            prev, run = index[j], index[j + 1]
            out.add(
                "run-order",
                f"starts at {float(start[run])!r} s, before run {run_ids[prev]} "
                f"on replica {rep} ends at {float(end[prev])!r} s",
                run=run_ids[run],
            )


def _check_shape(log: _Log, out: _Collector) -> None:
    """``run-shape`` (and ``preemption``): a run has members, a run with a prefill
    chunk one iteration, and no request is listed twice in a run."""
    run_ids, n_it, m_pos = log.run_ids, log.n_it, log.m_pos
    m = len(run_ids)
    seqs = np.bincount(m_pos, minlength=m)
    for r in np.flatnonzero(seqs == 0).tolist():
        out.add("run-shape", "has no members", run=run_ids[r])
    prefills = np.bincount(m_pos[log.m_kind == _PREFILL], minlength=m)
    for r in np.flatnonzero((prefills > 0) & (n_it != 1)).tolist():
        out.add(
            "run-shape",
            f"has {n_it[r]} iterations and a prefill chunk; a run with prefill has "
            "exactly 1",
            run=run_ids[r],
        )
    for pos, req, rule in (
        (m_pos, log.m_req, "run-shape"),
        (log.p_pos, log.p_req, "preemption"),
    ):
        pairs = pd.DataFrame({"pos": pos, "req": req})
        for r, i in pairs[pairs.duplicated()].itertuples(index=False):
            out.add(rule, "listed twice in the run", run=run_ids[r], request=int(i))


def _run_features(log: _Log, replay: _Replay) -> Features:
    """Every run's features from its members and the validator's bookkeeping:
    ``P = sum c``, ``Q = sum c * (before + c)`` over prefill members, ``D =
    #decode``, ``K = sum (before + 1)`` over decode members."""
    m = len(log.run_ids)

    def per_run(mask: np.ndarray, values: np.ndarray | int) -> IntArray:
        weights = np.broadcast_to(np.asarray(values, dtype=np.float64), mask.shape)
        # float sums of integers are exact below 2**53
        sums = np.bincount(log.m_pos[mask], weights=weights[mask], minlength=m)
        return sums.astype(np.int64)

    pre, dec = log.m_kind == _PREFILL, log.m_kind == _DECODE
    c = log.m_tokens
    P = per_run(pre, c)
    Q = per_run(pre, c * (replay.before + c))
    D = per_run(dec, 1)
    K0 = per_run(dec, replay.before + 1)
    return P, Q, D, K0


def _check_features(log: _Log, features: Features, out: _Collector) -> None:
    """``run-features``: the logged P, Q, D, K, H columns are the recomputed ones."""
    P, Q, D, K0 = features
    own = {"P": P, "Q": Q, "D": D, "K": K0, "H": (P > 0).astype(np.int64)}
    columns = {
        "P": "prefill_tokens",
        "Q": "prefill_attention",
        "D": "decode_steps",
        "K": "kv_read_tokens",
        "H": "has_prefill",
    }
    logged = {k: log.runs[c].to_numpy(dtype=np.int64) for k, c in columns.items()}
    wrong = np.zeros(len(log.run_ids), dtype=bool)
    for k in columns:
        wrong |= logged[k] != own[k]
    for r in np.flatnonzero(wrong).tolist():
        parts = [
            f"{columns[k]} = {logged[k][r]}, expected {own[k][r]}"
            for k in columns
            if logged[k][r] != own[k][r]
        ]
        out.add("run-features", "; ".join(parts), run=log.run_ids[r])


def _check_limits(
    profile: DeploymentProfile, log: _Log, features: Features, out: _Collector
) -> None:
    """``max-num-seqs`` and ``max-num-batched-tokens`` of every run."""
    P, _, D, _ = features
    run_ids = log.run_ids
    seqs = np.bincount(log.m_pos, minlength=len(run_ids))
    batched = P + D
    for r in np.flatnonzero(seqs > profile.max_num_seqs).tolist():
        out.add(
            "max-num-seqs",
            f"{seqs[r]} requests in the batch; max_num_seqs = {profile.max_num_seqs}",
            run=run_ids[r],
        )
    limit = profile.max_num_batched_tokens
    for r in np.flatnonzero(batched > limit).tolist():
        out.add(
            "max-num-batched-tokens",
            f"{batched[r]} prefill tokens + decode steps; max_num_batched_tokens = "
            f"{limit}",
            run=run_ids[r],
        )


def _check_durations(
    log: _Log, duration: FloatArray, stall: FloatArray, rtol: float, out: _Collector
) -> None:
    """``run-duration``: a run lasts the recomputed time of its iterations (and of
    its blocking copies, ``stall``: swaps, host-tier prefix hits), both in
    ``duration``."""
    start, end = log.start, log.end
    # the logged duration is a difference of absolute times: allow their rounding
    atol = 4 * np.finfo(np.float64).eps * np.maximum(np.abs(start), np.abs(end))
    for r in np.flatnonzero(~_close_array(end - start, duration, rtol, atol)).tolist():
        copies = f" and {float(stall[r])!r} s of blocking copies" if stall[r] else ""
        out.add(
            "run-duration",
            f"lasts {float(end[r] - start[r])!r} s; its {log.n_it[r]} iteration(s)"
            f"{copies} take {float(duration[r])!r} s",
            run=log.run_ids[r],
        )


def _per_run(pos: IntArray, values: IntArray, m: int) -> IntArray:
    """Sums of ``values`` by run position, over ``m`` runs."""
    return np.bincount(pos, weights=values.astype(np.float64), minlength=m).astype(
        np.int64
    )


def _check_kv(
    profile: DeploymentProfile,
    log: _Log,
    D: IntArray,
    replay: _Replay,
    replicas: int,
    out: _Collector,
    arrivals: tuple[IntArray, IntArray] | None = None,
    pinned: IntArray | None = None,
    swap: _SwapKV | None = None,
) -> IntArray:
    """KV capacity and the ``kv_tokens`` column; returns KV after each first iteration.

    The KV a replica holds changes by: members' growth during a run, preemptions
    (before it) and completions (freed after its last iteration, so a completing
    request still counts in that iteration). Within a run KV only grows, so its
    last iteration holds the most. In a disaggregated cluster, ``arrivals`` (run
    positions, tokens) is KV adopted on a decode replica, held from that run on,
    and ``pinned`` the blocks a prefill replica keeps pinned during each run
    (counted against the capacity, not in ``kv_tokens``). ``swap``: KV that swaps
    move off and back onto the running set, the blocks asynchronous copies pin
    during each run, and at each asynchronous swap-in decided while the replica
    idles the blocks surely held then (:func:`_swap_kv`): those pinned, and those
    of the requests running before the next run that did not join on the way.
    """
    run_ids = log.run_ids
    last_tokens, last_blocks, before_blocks = _kv_held(
        profile, log, replay, replicas, arrivals, swap
    )
    capacity = profile.kv_capacity_blocks
    pins = np.zeros(len(run_ids), dtype=np.int64)
    if pinned is not None:
        pins += pinned
    if swap is not None:
        pins += swap.pinned
    last_blocks = last_blocks + pins
    over = last_blocks > capacity
    for r in np.flatnonzero(over).tolist():
        also = "" if not pins[r] else f" ({pins[r]} pinned or reserved)"
        out.add(
            "kv-capacity",
            f"holds {last_blocks[r]} KV blocks{also} after its last iteration; "
            f"capacity {capacity} blocks of {profile.block_tokens} tokens",
            run=run_ids[r],
        )
    if swap is not None and swap.idle:
        _check_idle_swap_ins(profile, run_ids, before_blocks, over, arrivals, swap, out)
    first_tokens = last_tokens - (log.n_it - 1) * D
    logged = log.runs["kv_tokens"].to_numpy(dtype=np.int64)
    for r in np.flatnonzero(logged != first_tokens).tolist():
        out.add(
            "kv-tokens",
            f"kv_tokens = {logged[r]}; the replica holds {first_tokens[r]} KV tokens "
            "after the first iteration",
            run=run_ids[r],
        )
    return first_tokens


def _kv_held(
    profile: DeploymentProfile,
    log: _Log,
    replay: _Replay,
    replicas: int,
    arrivals: tuple[IntArray, IntArray] | None,
    swap: _SwapKV | None,
) -> tuple[IntArray, IntArray, IntArray]:
    """Per run, the KV tokens and blocks its replica holds after its last
    iteration, and the blocks held before its iterations (pins aside)."""
    m = len(log.run_ids)
    blocks = profile.kv_blocks
    completing = replay.completes
    m_pos, p_pos = log.m_pos, log.p_pos
    grown_blocks = _per_run(m_pos, blocks(replay.after) - blocks(replay.before), m)
    during_tokens = _per_run(m_pos, replay.after - replay.before, m) - _per_run(
        p_pos, replay.freed, m
    )
    during_blocks = grown_blocks - _per_run(p_pos, blocks(replay.freed), m)
    if arrivals is not None:
        pos, tokens = arrivals
        during_tokens += _per_run(pos, tokens, m)
        during_blocks += _per_run(pos, blocks(tokens), m)
    if swap is not None:
        during_tokens += _per_run(swap.pos, swap.tokens, m)
        during_blocks += _per_run(swap.pos, swap.blocks, m)
    freed_tokens = _per_run(m_pos[completing], replay.after[completing], m)
    freed_blocks = _per_run(m_pos[completing], blocks(replay.after[completing]), m)

    last_tokens = np.zeros(m, dtype=np.int64)
    last_blocks = np.zeros(m, dtype=np.int64)
    for rep in range(replicas):
        index = np.flatnonzero(log.replica == rep)
        # held after run r = all changes up to r, less the frees after r itself
        last_tokens[index] = (
            np.cumsum(during_tokens[index] - freed_tokens[index]) + freed_tokens[index]
        )
        last_blocks[index] = (
            np.cumsum(during_blocks[index] - freed_blocks[index]) + freed_blocks[index]
        )
    # held before the run's iterations: after them, less what its members grew
    return last_tokens, last_blocks, last_blocks - grown_blocks


def _check_idle_swap_ins(
    profile: DeploymentProfile,
    run_ids: list[int],
    before_blocks: IntArray,
    over: np.ndarray,
    arrivals: tuple[IntArray, IntArray] | None,
    swap: _SwapKV,
    out: _Collector,
) -> None:
    """``kv-capacity`` at each asynchronous swap-in decided while its replica
    idles before run k (once per run, and not for a run already over): the
    blocks of the requests running then (those held before run k, less those
    that joined on the way: an adoption, an asynchronous swap-in) and those
    pinned by swap copies then."""
    capacity = profile.kv_capacity_blocks
    running = before_blocks - swap.joined
    if arrivals is not None:
        running -= _per_run(arrivals[0], profile.kv_blocks(arrivals[1]), len(run_ids))
    flagged: set[int] = set()
    for k, t, held in swap.idle:
        total = int(running[k]) + held
        if total > capacity and k not in flagged and not over[k]:
            flagged.add(k)
            out.add(
                "kv-capacity",
                f"holds at least {total} KV blocks ({held} pinned by swap "
                f"copies) at {t!r} s, where a swap-in is decided while the "
                f"replica idles before the run; capacity {capacity} blocks of "
                f"{profile.block_tokens} tokens",
                run=run_ids[k],
            )
