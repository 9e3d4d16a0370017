"""What the stages of a disaggregated cluster change in one pool's log: KV that
arrives on a decode replica, and KV pinned (or blocks reserved) until a
transfer ends."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lsched.instance import Instance
from lsched.profile import DeploymentProfile
from lsched.validator.replay import _Log, _Replay
from lsched.validator.report import (
    ARRIVAL_TOLERANCE_S,
    Features,
    FloatArray,
    IntArray,
    _Collector,
)
from lsched.validator.timing import _Timeline


@dataclass(frozen=True)
class _Stages:
    """What a disaggregated cluster adds to one pool's log (:func:`validate_cluster`).

    ``carried`` (a decode pool): per request, the KV tokens it brings, arriving at
    ``delivered_s`` (its ``transfer_end_s``). ``reserved_s`` (a pulling decode
    pool): when the replica took it and reserved its blocks (its
    ``transfer_start_s``), held until ``delivered_s``. ``pinned_until`` (a prefill
    pool): per request, when the KV it keeps pinned from the end of its prefill is
    freed (its ``transfer_end_s``; NaN for one that does not move).
    """

    carried: IntArray | None = None
    delivered_s: FloatArray | None = None
    reserved_s: FloatArray | None = None
    pinned_until: FloatArray | None = None


def _adoptions(
    stages: _Stages,
    replay: _Replay,
    timeline: _Timeline,
    run_ids: list[int],
    out: _Collector,
) -> tuple[IntArray, IntArray]:
    """A decode pool: where each request's KV arrives (run positions, tokens).

    A request's KV reaches its decode replica at ``delivered_s``; the replica
    adopts it (or drops it) at its first boundary at or after then, and nothing of
    the request runs there earlier (``decode-after-transfer``). An adopted
    request's admission is that boundary, and its KV counts from the first run
    that ends after it. A pulling replica that took a request at a boundary
    decided there before its KV could arrive: KV delivered at its take, at a
    boundary where a run without the request starts, is adopted at that run's
    first iteration end.
    """
    assert stages.carried is not None and stages.delivered_s is not None
    positions: list[int] = []
    tokens: list[int] = []
    for i in np.flatnonzero(stages.carried > 0).tolist():
        rep, first = int(replay.replica[i]), int(replay.first_pos[i])
        if rep < 0 or first < 0:
            continue  # it never ran: token conservation says so
        t = float(stages.delivered_s[i])
        if not math.isfinite(t):
            out.add(
                "decode-after-transfer",
                "runs on a decode replica with no transfer end recorded",
                run=run_ids[first],
                request=i,
            )
            continue
        adopted = timeline.boundary(rep, t)
        begins = float(timeline.start[first])
        reserved = stages.reserved_s
        if (
            reserved is not None
            and t <= reserved[i] + ARRIVAL_TOLERANCE_S
            and begins > adopted + ARRIVAL_TOLERANCE_S
            and timeline.starts_at(rep, adopted)
        ):
            # taken and delivered at once, at a boundary where the replica then
            # decided a run without it: it decided before the KV came (it takes
            # just before deciding), and adopts it at the next boundary
            adopted = timeline.boundary(rep, adopted + 2 * ARRIVAL_TOLERANCE_S)
        slack = 2 * ARRIVAL_TOLERANCE_S + 1e-12 * abs(adopted)
        if begins < adopted - slack:
            out.add(
                "decode-after-transfer",
                f"runs on its decode replica at {begins!r} s, before its KV arrives "
                f"at {t!r} s (transfer_end_s) and the replica's first boundary at or "
                f"after then, {adopted!r} s",
                run=run_ids[first],
                request=i,
            )
        if replay.adopted[i]:
            replay.admitted_s[i] = adopted
            index = timeline.of(rep)
            k = int(np.searchsorted(timeline.end[index], adopted + ARRIVAL_TOLERANCE_S,
                                    side="right"))  # fmt: skip
            if k < len(index):
                positions.append(int(index[k]))
                tokens.append(int(stages.carried[i]))
    return np.array(positions, dtype=np.int64), np.array(tokens, dtype=np.int64)


def _pins(
    instance: Instance,
    profile: DeploymentProfile,
    until: FloatArray,
    replay: _Replay,
    done: FloatArray,
    timeline: _Timeline,
) -> tuple[IntArray, float]:
    """A prefill pool: the blocks pinned during each run, and the pinned KV's
    token-seconds. A request that moves keeps ``ceil(s_i / b)`` blocks from the end
    of its prefill (``done`` here: it emits one token) until ``until``, in every
    run of its replica that starts in between (a run that starts when the pin is
    freed, within the arrival tolerance, no longer holds it).

    A pulling decode pool's reservations are counted the same way: ``done`` is
    when the replica took the request (its transfer's start), ``until`` its
    transfer's end (the token-seconds are not the pool's: reserved blocks hold no
    KV yet)."""
    pinned = np.zeros(len(timeline.start), dtype=np.int64)
    token_seconds = 0.0
    prompt = instance.prompt_tokens
    for i in np.flatnonzero(np.isfinite(until)).tolist():
        rep, since = int(replay.replica[i]), float(done[i])
        if rep < 0 or math.isnan(since):
            continue
        index = timeline.of(rep)
        starts = timeline.start[index]
        lo = int(np.searchsorted(starts, since - ARRIVAL_TOLERANCE_S))
        hi = int(np.searchsorted(starts, until[i] - ARRIVAL_TOLERANCE_S))
        pinned[index[lo:hi]] += int(profile.kv_blocks(prompt[i : i + 1])[0])
        token_seconds += int(prompt[i]) * (float(until[i]) - since)
    return pinned, token_seconds


def _stage_kv(
    instance: Instance,
    profile: DeploymentProfile,
    log: _Log,
    features: Features,
    stages: _Stages,
    replay: _Replay,
    done: FloatArray,
    out: _Collector,
) -> tuple[tuple[IntArray, IntArray] | None, IntArray | None, float]:
    """What a pool's ``stages`` add to its KV (``features``: the runs' P, Q, D,
    K; ``done``: each request's completion): the KV adopted on a decode replica
    (:func:`_adoptions`, which checks ``decode-after-transfer``), the blocks
    pinned (a prefill pool) or reserved (a pulling decode pool) during each run
    (:func:`_pins`), and the pinned KV's token-seconds."""
    timeline = _Timeline(profile, log.replica, log.start, log.end, log.n_it, features)
    arrivals, pinned, pinned_token_seconds = None, None, 0.0
    if stages.carried is not None:
        assert stages.delivered_s is not None
        arrivals = _adoptions(stages, replay, timeline, log.run_ids, out)
    if stages.pinned_until is not None:
        pinned, pinned_token_seconds = _pins(
            instance, profile, stages.pinned_until, replay, done, timeline
        )
    if stages.reserved_s is not None:
        assert stages.delivered_s is not None
        pinned, _ = _pins(instance, profile, stages.delivered_s, replay,
                          stages.reserved_s, timeline)  # fmt: skip
    return arrivals, pinned, pinned_token_seconds
