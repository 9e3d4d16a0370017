"""Closed-form lower bounds in seconds, valid for every schedule the evaluator runs.

Unlike :mod:`lsched.formulations.bounds.slot` (the unit-slot model), these bound the
objective of *any* schedule of an :class:`~lsched.instance.Instance` on a
:class:`~lsched.profile.DeploymentProfile` with ``C`` replicas: online policies
(chunked prefill and preemption included), the slot and timed models, fixed
batch tables. So one bound serves every row of a comparison.

Linear under-estimators of the iteration time
---------------------------------------------
Inside a regime ``t(phi) = max_p w_p . phi >= sum_p theta_p w_p . phi`` for any
convex weights ``theta``; across regimes, for ``phi >= 0``, ``t(phi) >=
u . phi`` with ``u = min_r`` (elementwise) of one such mixture per regime
(overhead folded in). A negative weight moves onto a feature that is never
smaller: ``H <= 1`` (the constant), ``D <= K`` (every step reads a token),
``P <= Q``; a candidate still negative somewhere is dropped. Every bound below
holds for each candidate ``u``; the largest is taken.

Per-member attribution
----------------------
With ``u >= 0`` an iteration lasts at least ``u . phi``, a sum over its members
(prefill chunks and decode steps) plus the constant ``u_0`` and ``u_H H``. The
constant is shared out by the engine's limits: an iteration holds at most ``N``
members (``max_num_seqs``), ``M`` KV blocks and ``B`` batched tokens, so for
``lambda`` in the simplex

    1 >= lambda_1 members / N + lambda_2 blocks / M + lambda_3 tokens / B,

and ``H >= (lambda_1 chunks / N + lambda_3 P / B)``. Request i's *work*
``p_i(u, lambda)`` is the least total it can be charged over all ways to run it:
its prefill once (chunking ``s`` tokens into pieces only adds members and keeps
``P``; ``Q = sum c (ctx + c) >= s (s + 1) / 2``) and ``o_i - 1`` decode steps,
the step emitting token ``j`` holding ``s_i + j - 1`` tokens. Recompute and swap
only add work. Hence the iterations of a replica process at most one second of
work per second: the replicas together form a machine of speed ``C``.

The bounds
----------
``critical_path`` (latency, makespan)
    Each iteration that serves i lasts at least ``u . phi`` of i alone, so i
    finishes no earlier than ``a_i + q_i``, ``q_i`` = its prefill alone plus its
    ``o_i - 1`` decode steps alone (best ``u`` per iteration).
``work`` (latency, makespan)
    Fluid relaxation: the machine of speed ``C`` runs every ``p_i`` from
    ``a_i``, preemptively. SRPT completes the most work items by every time
    (Schrage 1968), so the ``k``-th smallest completion of any schedule is at
    least the ``k``-th SRPT completion and the ``k``-th smallest ``a_i + q_i``.
    Makespan: ``max_tau (tau - min a) + sum_{a_i >= tau} p_i / C``.
``prefill_queue`` (latency)
    Queueing of prompts: only the prefill part of the work, ``p^pre_i``, by the
    first token ``f_i``; after it, i still needs its decode steps alone
    (``q^dec_i``). So ``sum_i C_i >= sum_k max(SRPT(p^pre)_(k), (a + q^pre)_(k))
    + sum_i q^dec_i``. It sees what the KV-flat ``work`` bound misses when
    prompts queue while the KV is not scarce.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lsched.errors import InputError
from lsched.formulations.bounds.slot import srpt_completions
from lsched.instance import Instance
from lsched.profile import FEATURES, DeploymentProfile

FloatArray = npt.NDArray[np.float64]

#: Objectives the bounds in seconds are stated for.
OBJECTIVES: tuple[str, ...] = ("latency", "makespan")

_CONST, _P, _Q, _D, _K, _H = range(len(FEATURES))

#: Mixture weights tried between two pieces of a regime.
_THETAS = np.linspace(0.0, 1.0, 11)
#: Splits ``lambda`` of the constant over (members, KV blocks, tokens).
_LAMBDAS = (
    (1.0, 0.0, 0.0),
    (0.0, 1.0, 0.0),
    (0.0, 0.0, 1.0),
    (0.5, 0.5, 0.0),
    (0.0, 0.5, 0.5),
    (0.5, 0.0, 0.5),
)


def _mixtures(pieces: FloatArray) -> list[FloatArray]:
    """Each piece, and convex mixtures of every pair of pieces."""
    out = [pieces[p] for p in range(len(pieces))]
    for a, b in itertools.combinations(range(len(pieces)), 2):
        out += [t * pieces[a] + (1 - t) * pieces[b] for t in _THETAS[1:-1]]
    return out


def under_estimators(profile: DeploymentProfile) -> FloatArray:
    """Candidate weights ``u >= 0`` with ``t(phi) >= u . phi`` (module docstring).

    Returns
    -------
    FloatArray
        Shape ``(candidates, 6)``; possibly no rows.
    """
    per_regime = [_mixtures(w) for w in profile.iteration_time.effective_regimes]
    rows = []
    for choice in itertools.product(*per_regime):
        u = np.min(np.stack(choice), axis=0)
        # a negative weight moves onto a feature that is at least as large
        for small, large in ((_H, _CONST), (_D, _K), (_P, _Q)):
            if u[small] < 0:
                u[large] += u[small]
                u[small] = 0.0
        if np.all(u >= 0) and np.any(u > 0):
            rows.append(u)
    return np.array(rows, dtype=np.float64).reshape(-1, len(FEATURES))


def _decode_kv(instance: Instance) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """Request and KV tokens held by every decode step (``s_i + j - 1``, j >= 2)."""
    o = instance.output_tokens.astype(np.int64)
    owner = np.repeat(np.arange(len(instance)), o - 1)
    first = np.cumsum(o - 1) - (o - 1)
    j = np.arange(len(owner)) - np.repeat(first, o - 1) + 2
    return owner, (instance.prompt_tokens[owner] + j - 1).astype(np.float64)


@dataclass(frozen=True)
class WorkTerms:
    """Each request's work on one ``u`` and ``lambda``, split by what it computes.

    Request i's prefill is charged ``fixed_i`` once (its share of the constant as
    a member of the iteration that finishes its prefill, holding ``ceil(s_i / b)``
    blocks) and, for every prompt token it computes at position ``t`` (1-based),
    ``per_token + per_position * t`` (``u_P``, the token's share of the constant,
    and ``u_Q t``: a chunk of ``c`` tokens after ``x`` has ``Q = c (x + c) >=``
    the sum of its positions). Its decode steps are charged ``decode_i``.

    Attributes
    ----------
    fixed, per_token, per_position, decode
        As above.
    """

    fixed: FloatArray
    per_token: float
    per_position: float
    decode: FloatArray

    def prefill(self, tokens: FloatArray, position_sums: FloatArray) -> FloatArray:
        """``p^pre_i`` of requests computing ``tokens_i`` prompt tokens whose
        positions sum to ``position_sums_i``."""
        return self.fixed + self.per_token * tokens + self.per_position * position_sums


class _Parts:
    """Per-request prefill/decode figures shared by the bounds of one instance."""

    def __init__(self, instance: Instance, profile: DeploymentProfile) -> None:
        s = instance.prompt_tokens.astype(np.float64)
        self.n = len(instance)
        self.s = s
        self.q_min = s * (s + 1) / 2  # least Q over every chunking of the prompt
        self.owner, kv = _decode_kv(instance)
        self.decode_kv = kv
        b = profile.block_tokens
        self.prefill_blocks = np.ceil(s / b)
        self.decode_blocks = np.ceil(kv / b)
        self.decodes = instance.output_tokens.astype(np.float64) - 1
        self.n_seqs = float(profile.max_num_seqs)
        self.m_blocks = float(profile.kv_capacity_blocks)
        self.budget = float(profile.max_num_batched_tokens)

    def sum_decodes(self, per_step: FloatArray) -> FloatArray:
        return np.bincount(self.owner, weights=per_step, minlength=self.n)

    def alone(self, u: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Per-iteration time of each prefill and decode step run alone."""
        prefill = u[_CONST] + u[_H] + u[_P] * self.s + u[_Q] * self.q_min
        decode = u[_CONST] + u[_D] + u[_K] * self.decode_kv
        return prefill, decode

    def terms(self, u: FloatArray, lam: tuple[float, ...]) -> WorkTerms:
        """The work of each request on ``u`` and ``lambda`` (:class:`WorkTerms`)."""
        l_seq, l_kv, l_tok = lam
        share = l_seq / self.n_seqs
        fixed = (
            u[_CONST] * (share + l_kv * self.prefill_blocks / self.m_blocks)
            + u[_H] * share
        )
        per_token = u[_P] + (u[_CONST] + u[_H]) * l_tok / self.budget
        per_step = (
            u[_D]
            + u[_K] * self.decode_kv
            + u[_CONST]
            * (share + l_kv * self.decode_blocks / self.m_blocks + l_tok / self.budget)
        )
        decode = self.sum_decodes(per_step)
        return WorkTerms(fixed, float(per_token), float(u[_Q]), decode)

    def work(self, u: FloatArray, lam: tuple[float, ...]) -> tuple[FloatArray, ...]:
        """Prefill and decode work ``p^pre_i``, ``p^dec_i`` (module docstring): every
        prompt token computed once, at positions ``1..s_i``."""
        terms = self.terms(u, lam)
        return terms.prefill(self.s, self.q_min), terms.decode


def check_inputs(instance: Instance, objective: str, replicas: int) -> None:
    """Raise on an unknown objective, fewer than one replica or no request."""
    if objective not in OBJECTIVES:
        raise InputError(
            f"got {objective!r}; expected one of {', '.join(OBJECTIVES)}",
            field="objective",
        )
    if replicas < 1:
        raise InputError(f"got {replicas}; expected >= 1", field="replicas")
    if len(instance) == 0:
        raise InputError("expected at least one request", field="instance")


def _critical_paths(parts: _Parts, candidates: FloatArray) -> tuple[FloatArray, ...]:
    """``q^pre_i`` and ``q^dec_i``: prefill and decode steps alone, best ``u`` each."""
    alone = [parts.alone(u) for u in candidates]
    prefill = np.max([a[0] for a in alone], axis=0)
    decode = parts.sum_decodes(np.max([a[1] for a in alone], axis=0))
    return prefill, decode


@dataclass(frozen=True)
class RequestFigures:
    """What one profile says of each request (module docstring).

    Attributes
    ----------
    prefill_alone, decode_alone
        ``q^pre_i`` and ``q^dec_i``: its prefill, and its ``o_i - 1`` decode steps,
        each run alone (best ``u`` per iteration).
    works
        ``(p^pre, p^dec)``, one pair per candidate ``u`` and split ``lambda``.
    """

    prefill_alone: FloatArray
    decode_alone: FloatArray
    works: list[tuple[FloatArray, FloatArray]]


def request_figures(
    instance: Instance, profile: DeploymentProfile
) -> RequestFigures | None:
    """Critical-path pieces and work of every request on ``profile``; ``None`` if
    its cost model has no usable under-estimator."""
    candidates = under_estimators(profile)
    if len(candidates) == 0:
        return None
    parts = _Parts(instance, profile)
    q_pre, q_dec = _critical_paths(parts, candidates)
    works = [parts.work(u, lam) for u in candidates for lam in _LAMBDAS]
    return RequestFigures(q_pre, q_dec, works)


def work_terms(
    instance: Instance, profile: DeploymentProfile
) -> tuple[FloatArray, list[WorkTerms]] | None:
    """The candidates ``u`` and each request's :class:`WorkTerms`, one per ``u``
    and split ``lambda`` (``u`` major); ``None`` if the cost model has no usable
    under-estimator."""
    candidates = under_estimators(profile)
    if len(candidates) == 0:
        return None
    parts = _Parts(instance, profile)
    return candidates, [parts.terms(u, lam) for u in candidates for lam in _LAMBDAS]


def fluid_makespan(
    release: FloatArray,
    work: FloatArray,
    start: float,
    after: FloatArray | None = None,
) -> float:
    """``max_tau (tau - start) + sum_{release_i >= tau} work_i + min after_i``.

    The fluid bound on the last completion: a unit-speed machine (``work``
    already divided by the speed) runs the work released at or after ``tau``
    after ``tau``; the last of it still needs ``after_i`` (0 by default) alone.
    """
    order = np.argsort(release, kind="stable")
    # tau = release_(k): the work released at or after it runs after it
    tail = np.cumsum(work[order][::-1])[::-1]
    if after is not None:
        tail = tail + np.minimum.accumulate(after[order][::-1])[::-1]
    return float(np.max(release[order] - start + tail))


def fluid_latency(release: FloatArray, work: FloatArray, earliest: FloatArray) -> float:
    """``sum_k max(SRPT_(k), earliest_(k))``: the least sum of completions of a
    unit-speed machine running ``work`` from ``release`` (Schrage 1968) where
    request ``i`` completes no earlier than ``earliest_i``."""
    srpt = np.sort(srpt_completions(release, work))
    return float(np.maximum(srpt, np.sort(earliest)).sum())


def work_bounds(
    instance: Instance,
    profile: DeploymentProfile,
    objective: str = "latency",
    *,
    replicas: int | None = None,
) -> dict[str, float]:
    """Closed-form bounds in seconds on the objective of any schedule.

    Parameters
    ----------
    instance
        The requests.
    profile
        The deployment (cost model, KV capacity, limits).
    objective
        ``"latency"`` (total E2E, ``sum_i C_i - a_i``) or ``"makespan"``
        (``max C - min a``).
    replicas
        Number of replicas ``C``; the profile's by default.

    Returns
    -------
    dict[str, float]
        ``critical_path``, ``work`` and, for latency, ``prefill_queue`` (module
        docstring); empty if the cost model has no usable under-estimator.
    """
    replicas = profile.replicas if replicas is None else replicas
    check_inputs(instance, objective, replicas)
    figures = request_figures(instance, profile)
    if figures is None:
        return {}
    a = instance.arrival_s.astype(np.float64)
    q_pre, q_dec = figures.prefill_alone, figures.decode_alone
    finish = a + q_pre + q_dec  # no request completes earlier
    if objective == "makespan":
        start = float(a.min())
        path = float(finish.max() - start)
        best_work = max(
            fluid_makespan(a, (pre + dec) / replicas, start)
            for pre, dec in figures.works
        )
        return {"critical_path": path, "work": max(best_work, path)}
    total_a = float(a.sum())
    best_work = best_queue = 0.0
    for pre, dec in figures.works:
        best_work = max(best_work, fluid_latency(a, (pre + dec) / replicas, finish))
        queue = fluid_latency(a, pre / replicas, a + q_pre) + float(q_dec.sum())
        best_queue = max(best_queue, queue)
    return {
        "critical_path": float(finish.sum()) - total_a,
        "work": best_work - total_a,
        "prefill_queue": best_queue - total_a,
    }


__all__ = [
    "OBJECTIVES",
    "RequestFigures",
    "WorkTerms",
    "check_inputs",
    "fluid_latency",
    "fluid_makespan",
    "request_figures",
    "under_estimators",
    "work_bounds",
    "work_terms",
]
