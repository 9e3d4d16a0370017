"""The per-request bookkeeping: a log as arrays, and each request's
preemptions, swaps and memberships walked in run order, with the rules that
walk checks."""

from __future__ import annotations

import math
from collections.abc import Iterator
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
class _Log:
    """A log that passed :func:`_check_schema`, as arrays: its runs in id order (a
    run's *position* indexes them), its member and preemption rows in the order
    of their tables (``m_pos``, ``p_pos``: the position of a row's run)."""

    runs: pd.DataFrame  # sorted by run id
    run_ids: list[int]
    replica: IntArray
    start: FloatArray
    end: FloatArray
    n_it: IntArray
    m_pos: IntArray
    m_req: IntArray
    m_kind: IntArray  # _PREFILL or _DECODE
    m_tokens: IntArray
    m_before: IntArray  # the logged processed_before
    p_pos: IntArray
    p_req: IntArray

    @classmethod
    def of(
        cls, runs: pd.DataFrame, members: pd.DataFrame, preemptions: pd.DataFrame
    ) -> _Log:
        """The arrays of a log's tables."""
        runs = runs.sort_index()
        return cls(
            runs=runs,
            run_ids=[int(r) for r in runs.index],
            replica=runs["replica"].to_numpy(dtype=np.int64),
            start=runs["start_s"].to_numpy(dtype=np.float64),
            end=runs["end_s"].to_numpy(dtype=np.float64),
            n_it=runs["iterations"].to_numpy(dtype=np.int64),
            m_pos=runs.index.get_indexer(members["run"]).astype(np.int64),
            m_req=members["request"].to_numpy(dtype=np.int64),
            m_kind=np.where(members["kind"].astype(str).to_numpy() == "prefill", 0, 1),
            m_tokens=members["tokens"].to_numpy(dtype=np.int64),
            m_before=members["processed_before"].to_numpy(dtype=np.int64),
            p_pos=runs.index.get_indexer(preemptions["run"]).astype(np.int64),
            p_req=preemptions["request"].to_numpy(dtype=np.int64),
        )


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
    admits: IntArray  # per member: its prefill target if it admits, else 0
    hits: IntArray  # per member: the cached tokens its admission takes (a cache)
    tokens: list[tuple[int, int, int]]  # (request, run position, tokens it emits
    # there, one per iteration from the first), in the walk's order


def _replay(
    instance: Instance,
    log: _Log,
    out: _Collector,
    carried: IntArray | None = None,
    swaps: _SwapRows | None = None,
    async_swaps: bool = False,
    cached: bool = False,
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

    ``cached`` (a prefix cache, :mod:`lsched.validator.prefix`): an admission
    holds the ``processed_before`` its member row logs, the cached tokens it
    claims (which that module checks).
    """
    replayer = _Replayer(instance, log, out, carried, swaps, async_swaps, cached)
    replayer.walk()
    return replayer.outcome()


@dataclass(slots=True)
class _Walk:
    """The state of the request being walked, which only its own earlier events
    decide: the KV tokens it holds (``processed``), its prefill ``target``, the
    tokens ``emitted``, whether it is ``running`` or ``done``, whether its KV is
    on the host (``swapped``: ``host`` tokens, swapped out at swap row
    ``out_row``), and the end of its asynchronous swap-in's copy (``resume_s``),
    before which it runs in no run. ``warned_replica``, ``warned_after``: rules
    flagged once per request."""

    request: int
    processed: int = 0
    target: int = 0
    emitted: int = 0
    running: bool = False
    done: bool = False
    swapped: bool = False
    host: int = 0
    out_row: int = -1
    resume_s: float = -math.inf
    warned_replica: bool = False
    warned_after: bool = False

    def idle_state(self) -> str:
        """What a request that is not running is doing, for a message."""
        if self.swapped:
            return "swapped out"
        return "completed" if self.done else "waiting"


class _Replayer:
    """The walk of :func:`_replay`: the log's events, one request at a time, each
    applied to the request's :class:`_Walk` by the method of its kind, the
    outcome collected as it goes."""

    def __init__(
        self,
        instance: Instance,
        log: _Log,
        out: _Collector,
        carried: IntArray | None,
        swaps: _SwapRows | None,
        async_swaps: bool,
        cached: bool = False,
    ) -> None:
        n = len(instance)
        self.cached = cached
        self.log, self.out, self.carried = log, out, carried
        self.swaps = _SwapRows.empty() if swaps is None else swaps
        self.async_swaps = async_swaps
        self.arrival = instance.arrival_s.tolist()
        self.prompt = instance.prompt_tokens.tolist()
        self.output = instance.output_tokens.tolist()
        self.run_ids = log.run_ids
        self.run_replica = log.replica.tolist()
        self.run_start = log.start.tolist()
        self.run_n = log.n_it.tolist()
        self.member_kind = log.m_kind.tolist()
        self.member_tokens = log.m_tokens.tolist()
        self.logged_before = log.m_before.tolist()
        self.s_tokens = self.swaps.tokens.tolist()
        self.s_start, self.s_end = self.swaps.start.tolist(), self.swaps.end.tolist()
        self.s_pos = self.swaps.pos.tolist()
        num_members, num_preempt = len(log.m_pos), len(log.p_pos)
        num_swaps = len(self.swaps.pos)
        # the outcome (:class:`_Replay`), in lists while walking (cheaper per
        # element than arrays)
        self.moved: list[int] = self.swaps.tokens.tolist()
        self.valid = [False] * num_swaps
        self.pair = [-1] * num_swaps
        self.before = [0] * num_members
        self.after = [0] * num_members
        self.completes = [False] * num_members
        self.admits = [0] * num_members
        self.hits = [0] * num_members
        self.freed = [0] * num_preempt
        self.replica_of = [-1] * n
        self.admitted_s = [math.nan] * n
        self.preempted = [0] * n
        self.recomputed = [0] * n
        self.first_at: list[tuple[int, int, int]] = []  # (request, position, k)
        self.done_at: list[tuple[int, int, int]] = []
        self.emitted_of = [0] * n
        self.tokens: list[tuple[int, int, int]] = []
        self.first_pos = [-1] * n
        self.adopted = [False] * n

    def flag(self, rule: str, message: str, pos: int, request: int) -> None:
        """A violation by ``request`` in the run at position ``pos``."""
        self.out.add(rule, message, run=self.run_ids[pos], request=request)

    def events(self) -> Iterator[tuple[int, int, int, int, int]]:
        """Every event as (request, run position, kind, row in its table, 1 for a
        swap-in), in the order of the walk."""
        log, swaps = self.log, self.swaps
        num_members, num_preempt = len(log.m_pos), len(log.p_pos)
        num_swaps = len(swaps.pos)
        req = np.concatenate([log.m_req, log.p_req, swaps.req])
        pos = np.concatenate([log.m_pos, log.p_pos, swaps.pos])
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
        is_in = np.concatenate(
            [np.zeros(num_members + num_preempt, dtype=np.int64), swaps.inbound]
        )
        return zip(
            req[order].tolist(),
            pos[order].tolist(),
            kind[order].tolist(),
            row[order].tolist(),
            is_in[order].tolist(),
            strict=True,
        )

    def walk(self) -> None:
        """Apply every event to its request's state, request by request."""
        state: _Walk | None = None
        for e_req, e_pos, e_kind, e_row, e_in in self.events():
            if state is None or e_req != state.request:
                self.leave(state)
                state = self.enter(e_req, e_pos, e_kind, e_row)
            self.check_replica(state, e_pos)
            if e_kind == _SWAP_EVENT and not e_in:
                self.swap_out(state, e_pos, e_row)
            elif e_kind == _SWAP_EVENT:
                self.swap_in(state, e_pos, e_row)
            elif e_kind == _PREEMPT_EVENT:
                self.preempt(state, e_pos, e_row)
            else:
                self.member(state, e_pos, e_row)
        self.leave(state)

    def enter(self, i: int, pos: int, kind: int, row: int) -> _Walk:
        """Fresh state for request ``i``, whose first event is of ``kind`` (row
        ``row`` of its table) before the run at ``pos``; in a decode pool, the KV
        it brings adopted (its first event does not prefill) or dropped."""
        state = _Walk(i)
        self.first_pos[i] = pos
        if self.carried is not None and self.carried[i] > 0:
            state.emitted = 1  # token 1 came from its prefill replica
            if kind != _MEMBER_EVENT or self.member_kind[row] == _DECODE:
                state.processed = state.target = int(self.carried[i])
                state.running = True  # adopted, running
                self.adopted[i] = True
            else:  # its KV was dropped: prefilled again
                self.recomputed[i] += int(self.carried[i])
        return state

    def leave(self, state: _Walk | None) -> None:
        """The request walked ends: its KV must not stay on the host."""
        if state is None or not state.swapped:
            return
        swapped_before = self.run_ids[self.s_pos[state.out_row]]
        self.out.add(
            "swap",
            f"its KV stays on the host: swapped out before run "
            f"{swapped_before}, never swapped back in",
            run=swapped_before,
            request=state.request,
        )

    def check_replica(self, state: _Walk, pos: int) -> None:
        """``single-replica``: every event of the request is on its first
        replica (flagged once)."""
        i, replica = state.request, self.run_replica[pos]
        known = self.replica_of[i]
        if known == replica:
            return
        if known < 0:
            self.replica_of[i] = replica
        elif not state.warned_replica:
            self.flag(
                "single-replica",
                f"on replica {replica}, earlier on replica {known}",
                pos,
                i,
            )
            state.warned_replica = True

    def swap_out(self, state: _Walk, pos: int, row: int) -> None:
        """A swap-out: a running request's KV goes to the host."""
        i = state.request
        if not state.running:
            self.flag(
                "swap",
                f"swapped out while {state.idle_state()}; only a running "
                "request swaps out",
                pos,
                i,
            )
            return
        if self.s_tokens[row] != state.processed:
            self.flag(
                "swap",
                f"swap-out of {self.s_tokens[row]} tokens; the request holds "
                f"{state.processed} KV tokens",
                pos,
                i,
            )
        self.moved[row], self.valid[row] = state.processed, True
        state.swapped, state.host, state.out_row = True, state.processed, row
        state.processed, state.running = 0, False

    def swap_in(self, state: _Walk, pos: int, row: int) -> None:
        """A swap-in: a swapped-out request's KV comes back and it runs on (an
        asynchronous one no earlier than its swap-out's copy ends)."""
        i = state.request
        if not state.swapped:
            doing = "running" if state.running else state.idle_state()
            self.flag(
                "swap",
                f"swapped in while {doing}; swaps of a request alternate out, "
                "in, out, ..., starting with out",
                pos,
                i,
            )
            return
        if self.s_tokens[row] != state.host:
            self.flag(
                "swap",
                f"swap-in of {self.s_tokens[row]} tokens; it swapped out {state.host}",
                pos,
                i,
            )
        ready = self.s_end[state.out_row]
        start, copy_start = self.run_start[pos], self.s_start[row]
        if self.async_swaps and (
            start < ready - ARRIVAL_TOLERANCE_S
            or copy_start < ready - ARRIVAL_TOLERANCE_S
        ):
            self.flag(
                "swap",
                f"swapped in (decided before a run starting at {start!r} s, "
                f"copy from {copy_start!r} s) before its swap-out copy ends "
                f"at {ready!r} s",
                pos,
                i,
            )
        self.moved[row], self.valid[row] = state.host, True
        self.pair[state.out_row] = row
        state.swapped, state.running, state.processed = False, True, state.host
        state.resume_s = self.s_end[row] if self.async_swaps else -math.inf

    def preempt(self, state: _Walk, pos: int, row: int) -> None:
        """A recompute preemption: a running request's KV is freed."""
        i = state.request
        if not state.running:
            self.flag("preemption", f"preempted while {state.idle_state()}", pos, i)
            return
        self.freed[row] = state.processed
        self.recomputed[i] += state.processed
        self.preempted[i] += 1
        state.processed, state.running = 0, False

    def member(self, state: _Walk, pos: int, row: int) -> None:
        """The request in the run at ``pos`` (member row ``row``): a prefill chunk
        or decode steps, and the tokens they emit."""
        i = state.request
        if state.done:
            if not state.warned_after:
                self.flag("token-conservation", "runs after it completed", pos, i)
                state.warned_after = True
            self.before[row] = self.after[row] = 0  # holds nothing: its KV was freed
            return
        if state.swapped or state.resume_s != -math.inf:  # it swapped since
            self.resume(state, pos)
        if math.isnan(self.admitted_s[i]):  # its first run
            self.admit(state, pos)
        if self.member_kind[row] == _PREFILL and not state.running:  # admitted
            self.admits[row] = self.prompt[i] + state.emitted
            if self.cached:  # the cached tokens it claims
                state.processed = self.hits[row] = max(0, self.logged_before[row])
        if self.logged_before[row] != state.processed:
            self.flag(
                "processed-before",
                f"processed_before = {self.logged_before[row]}; the request "
                f"holds {state.processed} KV tokens",
                pos,
                i,
            )
        self.before[row] = state.processed
        emitted_before = state.emitted
        if self.member_kind[row] == _PREFILL:
            steps = self.prefill(state, pos, row)
        else:
            steps = self.decode(state, pos, row)
        self.after[row] = state.processed
        self.emitted_of[i] = state.emitted
        output = self.output[i]
        if min(state.emitted, output) > emitted_before:
            self.tokens.append((i, pos, min(state.emitted, output) - emitted_before))
        if emitted_before == 0 and state.emitted > 0:
            self.first_at.append((i, pos, 0))
        if state.emitted >= self.output[i]:
            self.complete(state, pos, row, steps)

    def resume(self, state: _Walk, pos: int) -> None:
        """A member that swapped since its last run: its KV must be on the GPU,
        not on the host, and an asynchronous swap-in's copy over by the run's
        start."""
        i = state.request
        if state.swapped:
            swapped_before = self.run_ids[self.s_pos[state.out_row]]
            self.flag(
                "swap",
                f"in the run while its KV is on the host (swapped out before "
                f"run {swapped_before}, not swapped back in)",
                pos,
                i,
            )
            state.swapped, state.running = False, True  # as if it came back
            state.processed = state.host
        elif self.run_start[pos] < state.resume_s - ARRIVAL_TOLERANCE_S:
            self.flag(
                "swap",
                f"in a run starting at {self.run_start[pos]!r} s, before its "
                f"swap-in copy ends at {state.resume_s!r} s",
                pos,
                i,
            )
        state.resume_s = -math.inf

    def admit(self, state: _Walk, pos: int) -> None:
        """The request's first run: its admission, no earlier than its arrival."""
        i, start = state.request, self.run_start[pos]
        self.admitted_s[i] = start
        if start < self.arrival[i] - ARRIVAL_TOLERANCE_S:
            self.flag(
                "arrival",
                f"first run starts at {start!r} s, before its arrival at "
                f"{self.arrival[i]!r} s",
                pos,
                i,
            )

    def prefill(self, state: _Walk, pos: int, row: int) -> int:
        """A prefill chunk (admitting a waiting request); returns its iterations."""
        i, c = state.request, self.member_tokens[row]
        if not state.running:  # admission: re-prefill the prompt and emitted tokens
            state.running, state.target = True, self.prompt[i] + state.emitted
        processed, target = state.processed, state.target
        if not 1 <= c <= target - processed:
            self.flag(
                "prefill-chunk",
                f"chunk of {c} tokens; expected 1..{target - processed} "
                f"(target {target}, processed {processed})",
                pos,
                i,
            )
        if processed < target <= processed + c:  # this chunk ends the prefill
            state.emitted += 1
        state.processed += c
        return 1

    def decode(self, state: _Walk, pos: int, row: int) -> int:
        """Decode steps, one per iteration of the run; returns their number."""
        i = state.request
        if not state.running or state.processed < state.target:  # prefill unfinished
            doing = "running" if state.running else "waiting"
            self.flag(
                "prefill-before-decode",
                f"decodes while {doing} with {state.processed} of "
                f"{state.target} prefill tokens processed",
                pos,
                i,
            )
            state.running = True
        if self.member_tokens[row] != 1:
            self.flag(
                "run-shape",
                f"decode member with tokens = {self.member_tokens[row]}; "
                "expected 1 (one per iteration)",
                pos,
                i,
            )
        steps = self.run_n[pos]
        state.processed += steps
        state.emitted += steps
        return steps

    def complete(self, state: _Walk, pos: int, row: int, steps: int) -> None:
        """The request has emitted its last token in this run (of ``steps``
        iterations): it completes at the iteration that emits token ``o_i``."""
        i = state.request
        output = self.output[i]
        if state.emitted > output:
            self.flag(
                "token-conservation",
                f"emits {state.emitted} tokens; expected {output}",
                pos,
                i,
            )
        self.done_at.append((i, pos, steps - 1 - (state.emitted - output)))
        self.completes[row] = True
        state.done, state.running = True, False

    def outcome(self) -> _Replay:
        """What the walk found."""

        def ints(values: list[int]) -> IntArray:
            return np.array(values, dtype=np.int64)

        def flags(values: list[bool]) -> npt.NDArray[np.bool_]:
            return np.array(values, dtype=bool)

        return _Replay(
            before=ints(self.before),
            after=ints(self.after),
            completes=flags(self.completes),
            freed=ints(self.freed),
            replica=ints(self.replica_of),
            admitted_s=np.array(self.admitted_s, dtype=np.float64),
            preemptions=ints(self.preempted),
            recomputed=ints(self.recomputed),
            emitted=ints(self.emitted_of),
            first_at=self.first_at,
            done_at=self.done_at,
            first_pos=ints(self.first_pos),
            adopted=flags(self.adopted),
            moved=ints(self.moved),
            valid=flags(self.valid),
            pair=ints(self.pair),
            admits=ints(self.admits),
            hits=ints(self.hits),
            tokens=self.tokens,
        )
