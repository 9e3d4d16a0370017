"""Swaps to the host tier: copy times and links, host capacity, the KV swaps
move on and off the GPU, and the swap metrics."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lsched.profile import DeploymentProfile
from lsched.validator.replay import _Log, _Replay, _SwapRows
from lsched.validator.report import (
    ARRIVAL_TOLERANCE_S,
    FloatArray,
    IntArray,
    _close,
    _close_array,
    _Collector,
)


def _copy_seconds(
    profile: DeploymentProfile, swaps: _SwapRows, tokens: IntArray
) -> FloatArray:
    """Seconds each copy of ``tokens`` tokens takes on its direction's link."""
    host = profile.host
    assert host is not None  # a profile always has one
    bandwidth = np.where(swaps.inbound == 1, host.h2d_bytes_per_s, host.d2h_bytes_per_s)
    return tokens * profile.kv_bytes_per_token / bandwidth


def _replica_runs(replica: IntArray) -> tuple[dict[int, IntArray], IntArray]:
    """Run positions of each replica (in time order) and each run's index there."""
    index = {int(rep): np.flatnonzero(replica == rep) for rep in np.unique(replica)}
    local = np.zeros(len(replica), dtype=np.int64)
    for positions in index.values():
        local[positions] = np.arange(len(positions))
    return index, local


_DIRECTION = ("out", "in")
_LINK = ("device-to-host", "host-to-device")

#: Flags a violation by the swap of a row: ``flag(rule, row, message)``.
_Flag = Callable[[str, int, str], None]


def _check_swaps(
    profile: DeploymentProfile,
    log: _Log,
    swaps: _SwapRows,
    replay: _Replay,
    async_swaps: bool,
    rtol: float,
    out: _Collector,
) -> tuple[FloatArray, _SwapKV, dict[str, float] | None]:
    """The rules of a log's swaps table: ``run-shape`` of a run with blocking
    swaps, ``swap-copy``, ``swap-link`` and ``host-capacity``. Returns, per run,
    the seconds of the blocking copies before its iteration (0 when
    asynchronous), the KV the swaps move (:func:`_swap_kv`), and the swap
    metrics (``None`` where no request swapped)."""
    m = len(log.run_ids)
    stall = np.zeros(m)
    copy_s = _copy_seconds(profile, swaps, replay.moved)
    if not async_swaps:  # blocking copies run before the forward pass
        stall = np.bincount(swaps.pos, weights=copy_s, minlength=m)
        for r in np.flatnonzero((stall > 0) & (log.n_it != 1)).tolist():
            out.add(
                "run-shape",
                f"has {log.n_it[r]} iterations after blocking swaps; a run whose "
                "batch swaps has exactly 1",
                run=log.run_ids[r],
            )
    _check_copies(profile, swaps, replay.moved, copy_s, async_swaps, log, rtol, out)
    _check_host(profile, swaps, replay, log.run_ids, log.replica, out)
    swap_kv = _swap_kv(profile, swaps, replay, async_swaps, log.replica, log.start)
    swap_metrics = None
    if len(swaps.pos):
        swap_metrics = _swap_metrics(profile, swaps, replay.moved, copy_s,
                                     async_swaps)  # fmt: skip
    return stall, swap_kv, swap_metrics


def _check_copies(
    profile: DeploymentProfile,
    swaps: _SwapRows,
    moved: IntArray,
    copy_s: FloatArray,
    async_swaps: bool,
    log: _Log,
    rtol: float,
    out: _Collector,
) -> None:
    """``swap-copy`` and ``swap-link``: each copy lasts ``tokens *
    kv_bytes_per_token / bandwidth``; on each replica a direction's copies go
    one at a time in the order they were decided (run, then row), none
    overlapping. Blocking: a run's copies go back to back from its start, outs
    then ins (each in row order). Asynchronous: a copy starts at the later of
    its decision (a boundary between the end of the replica's previous run and
    the start of the run it was decided before) and the end of its link's
    previous copy."""
    pos, req = swaps.pos.tolist(), swaps.req.tolist()

    def flag(rule: str, r: int, message: str) -> None:
        out.add(rule, message, run=log.run_ids[pos[r]], request=req[r])

    _check_copy_times(profile, swaps, moved, copy_s, rtol, flag)
    _check_links(swaps, async_swaps, log, rtol, flag)
    if not async_swaps:
        _check_blocking_copies(swaps, copy_s, log, rtol, flag)


def _check_copy_times(
    profile: DeploymentProfile,
    swaps: _SwapRows,
    moved: IntArray,
    copy_s: FloatArray,
    rtol: float,
    flag: _Flag,
) -> None:
    """``swap-copy``: each copy lasts ``copy_s``, its tokens' bytes over its
    link's bandwidth."""
    host = profile.host
    assert host is not None
    bandwidth = (host.d2h_bytes_per_s, host.h2d_bytes_per_s)
    per_token = profile.kv_bytes_per_token
    inbound = swaps.inbound.tolist()
    begin, finish = swaps.start.tolist(), swaps.end.tolist()
    seconds = copy_s.tolist()
    atol = (
        4
        * np.finfo(np.float64).eps
        * np.maximum(np.abs(swaps.start), np.abs(swaps.end))
    )
    wrong = ~_close_array(swaps.end - swaps.start, copy_s, rtol, atol)
    for r in np.flatnonzero(wrong).tolist():
        d = inbound[r]
        flag(
            "swap-copy",
            r,
            f"swap-{_DIRECTION[d]} copy of {int(moved[r])} tokens lasts "
            f"{finish[r] - begin[r]!r} s; {int(moved[r])} tokens x {per_token} "
            f"bytes at {bandwidth[d]!r} bytes/s take {seconds[r]!r} s",
        )


def _check_links(
    swaps: _SwapRows, async_swaps: bool, log: _Log, rtol: float, flag: _Flag
) -> None:
    """``swap-link``: on each replica a direction's copies go one at a time in
    the order they were decided (run, then row). Asynchronous (``swap-copy``):
    a copy starts at the later of its decision, between the end of the
    replica's previous run and the start of its run, and its link's previous
    copy's end."""
    tol = ARRIVAL_TOLERANCE_S
    pos, req, inbound = swaps.pos.tolist(), swaps.req.tolist(), swaps.inbound.tolist()
    begin, finish = swaps.start.tolist(), swaps.end.tolist()
    run_ids, start, end, replica = log.run_ids, log.start, log.end, log.replica
    index, _ = _replica_runs(replica)
    previous_end = np.full(len(start), -math.inf)
    for positions in index.values():
        previous_end[positions[1:]] = end[positions[:-1]]
    links: dict[tuple[int, int], list[int]] = {}
    for r in sorted(range(len(pos)), key=lambda r: (pos[r], r)):
        links.setdefault((int(replica[pos[r]]), inbound[r]), []).append(r)
    for (rep, d), rows in links.items():
        free, last = -math.inf, -1
        for r in rows:
            k = pos[r]
            if begin[r] < free - tol - rtol * abs(free):
                flag(
                    "swap-link",
                    r,
                    f"swap-{_DIRECTION[d]} copy starts at {begin[r]!r} s, before "
                    f"the copy decided before it on replica {rep}'s {_LINK[d]} link "
                    f"(request {req[last]}, before run {run_ids[pos[last]]}) ends "
                    f"at {free!r} s: one direction's copies run one at a time, "
                    "first come, first served",
                )
            elif async_swaps:
                lo = max(float(previous_end[k]), free)
                hi = max(float(start[k]), free)
                early = begin[r] < lo - tol - rtol * abs(lo)
                if early or begin[r] > hi + tol + rtol * abs(hi):
                    flag(
                        "swap-copy",
                        r,
                        f"swap-{_DIRECTION[d]} copy starts at {begin[r]!r} s; "
                        f"decided at a boundary before run {run_ids[k]} (in "
                        f"[{float(previous_end[k])!r}, {float(start[k])!r}] s) on a "
                        f"{_LINK[d]} link busy until {free!r} s, it starts at the "
                        f"later of the two, in [{lo!r}, {hi!r}] s",
                    )
            if finish[r] > free:
                free, last = finish[r], r


def _check_blocking_copies(
    swaps: _SwapRows, copy_s: FloatArray, log: _Log, rtol: float, flag: _Flag
) -> None:
    """``swap-copy`` (blocking): a run's copies go back to back from its start,
    outs then ins, each in row order."""
    pos, inbound = swaps.pos.tolist(), swaps.inbound.tolist()
    begin, seconds = swaps.start.tolist(), copy_s.tolist()
    runs: dict[int, list[int]] = {}
    for r in sorted(range(len(pos)), key=lambda r: (pos[r], inbound[r], r)):
        runs.setdefault(pos[r], []).append(r)
    for k, rows in runs.items():
        t = float(log.start[k])
        for r in rows:
            if not _close(begin[r], t, rtol, ARRIVAL_TOLERANCE_S):
                flag(
                    "swap-copy",
                    r,
                    f"blocking swap-{_DIRECTION[inbound[r]]} copy starts at "
                    f"{begin[r]!r} s; a run's copies go back to back from its "
                    f"start ({float(log.start[k])!r} s), outs then ins: expected "
                    f"{t!r} s",
                )
            t += seconds[r]


def _check_host(
    profile: DeploymentProfile,
    swaps: _SwapRows,
    replay: _Replay,
    run_ids: list[int],
    replica: IntArray,
    out: _Collector,
) -> None:
    """``host-capacity``: per replica, the host blocks of swapped-out KV
    (``ceil(tokens / b)`` per request, from its swap-out's start until its
    swap-in's end) never exceed ``memory_bytes // (b * kv_bytes_per_token)``."""
    host = profile.host
    assert host is not None
    b, per_token = profile.block_tokens, profile.kv_bytes_per_token
    capacity = host.memory_bytes // (b * per_token)
    tol = ARRIVAL_TOLERANCE_S
    held: dict[int, list[tuple[float, float, int, int]]] = {}
    for r in np.flatnonzero(replay.valid & (swaps.inbound == 0)).tolist():
        back = int(replay.pair[r])
        until = float(swaps.end[back]) if back >= 0 else math.inf
        blocks = -(-int(replay.moved[r]) // b)
        rep = int(replica[swaps.pos[r]])
        held.setdefault(rep, []).append((float(swaps.start[r]), until, blocks, r))
    for rep, spans in held.items():
        used = 0
        ends: list[tuple[float, int]] = []
        for since, until, blocks, r in sorted(spans):
            while ends and ends[0][0] <= since + tol:
                used -= heapq.heappop(ends)[1]
            used += blocks
            heapq.heappush(ends, (until, blocks))
            if used > capacity:
                out.add(
                    "host-capacity",
                    f"from {since!r} s replica {rep} holds {used} host blocks of "
                    f"swapped-out KV; its host tier holds {capacity} "
                    f"({host.memory_bytes} bytes in blocks of {b} tokens x "
                    f"{per_token} bytes)",
                    run=run_ids[int(swaps.pos[r])],
                    request=int(swaps.req[r]),
                )


@dataclass(frozen=True)
class _SwapKV:
    """What swaps change in a pool's GPU KV (:func:`_check_kv`).

    ``pos``, ``tokens``, ``blocks``: KV leaving (negative) or joining the running
    set before the run at ``pos``. ``pinned``: per run, the blocks asynchronous
    copies in flight when it starts pin. ``joined``: per run, the blocks of
    asynchronous swap-ins that join the running set before it. ``idle``: per
    asynchronous swap-in decided while its replica idles, ``(run position, its
    copy's start, the blocks pinned then)``."""

    pos: IntArray
    tokens: IntArray
    blocks: IntArray
    pinned: IntArray
    joined: IntArray
    idle: list[tuple[int, float, int]]


def _swap_kv(
    profile: DeploymentProfile,
    swaps: _SwapRows,
    replay: _Replay,
    async_swaps: bool,
    replica: IntArray,
    start: FloatArray,
) -> _SwapKV:
    """The KV the swaps move on and off each replica's GPU.

    A swap-out's tokens leave the running set before the run it was decided
    before; asynchronous, its blocks stay pinned during every run that starts
    before its copy ends (less the arrival tolerance), as the copy lands at the
    first boundary at or after its end. A blocking swap-in's tokens join the
    running set before its run; an asynchronous one's blocks are pinned from its
    run until the first run that starts at or after its copy's end, where its
    tokens join the running set.

    An asynchronous swap-in decided while the replica idles (its copy starts
    before the run it was decided before) takes its blocks then, at ``t`` (its
    copy's start, at or after its decision). Surely pinned at ``t``: the blocks
    of every swap-in decided by then (before an earlier run, or copying from
    ``t`` or earlier) whose copy ends after ``t``, and of every swap-out decided
    by then whose copy ends after ``t`` (both beyond the tolerance)."""
    m = len(start)
    tol = ARRIVAL_TOLERANCE_S
    index, local = _replica_runs(replica)
    pinned = np.zeros(m + 1, dtype=np.int64)  # differences, per replica index
    joined = np.zeros(m, dtype=np.int64)
    starts = {rep: start[positions] for rep, positions in index.items()}
    valid = replay.valid
    blocks = profile.kv_blocks(replay.moved)
    pos: list[int] = []
    tokens: list[int] = []
    for r in np.flatnonzero(valid).tolist():
        k = int(swaps.pos[r])
        rep = int(replica[k])
        positions = index[rep]
        a = int(local[k])
        x = int(replay.moved[r])
        # runs that start before its copy ends (less the tolerance)
        top = max(a, int(np.searchsorted(starts[rep], float(swaps.end[r]) - tol)))
        if swaps.inbound[r] == 0:
            pos.append(k)
            tokens.append(-x)
            if not async_swaps:
                continue
        elif not async_swaps:
            pos.append(k)
            tokens.append(x)
            continue
        elif top < len(positions):  # it lands before that run
            pos.append(int(positions[top]))
            tokens.append(x)
            joined[positions[top]] += int(blocks[r])
        pinned[positions[a]] += int(blocks[r])
        pinned[positions[top] if top < len(positions) else m] -= int(blocks[r])
    # the differences run along each replica's positions, not along all runs
    pinned_runs = np.zeros(m, dtype=np.int64)
    for positions in index.values():
        pinned_runs[positions] = np.cumsum(pinned[positions])
    idle: list[tuple[int, float, int]] = []
    if async_swaps:
        rep_of = replica[swaps.pos]
        gaps = valid & (swaps.inbound == 1) & (swaps.start < start[swaps.pos] - tol)
        for r in np.flatnonzero(gaps).tolist():
            k, t = int(swaps.pos[r]), float(swaps.start[r])
            decided = (local[swaps.pos] < local[k]) | (
                (swaps.pos == k) & (swaps.start <= t)
            )
            held = valid & (rep_of == rep_of[r]) & decided & (swaps.end > t + tol)
            idle.append((k, t, int(blocks[held].sum())))
    token_array = np.array(tokens, dtype=np.int64)
    return _SwapKV(
        pos=np.array(pos, dtype=np.int64),
        tokens=token_array,
        blocks=np.sign(token_array) * profile.kv_blocks(np.abs(token_array)),
        pinned=pinned_runs,
        joined=joined,
        idle=idle,
    )


def _swap_metrics(
    profile: DeploymentProfile,
    swaps: _SwapRows,
    moved: IntArray,
    copy_s: FloatArray,
    async_swaps: bool,
) -> dict[str, float]:
    """The four swap metrics, from the validator's own tokens and copy times."""
    outs = swaps.inbound == 0
    out_tokens = int(moved[outs].sum())
    in_tokens = int(moved[~outs].sum())
    per_token = profile.kv_bytes_per_token
    return {
        "swap_out_bytes": float(out_tokens * per_token),
        "swap_in_bytes": float(in_tokens * per_token),
        "swap_stall_s": 0.0 if async_swaps else float(copy_s.sum()),
        "recompute_avoided_tokens": float(out_tokens),
    }
