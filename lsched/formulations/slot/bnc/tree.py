"""Nodes, the best-first queue and the branching rule of the branch-and-cut.

A node is the set of columns it allows (a packed boolean mask over the LP's
columns) and the bound its parent's LP proved for it. Branching on ``E_j <= t``
splits one request's allowed columns at completion ``t``.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from itertools import count

import numpy as np
import numpy.typing as npt

from lsched.formulations.bounds.clique import ColumnIndex, Columns, ConflictRule

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: A request's LP completion is split when both sides hold more than this.
FRACTIONAL_TOL = 1e-6


@dataclass(frozen=True)
class Node:
    """An open node: the bound its parent proved, its depth and its columns."""

    bound: float
    depth: int
    order: int
    mask: npt.NDArray[np.uint8]
    size: int

    def allowed(self) -> BoolArray:
        """The columns this node allows."""
        return np.unpackbits(self.mask, count=self.size).astype(bool)


class Queue:
    """Open nodes, smallest bound first (best-first)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, Node]] = []
        self._order = count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, allowed: BoolArray, bound: float, depth: int) -> None:
        """Open a node allowing ``allowed``, with its parent's ``bound``."""
        node = Node(bound, depth, next(self._order), np.packbits(allowed), len(allowed))
        heapq.heappush(self._heap, (bound, -depth, node.order, node))

    def pop(self) -> Node:
        """The open node of smallest bound (deepest on ties)."""
        return heapq.heappop(self._heap)[3]

    def bound(self) -> float:
        """The smallest bound of the open nodes (``inf`` if none)."""
        return self._heap[0][0] if self._heap else math.inf


def split(cols: Columns, x: FloatArray) -> tuple[int, int] | None:
    """The branching ``(j, t)``: the request whose LP completion is spread the
    most (mean absolute deviation from its mean ``m_j``), split at the last
    column of its support at or below ``m_j``; ``None`` if every request
    completes at one column (integral)."""
    n = int(cols.request.max()) + 1
    c = cols.completion.astype(np.float64)
    mean = np.bincount(cols.request, weights=x * c, minlength=n)
    spread = np.bincount(
        cols.request, weights=x * np.abs(c - mean[cols.request]), minlength=n
    )
    j = int(np.argmax(spread))
    if spread[j] <= FRACTIONAL_TOL:
        return None
    mine = (cols.request == j) & (x > FRACTIONAL_TOL)
    below = mine & (c <= mean[j] + FRACTIONAL_TOL)
    return j, int(cols.completion[below].max())


def children(
    cols: Columns, allowed: BoolArray, j: int, t: int
) -> tuple[BoolArray, BoolArray]:
    """``allowed`` with ``E_j <= t`` and with ``E_j >= t + 1``."""
    mine = cols.request == j
    early = allowed & ~(mine & (cols.completion > t))
    late = allowed & ~(mine & (cols.completion <= t))
    return early, late


def propagate(
    rule: ConflictRule, index: ColumnIndex, cols: Columns, allowed: BoolArray, j: int
) -> BoolArray:
    """``allowed`` less the other requests' columns that conflict with every
    allowed column of request ``j`` (``j`` completes at one of them, so no
    schedule of the node uses such a column)."""
    mine = np.flatnonzero(allowed & (cols.request == j))
    if not len(mine):
        return allowed
    r, c = cols.request, cols.completion
    near = index.near(j, int(c[mine[0]]))
    near = near[allowed[near] & (r[near] != j)]
    for q in mine:
        near = near[rule.conflicts(r[near], c[near], r[q], c[q])]
        if not len(near):
            return allowed
    out = allowed.copy()
    out[near] = False
    return out


def completions(cols: Columns, x: FloatArray, n: int) -> IntArray:
    """Each request's completion in an integral LP solution ``x``."""
    end = np.zeros(n, dtype=np.int64)
    on = x > 0.5
    end[cols.request[on]] = cols.completion[on]
    return end
