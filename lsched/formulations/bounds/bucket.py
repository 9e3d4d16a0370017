"""The time-bucketed LP: a bound on total latency in seconds that charges decode tails.

The closed forms of :mod:`lsched.formulations.bounds.work` complete a request when
its *work* is done, so a decode tail of ``o_i - 1`` steps costs them a millisecond
per step, while each step really needs an iteration of its own (0.85 s when the
iterations are full). This LP cuts the horizon into buckets of ``Delta`` seconds
and, per bucket, counts the iterations ``n_b`` it holds: a request decodes at most
once per iteration, and every iteration pays the constant ``u_0``.

Scope
-----
Schedules of **one colocated replica** (no prefix cache, no host tier, no
migration, no disaggregation) with chunked prefill and **recompute**
preemption: every schedule the evaluator runs there. A prefix cache lets a
request skip part of its prefill, and a host tier or migration moves KV at a
cost this LP does not state; they need their own argument. Several replicas are
not covered (a request decodes once per iteration *of its replica*, and the LP
does not know the replicas' iteration counts apart): :func:`bucket_lp` refuses
them.

The LP
------
Buckets ``b = 0 .. B - 1``, bucket ``b`` is ``(e_b - Delta, e_b]`` with ``e_b =
t_0 + (b + 1) Delta`` and ``t_0 = min_i a_i``. Request ``i`` has variables in the
buckets ``k_i .. l_i`` of its *window* (``k_i`` the bucket of ``a_i``; ``l_i``
the last bucket before its window end, by default the horizon):

* ``F_ib`` in ``[0, 1]``: fraction of its prompt prefilled by ``e_b``;
* ``D_ib`` in ``[0, o_i - 1]``: decode steps done by ``e_b``;
* ``A_ib`` in ``[0, s_i (s_i + 1) / 2]``: prefill attention ``Q`` spent by ``e_b``;
* per bucket ``n_b >= 0``: iterations in the bucket;

all three nondecreasing in ``b`` (0 before ``k_i``). Increments ``dX_ib = X_ib -
X_i,b-1``. Constraints, for every request and bucket of its window:

1. ``D_ib <= (o_i - 1) F_ib``;
2. ``dD_ib <= n_b`` (one decode step per iteration);
3. ``A_ib >= h_i'(g) F_ib + h_i(g) - g h_i'(g)`` for ``g`` in ``{1/2, 1}``, the
   tangents of ``h_i(F) = (s_i F)^2 / 2 + s_i F / 2``;

and per bucket, with ``P_b = sum_i s_i dF_ib``, ``D_b = sum_i dD_ib``:

4. time, for each linear under-estimator ``u >= 0`` of the iteration time
   (:func:`~lsched.formulations.bounds.work.under_estimators`):
   ``u_0 n_b + u_P P_b + u_Q sum_i dA_ib + sum_i (u_D + u_K (s_i + 1)) dD_ib
   + u_H P_b / B <= Delta``;
5. token budget ``P_b + D_b <= B n_b``; sequences ``sum_i (dF_ib + dD_ib) <= N
   n_b``; KV ``sum_i (s_i dF_ib / beta + ceil((s_i + 1) / beta) dD_ib) <= M
   n_b`` (``beta`` tokens per block, ``M`` blocks).

The completion credit is ``Y_ib = D_ib / (o_i - 1)`` (``F_ib`` if ``o_i = 1``):
the issue's ``Y <= F, (o - 1) Y <= D`` with ``Y`` as large as they allow, as
``D <= (o - 1) F`` makes ``Y <= F`` redundant. The bound is

    L_LP = min  sum_i sum_{b = k_i}^{l_i} len_ib (1 - Y_ib),
    len_ib = e_b - max(a_i, e_b - Delta)   (Delta but in the arrival bucket).

Validity
--------
Take any schedule of the scope and split every iteration that straddles a bucket
boundary pro rata: a fraction ``theta`` of its duration lies in bucket ``b``, and
``b`` receives ``theta`` of the iteration and of each of its members (prefill
chunks, decode steps). Let ``n_b`` be the iterations so counted (idle time counts
nothing), ``D_ib`` the decode steps of ``i`` by ``e_b``, ``F_ib`` the *furthest
prompt position* ``i`` has held by ``e_b`` (a chunk counting its new positions
pro rata) over ``s_i``, and ``A_ib`` the attention ``c (x + c)`` of its chunks by
``e_b``, capped at ``s_i (s_i + 1) / 2``. Recompute re-prefills positions already
reached, which moves neither ``F`` nor ``D`` and only adds chunks and time; the
three are nondecreasing and in their boxes, and the iteration counts lie in
``[0, Delta / tau]`` with ``tau`` the least iteration (one member: a decode step
reading one KV token or a one-token chunk).

1. A decode step of ``i`` starts after the iteration that completed its prefill,
   so ``D_ib > 0`` only if ``F_ib = 1``.
2. An iteration holds at most one decode step of ``i``: pro rata,
   ``dD_ib <= n_b``.
3. Position ``p`` reached for the first time is in a chunk with ``x + c >= p``,
   and ``c (x + c)`` is at least the sum of its positions, so the attention by a
   furthest position ``X`` is at least ``sum_{p <= X} p = h_i(X / s_i)``. Pro
   rata, a fraction ``theta`` of a chunk adds ``theta`` times the sum over its
   positions, at least the rise of the convex ``h`` over the first ``theta`` of
   them (``theta (1 - theta) c^2 / 2`` to spare); capping at ``h_i(1)`` keeps
   ``A >= h_i(F)`` and only lowers the increments; the tangents lie below ``h``.
4. Every iteration lasts at least ``u . phi`` (``phi = [1, P, Q, D, K, H]``,
   ``u >= 0``), and the pro-rata sum over bucket ``b`` of the iterations' times
   is at most ``Delta``. The LP's quantities are below the schedule's: ``s_i
   dF_ib`` counts new prompt positions only (``<= P``), ``dA_ib <= Q``, a decode
   step of ``i`` reads ``s_i + j - 1 >= s_i + 1`` tokens (``j >= 2``), and an
   iteration with prefill has ``H = 1 >= P / B``.
5. Per iteration ``P + D <= B``, members ``<= N`` (a chunk of ``i`` carries at
   most ``s_i`` new positions: ``dF <= `` its chunks), and the KV of its members
   ``<= M`` blocks (a chunk holds ``ceil((x + c) / beta) >= c_new / beta``
   blocks, the step emitting ``j`` holds ``ceil((s_i + j - 1) / beta)``);
   summing pro rata gives the rows.

With ``Y_ib = 1`` if ``C_i <= e_b``: the completing iteration ends by ``e_b``,
so all ``o_i - 1`` decode steps (or the prefill, if ``o_i = 1``) are counted, and
``Y_ib <= D_ib / (o_i - 1)``. Since ``C_i > t`` for every ``t < C_i``,

    C_i - a_i >= sum_{b >= k_i} len_ib 1[C_i > e_b]
              >= sum_{b=k_i}^{l_i} len_ib (1 - Y_ib),

losing less than ``Delta`` per request (the part of the completion bucket before
``C_i``). No request completes before ``a_i + q_i``, its critical path
(:func:`~lsched.formulations.bounds.work.request_figures`: its prefill and
decode steps each alone), so the credit of the buckets ending before it is
dropped (``Y_ib = 0`` there). Requests and buckets outside a window drop
constraints and terms that are nonnegative, so any windows give a valid bound;
short windows only weaken it (the LP may leave a request unfinished at its
window's end).

Threshold and max-of-pieces profiles
------------------------------------
Time row 4 is stated once per under-estimator ``u``. Within a regime the time is a
max of pieces ``w_p . phi >= sum_p theta_p w_p . phi``; across regimes ``min_r``
of one such mixture per regime is below every regime; negative weights move onto
a feature never smaller (``H <= 1``, ``D <= K``, ``P <= Q``):
:func:`~lsched.formulations.bounds.work.under_estimators` gives these, each a
valid ``u >= 0``. Since ``sum_it max(.) >= max(sum_it .)``, one row per ``u`` is
valid, and several rows together state their max.

A certified value, whatever HiGHS returns
-----------------------------------------
Every column is boxed (above). For any row duals ``y <= 0`` (rows ``A x <= U``),
``c x >= y U + sum_j min(r_j l_j, r_j u_j)`` with ``r = c - A^T y``, for every
feasible ``x``. The value returned is this Lagrangian bound at HiGHS's duals
(clipped to ``y <= 0``), not HiGHS's objective: it is a valid bound even when
the duals are inexact (an interior point run without crossover, a time limit),
and equals the LP's optimum when they are optimal.

Size
----
Three columns per request-bucket pair of the windows (plus one per bucket) and
seven rows per pair (plus ``4 + `` under-estimators per bucket). The default
window (the whole horizon) suits tens of requests; a trace needs windows (a few
times each request's latency in a good schedule) and a ``Delta`` of seconds.
HiGHS's simplex took 71 s for 150 requests of the Azure code trace at ``Delta =
1`` s (26,017 columns) and 588 s for 300 (67,554): too slow for the whole trace
(``benchmarks/scale/README.md``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import highspy
import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from lsched.checks import check_number, check_time_limit
from lsched.errors import InputError
from lsched.formulations.bounds.work import request_figures, under_estimators
from lsched.formulations.solvers import highs as highs_run
from lsched.instance import Instance
from lsched.profile import FEATURES, DeploymentProfile, batch_features

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_CONST, _P, _Q, _D, _K, _H = range(len(FEATURES))
#: Tangent points ``g`` of the attention under-estimate (constraint 3).
TANGENTS = (0.5, 1.0)


@dataclass(frozen=True)
class BucketBound:
    """What :func:`bucket_lp` found.

    Attributes
    ----------
    value
        A lower bound on ``sum_i (C_i - a_i)`` in seconds; ``-inf`` when HiGHS
        gave no duals in time.
    delta_s
        Bucket length.
    buckets
        Number of buckets.
    size
        ``variables``, ``constraints``, ``nonzeros`` of the LP.
    model_status
        HiGHS's status text.
    runtime_s
        Wall-clock seconds, build included.
    """

    value: float
    delta_s: float
    buckets: int
    size: dict[str, int]
    model_status: str
    runtime_s: float


@dataclass(frozen=True)
class _Grid:
    """Request-bucket pairs ("slots") of the windows, in request order."""

    request: IntArray  # per slot
    bucket: IntArray
    first: npt.NDArray[np.bool_]  # the request's first bucket
    last: npt.NDArray[np.bool_]  # the request's last bucket
    length_s: FloatArray  # len_ib
    end_s: FloatArray  # e_b
    buckets: int


def _grid(a: FloatArray, delta: float, horizon: float, ends: FloatArray) -> _Grid:
    """Slots ``k_i .. l_i`` of every request (module docstring)."""
    t0 = float(a.min())
    buckets = max(1, math.ceil((horizon - t0) / delta))
    k = np.minimum(np.floor((a - t0) / delta).astype(np.int64), buckets - 1)
    last = np.clip(np.ceil((ends - t0) / delta).astype(np.int64) - 1, k, buckets - 1)
    count = last - k + 1
    request = np.repeat(np.arange(len(a)), count)
    start = np.cumsum(count) - count
    bucket = k[request] + np.arange(len(request)) - start[request]
    first = bucket == k[request]
    end = t0 + (bucket + 1) * delta
    length = np.where(first, end - a[request], delta)
    return _Grid(request, bucket, first, bucket == last[request], length, end, buckets)


def least_iteration_s(estimators: FloatArray) -> float:
    """A positive lower bound on every iteration's time, or 0 (module
    docstring): one member, a decode step reading one token or a one-token chunk."""
    u = estimators
    one = u[:, _CONST] + np.minimum(u[:, _D] + u[:, _K], u[:, _P] + u[:, _Q] + u[:, _H])
    return float(max(one.max(), 0.0))


class _Rows:
    """COO triplets of the constraint matrix, appended block by block."""

    def __init__(self) -> None:
        self.rows: list[IntArray] = []
        self.cols: list[IntArray] = []
        self.vals: list[FloatArray] = []
        self.rhs: list[FloatArray] = []
        self.count = 0

    def add(self, row: IntArray, col: IntArray, val: FloatArray) -> None:
        self.rows.append(self.count + row)
        self.cols.append(col)
        self.vals.append(np.broadcast_to(val, row.shape).astype(np.float64))

    def close(self, rhs: FloatArray) -> None:
        """End a block of ``len(rhs)`` rows."""
        self.rhs.append(rhs)
        self.count += len(rhs)

    def matrix(self, columns: int) -> tuple[sp.csc_matrix, FloatArray]:
        a = sp.csc_matrix(
            (
                np.concatenate(self.vals),
                (np.concatenate(self.rows), np.concatenate(self.cols)),
            ),
            shape=(self.count, columns),
        )
        a.sum_duplicates()
        return a, np.concatenate(self.rhs)


def _request_rows(rows: _Rows, grid: _Grid, s: FloatArray, o: FloatArray) -> None:
    """Monotone F, D, A; ``D <= (o - 1) F``; ``dD <= n_b``; the tangents."""
    m = len(grid.request)
    f, d, att, n0 = 0, m, 2 * m, 3 * m
    j = np.arange(m)
    inner = np.flatnonzero(~grid.first)
    r = np.arange(len(inner))
    for base in (f, d, att):  # X_{b-1} - X_b <= 0
        rows.add(r, base + inner - 1, 1.0)
        rows.add(r, base + inner, -1.0)
        rows.close(np.zeros(len(inner)))
    rows.add(j, d + j, 1.0)  # D - (o - 1) F <= 0
    rows.add(j, f + j, -(o[grid.request] - 1.0))
    rows.close(np.zeros(m))
    rows.add(j, d + j, 1.0)  # D_b - D_{b-1} - n_b <= 0
    rows.add(j, n0 + grid.bucket, -1.0)
    rows.add(inner, d + inner - 1, -1.0)
    rows.close(np.zeros(m))
    si = s[grid.request]
    for g in TANGENTS:  # h'(g) F - A <= g h'(g) - h(g)
        slope = si * si * g + si / 2.0
        rows.add(j, f + j, slope)
        rows.add(j, att + j, -1.0)
        rows.close(slope * g - (si * g) ** 2 / 2.0 - si * g / 2.0)


def _bucket_rows(
    rows: _Rows,
    grid: _Grid,
    coefficients: list[tuple[FloatArray, FloatArray, FloatArray, float, float]],
) -> None:
    """One row per bucket for each ``(c_F, c_D, c_A, c_n, rhs)``: ``sum_i (c_F
    dF + c_D dD + c_A dA) + c_n n_b <= rhs`` (per-slot coefficients)."""
    m, b = len(grid.request), grid.buckets
    j = np.arange(m)
    nxt = np.flatnonzero(~grid.last)  # X_b also enters bucket b + 1 with -1
    for c_f, c_d, c_a, c_n, rhs in coefficients:
        for base, coef in ((0, c_f), (m, c_d), (2 * m, c_a)):
            rows.add(grid.bucket, base + j, coef)
            rows.add(grid.bucket[nxt] + 1, base + nxt, -coef[nxt])
        rows.add(np.arange(b), 3 * m + np.arange(b), c_n)
        rows.close(np.full(b, rhs))


def _limits(
    grid: _Grid, s: FloatArray, profile: DeploymentProfile, delta: float
) -> list[tuple[FloatArray, FloatArray, FloatArray, float, float]]:
    """Coefficients of the bucket rows 4 and 5 (module docstring)."""
    si = s[grid.request]
    zero, one = np.zeros_like(si), np.ones_like(si)
    budget = float(profile.max_num_batched_tokens)
    beta = float(profile.block_tokens)
    out = []
    for u in under_estimators(profile):
        c_f = (u[_P] + u[_H] / budget) * si
        c_d = u[_D] + u[_K] * (si + 1.0)
        out.append((c_f, c_d, u[_Q] * one, float(u[_CONST]), delta))
    out += [
        (si, one, zero, -budget, 0.0),
        (one, one, zero, -float(profile.max_num_seqs), 0.0),
        (si / beta, np.ceil((si + 1.0) / beta), zero,
         -float(profile.kv_capacity_blocks), 0.0),
    ]  # fmt: skip
    return out


def certified_value(
    a: sp.csc_matrix,
    cost: FloatArray,
    col_bounds: tuple[FloatArray, FloatArray],
    rhs: FloatArray,
    row_dual: FloatArray,
) -> float:
    """``y U + sum_j min(r_j l_j, r_j u_j)``, ``r = c - A^T y``, at ``y = min(
    row_dual, 0)``: a lower bound on ``min c x`` s.t. ``A x <= U``, ``l <= x <= u``
    (module docstring)."""
    y = np.minimum(row_dual, 0.0)
    reduced = cost - a.T @ y
    low, high = col_bounds
    at_low = np.where(reduced >= 0, reduced * low, 0.0)
    with np.errstate(invalid="ignore"):
        at_high = np.where(reduced < 0, reduced * high, 0.0)
    return float(y @ rhs + at_low.sum() + at_high.sum())


def serial_horizon_s(instance: Instance, profile: DeploymentProfile) -> float:
    """``max a + sum_i`` (request ``i`` run alone): every request completes by then
    in the schedule that runs them one at a time after the last arrival. The
    default horizon: beyond it the LP would only lose requests an optimal
    schedule finishes anyway (any horizon is valid)."""
    s = instance.prompt_tokens.astype(np.int64)
    o = instance.output_tokens.astype(np.int64)
    n = len(s)
    owner = np.repeat(np.arange(n), o - 1)
    step = np.arange(len(owner)) - np.repeat(np.cumsum(o - 1) - (o - 1), o - 1)
    phi = batch_features(
        n + len(owner),
        prefill_batch=np.arange(n),
        prefill_tokens=s,
        decode_batch=n + np.arange(len(owner)),
        decode_kv_tokens=s[owner] + step + 1,
    )
    return float(instance.arrival_s.max() + profile.iteration_time(phi).sum())


def _check(instance: Instance, delta_s: float, replicas: int) -> float:
    if len(instance) == 0:
        raise InputError("expected at least one request", field="instance")
    if replicas != 1:
        raise InputError(f"got {replicas}; the bucket LP holds for one replica",
                         field="replicas")  # fmt: skip
    delta = check_number(delta_s, "delta_s")
    if not delta > 0:
        raise InputError(f"got {delta}; expected > 0 seconds", field="delta_s")
    return delta


def build(
    instance: Instance,
    profile: DeploymentProfile,
    delta: float,
    horizon: float,
    ends: FloatArray,
) -> tuple[sp.csc_matrix, FloatArray, tuple[FloatArray, FloatArray], FloatArray,
           float, int]:  # fmt: skip
    """The LP ``min c x, A x <= U, l <= x <= u`` of the module docstring, its
    objective constant ``sum len_ib`` and bucket count; columns ``F, D, A`` per
    slot, then ``n`` per bucket."""
    s = instance.prompt_tokens.astype(np.float64)
    o = instance.output_tokens.astype(np.float64)
    grid = _grid(instance.arrival_s.astype(np.float64), delta, horizon, ends)
    m, b = len(grid.request), grid.buckets
    rows = _Rows()
    _request_rows(rows, grid, s, o)
    _bucket_rows(rows, grid, _limits(grid, s, profile, delta))
    a, rhs = rows.matrix(3 * m + b)
    si, oi = s[grid.request], o[grid.request]
    tau = least_iteration_s(under_estimators(profile))
    figures = request_figures(instance, profile)
    earliest = instance.arrival_s.astype(np.float64)
    if figures is not None:
        earliest = earliest + figures.prefill_alone + figures.decode_alone
    low = np.zeros(3 * m + b)
    high = np.concatenate(
        [np.ones(m), oi - 1.0, si * (si + 1.0) / 2.0,
         np.full(b, delta / tau if tau > 0 else np.inf)]
    )  # fmt: skip
    # Y_ib = 0 while e_b < a_i + q_i, q_i the request's critical path
    credit = np.where(grid.end_s >= earliest[grid.request], grid.length_s, 0.0)
    cost = np.zeros(3 * m + b)
    decodes = oi > 1
    cost[np.flatnonzero(~decodes)] = -credit[~decodes]  # Y = F
    cost[m + np.flatnonzero(decodes)] = -credit[decodes] / (oi[decodes] - 1)
    return a, cost, (low, high), rhs, float(grid.length_s.sum()), b


def bucket_lp(
    instance: Instance,
    profile: DeploymentProfile,
    *,
    delta_s: float,
    horizon_s: float | None = None,
    window_end_s: npt.ArrayLike | None = None,
    replicas: int = 1,
    time_limit: float = 60.0,
    ipm: bool = False,
) -> BucketBound:
    """The time-bucketed LP bound on total latency (module docstring).

    Parameters
    ----------
    instance, profile
        The requests and the replica's deployment.
    delta_s
        Bucket length ``Delta``; the bound loses less than ``Delta`` per request.
    horizon_s
        End of the last bucket; :func:`serial_horizon_s` by default.
    window_end_s
        Per request, the time after which its variables are dropped (valid for
        any values; module docstring); the horizon by default.
    replicas
        Must be 1 (module docstring, "Scope").
    time_limit
        Wall-clock seconds for HiGHS; the bound at its duals by then is returned.
    ipm
        Solve with HiGHS's interior point method without crossover (large LPs).

    Raises
    ------
    InputError
        On no request, ``replicas != 1``, a ``delta_s`` that is not positive, or a
        window of the wrong length.
    """
    began = time.monotonic()
    delta = _check(instance, delta_s, replicas)
    check_time_limit(time_limit, "time_limit")
    horizon = serial_horizon_s(instance, profile) if horizon_s is None else horizon_s
    ends = np.full(len(instance), float(horizon))
    if window_end_s is not None:
        ends = np.minimum(np.asarray(window_end_s, dtype=np.float64), horizon)
        if ends.shape != (len(instance),):
            raise InputError(f"got shape {ends.shape}; expected one end per request",
                             field="window_end_s")  # fmt: skip
    a, cost, col_bounds, rhs, constant, buckets = build(
        instance, profile, delta, float(horizon), ends
    )
    highs = highs_run.pass_model(
        a, cost, col_bounds, (np.full(len(rhs), -highspy.kHighsInf), rhs)
    )
    size = {"variables": a.shape[1], "constraints": a.shape[0], "nonzeros": a.nnz}
    loaded = highs_run.LoadedModel(highs, [], 0.0, {**size, "integers": 0})
    options = {"solver": "ipm", "run_crossover": "off"} if ipm else {}
    outcome = highs_run.run(loaded, deadline=began + time_limit, options=options)
    solution = highs.getSolution()
    value = -math.inf
    if solution.dual_valid:
        dual = np.asarray(solution.row_dual, dtype=np.float64)
        value = constant + certified_value(a, cost, col_bounds, rhs, dual)
    return BucketBound(
        value, delta, buckets, size, outcome.model_status, time.monotonic() - began
    )


__all__ = [
    "TANGENTS",
    "BucketBound",
    "bucket_lp",
    "build",
    "certified_value",
    "least_iteration_s",
    "serial_horizon_s",
]
