"""The transfers of a disaggregated cluster against their requests, their links
and the takes of pulling decode replicas."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from lsched.instance import Instance
from lsched.validator.report import (
    ARRIVAL_TOLERANCE_S,
    FloatArray,
    IntArray,
    _close,
    _Collector,
)
from lsched.validator.timing import _Timeline

#: Per request: first token, transfer start, transfer end (seconds) and bytes.
_Times = tuple[list[float], list[float], list[float], list[float]]
#: Flags a violation by a request: ``flag(rule, request, message)``.
_Flag = Callable[[str, int, str], None]


def _check_transfers(
    instance: Instance,
    cluster: Any,
    own: dict[str, np.ndarray],
    claimed: dict[str, np.ndarray],
    rtol: float,
    out: _Collector,
    runs: pd.DataFrame,
) -> None:
    """Every transfer against its request and its link (``runs``: the log's).

    ``transfer``: a request prefilled on a prefill replica with ``o_i >= 2`` moves
    (and no other): its transfer starts no earlier than its first token and ends
    no earlier than ``start + latency + bytes / bandwidth``. ``link``: on a
    ``fifo`` link (or one of unbounded bandwidth) transfers go one at a time in
    the order their prefills end, each starting at ``max(f_i, the previous one's
    departure)`` and ending ``bytes / bandwidth + latency`` later; on a ``share``
    link each starts at ``f_i`` and ends ``latency`` after processor sharing of the
    bandwidth lets it depart. A link into a pulling decode pool starts each
    transfer when the decode replica takes it: a ``fifo`` one at ``max(the take,
    the previous departure)``, in the order of the takes, a ``share`` one at the
    take; its starts are only bounded below (by ``f_i``, and on ``fifo`` by the
    previous departure), and the takes are checked by :func:`_check_takes`.
    """
    pools = [p for p in cluster.pools for _ in range(p.replicas)]
    taken_s: dict[int, float] = {}  # pulled requests whose take time is known
    times: _Times = (
        own["first_token_s"].tolist(),
        own["transfer_start_s"].tolist(),
        own["transfer_end_s"].tolist(),
        own["transferred_bytes"].tolist(),
    )
    output = instance.output_tokens
    links: dict[tuple[str, str], list[int]] = {}

    def flag(rule: str, i: int, message: str) -> None:
        out.add(rule, message, request=i)

    def near(a: float, b: float) -> bool:
        return _close(a, b, rtol, ARRIVAL_TOLERANCE_S)

    for i in range(len(instance)):
        c = int(own["replica"][i])
        if c < 0:
            continue  # rejected, or never ran: other rules say so
        moves = pools[c].role == "prefill" and output[i] > 1
        link = _check_transfer(cluster, pools, c, claimed, i, moves, times, rtol,
                               flag)  # fmt: skip
        if link is not None:
            links.setdefault((link.source, link.target), []).append(i)
    names = [p.name for p in cluster.pools]
    for (source, target), ids in links.items():
        link = cluster.link(source, target)
        if cluster.pools[names.index(target)].pull is not None:
            _check_pulled_link(link, ids, times, taken_s, flag, near)
        elif link.sharing == "fifo" or math.isinf(link.bandwidth_bytes_per_s):
            _check_fifo_link(link, ids, times, flag, near)
        else:
            _check_shared_link(link, ids, times, flag, near)
    if taken_s:
        decode = claimed["decode_replica"].astype(np.int64)
        _check_takes(instance, pools, decode, (times[1], times[2]), taken_s, flag,
                     runs)  # fmt: skip


def _check_transfer(
    cluster: Any,
    pools: list[Any],
    c: int,
    claimed: dict[str, np.ndarray],
    i: int,
    moves: bool,
    times: _Times,
    rtol: float,
    flag: _Flag,
) -> Any | None:
    """``transfer`` for request ``i``, prefilled on replica ``c`` (``pools``: the
    pool of each replica): it records a transfer iff it ``moves``; one that
    moves goes to a decode replica, starting no earlier than its first token
    and ending no earlier than its bytes can arrive. Returns its link (``None``
    where there is no transfer whose link to check)."""
    first, start, end, nbytes = times
    d = int(claimed["decode_replica"][i])
    recorded = not (math.isnan(start[i]) and math.isnan(end[i])) or d >= 0
    if not moves:
        if recorded or claimed["transferred_bytes"][i] != 0:
            flag(
                "transfer",
                i,
                "records a transfer, but the request does not "
                "move (colocated, or one output token)",
            )
        return None
    if not (0 <= d < len(pools) and pools[d].role == "decode"):
        flag("transfer", i, f"moves, but decode_replica = {d} is no decode replica")
        return None
    if not (math.isfinite(start[i]) and math.isfinite(end[i])):
        flag("transfer", i, "moves, but its transfer has no finite start and end")
        return None
    link = cluster.link(pools[c].name, pools[d].name)
    if start[i] < first[i] - ARRIVAL_TOLERANCE_S:
        flag(
            "transfer",
            i,
            f"starts at {start[i]!r} s, before its prefill ends at {first[i]!r} s",
        )
    least = start[i] + link.latency_s + nbytes[i] / link.bandwidth_bytes_per_s
    if end[i] < least - rtol * abs(least) - ARRIVAL_TOLERANCE_S:
        flag(
            "transfer",
            i,
            f"ends at {end[i]!r} s; {nbytes[i]!r} bytes from "
            f"{start[i]!r} s over the link {link.source} -> {link.target} "
            f"arrive at {least!r} s at the earliest",
        )
    return link


def _check_fifo_link(
    link: Any,
    ids: list[int],
    times: _Times,
    flag: _Flag,
    near: Callable[[float, float], bool],
) -> None:
    """``link`` on a ``fifo`` link (or one of unbounded bandwidth) for the
    transfers ``ids``: one at a time in the order their prefills end, each
    starting at ``max(f_i, the previous one's departure)`` and arriving ``bytes
    / bandwidth + latency`` later."""
    first, start, end, nbytes = times
    bandwidth, latency = link.bandwidth_bytes_per_s, link.latency_s
    name = f"{link.source} -> {link.target}"
    free, latest = -math.inf, -math.inf
    for i in sorted(ids, key=lambda i: (start[i], first[i], i)):
        expected = max(first[i], free)
        if not near(start[i], expected):
            flag(
                "link",
                i,
                f"starts at {start[i]!r} s on the fifo link "
                f"{name}; expected {expected!r} s (its prefill's end or "
                "the previous transfer's departure)",
            )
        if first[i] < latest - ARRIVAL_TOLERANCE_S:
            flag(
                "link",
                i,
                f"goes on the fifo link {name} after a transfer "
                "whose prefill ended later",
            )
        leaves = start[i] + nbytes[i] / bandwidth
        if not near(end[i], leaves + latency):
            flag(
                "link",
                i,
                f"ends at {end[i]!r} s; alone on the fifo link "
                f"{name} from {start[i]!r} s it arrives at "
                f"{leaves + latency!r} s",
            )
        free, latest = max(free, end[i] - latency), max(latest, first[i])


def _check_shared_link(
    link: Any,
    ids: list[int],
    times: _Times,
    flag: _Flag,
    near: Callable[[float, float], bool],
) -> None:
    """``link`` on a ``share`` link for the transfers ``ids``: each starts at
    its prefill's end and arrives ``latency`` after processor sharing of the
    bandwidth lets it depart."""
    first, start, end, nbytes = times
    name = f"{link.source} -> {link.target}"
    for i in ids:
        if not near(start[i], first[i]):
            flag(
                "link",
                i,
                f"starts at {start[i]!r} s on the shared link {name}; "
                f"expected its prefill's end, {first[i]!r} s",
            )
    departs = _shared_departures(
        np.array([start[i] for i in ids]),
        np.array([nbytes[i] for i in ids]),
        link.bandwidth_bytes_per_s,
    )
    for i, leaves in zip(ids, departs.tolist(), strict=True):
        if not near(end[i], leaves + link.latency_s):
            flag(
                "link",
                i,
                f"ends at {end[i]!r} s; sharing the link {name} with "
                f"the transfers on it, it arrives at {leaves + link.latency_s!r} s",
            )


def _check_takes(
    instance: Instance,
    pools: list[Any],
    decode: IntArray,
    times: tuple[list[float], list[float]],
    taken_s: dict[int, float],
    flag: _Flag,
    runs: pd.DataFrame,
) -> None:
    """``pull``: DistServe's rule at each take whose time the log settles
    (``taken_s``), as far as the transfers and the decode replica's runs show it.
    The replica takes at one of its iteration boundaries or while idle, never
    inside an iteration. The requests it took before (transfer started more than
    the arrival tolerance earlier) and has not received (transfer ends later) are
    part of what it took and has not admitted, and hold reserved blocks: their
    blocks must be under ``pull * capacity``, the taken prompt's blocks must fit
    beside them, and they must be fewer than ``max_num_seqs``. (The rule also
    counts the requests waiting on the replica, and its running ones in the last
    two: a necessary check.) The iterations inside a run are timed from the
    run's logged features (``run-features`` checks them)."""
    start, end = times
    prompt = instance.prompt_tokens
    replica = runs["replica"].to_numpy(dtype=np.int64)
    columns = ("prefill_tokens", "prefill_attention", "decode_steps", "kv_read_tokens")
    features = tuple(runs[c].to_numpy(dtype=np.int64) for c in columns)
    timelines: dict[int, _Timeline] = {}
    groups: dict[int, list[int]] = {}
    for i in taken_s:
        groups.setdefault(int(decode[i]), [])
    for i in np.flatnonzero(np.isin(decode, list(groups))).tolist():
        if math.isfinite(start[i]) and math.isfinite(end[i]):
            groups[int(decode[i])].append(i)  # every pulled transfer to it
    tol = ARRIVAL_TOLERANCE_S
    for d, group in groups.items():
        pool = pools[d]
        capacity = pool.profile.kv_capacity_blocks
        b = pool.profile.block_tokens
        limit, seqs = pool.pull * capacity, pool.profile.max_num_seqs
        blocks = {i: -(-int(prompt[i]) // b) for i in group}
        by_start = sorted(group, key=lambda j: (start[j], j))
        k, held, count = 0, 0, 0
        flight: list[tuple[float, int]] = []  # (transfer end, request)
        if d not in timelines:
            timelines[d] = _Timeline(
                pool.profile,
                replica,
                runs["start_s"].to_numpy(dtype=np.float64),
                runs["end_s"].to_numpy(dtype=np.float64),
                runs["iterations"].to_numpy(dtype=np.int64),
                features,  # type: ignore[arg-type]
            )
        for t, i in sorted((taken_s[i], i) for i in group if i in taken_s):
            boundary = timelines[d].boundary(d, t)
            if boundary > t + 2 * tol + 1e-12 * abs(t):
                flag(
                    "pull",
                    i,
                    f"taken at {t!r} s by decode replica {d}, inside an iteration "
                    f"that ends at {boundary!r} s (a replica takes at its "
                    "boundaries, or when idle)",
                )
            while k < len(by_start) and start[by_start[k]] < t - tol:
                j = by_start[k]
                heapq.heappush(flight, (end[j], j))
                held, count, k = held + blocks[j], count + 1, k + 1
            while flight and flight[0][0] <= t + tol:
                _, j = heapq.heappop(flight)
                held, count = held - blocks[j], count - 1
            broken = []
            if held >= limit:
                broken.append(
                    f"the {count} request(s) it took before and has not received "
                    f"hold {held} blocks, not under pull x capacity = {limit!r}"
                )
            if blocks[i] + held > capacity:
                broken.append(
                    f"its prompt's {blocks[i]} blocks and the {held} reserved for "
                    f"requests on their way exceed the capacity of {capacity} blocks"
                )
            if count >= seqs:
                broken.append(
                    f"{count} request(s) on their way to it, max_num_seqs = {seqs}"
                )
            if broken:
                flag("pull", i, f"taken at {t!r} s by decode replica {d}: "
                     + "; ".join(broken))  # fmt: skip


def _check_pulled_link(
    link: Any,
    ids: list[int],
    times: _Times,
    taken_s: dict[int, float],
    flag: _Flag,
    near: Callable[[float, float], bool],
) -> None:
    """``link`` rules for the transfers ``ids`` into a pulling decode pool (each
    starts when its decode replica takes it); records in ``taken_s`` the take of
    each whose take time the log settles (on ``share``: its start; on ``fifo``:
    its start unless it waited for the link, where the take lies between its
    first token and its start). ``times``: first token, transfer start, transfer
    end and bytes of every request."""
    first, start, end, nbytes = times
    bandwidth, latency = link.bandwidth_bytes_per_s, link.latency_s
    name = f"{link.source} -> {link.target}"
    if link.sharing == "fifo" or math.isinf(bandwidth):
        free = -math.inf
        for i in sorted(ids, key=lambda i: (start[i], i)):
            if start[i] < free - ARRIVAL_TOLERANCE_S:
                flag(
                    "link",
                    i,
                    f"starts at {start[i]!r} s on the fifo link {name}, before the "
                    f"previous transfer leaves it at {free!r} s",
                )
            leaves = start[i] + nbytes[i] / bandwidth
            if not near(end[i], leaves + latency):
                flag(
                    "link",
                    i,
                    f"ends at {end[i]!r} s; alone on the fifo link {name} from "
                    f"{start[i]!r} s it arrives at {leaves + latency!r} s",
                )
            if (
                start[i] > free + ARRIVAL_TOLERANCE_S
                or start[i] <= first[i] + ARRIVAL_TOLERANCE_S
            ):
                taken_s[i] = start[i]  # the link was free: it left when taken
            free = max(free, end[i] - latency)
        return
    departs = _shared_departures(
        np.array([start[i] for i in ids]), np.array([nbytes[i] for i in ids]), bandwidth
    )
    for i, leaves in zip(ids, departs.tolist(), strict=True):
        taken_s[i] = start[i]
        if not near(end[i], leaves + latency):
            flag(
                "link",
                i,
                f"ends at {end[i]!r} s; sharing the link {name} with the transfers "
                f"on it, it arrives at {leaves + latency!r} s",
            )


def _shared_departures(
    start: FloatArray, nbytes: FloatArray, bandwidth: float
) -> FloatArray:
    """When each transfer leaves a link whose ``bandwidth`` the active transfers
    share equally (processor sharing), given when each starts and its bytes."""
    order = np.argsort(start, kind="stable").tolist()
    left: dict[int, float] = {}
    departs = np.full(len(start), np.nan)
    now = -math.inf
    k = 0
    while k < len(order) or left:
        coming = float(start[order[k]]) if k < len(order) else math.inf
        leaving, who = math.inf, -1
        if left:
            who = min(left, key=lambda j: (left[j], j))
            leaving = now + max(0.0, left[who]) * len(left) / bandwidth
        t = min(coming, leaving)
        if left and t > now:
            sent = (t - now) * bandwidth / len(left)
            for j in left:
                left[j] -= sent
        now = max(now, t)
        if coming <= leaving:
            left[order[k]] = float(nbytes[order[k]])
            k += 1
        else:
            del left[who]
            departs[who] = t
    return departs
