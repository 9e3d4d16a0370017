"""The per-request bookkeeping: each request's preemptions, swaps and
memberships walked in run order, with the rules that walk checks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from lsched.instance import Instance
from lsched.validator.report import (
    _DECODE,
    _PREFILL,
    ARRIVAL_TOLERANCE_S,
    FloatArray,
    IntArray,
    _Collector,
)

# The events of a request before one run, in order: its swaps (by copy start, then
# row), its preemption, then its membership. One decision applies preemptions,
# swap-outs, then swap-ins, before its iteration; asynchronous swaps of one request
# can be decided at several boundaries before one run (the replica idles between
# them: a swap-in lands, then the request is swapped out or preempted), while a
# preempted request cannot swap before it runs again.
_SWAP_EVENT, _PREEMPT_EVENT, _MEMBER_EVENT = 0, 1, 2


@dataclass(frozen=True)
class _SwapRows:
    """The swaps table as arrays, in its row order: the run position each was
    decided before, the request, 1 for a swap-in (0 out), tokens, copy times."""

    pos: IntArray
    req: IntArray
    inbound: IntArray
    tokens: IntArray
    start: FloatArray
    end: FloatArray

    @classmethod
    def empty(cls) -> _SwapRows:
        none = np.zeros(0, dtype=np.int64)
        return cls(none, none, none, none, none.astype(np.float64),
                   none.astype(np.float64))  # fmt: skip

    @classmethod
    def of(cls, swaps: pd.DataFrame, runs: pd.DataFrame) -> _SwapRows:
        """Rows of a table that passed :func:`_check_swap_schema`."""
        return cls(
            pos=runs.index.get_indexer(swaps["run"]).astype(np.int64),
            req=swaps["request"].to_numpy(dtype=np.int64),
            inbound=(swaps["direction"].astype(str).to_numpy() == "in").astype(
                np.int64
            ),
            tokens=swaps["tokens"].to_numpy(dtype=np.int64),
            start=swaps["start_s"].to_numpy(dtype=np.float64),
            end=swaps["end_s"].to_numpy(dtype=np.float64),
        )


@dataclass(frozen=True)
class _Replay:
    """Outcome of the per-request bookkeeping.

    Member rows and preemption rows keep the order of their tables; marks are
    ``(request, run position, iteration within the run)``.
    """

    before: IntArray  # per member: KV tokens held before the run (own bookkeeping)
    after: IntArray  # per member: KV tokens held after the run
    completes: npt.NDArray[np.bool_]  # per member: the request completes in it
    freed: IntArray  # per preemption: KV tokens freed
    replica: IntArray  # per request: its first replica, -1 if it never ran
    admitted_s: FloatArray
    preemptions: IntArray
    recomputed: IntArray
    emitted: IntArray  # per request: tokens emitted in all
    first_at: list[tuple[int, int, int]]  # where token 1 is emitted
    done_at: list[tuple[int, int, int]]  # where token o_i is emitted
    first_pos: IntArray  # per request: run position of its first event, -1 if none
    adopted: npt.NDArray[np.bool_]  # per request: arrived prefilled and running
    moved: IntArray  # per swap: KV tokens it moves (own bookkeeping; logged if void)
    valid: npt.NDArray[np.bool_]  # per swap: not void (a running request's
    # swap-out, or a swapped-out request's swap-in)
    pair: IntArray  # per swap-out: the row of the swap-in that ends it, -1 if none


def _replay(
    instance: Instance,
    run_ids: list[int],
    run_replica: list[int],
    run_start: list[float],
    run_n: list[int],
    m_pos: IntArray,
    m_req: IntArray,
    m_kind: IntArray,
    m_tokens: IntArray,
    m_logged_before: IntArray,
    p_pos: IntArray,
    p_req: IntArray,
    out: _Collector,
    carried: IntArray | None = None,
    swaps: _SwapRows | None = None,
    async_swaps: bool = False,
) -> _Replay:
    """Walk each request's preemptions, swaps and memberships in run order.

    One plain loop over events sorted by (request, run, then its swaps by copy
    start, its preemption, its membership): the state of a request (processed,
    target, emitted, running, swapped, done) depends only on its own earlier
    events.

    ``carried`` (a disaggregated decode pool): the KV tokens each request brings,
    its token 1 emitted. A request whose first event decodes (or preempts or
    swaps it out) was adopted running with that KV; one whose first event
    prefills had it dropped (recomputed tokens) and is prefilled again.

    ``swaps`` (rule ``swap``): a swap-out moves a running request's KV (its
    processed tokens) to the host and stops it running; the swap-in that follows
    brings the same tokens back, and it runs on with them, its target unchanged.
    Blocking, it may be in the run the swap-in was decided before; asynchronous
    (``async_swaps``), it runs from the first run that starts at or after its
    copy's end, and the swap-in starts no earlier than the swap-out's copy ends.
    """
    n = len(instance)
    arrival = instance.arrival_s.tolist()
    prompt = instance.prompt_tokens.tolist()
    output = instance.output_tokens.tolist()
    num_members, num_preempt = len(m_pos), len(p_pos)
    if swaps is None:
        swaps = _SwapRows.empty()
    num_swaps = len(swaps.pos)

    # events: members, preemptions and swaps, in one order
    req = np.concatenate([m_req, p_req, swaps.req])
    pos = np.concatenate([m_pos, p_pos, swaps.pos])
    kind = np.concatenate(
        [
            np.full(num_members, _MEMBER_EVENT),
            np.full(num_preempt, _PREEMPT_EVENT),
            np.full(num_swaps, _SWAP_EVENT),
        ]
    )
    row = np.concatenate(
        [np.arange(num_members), np.arange(num_preempt), np.arange(num_swaps)]
    )
    when = np.concatenate([np.zeros(num_members + num_preempt), swaps.start])
    order = np.lexsort((row, when, kind, pos, req))
    is_in = np.concatenate([np.zeros(num_members + num_preempt, dtype=np.int64),
                            swaps.inbound])  # fmt: skip
    s_tokens = swaps.tokens.tolist()
    s_start, s_end = swaps.start.tolist(), swaps.end.tolist()
    s_pos = swaps.pos.tolist()
    moved = swaps.tokens.astype(np.int64).copy()
    valid = np.zeros(num_swaps, dtype=bool)
    pair = np.full(num_swaps, -1, dtype=np.int64)

    before = np.zeros(num_members, dtype=np.int64)
    after = np.zeros(num_members, dtype=np.int64)
    completes = np.zeros(num_members, dtype=bool)
    freed = np.zeros(num_preempt, dtype=np.int64)
    replica_of = np.full(n, -1, dtype=np.int64)
    admitted_s = np.full(n, np.nan)
    preempted = np.zeros(n, dtype=np.int64)
    recomputed = np.zeros(n, dtype=np.int64)
    first_at: list[tuple[int, int, int]] = []  # (request, run position, iteration)
    done_at: list[tuple[int, int, int]] = []
    member_kind, member_tokens = m_kind.tolist(), m_tokens.tolist()
    logged_before = m_logged_before.tolist()

    emitted_of = np.zeros(n, dtype=np.int64)
    first_pos = np.full(n, -1, dtype=np.int64)
    adopted = np.zeros(n, dtype=bool)
    current = -1
    processed = target = emitted = 0
    running = done = warned_replica = warned_after = False
    swapped, host, out_row, resume_s = False, 0, -1, -math.inf

    def never_back(i: int, out_row: int) -> None:
        """The request ends with its KV on the host."""
        out.add(
            "swap",
            f"its KV stays on the host: swapped out before run "
            f"{run_ids[s_pos[out_row]]}, never swapped back in",
            run=run_ids[s_pos[out_row]],
            request=i,
        )

    for e_req, e_pos, e_kind, e_row, e_in in zip(
        req[order].tolist(),
        pos[order].tolist(),
        kind[order].tolist(),
        row[order].tolist(),
        is_in[order].tolist(),
        strict=True,
    ):
        if e_req != current:  # a new request: fresh state
            if swapped:
                never_back(current, out_row)
            current = e_req
            processed = target = emitted = 0
            running = done = warned_replica = warned_after = False
            swapped, host, out_row, resume_s = False, 0, -1, -math.inf
            first_pos[e_req] = e_pos
            if carried is not None and carried[e_req] > 0:
                emitted = 1  # token 1 came from its prefill replica
                if e_kind != _MEMBER_EVENT or member_kind[e_row] == _DECODE:
                    processed = target = int(carried[e_req])  # adopted, running
                    running = True
                    adopted[e_req] = True
                else:  # its KV was dropped: prefilled again
                    recomputed[e_req] += int(carried[e_req])
        i, run = e_req, run_ids[e_pos]
        if replica_of[i] < 0:
            replica_of[i] = run_replica[e_pos]
        elif run_replica[e_pos] != replica_of[i] and not warned_replica:
            out.add(
                "single-replica",
                f"on replica {run_replica[e_pos]}, earlier on replica {replica_of[i]}",
                run=run,
                request=i,
            )
            warned_replica = True

        if e_kind == _SWAP_EVENT and not e_in:
            if not running:
                state = "swapped out" if swapped else "completed" if done else "waiting"
                out.add(
                    "swap",
                    f"swapped out while {state}; only a running request swaps out",
                    run=run,
                    request=i,
                )
                continue
            if s_tokens[e_row] != processed:
                out.add(
                    "swap",
                    f"swap-out of {s_tokens[e_row]} tokens; the request holds "
                    f"{processed} KV tokens",
                    run=run,
                    request=i,
                )
            moved[e_row], valid[e_row] = processed, True
            swapped, host, out_row = True, processed, e_row
            processed, running = 0, False
            continue
        if e_kind == _SWAP_EVENT:
            if not swapped:
                state = "running" if running else "completed" if done else "waiting"
                out.add(
                    "swap",
                    f"swapped in while {state}; swaps of a request alternate out, "
                    "in, out, ..., starting with out",
                    run=run,
                    request=i,
                )
                continue
            if s_tokens[e_row] != host:
                out.add(
                    "swap",
                    f"swap-in of {s_tokens[e_row]} tokens; it swapped out {host}",
                    run=run,
                    request=i,
                )
            ready = s_end[out_row]
            if async_swaps and (
                run_start[e_pos] < ready - ARRIVAL_TOLERANCE_S
                or s_start[e_row] < ready - ARRIVAL_TOLERANCE_S
            ):
                out.add(
                    "swap",
                    f"swapped in (decided before a run starting at "
                    f"{run_start[e_pos]!r} s, copy from {s_start[e_row]!r} s) "
                    f"before its swap-out copy ends at {ready!r} s",
                    run=run,
                    request=i,
                )
            moved[e_row], valid[e_row], pair[out_row] = host, True, e_row
            swapped, running, processed = False, True, host
            resume_s = s_end[e_row] if async_swaps else -math.inf
            continue
        if e_kind == _PREEMPT_EVENT:
            if not running:
                state = "swapped out" if swapped else "completed" if done else "waiting"
                out.add("preemption", f"preempted while {state}", run=run, request=i)
                continue
            freed[e_row] = processed
            recomputed[i] += processed
            preempted[i] += 1
            processed, running = 0, False
            continue

        if done:
            if not warned_after:
                out.add(
                    "token-conservation",
                    "runs after it completed",
                    run=run,
                    request=i,
                )
                warned_after = True
            before[e_row] = after[e_row] = 0  # holds nothing: its KV was freed
            continue
        if swapped:
            out.add(
                "swap",
                f"in the run while its KV is on the host (swapped out before run "
                f"{run_ids[s_pos[out_row]]}, not swapped back in)",
                run=run,
                request=i,
            )
            swapped, running, processed = False, True, host  # as if it came back
        elif run_start[e_pos] < resume_s - ARRIVAL_TOLERANCE_S:
            out.add(
                "swap",
                f"in a run starting at {run_start[e_pos]!r} s, before its swap-in "
                f"copy ends at {resume_s!r} s",
                run=run,
                request=i,
            )
        resume_s = -math.inf
        if math.isnan(admitted_s[i]):
            admitted_s[i] = run_start[e_pos]
            if run_start[e_pos] < arrival[i] - ARRIVAL_TOLERANCE_S:
                out.add(
                    "arrival",
                    f"first run starts at {run_start[e_pos]!r} s, before its "
                    f"arrival at {arrival[i]!r} s",
                    run=run,
                    request=i,
                )
        if logged_before[e_row] != processed:
            out.add(
                "processed-before",
                f"processed_before = {logged_before[e_row]}; the request holds "
                f"{processed} KV tokens",
                run=run,
                request=i,
            )
        before[e_row] = processed
        emitted_before = emitted
        if member_kind[e_row] == _PREFILL:
            c = member_tokens[e_row]
            if not running:  # admission: re-prefill the prompt and emitted tokens
                running, target = True, prompt[i] + emitted
            if not 1 <= c <= target - processed:
                out.add(
                    "prefill-chunk",
                    f"chunk of {c} tokens; expected 1..{target - processed} "
                    f"(target {target}, processed {processed})",
                    run=run,
                    request=i,
                )
            if processed < target <= processed + c:  # this chunk ends the prefill
                emitted += 1
            processed += c
            steps = 1
        else:
            if not running or processed < target:  # prefill not finished
                out.add(
                    "prefill-before-decode",
                    f"decodes while {'running' if running else 'waiting'} with "
                    f"{processed} of {target} prefill tokens processed",
                    run=run,
                    request=i,
                )
                running = True
            if member_tokens[e_row] != 1:
                out.add(
                    "run-shape",
                    f"decode member with tokens = {member_tokens[e_row]}; "
                    "expected 1 (one per iteration)",
                    run=run,
                    request=i,
                )
            steps = run_n[e_pos]
            processed += steps
            emitted += steps
        after[e_row] = processed
        emitted_of[i] = emitted
        if emitted_before == 0 and emitted > 0:
            first_at.append((i, e_pos, 0))
        if emitted >= output[i]:
            if emitted > output[i]:
                out.add(
                    "token-conservation",
                    f"emits {emitted} tokens; expected {output[i]}",
                    run=run,
                    request=i,
                )
            # the iteration that emits token o_i ends the request
            done_at.append((i, e_pos, steps - 1 - (emitted - output[i])))
            completes[e_row] = True
            done, running = True, False
    if swapped:
        never_back(current, out_row)

    return _Replay(
        before=before,
        after=after,
        completes=completes,
        freed=freed,
        replica=replica_of,
        admitted_s=admitted_s,
        preemptions=preempted,
        recomputed=recomputed,
        emitted=emitted_of,
        first_at=first_at,
        done_at=done_at,
        first_pos=first_pos,
        adopted=adopted,
        moved=moved,
        valid=valid,
        pair=pair,
    )
