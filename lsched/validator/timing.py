"""Iteration times of a log's runs from the cost model, and a pool's runs per
replica with the end of any iteration on demand."""

from __future__ import annotations

import numpy as np

from lsched.profile import DeploymentProfile
from lsched.validator.report import ARRIVAL_TOLERANCE_S, Features, FloatArray, IntArray

# Iterations expanded at once when timing runs (bounds memory on long logs).
_CHUNK_ITERATIONS = 1 << 20


def _phi(
    P: IntArray, Q: IntArray, D: IntArray, K0: IntArray, n: IntArray
) -> tuple[FloatArray, IntArray, IntArray]:
    """Every iteration of some runs: phi rows, the run of each row, and its k."""
    run = np.repeat(np.arange(len(n)), n)
    k = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    phi = np.empty((len(run), 6), dtype=np.float64)
    phi[:, 0] = 1.0
    phi[:, 1] = P[run]
    phi[:, 2] = Q[run]
    phi[:, 3] = D[run]
    phi[:, 4] = K0[run] + k * D[run]  # each decode step of the run adds a token
    phi[:, 5] = P[run] > 0
    return phi, run, k


def _run_times(
    profile: DeploymentProfile,
    P: IntArray,
    Q: IntArray,
    D: IntArray,
    K0: IntArray,
    n: IntArray,
) -> tuple[FloatArray, FloatArray]:
    """Per run: total time ``sum_k t_k`` and ``sum_k k * t_k`` over its iterations."""
    m = len(n)
    total = np.zeros(m, dtype=np.float64)
    weighted = np.zeros(m, dtype=np.float64)
    ends = np.cumsum(n)
    lo = 0
    while lo < m:
        done_before = ends[lo - 1] if lo else 0
        hi = int(np.searchsorted(ends, done_before + _CHUNK_ITERATIONS, side="right"))
        hi = max(hi, lo + 1)
        phi, run, k = _phi(P[lo:hi], Q[lo:hi], D[lo:hi], K0[lo:hi], n[lo:hi])
        t = profile.iteration_time_s(phi)
        total[lo:hi] = np.bincount(run, weights=t, minlength=hi - lo)
        weighted[lo:hi] = np.bincount(run, weights=k * t, minlength=hi - lo)
        lo = hi
    return total, weighted


def _iteration_end(
    profile: DeploymentProfile,
    start: float,
    end: float,
    n: int,
    k: int,
    features: tuple[int, int, int, int],
) -> float:
    """End of iteration ``k`` of a run (the logged end for its last iteration)."""
    if k >= n - 1:
        return end
    P, Q, D, K0 = features
    phi, _, _ = _phi(*(np.array([x], dtype=np.int64) for x in (P, Q, D, K0, k + 1)))
    return start + float(profile.iteration_time_s(phi).sum())


class _Timeline:
    """The runs of one pool's log, per replica in time order, with the end of any
    iteration inside a run on demand."""

    def __init__(
        self,
        profile: DeploymentProfile,
        replica: IntArray,
        start: FloatArray,
        end: FloatArray,
        n_it: IntArray,
        features: Features,
    ) -> None:
        self.profile = profile
        self.start, self.end, self.n_it = start, end, n_it
        self.features = features
        self.runs = {
            int(rep): np.flatnonzero(replica == rep) for rep in np.unique(replica)
        }

    def of(self, rep: int) -> IntArray:
        """Run positions of replica ``rep``, in time order."""
        return self.runs.get(rep, np.zeros(0, dtype=np.int64))

    def starts_at(self, rep: int, t: float) -> bool:
        """Whether a run of replica ``rep`` starts at ``t`` (within the arrival
        tolerance)."""
        starts = self.start[self.of(rep)]
        k = int(np.searchsorted(starts, t - ARRIVAL_TOLERANCE_S))
        return k < len(starts) and starts[k] <= t + ARRIVAL_TOLERANCE_S

    def boundary(self, rep: int, t: float) -> float:
        """The first iteration boundary of replica ``rep`` at or after ``t``: the
        end of the iteration in flight at ``t`` (one that started more than the
        arrival tolerance before it), else ``t`` itself (the replica is at a
        boundary or idle)."""
        index = self.of(rep)
        k = int(np.searchsorted(self.start[index] + ARRIVAL_TOLERANCE_S, t)) - 1
        if k < 0:
            return t
        r = int(index[k])
        if self.end[r] + ARRIVAL_TOLERANCE_S < t:
            return t
        if self.n_it[r] == 1:
            return float(self.end[r])
        P, Q, D, K0 = (f[r : r + 1] for f in self.features)
        phi, _, _ = _phi(P, Q, D, K0, self.n_it[r : r + 1])
        ends = self.start[r] + np.cumsum(self.profile.iteration_time_s(phi))
        ends[-1] = self.end[r]
        return float(ends[np.searchsorted(ends + ARRIVAL_TOLERANCE_S, t)])
