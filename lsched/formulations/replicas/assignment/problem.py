"""The assignment problem's data: loads, replicas and the integer loads the
solvers see (:class:`AssignmentProblem`), its LPT heuristic (:func:`lpt`) and its
lower bound (:func:`assignment_lower_bound`).

The model, the symmetry breaking and the integer grid are described in
:mod:`lsched.formulations.replicas.assignment`.

Lower bound (:func:`assignment_lower_bound`)
--------------------------------------------
With ``l_(1) >= l_(2) >= ...`` the loads in decreasing order::

    T* >= max( sum_i l_i / C,   l_(1),
               max_{k >= 1, kC + 1 <= n}  l_(kC-k+1) + ... + l_(kC+1) )

The last family is the pigeonhole bound: of the ``kC + 1`` largest requests some
replica gets ``k + 1``, which weigh at least the ``k + 1`` smallest of them; ``k = 1``
is the classic ``l_(C) + l_(C+1)`` bound behind LPT's 4/3 guarantee. For integer
loads the total bound is rounded up.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from lsched.checks import check_int
from lsched.errors import InputError
from lsched.formulations.replicas.results import read_only

__all__ = [
    "DEFAULT_LOAD_STEPS",
    "AssignmentProblem",
    "assignment_lower_bound",
    "lpt",
    "rank_order",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: Grid steps of the largest load when non-integer loads are rounded for the solvers.
DEFAULT_LOAD_STEPS = 1000
#: Integer loads are used as they are while their total stays below this (exact
#: in float64 and far inside CP-SAT's int64 range).
_EXACT_TOTAL = 2**50


def _check_loads(load_s: npt.ArrayLike, replicas: int) -> tuple[FloatArray, int]:
    """The loads as float64 and ``replicas``, checked (non-empty, finite, ``>= 0``;
    ``C >= 1``)."""
    load = np.asarray(load_s, dtype=np.float64)
    if load.ndim != 1 or len(load) == 0:
        raise InputError("expected a non-empty 1-D array of loads", field="load")
    if not np.all(np.isfinite(load)) or np.any(load < 0):
        i = int(np.flatnonzero(~np.isfinite(load) | (load < 0))[0])
        raise InputError(
            f"request {i}: got {load[i]}; expected a finite load >= 0", field="load"
        )
    return load, check_int(replicas, "replicas", 1)


# -- heuristic and bound --------------------------------------------------------------


def rank_order(load: FloatArray) -> IntArray:
    """Requests by decreasing load, ties by position (LPT order)."""
    return np.lexsort((np.arange(len(load)), -load)).astype(np.int64)


def lpt(load_s: npt.ArrayLike, replicas: int) -> IntArray:
    """Longest processing time first: each request, largest first, to the replica
    with the least load so far (ties to the lowest id).

    Parameters
    ----------
    load_s
        Load per request (``>= 0``).
    replicas
        ``C >= 1``.

    Returns
    -------
    numpy.ndarray
        Replica id per request (int64). Meets the rank symmetry breaking of
        :mod:`lsched.formulations.replicas.assignment`.
    """
    load, replicas = _check_loads(load_s, replicas)
    heap = [(0.0, c) for c in range(replicas)]
    where = np.zeros(len(load), dtype=np.int64)
    for i in rank_order(load).tolist():
        total, c = heapq.heappop(heap)
        where[i] = c
        heapq.heappush(heap, (total + float(load[i]), c))
    return where


def assignment_lower_bound(load_s: npt.ArrayLike, replicas: int) -> float:
    """A lower bound on the minimum largest replica load (module docstring).

    ``max(sum / C, max load, max_k (sum of the k + 1 smallest of the kC + 1
    largest loads))``; the first term rounded up when every load is an integer.
    ``load_s`` and ``replicas`` as in :func:`lpt`.
    """
    load, replicas = _check_loads(load_s, replicas)
    n = len(load)
    total = float(load.sum())
    average = total / replicas
    if np.all(load == np.round(load)) and total < _EXACT_TOTAL:
        average = float(math.ceil(average - 1e-9))
    ordered = np.sort(load)[::-1]
    prefix = np.concatenate([[0.0], np.cumsum(ordered)])
    k = np.arange(1, (n - 1) // replicas + 1)
    pigeonhole = prefix[k * replicas + 1] - prefix[k * replicas - k]
    return float(max(average, ordered[0], pigeonhole.max(initial=0.0)))


def _integer_loads(load: FloatArray, steps: int) -> tuple[IntArray, float, float]:
    """Integer loads ``w``, grid ``q`` and ``E+ = sum max(0, q w - l)``."""
    top = float(load.max())
    if top == 0.0:
        return np.zeros(len(load), dtype=np.int64), 1.0, 0.0
    if np.all(load == np.round(load)) and float(load.sum()) < _EXACT_TOTAL:
        return load.astype(np.int64), 1.0, 0.0
    q = top / steps
    w = np.rint(load / q).astype(np.int64)
    excess = float(np.maximum(q * w - load, 0.0).sum())
    return w, q, excess


@dataclass(frozen=True, eq=False)
class AssignmentProblem:
    """Loads to spread over ``C`` identical replicas, and the integer loads that
    the solvers balance in their place (:mod:`lsched.formulations.replicas.assignment`).

    Attributes
    ----------
    load_s
        Load ``l_i >= 0`` per request (float64, read-only), seconds for profile
        loads.
    replicas
        ``C >= 1``.
    load_steps
        ``G``: grid steps of the largest load when the loads are not integers.
    load
        The solvers' integer loads ``w_i`` (int64, read-only; derived).
    load_step
        The grid ``q`` (1 when the loads are used as they are; derived).
    excess
        ``E+ = sum_i max(0, q w_i - l_i)`` (derived).
    rank
        Each request's rank in LPT order, 0 for the largest load (derived).
    lpt_assignment
        LPT's assignment (:func:`lpt`; derived): the warm start.

    Raises
    ------
    InputError
        On an empty, negative or non-finite load, or a bad ``replicas`` or
        ``load_steps``.
    """

    load_s: FloatArray
    replicas: int
    load_steps: int = DEFAULT_LOAD_STEPS
    load: IntArray = field(init=False)
    load_step: float = field(init=False)
    excess: float = field(init=False)
    rank: IntArray = field(init=False)
    lpt_assignment: IntArray = field(init=False)

    def __post_init__(self) -> None:
        load_s, replicas = _check_loads(self.load_s, self.replicas)
        steps = check_int(self.load_steps, "load_steps", 1)
        w, q, excess = _integer_loads(load_s, steps)
        rank = np.empty(len(w), dtype=np.int64)
        rank[rank_order(load_s)] = np.arange(len(w))
        derived = {
            "load_s": read_only(load_s),
            "replicas": replicas,
            "load_steps": steps,
            "load": read_only(w),
            "load_step": q,
            "excess": excess,
            "rank": read_only(rank),
            "lpt_assignment": read_only(lpt(load_s, replicas)),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        """Number of requests."""
        return len(self.load_s)

    @property
    def exact(self) -> bool:
        """Whether the integer loads are the loads (no rounding)."""
        q, w = self.load_step, self.load
        return self.excess == 0.0 and bool(np.all(q * w == self.load_s))

    @property
    def lower(self) -> int:
        """:func:`assignment_lower_bound` of the integer loads."""
        return math.ceil(assignment_lower_bound(self.load, self.replicas) - 1e-9)

    def allowed(self) -> list[list[int]]:
        """Replicas each request may use: ``0..min(rank, C-1)`` (symmetry breaking)."""
        last = self.replicas - 1
        return [list(range(min(int(r), last) + 1)) for r in self.rank]

    def replica_loads(self, where: IntArray) -> IntArray:
        """Integer load of every replica under the assignment ``where``."""
        loads = np.bincount(where, weights=self.load, minlength=self.replicas)
        return loads.astype(np.int64)

    def integer_objective(self, where: IntArray) -> int:
        """The solvers' objective: the largest replica's integer load."""
        return int(self.replica_loads(where).max())

    def replica_loads_s(self, where: IntArray) -> FloatArray:
        """True load of every replica under the assignment ``where``."""
        return np.bincount(where, weights=self.load_s, minlength=self.replicas)
