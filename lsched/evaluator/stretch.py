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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


def _envelope(a: np.ndarray, b: np.ndarray) -> list[tuple[float, float, float]]:
    """Segments ``(k_start, a, b)`` of ``max_p (a_p + b_p k)`` over integers k >= 0.

    Segment j holds from its ``k_start`` up to the next segment's ``k_start``; at an
    integer where two pieces tie either value is exact, so rounding the crossing up
    loses nothing.
    """
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
        # the piece that overtakes first; among ties, the steepest
        first = np.lexsort((-b[steeper], switch))[0]
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
        segs = _envelope(a, b)
        object.__setattr__(self, "_starts", np.array([s[0] for s in segs]))
        object.__setattr__(self, "_a", np.array([s[1] for s in segs]))
        object.__setattr__(self, "_b", np.array([s[2] for s in segs]))

    def _pieces(self, n: npt.ArrayLike) -> tuple[np.ndarray, ...]:
        """Per (n, segment): count, sum of k and sum of k^2 over k in seg, k < n."""
        n = np.asarray(n, dtype=np.float64)[..., np.newaxis]
        lo = self._starts  # type: ignore[attr-defined]
        hi = np.append(lo[1:], np.inf)
        u = np.minimum(hi, n)
        lo_b = np.minimum(lo, u)  # empty segment where lo >= n
        count = u - lo_b
        # sum_{k=l}^{u-1} k and k^2 as differences of closed forms at u and l
        s1 = (u * (u - 1) - lo_b * (lo_b - 1)) / 2
        s2 = ((u - 1) * u * (2 * u - 1) - (lo_b - 1) * lo_b * (2 * lo_b - 1)) / 6
        return count, s1, s2

    def elapsed_s(self, n: npt.ArrayLike) -> np.ndarray:
        """S(n): seconds taken by the first ``n`` iterations."""
        count, s1, _ = self._pieces(n)
        return (count * self._a + s1 * self._b).sum(axis=-1)  # type: ignore[attr-defined]

    def kv_token_seconds(self, n: int, kv0: float, kv_step: float) -> float:
        """sum_{k<n} (kv0 + kv_step * k) * dt_k."""
        count, s1, s2 = self._pieces(n)
        a, b = self._a, self._b  # type: ignore[attr-defined]
        total = kv0 * a * count + (kv0 * b + kv_step * a) * s1 + kv_step * b * s2
        return float(total.sum())

    def iterations_until(self, duration_s: float, limit: int) -> int:
        """Smallest n in ``1..limit`` with S(n) >= duration_s, or ``limit``."""
        lo, hi = 1, limit
        if self.elapsed_s(hi) < duration_s:
            return limit
        while lo < hi:
            mid = (lo + hi) // 2
            if self.elapsed_s(mid) >= duration_s:
                hi = mid
            else:
                lo = mid + 1
        return lo
