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
            iterations until the regime changes, if it switches on K)

with the stretch's elapsed time and KV token-seconds in closed form
(:mod:`lsched.evaluator.stretch`). The KV limit is found by bisection on the
monotone total ``sum_i ceil((p_i + k + 1) / b)``.

A request has arrived at a boundary ``t`` when ``arrival_s <= t +
ARRIVAL_TOLERANCE_S`` (1 ns): a stretch's end ``t + S(n)`` computed in closed form
can differ in the last bits from adding the iteration times one by one, and the
tolerance keeps an arrival that falls on a boundary on the same side for both.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from lsched.evaluator.stretch import DecodeStretch
from lsched.policies.base import (
    ARRIVAL_TOLERANCE_S,
    Batch,
    Policy,
    PolicyError,
    ReplicaLimits,
    ReplicaView,
)
from lsched.profile import FEATURES, DeploymentProfile

_K = FEATURES.index("kv_read_tokens")
WAITING, RUNNING, DONE = 0, 1, 2


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


@dataclass
class ReplicaLog:
    """Runs, members and preemptions of one replica, as growing lists of columns."""

    runs: list[tuple] = field(default_factory=list)
    members: list[tuple[np.ndarray, ...]] = field(default_factory=list)
    preemptions: list[tuple[int, int]] = field(default_factory=list)


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
    """

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
    ) -> None:
        m = len(arrival_s)
        self.m = m
        self.arrival_s = arrival_s
        self.prompt = prompt_tokens
        self.output = output_tokens
        self.time = profile.iteration_time
        self.regimes = self.time.effective_regimes
        # the same pieces as plain tuples: one iteration's time is a handful of
        # multiply-adds, cheaper in Python than through NumPy's call overhead
        self.pieces = [[tuple(map(float, w)) for w in r] for r in self.regimes]
        self.thresholds = list(self.time.thresholds)
        self.switch = (
            0  # the const feature: always regime 0
            if self.time.switch_feature is None
            else FEATURES.index(self.time.switch_feature)
        )
        self.policy = policy
        self.limits = ReplicaLimits(
            kv_capacity_blocks=profile.kv_capacity_blocks,
            block_tokens=profile.block_tokens,
            max_num_seqs=profile.max_num_seqs,
            max_num_batched_tokens=profile.max_num_batched_tokens,
            max_model_len=profile.max_model_len,
        )
        self.emitted = np.zeros(m, dtype=np.int64)
        self.processed = np.zeros(m, dtype=np.int64)
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
        self.held_blocks = 0
        self.held_tokens = 0  # sum of processed over running requests
        self.now_s = float(arrival_s[0]) if m else 0.0
        self.iterations = 0
        self.busy_s = 0.0
        self.kv_token_seconds = 0.0
        self.done = 0
        self.log = ReplicaLog() if log else None
        self.on_finished = on_finished
        # read-only views of the live arrays: built once, shown to every decision
        self._views = tuple(
            _read_only(a)
            for a in (
                self.arrival_s,
                self.prompt,
                self.emitted,
                self.processed,
                self.target,
            )
        )
        self._priority_view = None if priority is None else _read_only(priority)
        self._tenant_view = None if tenant is None else _read_only(tenant)
        self._predicted_view = (
            None
            if predicted_output_tokens is None
            else _read_only(predicted_output_tokens)
        )

    # -- the loop -----------------------------------------------------------------

    def run(self) -> None:
        """Simulate until every request is done."""
        while self.done < self.m:
            self._arrive()
            if not self.running and not self._has_waiting():
                self.now_s = max(self.now_s, float(self.arrival_s[self.num_arrived]))
                continue
            batch = self.policy.decide(self._view())
            run = len(self.log.runs) if self.log is not None else -1
            self._preempt(batch.preempt, run)
            if batch.is_empty:
                self._idle(batch)
                continue
            grow = self._check(batch)
            self._admit(batch.prefill)
            if batch.hold and len(batch.prefill) == 0 and len(batch.preempt) == 0:
                self._decode_stretch(batch)
            else:
                self._iteration(batch, grow)

    def _arrive(self) -> None:
        n = int(
            np.searchsorted(
                self.arrival_s, self.now_s + ARRIVAL_TOLERANCE_S, side="right"
            )
        )
        if n > self.num_arrived:
            new = np.arange(self.num_arrived, n)
            self.queue[self.tail : self.tail + len(new)] = new
            self.tail += len(new)
            self.num_arrived = n

    def _has_waiting(self) -> bool:
        return bool(self.requeued) or self.tail > self.head

    def _waiting(self) -> np.ndarray:
        fresh = self.queue[self.head : self.tail]
        if not self.requeued:
            return _read_only(fresh)
        merged = np.concatenate([np.array(self.requeued, dtype=np.int64), fresh])
        if len(fresh) and self.requeued[-1] > fresh[0]:
            merged.sort()
        return merged

    def _view(self) -> ReplicaView:
        arrival, prompt, emitted, processed, target = self._views
        return ReplicaView(
            now_s=self.now_s,
            iteration=self.iterations,
            num_arrived=self.num_arrived,
            running=np.array(self.running, dtype=np.int64),
            waiting=self._waiting(),
            arrival_s=arrival,
            prompt_tokens=prompt,
            predicted_output_tokens=self._predicted_view,
            emitted_tokens=emitted,
            processed_tokens=processed,
            prefill_target_tokens=target,
            limits=self.limits,
            priority=self._priority_view,
            tenant=self._tenant_view,
        )

    def _idle(self, batch: Batch) -> None:
        upcoming = math.inf
        if self.num_arrived < self.m:
            upcoming = float(self.arrival_s[self.num_arrived])
        if batch.wake_at_s is not None and batch.wake_at_s > self.now_s:
            upcoming = min(upcoming, batch.wake_at_s)
        if math.isinf(upcoming):
            raise PolicyError(
                f"policy stalled at t={self.now_s:.6f} s: it scheduled nothing, with "
                f"{len(self.running)} running and {len(self._waiting())} waiting "
                "requests and nothing left to wait for"
            )
        self.now_s = upcoming

    # -- state changes ------------------------------------------------------------

    def _preempt(self, ids: np.ndarray, run: int) -> None:
        for r in ids.tolist():
            if not 0 <= r < self.num_arrived or self.status[r] != RUNNING:
                raise PolicyError(f"preempted request {r} is not running")
            self.running.remove(r)
            self.held_blocks -= int(self.limits.kv_blocks(self.processed[r]))
            self.held_tokens -= int(self.processed[r])
            self.recomputed[r] += self.processed[r]
            self.preemptions[r] += 1
            self.processed[r] = 0
            self.status[r] = WAITING
            self.requeued.append(r)
            if self.log is not None:
                self.log.preemptions.append((run, r))
        if len(ids):
            self.requeued.sort()

    def _admit(self, prefill: np.ndarray) -> None:
        new = prefill[self.status[prefill] == WAITING]
        if len(new) == 0:
            return
        self.status[new] = RUNNING
        self.target[new] = self.prompt[new] + self.emitted[new]
        never = np.isnan(self.admitted_s[new])  # never admitted: in the fresh queue
        self.admitted_s[new[never]] = self.now_s
        self.running.extend(new.tolist())
        if not never.all():
            back = set(new[~never].tolist())
            self.requeued = [r for r in self.requeued if r not in back]
        fresh = np.sort(new[never])
        k = len(fresh)
        if np.array_equal(self.queue[self.head : self.head + k], fresh):
            self.head += k  # admitted from the head, as FCFS does: O(1)
        elif k:
            rest = self.queue[self.head : self.tail]
            keep = rest[~np.isin(rest, fresh)]
            self.queue[self.head : self.head + len(keep)] = keep
            self.tail = self.head + len(keep)

    def _check(self, batch: Batch) -> int:
        """KV blocks the batch adds; :class:`PolicyError` if it breaks a rule."""
        prefill, chunk, decode = batch.prefill, batch.prefill_tokens, batch.decode
        n_p, n_d = len(prefill), len(decode)
        limits = self.limits
        if len(chunk) != n_p:
            raise PolicyError("prefill and prefill_tokens differ in length")
        if n_p + n_d > limits.max_num_seqs:
            raise PolicyError(f"{n_p + n_d} requests > max_num_seqs")
        if (int(chunk.sum()) if n_p else 0) + n_d > limits.max_num_batched_tokens:
            raise PolicyError("prefill tokens + decode steps > max_num_batched_tokens")
        ids = (np.concatenate([prefill, decode]) if n_d else prefill) if n_p else decode
        listed = ids.tolist()
        if min(listed) < 0 or max(listed) >= self.num_arrived:
            raise PolicyError(f"batch names a request not arrived: {listed}")
        if len(set(listed)) != n_p + n_d:
            raise PolicyError(f"a request appears twice in the batch: {listed}")
        block = limits.block_tokens
        grow = 0
        if n_p:
            status = self.status[prefill]
            before = self.processed[prefill]  # 0 for a waiting request
            remaining = np.where(
                status == WAITING,
                self.prompt[prefill] + self.emitted[prefill],
                self.target[prefill] - before,
            )
            if (status == DONE).any() or (chunk < 1).any() or (chunk > remaining).any():
                raise PolicyError(
                    f"prefill chunks {chunk.tolist()} of requests {prefill.tolist()} "
                    f"outside 1..remaining {remaining.tolist()}"
                )
            grow += int((-(-(before + chunk) // block) - -(-before // block)).sum())
        if n_d:
            before = self.processed[decode]
            if (self.status[decode] != RUNNING).any() or (
                before < self.target[decode]
            ).any():
                raise PolicyError("decode of a request that is not past its prefill")
            grow += int((before % block == 0).sum())  # a step that opens a block
        if self.held_blocks + grow > limits.kv_capacity_blocks:
            raise PolicyError(
                f"KV after the iteration {self.held_blocks + grow} blocks > "
                f"capacity {limits.kv_capacity_blocks}"
            )
        return grow

    # -- running iterations -------------------------------------------------------

    def _regime(self, phi: tuple[float, ...]) -> int:
        return bisect.bisect_right(self.thresholds, phi[self.switch])

    def _seconds(self, phi: tuple[float, ...]) -> float:
        """Iteration time of one batch: its regime's max of affine pieces."""
        return max(
            sum(w * x for w, x in zip(piece, phi, strict=True))
            for piece in self.pieces[self._regime(phi)]
        )

    def _iteration(self, batch: Batch, grow: int) -> None:
        """One iteration with any mix of prefill chunks and decode steps."""
        prefill, chunk, decode = batch.prefill, batch.prefill_tokens, batch.decode
        before_p = self.processed[prefill]
        before_d = self.processed[decode]
        prefill_tokens = int(chunk.sum())
        phi = (
            1.0,
            float(prefill_tokens),
            float((chunk * (before_p + chunk)).sum()),
            float(len(decode)),
            float(before_d.sum() + len(decode)),
            1.0 if len(prefill) else 0.0,
        )
        dt = self._seconds(phi)
        if not dt > 0:
            raise PolicyError(f"iteration time {dt} s is not positive for {phi}")
        start, end = self.now_s, self.now_s + dt
        self.held_blocks += grow
        self.held_tokens += prefill_tokens + len(decode)
        self.processed[prefill] += chunk
        self.processed[decode] += 1
        firsts = prefill[self.processed[prefill] == self.target[prefill]]
        unset = np.isnan(self.first_token_s[firsts])  # token 1, not a recompute
        self.first_token_s[firsts[unset]] = self.now_s + dt
        emits = np.concatenate([firsts, decode]) if len(decode) else firsts
        kv_tokens = self.held_tokens
        self._log_run(start, end, 1, phi, kv_tokens, prefill, chunk, before_p, decode,
                      before_d)  # fmt: skip
        self.iterations += 1
        self.busy_s += dt
        self.kv_token_seconds += kv_tokens * dt
        self.now_s = end
        self._emit(emits, 1, end)

    def _stretch_length(self, batch: Batch) -> tuple[DecodeStretch, int]:
        """A held decode batch's closed form and its iterations to the next event."""
        decode = batch.decode
        p = self.processed[decode]
        d = len(decode)
        k0 = int(p.sum()) + d
        phi0 = (1.0, 0.0, 0.0, float(d), float(k0), 0.0)
        regime = self._regime(phi0)
        stretch = DecodeStretch(self.regimes[regime], d, k0)

        n = int((self.output[decode] - self.emitted[decode]).min())  # completion
        if self.switch == _K and regime < len(self.thresholds):
            # the regime switches on K, which grows by d per iteration
            n = min(n, math.ceil((self.thresholds[regime] - k0) / d))
        n = min(n, self._iterations_in_kv(p, n))
        wake = math.inf
        if self.num_arrived < self.m:
            wake = float(self.arrival_s[self.num_arrived]) - ARRIVAL_TOLERANCE_S
        if batch.wake_at_s is not None:
            wake = min(wake, batch.wake_at_s)
        if wake < math.inf and n > 1:
            n = stretch.iterations_until(wake - self.now_s, n)
        return stretch, n

    def _decode_stretch(
        self, batch: Batch, planned: tuple[DecodeStretch, int] | None = None
    ) -> None:
        """A held decode batch, advanced to its next event in closed form
        (``planned``: its :meth:`_stretch_length`, if already computed)."""
        stretch, n = self._stretch_length(batch) if planned is None else planned
        decode = batch.decode
        p = self.processed[decode]
        d = len(decode)
        phi0 = (1.0, 0.0, 0.0, float(d), float(int(p.sum()) + d), 0.0)

        elapsed = stretch.elapsed_s(n)
        start, end = self.now_s, self.now_s + elapsed
        block = self.limits.block_tokens
        self.held_blocks += int((-(-(p + n) // block) - -(-p // block)).sum())
        kv0 = self.held_tokens + d
        self.held_tokens += n * d
        self.processed[decode] += n
        none = decode[:0]
        self._log_run(start, end, n, phi0, kv0, none, none, none, decode, p)
        self.iterations += n
        self.busy_s += elapsed
        self.kv_token_seconds += stretch.kv_token_seconds(n, kv0, d)
        self.now_s = end
        self._emit(decode, n, end)

    def _iterations_in_kv(self, p: np.ndarray, limit: int) -> int:
        """How many of the next ``limit`` repetitions fit in KV (at least 1)."""
        limits = self.limits
        # each request opens at most ceil(limit / b) blocks in `limit` iterations:
        # with that much room there is nothing to search
        most = len(p) * -(-limit // limits.block_tokens)
        if self.held_blocks + most <= limits.kv_capacity_blocks:
            return limit
        others = self.held_blocks - int(limits.kv_blocks(p).sum())

        def fits(k: int) -> bool:  # iteration k (0-based) leaves p + k + 1 tokens
            return others + int(limits.kv_blocks(p + k + 1).sum()) <= (
                limits.kv_capacity_blocks
            )

        if fits(limit - 1):
            return limit
        lo, hi = 1, limit - 1  # fits(lo - 1) holds, fits(hi) does not
        while lo < hi:
            mid = (lo + hi) // 2
            if fits(mid):
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _emit(self, ids: np.ndarray, tokens: int, end: float) -> None:
        """``ids`` emitted ``tokens`` tokens each, the last at ``end``."""
        if len(ids) == 0:
            return
        self.emitted[ids] += tokens
        finished = ids[self.emitted[ids] >= self.output[ids]]
        if len(finished) == 0:
            return
        self.completion_s[finished] = end
        self.status[finished] = DONE
        done_tokens = self.processed[finished]
        self.held_blocks -= int(self.limits.kv_blocks(done_tokens).sum())
        self.held_tokens -= int(done_tokens.sum())
        self.processed[finished] = 0
        gone = set(finished.tolist())
        self.running = [r for r in self.running if r not in gone]
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
