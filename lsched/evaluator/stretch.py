"""Closed-form sums over a held decode stretch.

In a decode-only batch of ``D`` requests that repeats, iteration ``k = 0, 1, ...``
has features ``phi_k = [1, 0, 0, D, K_0 + k D, 0]``: the KV each step reads grows by
one token per request per iteration. Within one regime the iteration time is a max
of affine pieces (overhead folded in, :attr:`IterationTime.effective_regimes`), so

    dt_k = max_p (a_p + b_p k),   a_p = w_p . phi_0,   b_p = w_p[K] * D,

a convex piecewise-linear function of ``k``. Its upper envelope over the integers
``k >= 0`` is a list of segments ``[k_lo, k_hi)`` on which one piece is the max, so

    S(n)  = sum_{k<n} dt_k                       (elapsed time of n iterations)
    KV(n) = sum_{k<n} (c_0 + c_1 k) dt_k          (KV token-seconds)

are sums of arithmetic and quadratic series per segment, O(pieces) each however
long the stretch. :class:`DecodeStretch` evaluates them for arrays of ``n`` and
finds the first boundary at or after a given time by bisection on ``S``.
Integers up to 2^53 are exact in float64, so the sums are exact in k for any
stretch shorter than about 10^5 iterations and accurate to rounding beyond.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _envelope(a: np.ndarray, b: np.ndarray) -> list[tuple[float, float, float]]:
    """Segments ``(k_start, a, b)`` of ``max_p (a_p + b_p k)`` over integers k >= 0.

    Segment j holds from its ``k_start`` up to the next segment's ``k_start``; at an
    integer where two pieces tie either value is exact, so rounding the crossing up
    loses nothing.
    """
    if len(a) == 1:
        return [(0.0, float(a[0]), float(b[0]))]
    # start with the max at k = 0 (ties: the steeper piece stays max longer)
    order = np.lexsort((b, a))
    p = int(order[-1])
    segments = [(0.0, float(a[p]), float(b[p]))]
    start = 0.0
    while True:
        steeper = np.flatnonzero(b > b[p])
        if len(steeper) == 0:
            return segments
        with np.errstate(over="ignore"):  # a barely steeper piece crosses at +inf
            cross = (a[p] - a[steeper]) / (b[steeper] - b[p])
        switch = np.maximum(np.ceil(cross), start)
        # the piece that overtakes first; among ties, the highest there, then the
        # steepest
        height = a[steeper] + b[steeper] * np.where(np.isinf(switch), 0, switch)
        first = np.lexsort((-b[steeper], -height, switch))[0]
        p, start = int(steeper[first]), float(switch[first])
        if start == segments[-1][0]:
            segments[-1] = (start, float(a[p]), float(b[p]))
        else:
            segments.append((start, float(a[p]), float(b[p])))


@dataclass(frozen=True)
class DecodeStretch:
    """Iteration times ``dt_k`` of a repeated decode batch, summed in closed form.

    Parameters
    ----------
    weights
        Effective piece weights of the stretch's regime, shape ``(pieces, 6)``.
    decode_steps
        D, requests in the batch.
    kv_read_tokens
        K of iteration 0 (each step counting its own new token).
    """

    weights: np.ndarray
    decode_steps: int
    kv_read_tokens: int

    def __post_init__(self) -> None:
        phi0 = np.array([1.0, 0.0, 0.0, self.decode_steps, self.kv_read_tokens, 0.0])
        a = self.weights @ phi0
        b = self.weights[:, 4] * self.decode_steps
        # a handful of segments: plain floats beat NumPy's per-call overhead here
        object.__setattr__(self, "_segments", _envelope(a, b))

    def _sums(self, n: int) -> list[tuple[float, float, float, float, float]]:
        """Per segment (a, b, count, sum k, sum k^2) over its k with k < n."""
        out = []
        segments = self._segments  # type: ignore[attr-defined]
        for j, (lo, a, b) in enumerate(segments):
            hi = segments[j + 1][0] if j + 1 < len(segments) else math.inf
            u = min(hi, n)
            if u <= lo:
                break
            # sum_{k=lo}^{u-1} k and k^2 as differences of closed forms
            s1 = (u * (u - 1) - lo * (lo - 1)) / 2
            s2 = ((u - 1) * u * (2 * u - 1) - (lo - 1) * lo * (2 * lo - 1)) / 6
            out.append((a, b, u - lo, s1, s2))
        return out

    def elapsed_s(self, n: int) -> float:
        """S(n): seconds taken by the first ``n`` iterations."""
        return sum(a * count + b * s1 for a, b, count, s1, _ in self._sums(n))

    def kv_token_seconds(self, n: int, kv0: float, kv_step: float) -> float:
        """sum_{k<n} (kv0 + kv_step * k) * dt_k."""
        return sum(
            kv0 * a * count + (kv0 * b + kv_step * a) * s1 + kv_step * b * s2
            for a, b, count, s1, s2 in self._sums(n)
        )

    def iterations_until(self, duration_s: float, limit: int) -> int:
        """Smallest n in ``1..limit`` with S(n) >= duration_s, or ``limit``."""
        if self.elapsed_s(limit) < duration_s:
            return limit
        segments = self._segments  # type: ignore[attr-defined]
        if len(segments) == 1:
            # one affine piece: S(n) = a n + b n (n - 1) / 2; start from the root
            # of that quadratic and step over any rounding (S is increasing)
            _, a, b = segments[0]
            c = a - b / 2
            root = (
                duration_s / a
                if b == 0
                else (-c + math.sqrt(c * c + 2 * b * duration_s)) / b
            )
            n = min(max(math.ceil(root), 1), limit)
            while n > 1 and self.elapsed_s(n - 1) >= duration_s:
                n -= 1
            while self.elapsed_s(n) < duration_s:
                n += 1
            return n
        lo, hi = 1, limit
        while lo < hi:
            mid = (lo + hi) // 2
            if self.elapsed_s(mid) >= duration_s:
                hi = mid
            else:
                lo = mid + 1
        return lo
