"""``nested-wait``: threshold batching for unknown output lengths (Nested WAIT).

R. Ao, G. Luo, D. Simchi-Levi, X. Wang, "Optimizing LLM Inference: Fluid-Guided
Online Scheduling with Memory Constraints", arXiv:2504.11320 (2025): Nested WAIT,
the paper's algorithm for output lengths that are *not* known at arrival. Neither
the paper's text nor the authors' simulator (github.com/Luoxiaogan/vidur_or) was
reachable when this was written; what is known of the method is its outline:
requests are processed in *nested segments*: every request enters segment 1 with
a length guess; one that outgrows its segment moves to the next segment, with a
larger length (and its own threshold); and a *safety buffer* of KV is kept free
so that requests outgrowing their guess do not cause evictions. The rule below is
this project's reading of that outline, built on :mod:`~lsched.policies.wait`
(WAIT with known lengths) with the known length replaced by the segment guess.

Segments
--------
``segments = "L1/L2/.../LK"`` are increasing output-token bounds. A request that
has emitted ``e`` tokens is in segment ``k(e) = 1 + #{j : L_j <= e}`` and its
length *guess* is the end of that segment, ``g(e) = min{L_j : L_j > e}``; past
``LK`` the guess keeps doubling (``2 LK, 4 LK, ...``). Its predicted remaining
output is ``r = g(e) - e >= 1``. Every request starts in segment 1 (``e = 0``,
guess ``L1``); one still running when it emits its ``g``-th token moves to the
next segment and gets the next guess. A preempted request waits again in the
segment of the tokens it has emitted. The policy never reads predicted or true
output lengths: the guesses come from the segment bounds alone.

The rule, at every iteration boundary
-------------------------------------
1. **Running requests** as :mod:`~lsched.policies.sjf` (chunked prefill by the
   token budget; on KV shortage recompute-preempt the request with the longest
   *guessed* remaining output, ties to the most recently admitted, and admit
   nothing in that step). Running requests always continue: moving to the next
   segment changes only a request's guess (pausing it until the next segment's
   threshold fills would keep its KV idle).
2. **Trigger, per segment** (WAIT's threshold rule, applied to each segment's
   queue of waiting requests). Segment ``k`` is *open* when at least ``n_k``
   requests wait in it (``thresholds``: one value for every segment, or one per
   segment, the last value for the segments past ``LK``), or when its oldest
   waiting request arrived ``max_wait_s`` ago (a flush; a preempted request, long
   arrived, reopens its segment at once). If no segment is open nothing is
   admitted and the policy asks to be woken when the oldest waiting request's
   wait reaches ``max_wait_s``.
3. **Admission**: from the open segments in ascending order, at most ``n_k``
   waiting requests of each, in arrival order, each with a first chunk
   ``min(s + e, budget left)``, while the sequence cap, the token budget, the next
   iteration's KV and the *guessed-length* KV check of :mod:`~lsched.policies.mc_sf`
   allow; the first that fails stops admission. The check plans with the capacity
   less the **safety buffer**: at every guessed completion of the batch the
   guessed KV must fit ``floor((1 - buffer) * kv_capacity_blocks)``. On an idle
   replica the first request is admitted even if it fails the check (as mc-sf).

With ``segments`` a single huge bound, ``buffer = 0`` and one threshold, the rule
is WAIT with every request guessed to be that long.

Holding: a decode-only batch that admits nothing is held when no segment is open
(it stays so until an arrival or the wake time, both events; the guesses of
running requests do not enter that decision) or admission is blocked (no waiting
request, the sequence cap reached, no budget left). A batch that failed only the
guessed KV check is not held. The policy keeps no state between calls.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np

from lsched.errors import InputError
from lsched.policies.base import ARRIVAL_TOLERANCE_S, Batch, IntArray, ReplicaView
from lsched.policies.mc_sf import FutureKv, admission_blocked, admit_in_order
from lsched.policies.sjf import Plan, shed, to_batch
from lsched.policies.wait import check_wait


def parse_ints(text: object, name: str) -> tuple[int, ...]:
    """``"a/b/c"`` (or an int, or a sequence of ints) as a tuple of ints >= 1."""
    if isinstance(text, bool):
        raise InputError(f"got {text!r}; expected integers >= 1", field=name)
    if isinstance(text, int):
        parts: list[object] = [text]
    elif isinstance(text, str):
        parts = [p.strip() for p in text.split("/")]
    elif isinstance(text, tuple | list):
        parts = list(text)
    else:
        raise InputError(
            f"got {text!r}; expected integers >= 1 separated by '/'", field=name
        )
    values: list[int] = []
    for part in parts:
        try:
            value = int(part)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            value = 0
        if isinstance(part, bool | float) or value < 1 or str(value) != str(part):
            raise InputError(
                f"got {text!r}; expected integers >= 1 separated by '/', "
                f"e.g. '128/512/2048'",
                field=name,
            )
        values.append(value)
    return tuple(values)


def check_fraction(value: object, name: str) -> None:
    """Raise InputError naming ``name`` unless ``0 <= value < 1``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"got {value!r}; expected a number", field=name)
    if not 0 <= value < 1:
        raise InputError(f"got {value}; expected 0 <= {name} < 1", field=name)


@dataclass(frozen=True)
class NestedWaitParams:
    """Parameters of :class:`NestedWait`.

    Attributes
    ----------
    segments
        Increasing segment bounds ``L1/L2/...`` in output tokens (a request's
        length guess is the end of its segment).
    thresholds
        ``n_k``: waiting requests that open segment ``k``'s admission and the most
        admitted from it per batch; one value for all segments or one per segment
        (``/``-separated).
    buffer
        Share of the KV capacity kept free by the guessed-length check, in [0, 1).
    max_wait_s
        Longest time, seconds, a waiting request waits for its segment's threshold.
    """

    segments: str = "64/256/1024/4096"
    thresholds: str = "4"
    buffer: float = 0.1
    max_wait_s: float = 1.0

    def __post_init__(self) -> None:
        bounds = parse_ints(self.segments, "segments")
        if any(b <= a for a, b in itertools.pairwise(bounds)):
            raise InputError(
                f"got {self.segments!r}; expected strictly increasing bounds",
                field="segments",
            )
        n = parse_ints(self.thresholds, "thresholds")
        if len(n) not in (1, len(bounds)):
            raise InputError(
                f"got {len(n)} thresholds for {len(bounds)} segments; expected 1 "
                f"or {len(bounds)}",
                field="thresholds",
            )
        check_fraction(self.buffer, "buffer")
        check_wait(self.max_wait_s)

    @property
    def bounds(self) -> tuple[int, ...]:
        return parse_ints(self.segments, "segments")

    @property
    def threshold_list(self) -> tuple[int, ...]:
        n = parse_ints(self.thresholds, "thresholds")
        return n * len(self.bounds) if len(n) == 1 else n


def segment_of(bounds: IntArray, emitted: IntArray) -> IntArray:
    """0-based segment of each emitted count: ``#{j : L_j <= e}``."""
    return np.searchsorted(bounds, emitted, side="right").astype(np.int64)


def guessed_remaining(bounds: IntArray, emitted: IntArray) -> IntArray:
    """``g(e) - e``: tokens to the end of the segment (doubling past the last)."""
    emitted = np.asarray(emitted, dtype=np.int64)
    k = segment_of(bounds, emitted)
    last = int(bounds[-1])
    inside = k < len(bounds)
    guess = np.where(inside, bounds[np.minimum(k, len(bounds) - 1)], last)
    for j in np.flatnonzero(~inside).tolist():
        g = last * 2  # past L_K: the smallest L_K * 2^m > e
        while g <= emitted[j]:
            g *= 2
        guess[j] = g
    return np.maximum(guess - emitted, 1)


class NestedWait:
    """Nested WAIT: per-segment thresholds and guessed lengths, a KV buffer."""

    name = "nested-wait"

    def __init__(self, params: NestedWaitParams | None = None) -> None:
        self.params = params or NestedWaitParams()
        self.bounds = np.array(self.params.bounds, dtype=np.int64)
        self.thresholds = self.params.threshold_list

    def _threshold(self, k: int) -> int:
        return self.thresholds[min(k, len(self.thresholds) - 1)]

    def decide(self, view: ReplicaView) -> Batch:
        key = guessed_remaining(self.bounds, view.emitted_tokens[view.running])
        plan, victims = shed(view, key)
        if victims:
            return to_batch(view, plan, [], [], victims, hold_ok=False)
        if admission_blocked(view, plan):
            return to_batch(view, plan, [], [], [], hold_ok=True)
        order, due = self._open(view)
        if not order:
            batch = to_batch(view, plan, [], [], [], hold_ok=True)
            return dataclasses.replace(batch, wake_at_s=due)
        ids, chunks = self._admit(view, plan, order)
        return to_batch(view, plan, ids, chunks, [], hold_ok=False)

    def _open(self, view: ReplicaView) -> tuple[list[int], float]:
        """Step 2: the candidates of the open segments in admission order, and
        the earliest wake time of the closed ones."""
        waiting = view.waiting
        seg = segment_of(self.bounds, view.emitted_tokens[waiting])
        wait_s = self.params.max_wait_s
        order: list[int] = []
        due = np.inf
        for k in np.unique(seg).tolist():
            members = waiting[seg == k]  # arrival order
            n_k = self._threshold(k)
            oldest = float(view.arrival_s[members].min()) + wait_s
            if len(members) >= n_k or view.now_s + ARRIVAL_TOLERANCE_S >= oldest:
                order.extend(members[:n_k].tolist())
            else:
                due = min(due, oldest)
        return order, float(due)

    def _admit(
        self, view: ReplicaView, plan: Plan, order: list[int]
    ) -> tuple[list[int], list[int]]:
        """Step 3: admit in ``order`` under the buffered guessed-length check."""
        kv = view.kv
        running = plan.running
        future = FutureKv(
            view.prompt_tokens[running] + view.emitted_tokens[running] - 1,
            guessed_remaining(self.bounds, view.emitted_tokens[running]),
            kv,
            kv.watermark_blocks(1 - self.params.buffer),
        )
        remaining = guessed_remaining(self.bounds, view.emitted_tokens[order])
        ids, chunks, _ = admit_in_order(view, plan, order, remaining, future)
        return ids, chunks
