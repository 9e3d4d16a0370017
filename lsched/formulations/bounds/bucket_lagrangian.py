"""The bucket Lagrangian: the bucket LP's coupling rows dualised, an exact DP per
request with integral completion credit, multipliers improved by subgradient.

:mod:`lsched.formulations.bounds.bucket` states the time-bucketed relaxation and
proves that every schedule of its scope (one colocated replica, chunked prefill,
recompute preemption, no prefix cache, host tier or migration), with iterations
that straddle a bucket boundary split pro rata, satisfies its rows. This module
keeps the same buckets ``b`` (``e_b = t_0 + (b + 1) Delta``), windows ``k_i ..
l_i``, lengths ``len_ib``, critical paths ``q_i`` and pro-rata quantities, and
uses the same proof; what changes is which rows are kept per request.

What is dualised
----------------
One under-estimator ``u >= 0`` of the iteration time (of
:func:`~lsched.formulations.bounds.work.under_estimators`, the one with the
longest full-budget iteration ``u_0 + B u_P``; dropping the others' rows only
relaxes). Per bucket, with prices ``>= 0``:

* time ``pi_b``: ``u_0 n_b + sum_i [(u_P + u_H / B) s_i dF_ib + u_Q dA_ib +
  sum_{steps k of i in b} (u_D + u_K (s_i + k))] <= Delta`` (the ``k``-th decode
  step reads ``s_i + k`` KV tokens: the LP's row 4 with the exact read instead
  of ``s_i + 1``, valid by the same argument);
* budget ``mu_b``: ``sum_i (s_i dF_ib + d_ib) <= B n_b``;
* KV ``kappa_b``: ``sum_i (s_i dF_ib / beta + sum_k ceil((s_i + k) / beta)) <=
  M n_b`` (summed over the bucket's iterations, as in the LP: what stays valid
  when a request is preempted and recomputed inside the bucket);
* step limit ``lambda_ib``: ``d_ib <= n_b`` (one decode step per iteration).

The sequence row is dropped (a relaxation). With ``0 <= n_b <= Delta / tau``
(``tau`` the least iteration,
:func:`~lsched.formulations.bounds.bucket.least_iteration_s`) the Lagrangian
separates into ``n_b``'s term ``min(0, r_b) Delta / tau``, ``r_b = pi_b u_0 -
mu_b B - kappa_b M - sum_i lambda_ib``, the constant ``-Delta sum_b pi_b``, and
one subproblem per request. It is a lower bound for **every** multiplier vector
``>= 0`` (weak duality); the search keeps ``r_b >= 0``, i.e. ``sum_i lambda_ib
<= pi_b u_0 - mu_b B - kappa_b M``: each iteration's constant ``u_0`` is shared
among the tokens and the requests decoding in it, and ``n_b``'s term is then 0.

The subproblem of request ``i``
-------------------------------
Kept per request: ``F`` nondecreasing to 1, decode only once ``F = 1`` (row 1),
attention ``A >= h_i(F)`` with ``h_i`` itself (not its tangents), at most
``ceil(Delta / tau)`` decode steps per bucket (``d_ib <= n_b <= Delta / tau``),
and **integral** completion credit: ``Y_ib = 1[D_ib = o_i - 1]`` (``F_ib = 1``
if ``o_i = 1``) where ``e_b >= a_i + q_i``. The schedule's pro-rata trajectory
satisfies all of them (:mod:`~lsched.formulations.bounds.bucket`, "Validity":
``C_i <= e_b`` implies all ``o_i - 1`` steps are counted by ``e_b``). Its cost is
``sum_b len_ib (1 - Y_ib)`` plus the prices of its usage; "never complete in the
window" (cost ``sum_b len_ib``, no usage) is one choice.

*Prefill in closed form.* Prefill has no per-request limit in a bucket, so a
prefill finished by bucket ``f`` costs at least ``s_i min_{k_i <= b <= f}
rho_b + h_i(1) u_Q min_{k_i <= b <= f} pi_b``, ``rho_b = pi_b (u_P + u_H / B) +
mu_b + kappa_b / beta`` (all tokens in the cheapest bucket; ``A`` may lead ``F``,
and ``A_f >= h_i(1)``), and that is attained: the closed form is the exact
minimum, no discretisation of ``F`` and no rounding.

*Decode steps by DP.* Given the completion bucket, the steps are assigned to
buckets in order, at most ``cap`` per bucket, step ``k`` in ``b`` costing
``pi_b (u_D + u_K (s_i + k)) + mu_b + lambda_ib + kappa_b ceil((s_i + k) /
beta)``. ``V_b(D)`` (least cost with ``D`` steps done by ``e_b``, prefill paid)
satisfies ``V_b(0) = PF_i(b)`` and ``V_b(D) = phi_b(D) + min_{D - cap <= D' <=
D} (V_{b-1}(D') - phi_b(D'))``, ``phi_b`` the cumulative cost of steps in ``b``
(a sliding-window minimum, O(1) amortised per state); the request's value is
``min(0, min_b V_b(o_i - 1) - sum_{b' >= b} credit_ib')`` plus ``sum_b
len_ib``. The pro-rata ``D_ib`` may be fractional, but the DP over integers is
exact for the fractional subproblem too: fixing every ``D_b`` to a unit cell
``[z_b, z_b + 1]`` makes the cost linear (the cumulative step cost interpolates
linearly between integers) and the constraints interval differences
``0 <= D_b - D_{b-1} <= cap`` with integral data, a totally unimodular system
whose vertices are integral; the minimum over each cell, hence over all, is
attained at integers.

Strength, and its limit
-----------------------
The best multipliers give the LP over the convex hulls of the per-request sets
with the coupling rows kept (Geoffrion). The hull is stronger than the LP's
linear credit ``Y = D / (o - 1)``: credit ``y`` at ``b`` needs a fraction ``y``
of trajectories that have already done all ``o - 1`` steps at no more than
``cap`` per bucket. But the step limit ``d_ib <= n_b`` then holds *on average*
over request ``i``'s trajectories, so a request whose iterations are ``k`` times
longer than ``tau`` can mix ``k`` trajectories that decode ``k`` times faster
and finish one after another: its tail ``T`` is charged about ``(k + 1) T / (2
k)``, against ``T / 2`` by the LP. On the Azure code trace ``k`` is about 20
(0.85 s iterations, ``tau`` 0.042 s): the dual optimum charges tails only a
little more than the LP there. Where ``k`` is near 1 (iterations that cannot be
shortened, e.g. a budget of one token) it charges whole tails:
``tests/test_bucket_lagrangian.py`` has two 40-step tails where the LP gives 101
and the Lagrangian about 120 (optimum 123). The dual optimum is at least the LP's
on a profile with one under-estimator whose sequence row does not bind (the
subproblems keep every per-request row of the LP, with ``h`` for its tangents
and integral credit). What this form buys besides is size: one DP per request,
no LP.

A tiny case by hand
-------------------
One request at 0, ``s = 1``, ``o = 3`` on ``unit-slot`` (every iteration 1 s, ``u
= (1, 0, ...)``), ``Delta = 1``: ``tau = 1``, so ``cap = 1``; the serial horizon
is 3 s (a prefill and two steps), three buckets ending at 1, 2, 3; ``q = 3``,
so only bucket 2 carries credit (1). At zero prices the DP prefills in bucket
0, decodes one step in buckets 0 and 1 and completes in bucket 1: value ``3 -
1 = 2``. With ``pi = (1, 1, 1)`` and ``lambda_i0 = lambda_i1 = 1`` (``r_b = 0``)
the two steps cost 2, more than the credit, so the request does not complete:
``3 - 3 = 0``. With ``lambda = 0.25`` in buckets 0 to 2 and ``pi = (0.25, 0.25,
0.25)``: the steps cost 0.5 < 1, value ``3 - 1 + 0.5 - 0.75 = 1.75``.

Multipliers and search
----------------------
Started from a schedule when one is given (its completion and first-token
times): ``pi_b`` the requests in the system at the bucket's midpoint (a second
of capacity there delays each of them), half of ``pi_b u_0`` to the budget
(``mu_b = pi_b u_0 / (2 B)``) and half shared by the requests decoding at the
midpoint (``lambda_ib``); otherwise from zero (the bound is then the critical
paths'). Then projected subgradient ascent in coordinates scaled to seconds
(``mu B / u_0``, ``kappa M / u_0``, ``lambda / u_0``, each then a count of
requests like ``pi``), Polyak's step towards the schedule's value (or, without
one, the best bound plus 5 % of the mean loss per bucket), its factor halved
after ``patience`` evaluations without improvement, stopping when it falls below
``1e-6``. The best value over the iterations is returned: each is a valid bound.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lsched.checks import check_time_limit
from lsched.errors import InputError
from lsched.formulations.bounds.bucket import (
    _check,
    _Grid,
    _grid,
    least_iteration_s,
    serial_horizon_s,
)
from lsched.formulations.bounds.bucket_dp import project_shares, solve_requests
from lsched.formulations.bounds.work import request_figures, under_estimators
from lsched.instance import Instance
from lsched.profile import FEATURES, DeploymentProfile

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_CONST, _P, _Q, _D, _K, _H = range(len(FEATURES))
#: Largest number of decode steps the DP allows per bucket when ``tau = 0``.
UNCAPPED = 1 << 30


@dataclass(frozen=True)
class LagrangianBound:
    """What :func:`bucket_lagrangian` found.

    Attributes
    ----------
    value
        The best lower bound on ``sum_i (C_i - a_i)`` in seconds.
    delta_s, buckets
        Bucket length and count.
    slots
        Request-bucket pairs of the windows (``lambda``'s count).
    iterations
        Lagrangian evaluations.
    first_value
        The bound at the starting multipliers.
    runtime_s
        Wall-clock seconds, setup included.
    """

    value: float
    delta_s: float
    buckets: int
    slots: int
    iterations: int
    first_value: float
    runtime_s: float


@dataclass(frozen=True)
class _Setup:
    """The instance on its buckets: what every evaluation reads."""

    grid: _Grid
    start: IntArray  # first slot of each request
    width: IntArray
    first: IntArray  # first bucket of each request
    s: FloatArray
    o: IntArray
    credit: FloatArray  # per slot: len_ib where e_b >= a_i + q_i, else 0
    loss: float  # sum of len_ib
    u: FloatArray
    cap: int
    n_max: float  # Delta / tau (inf if tau = 0)
    delta: float
    budget: float
    blocks: float
    beta: float


def prepare(instance: Instance, profile: DeploymentProfile, delta: float,
           horizon: float, ends: FloatArray) -> _Setup:  # fmt: skip
    """The instance on buckets of ``delta`` seconds up to ``horizon``, windows
    ending at ``ends``: grid, credits and the under-estimator of the module
    docstring."""
    estimators = under_estimators(profile)
    if len(estimators) == 0:
        raise InputError("the cost model has no usable under-estimator",
                         field="profile")  # fmt: skip
    budget = float(profile.max_num_batched_tokens)
    u = estimators[np.argmax(estimators[:, _CONST] + budget * estimators[:, _P])]
    a = instance.arrival_s.astype(np.float64)
    grid = _grid(a, delta, horizon, ends)
    figures = request_figures(instance, profile)
    earliest = (
        a if figures is None else a + figures.prefill_alone + figures.decode_alone
    )
    width = np.bincount(grid.request, minlength=len(a)).astype(np.int64)
    tau = least_iteration_s(estimators)
    return _Setup(
        grid=grid,
        start=np.cumsum(width) - width,
        width=width,
        first=grid.bucket[np.cumsum(width) - width],
        s=instance.prompt_tokens.astype(np.float64),
        o=instance.output_tokens.astype(np.int64),
        credit=np.where(grid.end_s >= earliest[grid.request], grid.length_s, 0.0),
        loss=float(grid.length_s.sum()),
        u=u,
        cap=min(UNCAPPED, math.ceil(delta / tau)) if tau > 0 else UNCAPPED,
        n_max=delta / tau if tau > 0 else math.inf,
        delta=delta,
        budget=budget,
        blocks=float(profile.kv_capacity_blocks),
        beta=float(profile.block_tokens),
    )


@dataclass
class Multipliers:
    """Prices in seconds-scaled coordinates (module docstring): ``pi``, ``mu``,
    ``kappa`` per bucket, ``lam`` per slot; absolute prices are ``mu u_0 / B``,
    ``kappa u_0 / M`` and ``lam u_0``."""

    pi: FloatArray
    mu: FloatArray
    kappa: FloatArray
    lam: FloatArray

    def flat(self) -> FloatArray:
        return np.concatenate([self.pi, self.mu, self.kappa, self.lam])

    @classmethod
    def of(cls, x: FloatArray, buckets: int) -> Multipliers:
        b = buckets
        return cls(x[:b], x[b : 2 * b], x[2 * b : 3 * b], x[3 * b :])


def _project(x: Multipliers, grid: _Grid) -> Multipliers:
    """The Euclidean projection onto ``x >= 0`` and ``mu + kappa + sum_i lam_ib
    <= pi`` per bucket (``r_b >= 0``)."""
    b = grid.buckets
    owner = np.concatenate([np.arange(b), np.arange(b), grid.bucket])
    pi, shared = project_shares(x.pi, np.concatenate([x.mu, x.kappa, x.lam]), owner)
    return Multipliers(pi, shared[:b], shared[b : 2 * b], shared[2 * b :])


def evaluate(setup: _Setup, x: Multipliers) -> tuple[float, FloatArray]:
    """The Lagrangian at ``x`` (a lower bound for any ``x >= 0``) and a
    supergradient in ``x``'s coordinates."""
    g, u = setup.grid, setup.u
    u0, budget, m_blocks, beta = u[_CONST], setup.budget, setup.blocks, setup.beta
    mu, kappa, lam = x.mu * u0 / budget, x.kappa * u0 / m_blocks, x.lam * u0
    token = x.pi * (u[_P] + u[_H] / budget) + mu + kappa / beta
    prices = (token, x.pi * u[_Q], x.pi * u[_D] + mu, x.pi * u[_K], kappa)
    values, where, steps, reads, blocks = solve_requests(
        setup.start, setup.width, setup.first, setup.s, setup.o, setup.credit,
        prices, lam, setup.cap, beta,
    )  # fmt: skip
    r = (
        x.pi * u0
        - mu * budget
        - kappa * m_blocks
        - np.bincount(g.bucket, lam, minlength=g.buckets)
    )
    n_term = np.where(r < 0, r * setup.n_max, 0.0)
    value = setup.loss + values.sum() - setup.delta * x.pi.sum() + n_term.sum()
    done = where[:, 0] >= 0
    count = g.buckets

    def per_bucket(index: IntArray, weights: FloatArray) -> FloatArray:
        return np.bincount(index, weights, minlength=count)

    prefill = per_bucket(where[done, 0], setup.s[done])
    attention = per_bucket(where[done, 1], setup.s[done] * (setup.s[done] + 1) / 2)
    decode = per_bucket(g.bucket, steps)
    time_used = ((u[_P] + u[_H] / budget) * prefill + u[_Q] * attention
                 + u[_D] * decode + u[_K] * per_bucket(g.bucket, reads))  # fmt: skip
    tokens = prefill + decode
    kv = prefill / beta + per_bucket(g.bucket, blocks)
    most = np.zeros(count)
    np.maximum.at(most, g.bucket, steps)
    need = np.maximum.reduce([tokens / budget, kv / m_blocks, most])
    n = np.where(r < 0, setup.n_max, np.where(r > 1e-12 * x.pi, 0.0, need))
    n = np.minimum(n, setup.n_max)
    grad = Multipliers(
        u0 * n + time_used - setup.delta,
        (tokens - budget * n) * u0 / budget,
        (kv - m_blocks * n) * u0 / m_blocks,
        (steps - n[g.bucket]) * u0,
    )
    return float(value), grad.flat()


def start_multipliers(
    setup: _Setup,
    arrival_s: FloatArray,
    completion_s: FloatArray | None,
    first_token_s: FloatArray | None,
) -> Multipliers:
    """The module docstring's start: from a schedule, or zero."""
    g = setup.grid
    if completion_s is None:
        zero = np.zeros(g.buckets)
        return Multipliers(zero, zero.copy(), zero.copy(), np.zeros(len(g.bucket)))
    mid = g.end_s - setup.delta / 2.0  # per slot, its bucket's midpoint
    a = arrival_s[g.request]
    present = (a <= mid) & (mid < completion_s[g.request])
    first = completion_s if first_token_s is None else first_token_s
    decoding = present & (first[g.request] <= mid)
    pi = np.bincount(g.bucket, present, minlength=g.buckets).astype(np.float64)
    decoders = np.bincount(g.bucket, decoding, minlength=g.buckets)
    share = np.where(decoders > 0, 0.5 * pi / np.maximum(decoders, 1), 0.0)
    lam = np.where(decoding, share[g.bucket], 0.0)
    mu = np.where(decoders > 0, 0.5 * pi, pi)
    return _project(Multipliers(pi, mu, np.zeros(g.buckets), lam), g)


def _search(setup: _Setup, x: Multipliers, target: float | None, deadline: float,
            iterations: int, patience: int) -> tuple[float, float, int]:  # fmt: skip
    """Projected subgradient ascent with Polyak steps (module docstring);
    returns the best value, the first and the evaluations made."""
    best = first = -math.inf
    theta, since, done = 1.0, 0, 0
    scale = setup.loss / max(1, setup.grid.buckets)
    while done < iterations and (done == 0 or time.monotonic() < deadline):
        value, grad = evaluate(setup, x)
        done += 1
        first = value if done == 1 else first
        if value > best:
            best, since = value, 0
        else:
            since += 1
            if since >= patience:
                theta, since = theta / 2.0, 0
        norm = float(grad @ grad)
        goal = target if target is not None and target > best else best + 0.05 * scale
        if norm <= 0 or theta < 1e-6:
            break
        step = theta * (goal - value) / norm
        moved = Multipliers.of(x.flat() + step * grad, setup.grid.buckets)
        x = _project(moved, setup.grid)
    return best, first, done


def bucket_lagrangian(
    instance: Instance,
    profile: DeploymentProfile,
    *,
    delta_s: float,
    horizon_s: float | None = None,
    window_end_s: npt.ArrayLike | None = None,
    completion_s: npt.ArrayLike | None = None,
    first_token_s: npt.ArrayLike | None = None,
    upper_bound: float | None = None,
    replicas: int = 1,
    time_limit: float = 60.0,
    iterations: int = 1000,
    patience: int = 20,
) -> LagrangianBound:
    """The bucket Lagrangian bound on total latency (module docstring).

    Parameters
    ----------
    instance, profile, delta_s, horizon_s, window_end_s, replicas
        As for :func:`~lsched.formulations.bounds.bucket.bucket_lp`.
    completion_s, first_token_s
        A schedule's completion and first-token times, for the starting
        multipliers (module docstring); any values give a valid bound.
    upper_bound
        A schedule's total latency: the target of Polyak's step.
    time_limit
        Wall-clock seconds for the search (at least one evaluation is made).
    iterations
        Most Lagrangian evaluations.
    patience
        Evaluations without improvement before the step is halved.

    Raises
    ------
    InputError
        On no request, ``replicas != 1``, a ``delta_s`` that is not positive, an
        array of the wrong length, or a cost model with no under-estimator.
    """
    began = time.monotonic()
    delta = _check(instance, delta_s, replicas)
    check_time_limit(time_limit, "time_limit")
    horizon = serial_horizon_s(instance, profile) if horizon_s is None else horizon_s
    n = len(instance)
    arrays = {}
    for name, given in (("window_end_s", window_end_s), ("completion_s", completion_s),
                        ("first_token_s", first_token_s)):  # fmt: skip
        if given is not None:
            arrays[name] = np.asarray(given, dtype=np.float64)
            if arrays[name].shape != (n,):
                shape = arrays[name].shape
                raise InputError(f"got shape {shape}; expected one value per request",
                                 field=name)  # fmt: skip
    ends = np.minimum(arrays.get("window_end_s", np.inf), float(horizon))
    setup = prepare(instance, profile, delta, float(horizon), np.broadcast_to(ends, n))
    x = start_multipliers(
        setup, instance.arrival_s.astype(np.float64), arrays.get("completion_s"),
        arrays.get("first_token_s"),
    )  # fmt: skip
    best, first, done = _search(setup, x, upper_bound, began + time_limit,
                                iterations, patience)  # fmt: skip
    return LagrangianBound(best, delta, setup.grid.buckets, len(setup.grid.request),
                           done, first, time.monotonic() - began)  # fmt: skip


__all__ = [
    "LagrangianBound",
    "Multipliers",
    "bucket_lagrangian",
    "evaluate",
    "prepare",
    "start_multipliers",
]
