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
long the stretch. :class:`DecodeStretch` evaluates them and finds the first
boundary at or after a given time by bisection on ``S``. Integers up to 2^53 are
exact in float64, so the sums are exact in k for any stretch shorter than about
10^5 iterations and accurate to rounding beyond.

Everything here is plain Python floats: a stretch has a handful of pieces, and the
engine builds one per held decision, where NumPy's per-call overhead would cost
more than the arithmetic. ``a_p`` is summed in feature order, as the engine times
a single iteration, so a one-iteration stretch takes exactly that iteration's time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

#: Columns of phi that a decode-only batch can make non-zero: const, D, K.
_CONST, _D, _K = 0, 3, 4


def decode_rows(weights: npt.ArrayLike) -> tuple[tuple[float, float, float], ...]:
    """Per piece, its weights on (const, D, K) as floats: all a stretch reads."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1, 6)
    return tuple((float(r[_CONST]), float(r[_D]), float(r[_K])) for r in w)


def _envelope(
    a: Sequence[float], b: Sequence[float]
) -> list[tuple[float, float, float]]:
    """Segments ``(k_start, a, b)`` of ``max_p (a_p + b_p k)`` over integers k >= 0.

    Segment j holds from its ``k_start`` up to the next segment's ``k_start``; at an
    integer where two pieces tie either value is exact, so rounding the crossing up
    loses nothing.
    """
    if len(a) == 1:
        return [(0.0, a[0], b[0])]
    # start with the max at k = 0 (ties: the steeper piece stays max longer, then
    # the later piece)
    p = max(range(len(a)), key=lambda i: (a[i], b[i], i))
    segments = [(0.0, a[p], b[p])]
    start = 0.0
    while True:
        best: tuple[float, float, float, int] | None = None
        for i in range(len(a)):
            if not b[i] > b[p]:
                continue
            cross = (a[p] - a[i]) / (b[i] - b[p])  # +-inf for a barely steeper piece
            if cross == math.inf:
                switch = math.inf
            elif cross == -math.inf:
                switch = start
            else:
                switch = max(float(math.ceil(cross)), start)
            # the piece that overtakes first; among ties, the highest there, then
            # the steepest, then the first
            height = a[i] + b[i] * (0.0 if switch == math.inf else switch)
            key = (switch, -height, -b[i], i)
            if best is None or key < best:
                best = key
        if best is None:
            return segments
        p, start = best[3], best[0]
        if start == segments[-1][0]:
            segments[-1] = (start, a[p], b[p])
        else:
            segments.append((start, a[p], b[p]))


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

    __slots__ = ("_segments", "_single", "decode_steps", "kv_read_tokens", "weights")

    def __init__(
        self, weights: npt.ArrayLike, decode_steps: int, kv_read_tokens: int
    ) -> None:
        self.weights = weights
        self._build(decode_rows(weights), decode_steps, kv_read_tokens)

    @classmethod
    def from_rows(
        cls,
        rows: Sequence[tuple[float, float, float]],
        decode_steps: int,
        kv_read_tokens: int,
    ) -> DecodeStretch:
        """The same from :func:`decode_rows` of the weights (the engine's path)."""
        self = cls.__new__(cls)
        self.weights = rows
        self._build(rows, decode_steps, kv_read_tokens)
        return self

    def _build(
        self, rows: Sequence[tuple[float, float, float]], d: int, k0: int
    ) -> None:
        self.decode_steps = d
        self.kv_read_tokens = k0
        if len(rows) == 1:
            w0, wd, wk = rows[0]
            a, b = w0 + wd * d + wk * k0, wk * d
            self._segments = [(0.0, a, b)]
            self._single = (a, b)
            return
        a_list = [w0 + wd * d + wk * k0 for w0, wd, wk in rows]
        b_list = [wk * d for _, _, wk in rows]
        self._segments = _envelope(a_list, b_list)
        self._single = (
            (self._segments[0][1], self._segments[0][2])
            if len(self._segments) == 1
            else None
        )

    def _sums(self, n: int) -> list[tuple[float, float, float, float, float]]:
        """Per segment (a, b, count, sum k, sum k^2) over its k with k < n."""
        out = []
        segments = self._segments
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
        single = self._single
        if single is not None:
            # one segment from k = 0: the general sum below with lo = 0
            if n <= 0:
                return 0.0
            return single[0] * float(n) + single[1] * (float(n * (n - 1)) / 2)
        return sum(a * count + b * s1 for a, b, count, s1, _ in self._sums(n))

    def kv_token_seconds(self, n: int, kv0: float, kv_step: float) -> float:
        """sum_{k<n} (kv0 + kv_step * k) * dt_k."""
        single = self._single
        if single is not None:
            if n <= 0:
                return 0.0
            a, b = single
            s1 = float(n * (n - 1)) / 2
            s2 = float((n - 1) * n * (2 * n - 1)) / 6
            return kv0 * a * float(n) + (kv0 * b + kv_step * a) * s1 + kv_step * b * s2
        return sum(
            kv0 * a * count + (kv0 * b + kv_step * a) * s1 + kv_step * b * s2
            for a, b, count, s1, s2 in self._sums(n)
        )

    def iterations_until(self, duration_s: float, limit: int) -> int:
        """Smallest n in ``1..limit`` with S(n) >= duration_s, or ``limit``."""
        elapsed = self.elapsed_s
        if elapsed(limit) < duration_s:
            return limit
        single = self._single
        if single is not None:
            # one affine piece: S(n) = a n + b n (n - 1) / 2; start from the root
            # of that quadratic and step over any rounding (S is increasing)
            a, b = single
            c = a - b / 2
            root = (
                duration_s / a
                if b == 0
                else (-c + math.sqrt(c * c + 2 * b * duration_s)) / b
            )
            n = min(max(math.ceil(root), 1), limit)
            while n > 1 and elapsed(n - 1) >= duration_s:
                n -= 1
            while elapsed(n) < duration_s:
                n += 1
            return n
        lo, hi = 1, limit
        while lo < hi:
            mid = (lo + hi) // 2
            if elapsed(mid) >= duration_s:
                hi = mid
            else:
                lo = mid + 1
        return lo
