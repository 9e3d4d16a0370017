"""Per-request loads for the replica assignment: each request's estimated
processing time on one replica (:func:`request_loads_s`) and its KV area
(:func:`kv_areas`).

Per-request load (:func:`request_loads_s`)
------------------------------------------
Request ``i`` (prompt ``s_i``, output ``o_i``; DESIGN.md, "The iteration model")
runs ``o_i`` iterations ``j = 0..o_i-1``: in ``j = 0`` it prefills its ``s_i`` tokens
(and holds ``s_i`` KV tokens), in ``j >= 1`` it takes one decode step that holds and
reads ``s_i + j`` tokens. Its own features in iteration ``j`` are

    j = 0:   P = s_i,  Q = s_i^2,  D = 0,  K = 0
    j >= 1:  P = 0,    Q = 0,      D = 1,  K = s_i + j

while ``const`` (1 per iteration) and ``H`` (1 per iteration with a prefill) are
shared by the batch. In the offline setting a replica is saturated until its tail,
so each iteration is full on its scarcest resource: KV blocks (``M``), sequences
(``N = max_num_seqs``) or batched tokens (``B = max_num_batched_tokens``). The
request's *share* of iteration ``j``, in which it holds ``k`` KV tokens and processes
``c`` tokens, is therefore

    u_ij = max(ceil(k / b) / M,  1 / N,  c / B),

and it pays that share of the fixed costs. Its load is the sum over its iterations
of the dearest piece ``p`` of any regime of the profile (overheads folded in,
:attr:`IterationTime.effective_regimes`):

    load_i = sum_{j=0}^{o_i-1}  max_p  w_p . [u_ij, P, Q, D, K, [j = 0] u_ij]
                                                                  (seconds)

Why this choice: an iteration lasts ``max_p w_p . sum_i phi_i`` with the batch's
features summed, so per-token work is additive across requests and only the fixed
cost must be apportioned; apportioning it by the binding resource is what a
saturated replica does. Taking the piece per (request, iteration) follows the phase
of the request: its prefill is compute-bound, its decode steps memory-bound (on
``llama-65b-pang2025`` a GSM8K request's prefill costs about 0.16 s on the compute
piece, its 75 decode steps about 0.07 s on the memory piece; pricing the request's
totals on one piece would drop one phase). ``sum_i max_p`` is at least
``max_p sum_i``, with equality when the batch's requests share a dominant piece (a
decode-only batch), so the estimate is tight on decode iterations and a little high
on mixed ones. Measured on GSM8K-like instances (``gsm8k``, all at 0, LPT, FCFS
replayed): at ``n = 1000, C = 4`` replica loads are 58.8-59.1 s against busy times
of 57.2-60.3 s on ``llama-65b-pang2025``, and 27.4 s against 31.7-32.1 s on
``llama2-70b-h100-tp4``; at ``n = 100, C = 4`` (25 requests per replica, far from
saturating the KV) 5.9 s against 8.5-10.3 s. A token count ``s + o`` would ignore
that decode cost grows with context and that KV, not tokens, limits batches. On the
``unit-slot`` profile (``w = [1, 0, ...]``, no batch limits) the load is the
request's KV area over ``M``, ``sum_j ceil((s_i + j) / b) / M`` slots, and the
energy argument (at most ``M`` blocks per slot) makes a replica's load a lower bound
on its makespan when all requests arrive at 0. Loads are estimates for balancing;
the real makespan is the evaluator's
(:func:`~lsched.formulations.replicas.sequence`). ``load="tokens"`` gives
``s_i + o_i``, and any per-request array may be passed.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import numpy.typing as npt

from lsched.checks import check_int
from lsched.errors import InputError
from lsched.instance import Instance
from lsched.profile import DeploymentProfile

__all__ = ["kv_areas", "request_loads_s", "resolve_loads"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: Request-iterations handled per vectorised block (bounds the memory of a pass).
_BLOCK_ITERATIONS = 1 << 20


def _blocks(output: IntArray) -> list[slice]:
    """Consecutive request ranges of about ``_BLOCK_ITERATIONS`` iterations each."""
    ends = np.cumsum(output)
    cuts = np.searchsorted(
        ends, np.arange(_BLOCK_ITERATIONS, int(ends[-1]), _BLOCK_ITERATIONS)
    )
    edges = np.unique(np.concatenate([[0], cuts + 1, [len(output)]]))
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def _ages(output: IntArray) -> tuple[IntArray, IntArray]:
    """(request, j) for every iteration ``j = 0..o_i-1`` of every request."""
    owner = np.repeat(np.arange(len(output), dtype=np.int64), output)
    starts = np.cumsum(output) - output
    age = np.arange(int(output.sum()), dtype=np.int64) - np.repeat(starts, output)
    return owner, age


def kv_areas(instance: Instance, block_tokens: int = 1) -> IntArray:
    """KV blocks each request holds, summed over its slots: ``sum_j ceil((s+j)/b)``."""
    b = check_int(block_tokens, "block_tokens", 1)
    s, o = instance.prompt_tokens, instance.output_tokens
    if b == 1:
        return o * s + o * (o - 1) // 2
    area = np.zeros(len(instance), dtype=np.int64)
    for part in _blocks(o):
        owner, age = _ages(o[part])
        blocks = -(-(s[part][owner] + age) // b)
        area[part] = np.bincount(owner, weights=blocks, minlength=len(o[part]))
    return area


def request_loads_s(
    instance: Instance, profile: DeploymentProfile, *, predicted: bool = False
) -> FloatArray:
    """Estimated processing time of every request on one replica (seconds).

    The module docstring's ``load_i = sum_j max_p w_p . phi_ij``: each iteration of
    the request priced at its dearest piece, fixed costs shared by the scarcest
    resource.

    Parameters
    ----------
    instance
        The requests.
    profile
        Iteration time, KV capacity, block size and batch limits.
    predicted
        Use ``predicted_output_tokens`` instead of the true output lengths (what an
        offline planner knows).

    Returns
    -------
    numpy.ndarray
        float64, one load per request, ``>= 0``.

    Raises
    ------
    InputError
        If ``predicted`` and the instance has no predictions.
    """
    if predicted:
        if instance.predicted_output_tokens is None:
            raise InputError(
                "the instance has no predictions; attach some (lsched.predictors) "
                "or use the true lengths",
                field="predicted_output_tokens",
            )
        instance = instance.replace(output_tokens=instance.predicted_output_tokens)
    pieces = np.concatenate(profile.iteration_time.effective_regimes, axis=0)
    s, o = instance.prompt_tokens, instance.output_tokens
    load = np.zeros(len(instance), dtype=np.float64)
    for part in _blocks(o):
        owner, age = _ages(o[part])
        prompt = s[part][owner]
        held = prompt + age
        prefill = age == 0
        share = np.maximum.reduce(
            [
                profile.kv_blocks(held) / profile.kv_capacity_blocks,
                np.full(len(owner), 1.0 / profile.max_num_seqs),
                np.where(prefill, prompt, 1) / profile.max_num_batched_tokens,
            ]
        )
        features = np.stack(
            [
                share,
                np.where(prefill, prompt, 0),
                np.where(prefill, prompt * prompt, 0),
                ~prefill,
                np.where(prefill, 0, held),
                np.where(prefill, share, 0.0),
            ],
            axis=1,
        ).astype(np.float64)
        cost = np.maximum((features @ pieces.T).max(axis=1), 0.0)
        load[part] = np.bincount(owner, weights=cost, minlength=len(o[part]))
    return load


def resolve_loads(
    instance: Instance, profile: DeploymentProfile, load: Any
) -> FloatArray:
    """The loads that ``load`` names, checked: ``None`` or ``"profile"``
    (:func:`request_loads_s`), ``"tokens"`` (``s_i + o_i``) or one load ``>= 0``
    per request.

    Raises
    ------
    InputError
        On another name, a wrong length, or a negative or non-finite load.
    """
    n = len(instance)
    if load is None or (isinstance(load, str) and load == "profile"):
        return request_loads_s(instance, profile)
    if isinstance(load, str):
        if load == "tokens":
            return (instance.prompt_tokens + instance.output_tokens).astype(np.float64)
        raise InputError(
            f"got {load!r}; expected 'profile', 'tokens' or one load per request",
            field="load",
        )
    try:
        array = np.asarray(load, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"expected numbers: {exc}", field="load") from None
    if array.shape != (n,):
        raise InputError(
            f"got shape {array.shape}; expected {n} loads (one per request)",
            field="load",
        )
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        i = int(np.flatnonzero(~np.isfinite(array) | (array < 0))[0])
        raise InputError(
            f"request {i}: got {array[i]}; expected a finite load >= 0", field="load"
        )
    return array
