"""A naive reference engine: one iteration at a time, in plain Python, for tests.

This is the independent check of the fast evaluator (``lsched.evaluator``): it shares
no code with it (nothing from ``lsched.evaluator`` is imported) and takes no
shortcuts. Every replica calls its policy at *every* iteration boundary, ignoring
``Batch.hold``, so a policy's false promise to hold, or a closed-form stretch of the
fast engine that drifts from the per-iteration rules, shows up as a difference.

The rules are those of :mod:`lsched.policies.base` and DESIGN.md ("The iteration
model"); where the text leaves a choice open, the comment at that line says which
reading this engine takes.
"""

from __future__ import annotations

import bisect
import inspect
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lsched.errors import InputError
from lsched.instance import Instance
from lsched.policies import (
    ARRIVAL_TOLERANCE_S,
    Batch,
    Policy,
    PolicyContext,
    PolicyError,
    PolicySpec,
    ReplicaLimits,
    ReplicaView,
    parse_policy,
)
from lsched.profile import DeploymentProfile

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_WAITING, _RUNNING, _DONE = 0, 1, 2


@dataclass(frozen=True)
class NaiveResult:
    """What :func:`simulate_naive` returns.

    Per-request arrays are in global instance order (row ``i`` = request ``i``).

    Attributes
    ----------
    replica
        Replica that served each request.
    admitted_s
        Start of the iteration that first admitted the request.
    first_token_s
        End of the iteration that emitted output token 1.
    completion_s
        End of the iteration that emitted token ``o_i``.
    preemptions
        Recompute preemptions of each request.
    recomputed_tokens
        KV tokens each request lost to preemption.
    iterations
        Iterations run, all replicas together.
    busy_s
        Sum of iteration times, all replicas together.
    kv_token_seconds
        Sum over iterations of (KV tokens held at the end of the iteration, before
        completing requests free theirs) x (iteration time).
    max_kv_blocks_seen, max_kv_tokens_seen
        Per replica: the most KV blocks / tokens held at the end of any iteration
        (completing requests included), 0 for a replica that got no request.
    max_decode_steps
        Per replica: the largest D of any iteration (to tell which regime of a
        threshold cost model a test reached).
    """

    replica: IntArray
    admitted_s: FloatArray
    first_token_s: FloatArray
    completion_s: FloatArray
    preemptions: IntArray
    recomputed_tokens: IntArray
    iterations: int
    busy_s: float
    kv_token_seconds: float
    max_kv_blocks_seen: IntArray
    max_kv_tokens_seen: IntArray
    max_decode_steps: IntArray


def _blocks(tokens: int, block_tokens: int) -> int:
    return -(-tokens // block_tokens)


def _frozen(values: list[Any], dtype: type) -> np.ndarray:
    array = np.array(values, dtype=dtype)
    array.flags.writeable = False
    return array


def _ids(values: npt.ArrayLike, what: str) -> list[int]:
    """A batch field as a list of Python ints (PolicyError if not integers)."""
    array = np.asarray(values)
    if array.size == 0:
        return []
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise PolicyError(
            f"Batch.{what} must be a 1-D integer array, got {array.dtype} "
            f"shape {array.shape}"
        )
    return [int(v) for v in array]


def check_peaks(instance: Instance, profile: DeploymentProfile) -> None:
    """Raise InputError for the first request whose peak KV can never fit.

    A request's KV peaks at ``s_i + o_i - 1`` tokens (the decode step that emits
    its last token); if those blocks exceed the replica's blocks, no schedule can
    finish it, whatever the policy.
    """
    b = profile.block_tokens
    capacity = profile.kv_capacity_blocks
    peaks = instance.prompt_tokens + instance.output_tokens - 1
    for i, peak in enumerate(peaks.tolist()):
        if _blocks(peak, b) > capacity:
            raise InputError(
                f"request {i} needs {peak} KV tokens ({_blocks(peak, b)} blocks of "
                f"{b}) at its peak (prompt + output - 1), more than the capacity of "
                f"{profile.kv_capacity_tokens} tokens ({capacity} blocks); it can "
                "never complete",
                field="kv_capacity_tokens",
            )


class _Replica:
    """One replica's state and its iteration loop (local ids in arrival order)."""

    def __init__(
        self,
        rows: list[int],
        instance: Instance,
        profile: DeploymentProfile,
        policy: Policy,
    ) -> None:
        self.rows = rows
        self.profile = profile
        self.policy = policy
        self.limits = ReplicaLimits(
            kv_capacity_blocks=profile.kv_capacity_blocks,
            block_tokens=profile.block_tokens,
            max_num_seqs=profile.max_num_seqs,
            max_num_batched_tokens=profile.max_num_batched_tokens,
            max_model_len=profile.max_model_len,
        )
        self.arrival = [float(instance.arrival_s[i]) for i in rows]
        self.prompt = [int(instance.prompt_tokens[i]) for i in rows]
        self.output = [int(instance.output_tokens[i]) for i in rows]
        pred = instance.predicted_output_tokens
        self.predicted = None if pred is None else _frozen(pred[rows].tolist(), int)
        prio = instance.priority
        self.priority = None if prio is None else _frozen(prio[rows].tolist(), int)
        tenant = instance.tenant
        self.tenant = None if tenant is None else _frozen(tenant[rows].tolist(), str)
        self.arrival_view = _frozen(self.arrival, float)
        self.prompt_view = _frozen(self.prompt, int)
        m = len(rows)
        self.status = [_WAITING] * m
        self.processed = [0] * m
        self.target = [0] * m
        self.emitted = [0] * m
        self.running: list[int] = []  # admission order, oldest first
        self.admitted_s = [math.nan] * m
        self.first_token_s = [math.nan] * m
        self.completion_s = [math.nan] * m
        self.preemptions = [0] * m
        self.recomputed = [0] * m
        self.iterations = 0
        self.busy_s = 0.0
        self.kv_token_seconds = 0.0
        self.max_kv_blocks = 0
        self.max_kv_tokens = 0
        self.max_decode = 0

    # -- the loop -------------------------------------------------------------------

    def run(self) -> None:
        m = len(self.rows)
        done = 0
        t = self.arrival[0]
        while done < m:
            num_arrived = bisect.bisect_right(self.arrival, t + ARRIVAL_TOLERANCE_S)
            # arrived, neither running nor done; local ids are in arrival order
            waiting = [i for i in range(num_arrived) if self.status[i] == _WAITING]
            if not self.running and not waiting:
                t = self.arrival[num_arrived]  # idle: done < m, so one is coming
                continue
            batch = self.policy.decide(self._view(t, num_arrived, waiting))
            if not isinstance(batch, Batch):
                raise PolicyError(
                    f"decide() returned {type(batch).__name__}, not Batch"
                )
            self._preempt(_ids(batch.preempt, "preempt"))
            prefill = _ids(batch.prefill, "prefill")
            chunks = _ids(batch.prefill_tokens, "prefill_tokens")
            decode = _ids(batch.decode, "decode")
            if len(chunks) != len(prefill):
                raise PolicyError(
                    f"Batch.prefill has {len(prefill)} ids but prefill_tokens "
                    f"{len(chunks)} chunk sizes"
                )
            if not prefill and not decode:
                t = self._idle_until(t, num_arrived, batch.wake_at_s)
                continue
            self._validate(prefill, chunks, decode, num_arrived)
            t, done = self._iterate(t, prefill, chunks, decode, done)

    def _view(self, t: float, num_arrived: int, waiting: list[int]) -> ReplicaView:
        return ReplicaView(
            now_s=t,
            iteration=self.iterations,
            num_arrived=num_arrived,
            running=_frozen(self.running, int),
            waiting=_frozen(waiting, int),
            arrival_s=self.arrival_view,
            prompt_tokens=self.prompt_view,
            predicted_output_tokens=self.predicted,
            emitted_tokens=_frozen(self.emitted, int),
            processed_tokens=_frozen(self.processed, int),
            prefill_target_tokens=_frozen(self.target, int),
            limits=self.limits,
            priority=self.priority,
            tenant=self.tenant,
        )

    def _preempt(self, preempt: list[int]) -> None:
        """Recompute preemption, applied before the iteration (base.py)."""
        if len(set(preempt)) != len(preempt):
            raise PolicyError(f"Batch.preempt lists a request twice: {preempt}")
        for r in preempt:
            if r not in self.running:
                raise PolicyError(f"preempt of request {r}, which is not running")
        for r in preempt:
            self.running.remove(r)
            self.status[r] = _WAITING
            self.recomputed[r] += self.processed[r]
            self.preemptions[r] += 1
            self.processed[r] = 0

    def _idle_until(self, t: float, num_arrived: int, wake_at_s: float | None) -> float:
        """An empty batch: idle until the next arrival or the policy's wake time."""
        events = []
        if num_arrived < len(self.arrival):
            events.append(self.arrival[num_arrived])
        # a wake time not after now has passed already: calling again at the same
        # boundary would loop forever, so it does not count as an event
        if wake_at_s is not None and wake_at_s > t:
            events.append(float(wake_at_s))
        if not events:
            waiting = self.status[:num_arrived].count(_WAITING)
            raise PolicyError(
                f"policy stalled at t={t}: empty batch with {len(self.running)} "
                f"running and {waiting} waiting requests, no arrival to come and no "
                "wake time"
            )
        return min(events)

    def _validate(
        self, prefill: list[int], chunks: list[int], decode: list[int], num_arrived: int
    ) -> None:
        """Raise PolicyError unless the batch obeys every rule of base.py."""
        ids = prefill + decode
        for r in ids:
            if not 0 <= r < num_arrived:
                raise PolicyError(
                    f"unknown request id {r}: {num_arrived} requests have arrived"
                )
        if len(set(ids)) != len(ids):
            raise PolicyError(f"a request appears twice in the batch: {ids}")
        for r, c in zip(prefill, chunks, strict=True):
            if self.status[r] == _WAITING:
                limit = self.prompt[r] + self.emitted[r]
            elif self.status[r] == _RUNNING and self.processed[r] < self.target[r]:
                limit = self.target[r] - self.processed[r]
            else:
                raise PolicyError(
                    f"prefill of request {r}, which is neither waiting nor running "
                    "in its prefill"
                )
            if not 1 <= c <= limit:
                raise PolicyError(
                    f"prefill chunk of {c} tokens for request {r}; expected 1..{limit}"
                )
        for r in decode:
            # past its prefill: processed reached the target set at admission
            # (and grows beyond it by one per decode step)
            if self.status[r] != _RUNNING or self.processed[r] < self.target[r]:
                raise PolicyError(
                    f"decode of request {r}, which is not running past its prefill"
                )
        limits = self.limits
        if len(ids) > limits.max_num_seqs:
            raise PolicyError(
                f"{len(ids)} requests in the batch; max_num_seqs is "
                f"{limits.max_num_seqs}"
            )
        tokens = sum(chunks) + len(decode)
        if tokens > limits.max_num_batched_tokens:
            raise PolicyError(
                f"{tokens} prefill tokens + decode steps; max_num_batched_tokens is "
                f"{limits.max_num_batched_tokens}"
            )
        after = {r: self.processed[r] for r in self.running}
        for r, c in zip(prefill, chunks, strict=True):
            after[r] = self.processed[r] + c  # 0 + c for an admission
        for r in decode:
            after[r] += 1
        blocks = sum(_blocks(x, limits.block_tokens) for x in after.values())
        if blocks > limits.kv_capacity_blocks:
            raise PolicyError(
                f"{blocks} KV blocks after the iteration; capacity is "
                f"{limits.kv_capacity_blocks}"
            )

    def _iterate(
        self,
        t: float,
        prefill: list[int],
        chunks: list[int],
        decode: list[int],
        done: int,
    ) -> tuple[float, int]:
        """Run one validated iteration from time ``t``; return its end and done."""
        # admission: a waiting request given a chunk starts running, in the order
        # the batch lists them; its target covers tokens emitted before a preemption
        for r in prefill:
            if self.status[r] == _WAITING:
                self.status[r] = _RUNNING
                self.running.append(r)
                self.target[r] = self.prompt[r] + self.emitted[r]
                if math.isnan(self.admitted_s[r]):
                    self.admitted_s[r] = t
        p = sum(chunks)
        q = sum(
            c * (self.processed[r] + c) for r, c in zip(prefill, chunks, strict=True)
        )
        d = len(decode)
        k = sum(self.processed[r] + 1 for r in decode)  # own new token included
        phi = np.array([1.0, p, q, d, k, 1.0 if p > 0 else 0.0], dtype=np.float64)
        duration = float(self.profile.iteration_time_s(phi))
        end = t + duration

        emitting = []
        for r, c in zip(prefill, chunks, strict=True):
            self.processed[r] += c
            if self.processed[r] == self.target[r]:  # the chunk that ends the prefill
                emitting.append(r)
        for r in decode:
            self.processed[r] += 1
            emitting.append(r)
        # KV held in this iteration: completing requests still hold theirs (DESIGN:
        # freed at the *end* of the completing iteration)
        kv_tokens = sum(self.processed[r] for r in self.running)
        kv_blocks = sum(
            _blocks(self.processed[r], self.limits.block_tokens) for r in self.running
        )
        for r in emitting:
            self.emitted[r] += 1
            if self.emitted[r] == 1:
                self.first_token_s[r] = end
            if self.emitted[r] == self.output[r]:
                self.status[r] = _DONE
                self.running.remove(r)
                self.processed[r] = 0
                self.completion_s[r] = end
                done += 1

        self.iterations += 1
        self.busy_s += duration
        self.kv_token_seconds += kv_tokens * duration
        self.max_kv_blocks = max(self.max_kv_blocks, kv_blocks)
        self.max_kv_tokens = max(self.max_kv_tokens, kv_tokens)
        self.max_decode = max(self.max_decode, d)
        return end, done


def _make(spec: Any, replica: int, profile: DeploymentProfile) -> Policy:
    """A fresh policy for ``replica``: ``spec.make(context)``, or ``spec.make()``
    for a test spec whose ``make`` takes nothing."""
    if not inspect.signature(spec.make).parameters:
        return spec.make()
    limits = ReplicaLimits(
        kv_capacity_blocks=profile.kv_capacity_blocks,
        block_tokens=profile.block_tokens,
        max_num_seqs=profile.max_num_seqs,
        max_num_batched_tokens=profile.max_num_batched_tokens,
        max_model_len=profile.max_model_len,
    )
    return spec.make(PolicyContext(replica, "pool0", limits))


def simulate_naive(
    instance: Instance,
    profile: DeploymentProfile,
    policy: PolicySpec | str,
    *,
    replicas: int | None = None,
    assignment: npt.ArrayLike | None = None,
) -> NaiveResult:
    """Replay ``instance`` on ``profile`` under ``policy``, one iteration at a time.

    Parameters
    ----------
    instance
        The requests.
    profile
        Deployment profile (cost model, KV capacity, limits).
    policy
        A :class:`PolicySpec` or a policy string such as ``"fcfs:chunked=false"``
        (anything with a ``make()`` giving a fresh policy also works, for tests of
        deliberately broken policies).
    replicas
        Number of replicas C; defaults to ``profile.replicas``.
    assignment
        Replica id of each request; by default request ``i`` goes to ``i % C``.

    Raises
    ------
    InputError
        If a request's peak KV exceeds the capacity, or the assignment is invalid.
    PolicyError
        If the policy returns a batch that breaks a rule, or stalls.
    """
    spec = parse_policy(policy) if isinstance(policy, str) else policy
    c = profile.replicas if replicas is None else int(replicas)
    if c < 1:
        raise InputError(f"got {c}; expected >= 1 replicas", field="replicas")
    n = len(instance)
    if assignment is None:
        where = np.arange(n, dtype=np.int64) % c
    else:
        where = np.asarray(assignment)
        if where.shape != (n,) or not np.issubdtype(where.dtype, np.integer):
            raise InputError(
                f"expected {n} integer replica ids, got shape {where.shape}",
                field="assignment",
            )
        if np.any((where < 0) | (where >= c)):
            raise InputError(f"expected replica ids in 0..{c - 1}", field="assignment")
        where = where.astype(np.int64)
    check_peaks(instance, profile)

    admitted = np.full(n, np.nan)
    first = np.full(n, np.nan)
    completion = np.full(n, np.nan)
    preemptions = np.zeros(n, dtype=np.int64)
    recomputed = np.zeros(n, dtype=np.int64)
    max_blocks = np.zeros(c, dtype=np.int64)
    max_tokens = np.zeros(c, dtype=np.int64)
    max_decode = np.zeros(c, dtype=np.int64)
    iterations, busy_s, kv_token_seconds = 0, 0.0, 0.0
    for k in range(c):
        # instance order is arrival order (ties by position): local ids follow it
        rows = np.flatnonzero(where == k).tolist()
        if not rows:
            continue
        replica = _Replica(rows, instance, profile, _make(spec, k, profile))
        replica.run()
        admitted[rows] = replica.admitted_s
        first[rows] = replica.first_token_s
        completion[rows] = replica.completion_s
        preemptions[rows] = replica.preemptions
        recomputed[rows] = replica.recomputed
        iterations += replica.iterations
        busy_s += replica.busy_s
        kv_token_seconds += replica.kv_token_seconds
        max_blocks[k] = replica.max_kv_blocks
        max_tokens[k] = replica.max_kv_tokens
        max_decode[k] = replica.max_decode
    return NaiveResult(
        replica=where,
        admitted_s=admitted,
        first_token_s=first,
        completion_s=completion,
        preemptions=preemptions,
        recomputed_tokens=recomputed,
        iterations=iterations,
        busy_s=busy_s,
        kv_token_seconds=kv_token_seconds,
        max_kv_blocks_seen=max_blocks,
        max_kv_tokens_seen=max_tokens,
        max_decode_steps=max_decode,
    )
