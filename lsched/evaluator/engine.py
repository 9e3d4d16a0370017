"""The fast engine: one replica replayed event to event, state as NumPy arrays.

State is a struct of arrays over the replica's requests (local ids in arrival
order): tokens emitted, tokens processed (KV held), prefill target, status. At an
iteration boundary the policy is called; its batch runs for one iteration, or, when
the policy *holds* a decode-only batch (:mod:`lsched.policies.base`), for the whole
stretch up to the next event at once:

    n = min(iterations until the first member completes,
            iterations that still fit in KV,
            iterations until the first boundary at or after the next arrival
            or the policy's wake-up time,
            iterations whose context stays within the batch's
            hold_context_tokens, floor((cap - sum p) / d), at least 1,
            iterations until the regime changes, if it switches on K)

with the stretch's elapsed time and KV token-seconds in closed form
(:mod:`lsched.evaluator.stretch`). The KV limit is found by bisection on the
monotone total ``sum_i ceil((p_i + k + 1) / b)``.

A policy that declares ``holds_running_when_idle`` (:mod:`lsched.policies.base`) is
not called at a boundary where nothing waits, no running request is prefilling and
one more decode step of every running request fits: the engine holds that
decode-only batch itself, without building a view. With a FCFS-like policy on a
trace that is not overloaded this skips about half the calls (every boundary after
a completion or a first token). At the other boundaries (arrivals) such a policy
returns the view's own ``running`` array as its decode list, plus admissions; the
engine recognises the array (the same object, no running request prefilling), so
those decode steps are valid by construction and only the admissions are checked.

KV is the replica's :class:`~lsched.kv.KVLedger` (tokens per request, blocks
held): blocks are an upper bound between checks (a stretch of ``n`` iterations
adds at most ``ceil(n / b)`` blocks per request), made exact only where a check
against the capacity could fail. Per-event work is kept off NumPy
where the arrays are tiny (prefill lists, single completions, reductions over the
running set as Python ``sum``/``min``, the iteration time and the stretch sums).

A request has arrived at a boundary ``t`` when ``arrival_s <= t +
ARRIVAL_TOLERANCE_S`` (1 ns): a stretch's end ``t + S(n)`` computed in closed form
can differ in the last bits from adding the iteration times one by one, and the
tolerance keeps an arrival that falls on a boundary on the same side for both.
Swaps (the host tier, :mod:`lsched.tiers`)
------------------------------------------
At a boundary ``t`` the engine first lands the asynchronous copies that ended by
``t + ARRIVAL_TOLERANCE_S`` (in order of their ends), then takes arrivals, then
calls the policy and applies its batch: recompute preemptions, then swap-outs,
then swap-ins, each in the batch's order, then the iteration. Tokens ``x`` of a
copy are the request's processed tokens; a copy takes ``x * kv_bytes_per_token /
bandwidth`` seconds.

- Swap-out of a running request: its host blocks (``ceil(x / b)``) are taken at
  once and must fit in the host tier's capacity; it stops running. *Blocking*:
  its GPU blocks are freed at once and it is swapped. *Async*: its copy queues on
  the device-to-host link (start ``max(t, link free)``); its GPU blocks stay
  taken (pinned) until the copy ends, when it becomes swapped (joining the
  swapped list in order of the copies' ends).
- Swap-in of a swapped request: *blocking*: its host blocks are freed, its GPU
  blocks taken, it runs again at once (appended to the running list) and may be
  in the batch. *Async*: its GPU blocks are taken at once (pinned), its copy
  queues on the host-to-device link; when the copy ends its host blocks are
  freed and it runs again (appended to the running list).
- After the swaps, the GPU blocks held (running requests and pinned) must fit
  in the capacity.
- *Blocking* copies run one after the other before the forward pass: the
  iteration is longer by their sum (outs, then ins); a batch that swaps must run
  an iteration. *Async* copies overlap the iterations: the first boundary at or
  after a copy's end is an event (the engine sets the batch's ``wake_at_s`` to
  it), as an arrival is.

Prefix cache
------------
A replica of a pool with a ``prefix_cache`` has a
:class:`~lsched.evaluator.prefix.ReplicaPrefix` (:attr:`ReplicaEngine.prefix`),
whose module docstring states the rules: a batch's admissions take their cached
prefixes after its preemptions (their chunks cut to what is left to compute),
each iteration evicts the unreferenced blocks the KV needs before it runs and
caches the blocks its prefills complete after, and a request releases its
blocks when it is preempted or completes. Policies see unreferenced cached
blocks as free KV. With a host tier (rule 5) an admission's blocks copied from
the host lengthen its iteration by the copy's seconds, before the forward pass,
as a blocking swap does.

Adapters
--------
A replica of a pool that serves LoRA adapters (:mod:`lsched.adapters`) has a
:class:`~lsched.evaluator.adapters.ReplicaAdapters`
(:attr:`ReplicaEngine.adapters`), whose module docstring states the rules:
after a batch's admissions its running requests use at most ``max_loras``
distinct adapters, the members' adapters are loaded before the iteration
(lengthening it by the loads' seconds, as a blocking swap does), and the
iteration time adds the profile's adapter columns (:mod:`lsched.profile.cost`).
Such a replica runs every batch one iteration at a time (a held batch too: the
policy is called again at the next boundary) and never holds the running
requests itself; without adapters nothing of this runs.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from lsched.evaluator.adapters import ReplicaAdapters
from lsched.evaluator.prefix import ReplicaPrefix
from lsched.evaluator.stretch import DecodeStretch, decode_rows
from lsched.kv import KVHeld, KVLedger
from lsched.policies.base import (
    ARRIVAL_TOLERANCE_S,
    Batch,
    Policy,
    PolicyError,
    ReplicaLimits,
    ReplicaView,
    holds_running_when_idle,
    restore_policy,
    snapshot_policy,
    swap_mode,
)
from lsched.profile import FEATURES, DeploymentProfile
from lsched.tiers import HostLedger, check_swap_mode

_K = FEATURES.index("kv_read_tokens")
#: Request states; SWAPPED: its KV is in the host tier or on its way there or back.
WAITING, RUNNING, DONE, SWAPPED = 0, 1, 2, 3
#: Prefill lists up to this long are handled element by element in Python.
_SMALL = 16


def stall_message(
    now_s: float,
    running: int,
    waiting: int,
    request: int | None = None,
    prompt: int = 0,
    emitted: int = 0,
    output: int = 0,
    *,
    limits: ReplicaLimits,
) -> str:
    """The error of a policy that scheduled nothing with nothing left to wait
    for: the counts, and the oldest waiting ``request`` (its ``prompt``, tokens
    ``emitted`` so far and ``output`` tokens) with the limit it breaks. A
    request waiting to be prefilled (again) needs ``prompt + emitted`` tokens;
    over ``max_num_batched_tokens`` a policy that prefills whole prompts can
    never run it. Its KV peaks at ``prompt + output - 1`` tokens; over the KV
    capacity nothing can."""
    text = (
        f"policy stalled at t={now_s:.6f} s: it scheduled nothing, with {running} "
        f"running and {waiting} waiting requests and nothing left to wait for"
    )
    if request is None:
        return text
    need = prompt + emitted
    peak = prompt + output - 1
    kv = limits.kv
    what = f"prompt {prompt}" + (f" + {emitted} emitted" if emitted else "")
    text += f"; the oldest waiting, request {request}, needs {need} tokens ({what})"
    if need > limits.max_num_batched_tokens:
        return (
            f"{text} prefilled in one iteration, over max_num_batched_tokens = "
            f"{limits.max_num_batched_tokens}: a policy that prefills whole "
            "prompts can never schedule it (a chunking policy can)"
        )
    if kv.blocks(peak) > kv.capacity_blocks:
        return (
            f"{text}, and its KV peaks at {peak} tokens ({kv.blocks(peak)} blocks), "
            f"over the KV capacity of {kv.capacity_blocks} blocks"
        )
    return (
        f"{text}, within max_num_batched_tokens = {limits.max_num_batched_tokens}, "
        f"and its KV peak of {peak} tokens fits the capacity of "
        f"{kv.capacity_blocks} blocks: the policy's own rule held it back"
    )


#: No request: the view's ``swapped`` while none is (read-only, shared).
_NONE = np.zeros(0, dtype=np.int64)
_NONE.flags.writeable = False


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


@dataclass
class ReplicaLog:
    """Runs, members, preemptions and swaps of one replica, as growing lists of
    columns. A swap is ``(run, request, inbound, tokens, start_s, end_s)``: the
    run it was decided before, 0 out (to the host) or 1 in, and its copy."""

    runs: list[tuple] = field(default_factory=list)
    members: list[tuple[np.ndarray, ...]] = field(default_factory=list)
    preemptions: list[tuple[int, int]] = field(default_factory=list)
    swaps: list[tuple[int, int, int, int, float, float]] = field(default_factory=list)


class ReplicaEngine:
    """Replays one replica's requests under one policy.

    Parameters
    ----------
    arrival_s, prompt_tokens, output_tokens
        The replica's requests in arrival order.
    predicted_output_tokens
        Predictions shown to the policy, or ``None``.
    profile
        Deployment (iteration time, KV capacity, limits).
    policy
        A fresh policy object for this replica.
    log
        Record the iteration log.
    on_finished
        Called with the number of requests each completion event finishes.
    priority, tenant
        Priorities and tenants shown to the policy, or ``None``.
    prefix
        The replica's prefix cache, or ``None`` (module docstring).
    adapters
        The replica's adapters, or ``None`` (module docstring).

    Notes
    -----
    :meth:`snapshot` and :meth:`restore` take and put back the whole state, the
    policy's included; :meth:`run` may stop at a time and go on later.
    """

    #: Per-request arrays of the state, restored in place (the policy's read-only
    #: views of them stay valid).
    _STATE_ARRAYS = (
        "emitted", "target", "status", "admitted_s", "first_token_s",
        "completion_s", "preemptions", "recomputed", "queue", "swapped_tokens",
        "swaps",
    )  # fmt: skip
    #: Numbers of the state.
    _STATE_NUMBERS = (
        "head", "tail", "num_arrived", "num_prefilling", "now_s", "iterations",
        "busy_s", "kv_token_seconds", "done", "_copy_count",
    )  # fmt: skip

    def __init__(
        self,
        arrival_s: np.ndarray,
        prompt_tokens: np.ndarray,
        output_tokens: np.ndarray,
        predicted_output_tokens: np.ndarray | None,
        profile: DeploymentProfile,
        policy: Policy,
        *,
        log: bool = False,
        on_finished: Callable[[int], None] | None = None,
        priority: np.ndarray | None = None,
        tenant: np.ndarray | None = None,
        prefix: ReplicaPrefix | None = None,
        adapters: ReplicaAdapters | None = None,
    ) -> None:
        m = len(arrival_s)
        self.m = m
        self.arrival_s = arrival_s
        self.prompt = prompt_tokens
        self.output = output_tokens
        self._init_cost_model(profile)
        self.policy = policy
        self.limits = ReplicaLimits.from_profile(profile)
        self.adapters = adapters
        if adapters is not None:
            self.limits = dataclasses.replace(self.limits, max_loras=adapters.max_loras)
        # the limits as plain ints, read at every event
        self._capacity = int(profile.kv_capacity_blocks)
        self._max_seqs = int(profile.max_num_seqs)
        self._max_tokens = int(profile.max_num_batched_tokens)
        # the policy's standing decision when nothing waits (policies.base)
        self._idle_rule = holds_running_when_idle(policy) and adapters is None
        self._init_request_state(m)
        self.log = ReplicaLog() if log else None
        self.on_finished = on_finished
        #: per local request, its instance position (``None``: unknown), for
        #: messages; the cluster loop sets it
        self.ids: Any = None
        self._init_host_tier(profile, policy, m)
        self._init_views(predicted_output_tokens, priority, tenant)
        self.prefix = prefix

    def _init_cost_model(self, profile: DeploymentProfile) -> None:
        """The profile's iteration time, in the forms the loop reads."""
        self.time = profile.iteration_time
        self.regimes = self.time.effective_regimes
        # the same pieces as plain tuples: one iteration's time is a handful of
        # multiply-adds, cheaper in Python than through NumPy's call overhead
        self.pieces = [[tuple(map(float, w)) for w in r] for r in self.regimes]
        self._rows = [decode_rows(r) for r in self.regimes]  # for DecodeStretch
        self.thresholds = list(self.time.thresholds)
        self.switch = (
            0  # the const feature: always regime 0
            if self.time.switch_feature is None
            else FEATURES.index(self.time.switch_feature)
        )

    def _init_request_state(self, m: int) -> None:
        """``m`` requests, none arrived; the clock at the first arrival."""
        self.emitted = np.zeros(m, dtype=np.int64)
        # the KV ledger owns the tokens each request holds (its processed tokens)
        # and the blocks held: exact, or an upper bound after a held stretch
        self.kv = KVLedger(self.limits.kv, m)
        self.processed = self.kv.tokens
        self.target = np.zeros(m, dtype=np.int64)
        self.status = np.zeros(m, dtype=np.int8)
        self.admitted_s = np.full(m, np.nan)
        self.first_token_s = np.full(m, np.nan)
        self.completion_s = np.full(m, np.nan)
        self.preemptions = np.zeros(m, dtype=np.int64)
        self.recomputed = np.zeros(m, dtype=np.int64)
        self.running: list[int] = []  # admission order
        # waiting = requeued (preempted, sorted) + never admitted arrivals, which
        # sit in queue[head:tail] in arrival order
        self.requeued: list[int] = []
        self.queue = np.zeros(m, dtype=np.int64)
        self.head = self.tail = 0
        self.num_arrived = 0
        self.num_prefilling = 0  # running requests with processed < target
        self.now_s = float(self.arrival_s[0]) if m else 0.0
        self.iterations = 0
        self.busy_s = 0.0
        self.kv_token_seconds = 0.0
        self.done = 0

    def _init_host_tier(
        self, profile: DeploymentProfile, policy: Policy, m: int
    ) -> None:
        """The host tier, empty, and whether the policy's swaps are asynchronous."""
        # the host tier (lsched.tiers): swapped requests in swap-out order, the
        # tokens each holds there, its swap-outs, and the asynchronous copies in
        # flight as a heap of (end_s, count, inbound, request, GPU blocks pinned)
        self._async_swap = check_swap_mode(swap_mode(policy)) == "async"
        self.host = HostLedger(
            profile.host, profile.block_tokens, profile.kv_bytes_per_token
        )
        self.swapped: list[int] = []
        self.swapped_tokens = np.zeros(m, dtype=np.int64)
        self.swaps = np.zeros(m, dtype=np.int64)
        self._copies: list[tuple[float, int, int, int, int]] = []
        self._copy_count = 0
        self._stall_s = 0.0  # blocking copies lengthening the next iteration
        self._copy_s = 0.0  # the same, from a prefix cache's host tier

    def _init_views(
        self,
        predicted_output_tokens: np.ndarray | None,
        priority: np.ndarray | None,
        tenant: np.ndarray | None,
    ) -> None:
        """The read-only views a decision is shown, and what the last view caches."""
        # read-only views of the live arrays: built once, shown to every decision
        self._views = tuple(
            _read_only(a)
            for a in (
                self.arrival_s,
                self.prompt,
                self.emitted,
                self.processed,
                self.target,
                self.swapped_tokens,
            )
        )
        self._priority_view = None if priority is None else _read_only(priority)
        self._tenant_view = None if tenant is None else _read_only(tenant)
        self._predicted_view = (
            None
            if predicted_output_tokens is None
            else _read_only(predicted_output_tokens)
        )
        # the limits shown while blocks are pinned: (pinned blocks, limits)
        self._pinned_limits: tuple[int, ReplicaLimits] = (0, self.limits)
        self._adapter_view = (
            None if self.adapters is None else _read_only(self.adapters.codes)
        )
        # the running array of the last view, while the running set is unchanged:
        # a batch whose decode list *is* this array decodes every running request
        self._shown: np.ndarray | None = None

    # -- the loop -----------------------------------------------------------------

    def run(self, until_s: float = math.inf) -> bool:
        """Simulate until every request is done, or until the first iteration
        boundary at or after ``until_s`` (where the policy has not been called
        yet; a held stretch that spans ``until_s`` runs to its end). Returns
        whether every request is done; call again to go on.

        A boundary ``t`` counts as reached when ``t + ARRIVAL_TOLERANCE_S >=
        until_s``: stopping at a request's arrival time stops where the policy
        would first see it.
        """
        idle_rule = self._idle_rule
        while self.done < self.m:
            if self.now_s + ARRIVAL_TOLERANCE_S >= until_s:
                return False
            self._arrive()
            if not self.running:
                if not self._has_waiting():
                    self.now_s = max(
                        self.now_s, float(self.arrival_s[self.num_arrived])
                    )
                    continue
            elif (
                idle_rule
                and self.num_prefilling == 0
                and not self._has_waiting()
                and self._hold_running()
            ):
                continue
            batch = self.policy.decide(self._view())
            if batch.moves_kv or self._copies:
                batch = self._moves(batch)
            if batch.is_empty:
                self._idle(batch)
                continue
            grow = self._check(batch)
            if self.prefix is not None:
                batch, grow = self._prefix_admit(batch, grow)
            self._admit(batch.prefill)
            if self.adapters is not None:
                self._load_adapters(batch)
                self._iteration(batch, grow)
            elif batch.hold and len(batch.prefill) == 0 and not batch.moves_kv:
                self._decode_stretch(batch)
            else:
                self._iteration(batch, grow)
        return True

    def snapshot(self) -> dict[str, Any]:
        """The engine's whole state (the policy's and the log's included), for
        :meth:`restore`; the engine may run on meanwhile."""
        state: dict[str, Any] = {
            name: getattr(self, name).copy() for name in self._STATE_ARRAYS
        }
        state |= {name: getattr(self, name) for name in self._STATE_NUMBERS}
        state["running"] = list(self.running)
        state["requeued"] = list(self.requeued)
        state["swapped"] = list(self.swapped)
        state["copies"] = list(self._copies)
        state["host"] = self.host.snapshot()
        state["kv"] = self.kv.snapshot()
        state["policy"] = snapshot_policy(self.policy)
        if self.prefix is not None:
            state["prefix"] = self.prefix.snapshot()
        if self.adapters is not None:
            state["adapters"] = self.adapters.snapshot()
        if self.log is not None:
            state["log"] = tuple(len(part) for part in vars(self.log).values())
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Put the engine back in a :meth:`snapshot` (which stays reusable)."""
        for name in self._STATE_ARRAYS:
            np.copyto(getattr(self, name), state[name])
        for name in self._STATE_NUMBERS:
            setattr(self, name, state[name])
        self.running = list(state["running"])
        self.requeued = list(state["requeued"])
        self.swapped = list(state["swapped"])
        self._copies = list(state["copies"])
        self.host.restore(state["host"])
        self.kv.restore(state["kv"])
        restore_policy(self.policy, state["policy"])
        if self.prefix is not None:
            self.prefix.restore(state["prefix"])
        if self.adapters is not None:
            self.adapters.restore(state["adapters"])
        if self.log is not None:
            for part, length in zip(vars(self.log).values(), state["log"], strict=True):
                del part[length:]
        self._shown = None

    def _arrive(self) -> None:
        """Take the requests, and land the asynchronous copies, that have arrived
        by this boundary."""
        if self._copies:
            self._land()
        k = self.num_arrived
        if k >= self.m:
            return
        now = self.now_s + ARRIVAL_TOLERANCE_S
        if not self.arrival_s[k] <= now:
            return
        n = int(self.arrival_s.searchsorted(now, side="right"))
        tail = self.tail
        if n == k + 1:
            self.queue[tail] = k
        else:
            self.queue[tail : tail + n - k] = np.arange(k, n)
        self.tail = tail + n - k
        self.num_arrived = n

    def _has_waiting(self) -> bool:
        """Whether a request waits for the policy: queued, swapped, or a copy in
        flight."""
        return (
            bool(self.requeued)
            or self.tail > self.head
            or bool(self.swapped)
            or bool(self._copies)
        )

    def _waiting(self) -> np.ndarray:
        fresh = self.queue[self.head : self.tail]
        if not self.requeued:
            return _read_only(fresh)
        merged = np.concatenate([np.array(self.requeued, dtype=np.int64), fresh])
        if len(fresh) and self.requeued[-1] > fresh[0]:
            merged.sort()
        return merged

    def _view(self) -> ReplicaView:
        """The policy's view. While blocks are pinned (KV on its way out or in:
        a finished prefill's transfer, an asynchronous swap) it shows a capacity
        less those blocks, and ``kv_blocks_held`` counts the running requests'
        blocks only: every policy, whichever way it counts the KV of its running
        requests, then leaves room for them."""
        pinned = self.kv.pinned_blocks
        limits = self.limits
        if pinned:
            if self._pinned_limits[0] != pinned:
                capacity = self.limits.kv_capacity_blocks - pinned
                limits = dataclasses.replace(limits, kv_capacity_blocks=capacity)
                self._pinned_limits = (pinned, limits)
            limits = self._pinned_limits[1]
        arrival, prompt, emitted, processed, target, _ = self._views
        running = np.array(self.running, dtype=np.int64)
        running.flags.writeable = False
        self._shown = running
        return ReplicaView(
            now_s=self.now_s,
            iteration=self.iterations,
            num_arrived=self.num_arrived,
            running=running,
            waiting=self._waiting(),
            arrival_s=arrival,
            prompt_tokens=prompt,
            predicted_output_tokens=self._predicted_view,
            emitted_tokens=emitted,
            processed_tokens=processed,
            prefill_target_tokens=target,
            limits=limits,
            priority=self._priority_view,
            tenant=self._tenant_view,
            kv_held=KVHeld(self.kv, self.running),
            swapped=np.array(self.swapped, dtype=np.int64) if self.swapped else _NONE,
            swapped_tokens=self._views[5],
            host_capacity_blocks=self.host.capacity_blocks,
            host_used_blocks=self.host.used_blocks,
            **self._prefix_view(),
            adapter=None if self.adapters is None else self._adapter_view,
        )

    def _prefix_view(self) -> dict[str, Any]:
        """The view's read-only lookup into the prefix cache (none without one)."""
        prefix = self.prefix
        if prefix is None:
            return {}
        prefix.sync(self.now_s)  # a decision here: a shared pool's writes so far
        return {
            "cached_prefix": prefix.resident,
            "prefix_block_tokens": prefix.block_tokens,
        }

    def _idle(self, batch: Batch) -> None:
        upcoming = math.inf
        if self.num_arrived < self.m:
            upcoming = float(self.arrival_s[self.num_arrived])
        if batch.wake_at_s is not None and batch.wake_at_s > self.now_s:
            upcoming = min(upcoming, batch.wake_at_s)
        if math.isinf(upcoming):
            waiting = self._waiting()
            oldest = int(waiting.min()) if len(waiting) else None
            raise PolicyError(
                stall_message(
                    self.now_s,
                    len(self.running),
                    len(waiting),
                    None if oldest is None else self._request_id(oldest),
                    *(() if oldest is None else self._lengths(oldest)),
                    limits=self.limits,
                )
            )
        self.now_s = upcoming

    def _request_id(self, r: int) -> int:
        """The instance position of local request ``r`` (for messages), where
        the engine knows it (:attr:`ids`), else ``r``."""
        return r if self.ids is None else int(self.ids[r])

    def _lengths(self, r: int) -> tuple[int, int, int]:
        """Request ``r``'s prompt, tokens emitted and output tokens."""
        return int(self.prompt[r]), int(self.emitted[r]), int(self.output[r])

    def _hold_running(self) -> bool:
        """Hold every running request's decode step for the policy, if it fits.

        Called only for a policy that declares ``holds_running_when_idle``, with
        nothing waiting and every running request past its prefill: that policy
        would return ``Batch(decode=view.running, hold=True)`` here whenever the
        step fits, so the engine runs that stretch without calling it. Returns
        False (the policy decides) when the step does not fit.
        """
        running = self.running
        d = len(running)
        if d > self._max_seqs or d > self._max_tokens:
            return False
        ids = np.array(running, dtype=np.int64)
        p = self.processed[ids]
        kv = self.kv
        # each step opens at most one block: the exact count only if that might
        # not fit
        if kv.held_blocks + d > self._capacity and not kv.fits(
            kv.kv.decode_growth(p), running
        ):
            return False
        self._advance(ids, p, *self._plan(ids, p, kv.held_tokens, None, None))
        return True

    # -- state changes ------------------------------------------------------------

    def _preempt(self, ids: np.ndarray, run: int) -> None:
        for r in ids.tolist():
            if not 0 <= r < self.num_arrived or self.status[r] != RUNNING:
                raise PolicyError(f"preempted request {r} is not running")
            self.running.remove(r)
            if self.processed[r] < self.target[r]:
                self.num_prefilling -= 1
            self.recomputed[r] += self.kv.free(r)
            if self.prefix is not None:
                self.prefix.release(r)
            self.preemptions[r] += 1
            self.status[r] = WAITING
            self.requeued.append(r)
            self._shown = None
            if self.log is not None:
                self.log.preemptions.append((run, r))
        if len(ids):
            self.requeued.sort()

    def _moves(self, batch: Batch) -> Batch:
        """Apply the batch's preemptions and swaps; with asynchronous copies in
        flight, the batch with a wake-up at the next copy's end (where the
        request it moves becomes swapped or runnable: an event)."""
        run = len(self.log.runs) if self.log is not None else -1
        if len(batch.preempt):
            self._preempt(batch.preempt, run)
        for r in batch.swap_out.tolist():
            self._swap_out(r, run)
        for r in batch.swap_in.tolist():
            self._swap_in(r, run)
        if len(batch.swap_out) + len(batch.swap_in):
            self._shown = None
            if not self._async_swap and batch.is_empty:
                raise PolicyError(
                    "a blocking swap needs an iteration to run before: the batch "
                    "that swaps prefills or decodes nothing"
                )
            if not self.kv.fits(0, self.running):
                raise PolicyError(
                    f"KV after the swap-ins {self.kv.held_blocks} blocks > "
                    f"capacity {self._capacity}"
                )
        if not self._copies:
            return batch
        wake = self._copies[0][0]
        asked = batch.wake_at_s
        # an earlier wake-up stands, except an empty batch's that has passed
        # (no event: the replica would idle past the copy's end)
        if (
            asked is not None
            and asked < wake
            and (asked > self.now_s or not batch.is_empty)
        ):
            return batch
        return dataclasses.replace(batch, wake_at_s=wake)

    def _swap_out(self, r: int, run: int) -> None:
        """Move the KV of running request ``r`` to the host tier."""
        if not 0 <= r < self.num_arrived or self.status[r] != RUNNING:
            raise PolicyError(f"swapped-out request {r} is not running")
        if self.prefix is not None:
            raise PolicyError("a swap on a replica with a prefix cache (not modelled)")
        tokens = int(self.processed[r])
        if not self.host.take(tokens):
            raise PolicyError(
                f"swap-out of request {r} ({tokens} tokens): host tier full "
                f"({self.host.used_blocks} of {self.host.capacity_blocks} blocks)"
            )
        self.running.remove(r)
        if tokens < self.target[r]:
            self.num_prefilling -= 1
        self.status[r] = SWAPPED
        self.swapped_tokens[r] = tokens
        self.swaps[r] += 1
        seconds = self.host.copy_s(self.host.d2h, tokens)
        if self._async_swap:
            start, end = self.host.d2h.copy(self.now_s, seconds)
            self._push_copy(end, 0, r, self.kv.pin(r))
        else:
            self.kv.free(r)
            self.swapped.append(r)
            start = self.now_s + self._stall_s
            end = start + seconds
            self._stall_s += seconds
        if self.log is not None:
            self.log.swaps.append((run, r, 0, tokens, start, end))

    def _swap_in(self, r: int, run: int) -> None:
        """Bring the KV of swapped request ``r`` back from the host tier."""
        if not 0 <= r < self.num_arrived or r not in self.swapped:
            raise PolicyError(f"swapped-in request {r} is not swapped")
        self.swapped.remove(r)
        tokens = int(self.swapped_tokens[r])
        seconds = self.host.copy_s(self.host.h2d, tokens)
        if self._async_swap:
            start, end = self.host.h2d.copy(self.now_s, seconds)
            blocks = self.kv.kv.blocks(tokens)
            self.kv.reserve(blocks)
            self._push_copy(end, 1, r, blocks)
        else:
            start = self.now_s + self._stall_s
            end = start + seconds
            self._stall_s += seconds
            self._resume_swapped(r)
        if self.log is not None:
            self.log.swaps.append((run, r, 1, tokens, start, end))

    def _push_copy(self, end_s: float, inbound: int, r: int, blocks: int) -> None:
        self._copy_count += 1
        heapq.heappush(self._copies, (end_s, self._copy_count, inbound, r, blocks))

    def _land(self) -> None:
        """The asynchronous copies that ended by this boundary: a swap-out frees
        its GPU blocks and the request is swapped; a swap-in's request runs."""
        now = self.now_s + ARRIVAL_TOLERANCE_S
        copies = self._copies
        while copies and copies[0][0] <= now:
            _, _, inbound, r, blocks = heapq.heappop(copies)
            self.kv.unpin(blocks)
            if inbound:
                self._resume_swapped(r)
            else:
                self.swapped.append(r)
        self._shown = None

    def _resume_swapped(self, r: int) -> None:
        """Request ``r`` holds its swapped KV on the GPU again and runs."""
        tokens = int(self.swapped_tokens[r])
        self.host.give(tokens)
        self.kv.place(r, tokens)
        self.swapped_tokens[r] = 0
        self.status[r] = RUNNING
        self.running.append(r)
        if tokens < self.target[r]:
            self.num_prefilling += 1

    def _admit(self, prefill: np.ndarray) -> None:
        if len(prefill) == 0:
            return
        if len(prefill) > _SMALL:
            self._admit_many(prefill)
            return
        status = self.status
        new = [r for r in prefill.tolist() if status[r] == WAITING]
        if not new:
            return
        target, prompt, emitted = self.target, self.prompt, self.emitted
        admitted_s, now = self.admitted_s, self.now_s
        fresh: list[int] = []
        back: list[int] = []
        for r in new:
            status[r] = RUNNING
            target[r] = prompt[r] + emitted[r]
            if math.isnan(admitted_s[r]):  # never admitted: in the fresh queue
                admitted_s[r] = now
                fresh.append(r)
            else:
                back.append(r)
        self.running.extend(new)
        self.num_prefilling += len(new)
        self._shown = None
        if back:
            gone = set(back)
            self.requeued = [r for r in self.requeued if r not in gone]
        if fresh:
            fresh.sort()
            self._dequeue(fresh)

    def _admit_many(self, prefill: np.ndarray) -> None:
        new = prefill[self.status[prefill] == WAITING]
        if len(new) == 0:
            return
        self.status[new] = RUNNING
        self.target[new] = self.prompt[new] + self.emitted[new]
        never = np.isnan(self.admitted_s[new])  # never admitted: in the fresh queue
        self.admitted_s[new[never]] = self.now_s
        self.running.extend(new.tolist())
        self.num_prefilling += len(new)
        self._shown = None
        if not never.all():
            back = set(new[~never].tolist())
            self.requeued = [r for r in self.requeued if r not in back]
        fresh = np.sort(new[never])
        if len(fresh):
            self._dequeue(fresh.tolist())

    def _dequeue(self, fresh: list[int]) -> None:
        """Remove the sorted ids ``fresh`` from the queue of never-admitted ones."""
        k = len(fresh)
        head = self.head
        if self.queue[head : head + k].tolist() == fresh:
            self.head = head + k  # admitted from the head, as FCFS does: O(1)
            return
        rest = self.queue[head : self.tail]
        keep = rest[~np.isin(rest, fresh)]
        self.queue[head : head + len(keep)] = keep
        self.tail = head + len(keep)

    def _check(self, batch: Batch) -> int:
        """KV blocks the batch adds; :class:`PolicyError` if it breaks a rule."""
        prefill, chunk, decode = batch.prefill, batch.prefill_tokens, batch.decode
        n_p, n_d = len(prefill), len(decode)
        if len(chunk) != n_p:
            raise PolicyError("prefill and prefill_tokens differ in length")
        if n_p + n_d > self._max_seqs:
            raise PolicyError(f"{n_p + n_d} requests > max_num_seqs")
        if n_p <= _SMALL and decode is self._shown and self.num_prefilling == 0:
            return self._check_running(prefill, chunk, decode)
        if (int(chunk.sum()) if n_p else 0) + n_d > self._max_tokens:
            raise PolicyError("prefill tokens + decode steps > max_num_batched_tokens")
        ids = (np.concatenate([prefill, decode]) if n_d else prefill) if n_p else decode
        listed = ids.tolist()
        if min(listed) < 0 or max(listed) >= self.num_arrived:
            raise PolicyError(f"batch names a request not arrived: {listed}")
        if len(set(listed)) != n_p + n_d:
            raise PolicyError(f"a request appears twice in the batch: {listed}")
        kv = self.kv.kv
        grow = 0
        if n_p:
            status = self.status[prefill]
            before = self.processed[prefill]  # 0 for a waiting request
            remaining = np.where(
                status == WAITING,
                self.prompt[prefill] + self.emitted[prefill],
                self.target[prefill] - before,
            )
            if (status >= DONE).any() or (chunk < 1).any() or (chunk > remaining).any():
                raise PolicyError(
                    f"prefill chunks {chunk.tolist()} of requests {prefill.tolist()} "
                    f"outside 1..remaining {remaining.tolist()}"
                )
            grow += int(kv.growth(before, chunk).sum())
        if n_d:
            before = self.processed[decode]
            if (self.status[decode] != RUNNING).any() or (
                before < self.target[decode]
            ).any():
                raise PolicyError("decode of a request that is not past its prefill")
            grow += kv.decode_growth(before)
        self._check_kv(grow)
        return grow

    def _check_running(
        self, prefill: np.ndarray, chunk: np.ndarray, decode: np.ndarray
    ) -> int:
        """:meth:`_check` of a batch that decodes every running request, none of
        them prefilling (its decode list is the view's ``running`` array): those
        steps are valid by construction, and every prefill must admit a waiting
        request."""
        n_d = len(decode)
        chunks = chunk.tolist()
        if sum(chunks) + n_d > self._max_tokens:
            raise PolicyError("prefill tokens + decode steps > max_num_batched_tokens")
        kv = self.kv
        grow = 0
        if chunks:
            ids = prefill.tolist()
            if len(set(ids)) != len(ids):
                raise PolicyError(f"a request appears twice in the batch: {ids}")
            status, prompt, emitted = self.status, self.prompt, self.emitted
            for r, c in zip(ids, chunks, strict=True):
                if not 0 <= r < self.num_arrived:
                    raise PolicyError(f"batch names a request not arrived: {ids}")
                if status[r] != WAITING:
                    # running (so decoding in this batch too) or done
                    raise PolicyError(
                        f"prefill of request {r}, which is not waiting, in a batch "
                        "that decodes every running request"
                    )
                if not 1 <= c <= prompt[r] + emitted[r]:
                    raise PolicyError(
                        f"prefill chunk {c} of request {r} outside 1.."
                        f"{int(prompt[r] + emitted[r])}"
                    )
                grow += kv.kv.blocks(c)
        # each decode step opens at most one block: the exact count only if that
        # much might not fit
        if kv.held_blocks + grow + n_d <= self._capacity:
            kv.exact = False  # n_d is an upper bound
            return grow + n_d
        if n_d:
            grow += kv.kv.decode_growth(self.processed[decode])
        self._check_kv(grow)
        return grow

    def _check_kv(self, grow: int) -> None:
        """:class:`PolicyError` unless ``grow`` more blocks fit."""
        kv = self.kv
        if not kv.fits(grow, self.running):
            raise PolicyError(
                f"KV after the iteration {kv.held_blocks + grow} blocks > "
                f"capacity {self._capacity}"
            )

    # -- the prefix cache ---------------------------------------------------------

    def _prefix_admit(self, batch: Batch, grow: int) -> tuple[Batch, int]:
        """The batch's admissions take their cached prefixes (rule 1 of
        :mod:`lsched.evaluator.prefix`): the batch with the chunks left to
        compute, and the blocks it adds beside those the admissions now hold."""
        prefix = self.prefix
        assert prefix is not None
        status, prompt, emitted = self.status, self.prompt, self.emitted
        ids, chunks = batch.prefill.tolist(), batch.prefill_tokens.tolist()
        offers = []  # (position in the batch, target, cached tokens offered)
        for k, r in enumerate(ids):
            if status[r] == WAITING:
                target = int(prompt[r] + emitted[r])
                want = prefix.offer(r, int(prompt[r]), target)
                if want:
                    offers.append((k, target, want))
        if not offers:
            return batch, grow
        kv = self.kv.kv

        def extra(k: int, target: int, x: int) -> int:
            """Blocks an admission holding ``x`` cached tokens adds to its plan."""
            return kv.blocks(min(x + chunks[k], target)) - kv.blocks(chunks[k])

        slack = 0  # blocks free beside the batch as planned, counted if needed
        # (extra(x) >= 0: the admission holds at least its chunk)
        if any(extra(*offer) > 0 for offer in offers):
            grow = self._planned_blocks(batch)
            slack = self._capacity - self.kv.held_blocks - grow
        for k, target, want in offers:
            r, c = ids[k], chunks[k]
            x = want
            if extra(k, target, x) > slack:
                x = prefix.usable(want, c, kv, slack)
            slack -= extra(k, target, x)
            if x:
                self._copy_s += prefix.take(r, x)
                self.kv.place(r, x)
                chunks[k] = cut = min(c, target - x)
                grow += kv.blocks(x + cut) - kv.blocks(x) - kv.blocks(c)
        tokens = np.array(chunks, dtype=np.int64)
        return dataclasses.replace(batch, prefill_tokens=tokens), grow

    def _planned_blocks(self, batch: Batch) -> int:
        """The exact blocks ``batch`` adds as its policy planned it (no
        admission holding anything yet), with :attr:`KVLedger.held_blocks` made
        exact."""
        kv = self.kv
        kv.exact_blocks(self.running)
        grow = 0
        if len(batch.prefill):
            before = self.processed[batch.prefill]
            grow += int(kv.kv.growth(before, batch.prefill_tokens).sum())
        if len(batch.decode):
            grow += kv.kv.decode_growth(self.processed[batch.decode])
        return grow

    def _prefix_iteration(self, prefill: list[int], end_s: float) -> None:
        """After an iteration that ends at ``end_s``: the evictions it needed,
        then the blocks its prefill members completed (rules 2 and 4)."""
        prefix = self.prefix
        assert prefix is not None
        self._prefix_evict()
        processed, prompt = self.processed, self.prompt
        for r in prefill:
            prefix.computed(r, int(processed[r]), int(prompt[r]), end_s)

    def _prefix_evict(self) -> None:
        """Evict the evictable blocks the KV held now needs (rule 4)."""
        prefix = self.prefix
        assert prefix is not None
        charged = prefix.charged_blocks
        kv = self.kv
        if not charged or kv.held_blocks + charged <= self._capacity:
            return
        over = kv.exact_blocks(self.running) + charged - self._capacity
        if over > 0:
            prefix.evict(over, len(self.log.runs) - 1 if self.log is not None else -1)

    # -- adapters -----------------------------------------------------------------

    def _load_adapters(self, batch: Batch) -> None:
        """Rules 1 to 3 of :mod:`lsched.evaluator.adapters` for an admitted
        batch: its loads lengthen the iteration, as a blocking swap does."""
        adapters = self.adapters
        assert adapters is not None
        adapters.check_running(self.running)
        members = batch.prefill.tolist() + batch.decode.tolist()
        run = len(self.log.runs) if self.log is not None else -1
        self._copy_s += adapters.prepare(members, self.running, self.now_s, run)
        if adapters.switch(batch.merged, members, run):
            self._copy_s += self.time.merge_switch_s

    def _adapter_seconds(self, batch: Batch) -> float:
        """The adapter columns' time of a batch (:mod:`lsched.profile.cost`;
        none for a merged batch)."""
        adapters = self.adapters
        assert adapters is not None
        if batch.merged:
            return 0.0
        a, lora = adapters.batch_features(
            batch.prefill.tolist(), batch.prefill_tokens.tolist(), batch.decode
        )
        return self.time.adapter_s * a + self.time.lora_token_s * lora

    # -- running iterations -------------------------------------------------------

    def _regime(self, phi: tuple[float, ...]) -> int:
        return bisect.bisect_right(self.thresholds, phi[self.switch])

    def _seconds(self, phi: tuple[float, ...]) -> float:
        """Iteration time of one batch: its regime's max of affine pieces."""
        pieces = self.pieces[self._regime(phi) if self.thresholds else 0]
        x0, x1, x2, x3, x4, x5 = phi
        # summed left to right, as sum() over the six products would
        if len(pieces) == 1:
            w0, w1, w2, w3, w4, w5 = pieces[0]
            return w0 * x0 + w1 * x1 + w2 * x2 + w3 * x3 + w4 * x4 + w5 * x5
        return max(
            w0 * x0 + w1 * x1 + w2 * x2 + w3 * x3 + w4 * x4 + w5 * x5
            for w0, w1, w2, w3, w4, w5 in pieces
        )

    def _iteration(self, batch: Batch, grow: int) -> None:
        """One iteration with any mix of prefill chunks and decode steps (``grow``:
        the blocks it adds, or an upper bound)."""
        prefill, chunk, decode = batch.prefill, batch.prefill_tokens, batch.decode
        n_p, n_d = len(prefill), len(decode)
        processed, target = self.processed, self.target
        kv_read = 0.0
        if n_d:
            before_d = processed[decode]
            kv_read = float(sum(before_d.tolist()) + n_d)
        if n_p <= _SMALL:
            ids, chunks = prefill.tolist(), chunk.tolist()
            before = []
            prefill_tokens = q = 0
            for r, c in zip(ids, chunks, strict=True):
                p = processed.item(r)
                before.append(p)
                prefill_tokens += c
                q += c * (p + c)
        else:
            before_p = processed[prefill]
            prefill_tokens = int(chunk.sum())
            q = int((chunk * (before_p + chunk)).sum())
        phi = (
            1.0,
            float(prefill_tokens),
            float(q),
            float(n_d),
            kv_read,
            1.0 if n_p else 0.0,
        )
        dt = self._seconds(phi)
        if self.adapters is not None:
            dt += self._adapter_seconds(batch)
        if not dt > 0:
            raise PolicyError(f"iteration time {dt} s is not positive for {phi}")
        if self._stall_s:  # blocking swaps run before the forward pass
            dt += self._stall_s
            self.host.stall_s += self._stall_s
            self._stall_s = 0.0
        if self._copy_s:  # host-tier hits copied before the forward pass
            dt += self._copy_s
            self._copy_s = 0.0
        start, end = self.now_s, self.now_s + dt
        self.kv.grow(grow, prefill_tokens + n_d)
        if n_p <= _SMALL:
            firsts = []
            for r, p, c in zip(ids, before, chunks, strict=True):
                processed[r] = p + c
                if p + c == target[r]:
                    firsts.append(r)
            if self.log is not None:
                before_p = np.array(before, dtype=np.int64)
        else:
            after = before_p + chunk
            processed[prefill] = after
            firsts = prefill[after == target[prefill]].tolist()
        if n_d:
            processed[decode] = before_d + 1
        kv_tokens = self.kv.held_tokens
        if self.log is not None:
            self._log_run(start, end, 1, phi, kv_tokens, prefill, chunk, before_p,
                          decode, before_d if n_d else decode[:0])  # fmt: skip
        if self.prefix is not None:
            self._prefix_iteration(prefill.tolist() if n_p > _SMALL else ids, end)
        self.iterations += 1
        self.busy_s += dt
        self.kv_token_seconds += kv_tokens * dt
        self.now_s = end
        finished: list[int] = []
        if firsts:
            self.num_prefilling -= len(firsts)
            emitted, output, first = self.emitted, self.output, self.first_token_s
            for r in firsts:
                if math.isnan(first[r]):  # token 1, not a recompute
                    first[r] = end
                e = emitted[r] + 1
                emitted[r] = e
                if e >= output[r]:
                    finished.append(r)
        if n_d:
            e = self.emitted[decode] + 1
            self.emitted[decode] = e
            left = (self.output[decode] - e).tolist()
            if min(left) <= 0:
                finished.extend(
                    r for r, x in zip(decode.tolist(), left, strict=True) if x <= 0
                )
        if finished:
            self._finish(finished, end)

    def _plan(
        self,
        decode: np.ndarray,
        p: np.ndarray,
        held: int,
        wake_at_s: float | None,
        context_cap: int | None,
    ) -> tuple[DecodeStretch, int, list[int]]:
        """A held decode batch's closed form, its iterations to the next event and
        its members' remaining output tokens (``p``: their processed tokens,
        ``held``: their sum; ``wake_at_s`` and ``context_cap``: the batch's
        ``wake_at_s`` and ``hold_context_tokens``)."""
        d = len(decode)
        k0 = held + d
        regime = 0
        if self.thresholds:
            regime = self._regime((1.0, 0.0, 0.0, float(d), float(k0), 0.0))
        stretch = DecodeStretch.from_rows(self._rows[regime], d, k0)

        remaining = (self.output[decode] - self.emitted[decode]).tolist()
        n = min(remaining)  # completion
        if self.switch == _K and regime < len(self.thresholds):
            # the regime switches on K, which grows by d per iteration
            n = min(n, math.ceil((self.thresholds[regime] - k0) / d))
        if context_cap is not None:
            # iteration k leaves held + (k + 1) d tokens of context; the first
            # runs regardless (the policy decided it)
            n = max(1, min(n, (context_cap - held) // d))
        # each request opens at most ceil(n / b) blocks in n iterations: with that
        # much room there is nothing to search
        n = self.kv.decode_steps_that_fit(decode, p, n, self.running)
        wake = math.inf
        if self.num_arrived < self.m:
            wake = float(self.arrival_s[self.num_arrived]) - ARRIVAL_TOLERANCE_S
        if wake_at_s is not None:
            wake = min(wake, wake_at_s)
        if wake < math.inf and n > 1:
            n = stretch.iterations_until(wake - self.now_s, n)
        return stretch, n, remaining

    def _stretch_length(self, batch: Batch) -> tuple[DecodeStretch, int]:
        """A held decode batch's closed form and its iterations to the next event."""
        decode = batch.decode
        p = self.processed[decode]
        stretch, n, _ = self._plan(
            decode, p, int(p.sum()), batch.wake_at_s, batch.hold_context_tokens
        )
        return stretch, n

    def _decode_stretch(
        self, batch: Batch, planned: tuple[DecodeStretch, int] | None = None
    ) -> None:
        """A held decode batch, advanced to its next event in closed form
        (``planned``: its :meth:`_stretch_length`, if already computed)."""
        decode = batch.decode
        p = self.processed[decode]
        if planned is None:
            # a held batch of every running request holds all of their KV
            held = self.kv.held_tokens if len(p) == len(self.running) else int(p.sum())
            plan = self._plan(
                decode, p, held, batch.wake_at_s, batch.hold_context_tokens
            )
            self._advance(decode, p, *plan)
        else:
            self._advance(decode, p, *planned, None)

    def _advance(
        self,
        decode: np.ndarray,
        p: np.ndarray,
        stretch: DecodeStretch,
        n: int,
        remaining: list[int] | None,
    ) -> None:
        """Run ``n`` iterations of the decode batch ``decode`` (validated; ``p``
        its processed tokens, ``remaining`` its remaining output tokens or None)."""
        d = len(decode)
        elapsed = stretch.elapsed_s(n)
        start, end = self.now_s, self.now_s + elapsed
        kv0 = self.kv.held_tokens + d
        self.kv.decode(decode, p, n)
        emitted = self.emitted[decode] + n
        self.emitted[decode] = emitted
        if self.log is not None:
            phi0 = (1.0, 0.0, 0.0, float(d), float(int(p.sum()) + d), 0.0)
            none = decode[:0]
            self._log_run(start, end, n, phi0, kv0, none, none, none, decode, p)
        if self.prefix is not None:
            self._prefix_evict()
        self.iterations += n
        self.busy_s += elapsed
        self.kv_token_seconds += stretch.kv_token_seconds(n, kv0, d)
        self.now_s = end
        if remaining is None:
            remaining = (self.output[decode] - emitted + n).tolist()
        if min(remaining) <= n:  # == n: the stretch ends at these completions
            if remaining.count(n) == 1:
                self._finish([int(decode[remaining.index(n)])], end)
            else:
                ids = zip(decode.tolist(), remaining, strict=True)
                self._finish([r for r, x in ids if x <= n], end)

    def _finish(self, finished: list[int], end: float) -> None:
        """The requests ``finished`` completed at ``end``: free their KV and
        release their cached blocks (in local id order)."""
        for r in finished:
            self.kv.free(r)
        if self.prefix is not None:
            for r in sorted(finished):
                self.prefix.release(r)
        if len(finished) == 1:
            r = finished[0]
            self.completion_s[r] = end
            self.status[r] = DONE
            self.running.remove(r)
        else:
            self.completion_s[finished] = end
            self.status[finished] = DONE
            gone = set(finished)
            self.running = [r for r in self.running if r not in gone]
        self._shown = None
        self.done += len(finished)
        if self.on_finished is not None:
            self.on_finished(len(finished))

    def _log_run(
        self,
        start: float,
        end: float,
        n: int,
        phi: tuple[float, ...],
        kv_tokens: int,
        prefill: np.ndarray,
        chunk: np.ndarray,
        before_p: npt.NDArray[np.int64],
        decode: np.ndarray,
        before_d: npt.NDArray[np.int64],
    ) -> None:
        if self.log is None:
            return
        self.log.runs.append(
            (start, end, n, int(phi[1]), int(phi[2]), int(phi[3]), int(phi[4]),
             int(phi[5]), kv_tokens)
        )  # fmt: skip
        run = len(self.log.runs) - 1
        kinds = np.array(["prefill"] * len(prefill) + ["decode"] * len(decode))
        self.log.members.append(
            (
                np.full(len(kinds), run, dtype=np.int64),
                np.concatenate([prefill, decode]),
                kinds,
                np.concatenate([chunk, np.ones(len(decode), dtype=np.int64)]),
                np.concatenate([before_p, before_d]),
            )
        )
