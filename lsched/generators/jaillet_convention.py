"""Jaillet et al.'s released code, mapped exactly onto lsched's slot model.

Source: P. Jaillet, J. Jiang, K. Mellou, M. Molinaro, C. Podimata, Z. Zhou,
"Online Scheduling for LLM Inference with KV Cache Constraints", arXiv:2502.07115,
and its code ``github.com/anonymouspeople111/neurips2025-code`` (commit 7fbb613):
``Hindsight_IP.py`` (the hindsight integer program) and ``MC-SF_synthetic.py``
(MC-SF on the synthetic instances). Line numbers below are of those files.

Their model
-----------
Integer time. One prompt size ``s`` for the whole instance (both functions take a
scalar ``s``, "Fixed prompt size": Hindsight_IP.py l. 36, MC-SF_synthetic.py
l. 41); request i has an integer arrival ``a_i`` and an output ``o_i``. A request
started at ``t >= a_i`` is active at the times ``tau = t+1 .. t+o_i`` and holds
``s + (tau - t)`` tokens there, i.e. ``s+1 .. s+o_i`` (Hindsight_IP.py l. 88-95:
``t`` runs over ``max(a_i, tau - o_i) .. tau - 1`` with coefficient
``s + (tau - t)``); the memory constraint is ``sum <= M`` for ``tau = 0..T``,
``T = max_i a_i + sum_i o_i`` (l. 52). The latency of i is ``t + o_i - a_i``
(l. 117); the objective is its sum. MC-SF (MC-SF_synthetic.py): at every integer
``t``, drop the requests with ``t >= p + o`` (l. 68), sort the waiting requests by
``(o, index)`` (l. 74) and start the longest prefix for which, at every
completion time ``x`` of a running or added request, the usage
``sum_{running, x <= p+o} (s + x - p) + sum_{added, x <= t+o} (s + x - t)`` is
at most ``M`` (l. 1-28, 76-82); the first failure stops.

The map (no shift of arrivals or latencies)
-------------------------------------------
Give lsched the same arrivals ``a_i`` and outputs ``o_i``, and the prompt
``s' = s + 1``. Read lsched's start slot ``S_i`` as their start time ``t_i``.

*Claim.* A start vector is feasible in their IP (before its horizon cut) iff it
is feasible in lsched's slot model (:mod:`lsched.formulations.slot.problem`,
block size 1, no batch limits), and its total latency is the same number in both.

*Proof.* lsched request i started at ``S_i`` runs in slots ``S_i .. S_i + o_i - 1``
and holds ``s' + j = s + 1 + j`` tokens in slot ``S_i + j``. Their request
started at ``t_i = S_i`` is active at ``tau = t_i + 1 + j`` (``j = 0..o_i - 1``)
holding ``s + (tau - t_i) = s + 1 + j``. So lsched's slot ``u`` and their time
``tau = u + 1`` hold the same requests with the same tokens, and the KV
constraints coincide slot by slot. Release: lsched needs ``S_i >= ceil(a_i)``,
they need ``t_i >= a_i`` with integer ``a_i``: the same. Latency: lsched's
``E_i - a_i = S_i + o_i - a_i``, theirs ``t_i + o_i - a_i``. QED. (Renaming slots
by one is a time shift of the memory indices only; arrivals, starts and
completions keep their values, so no latency offset arises. Shifting arrivals
by one as well, ``a' = a + 1`` with ``S = t + 1``, gives the same latencies.)

*Their horizon cut.* Their IP constrains memory only for ``tau <= T`` and
lsched every slot, so on the same instance their IP's optimum is at most
lsched's, and equal whenever some optimal solution of their IP finishes every
request by ``T`` (it is then feasible here). A solution that uses a time after
``T`` has a request with latency above ``T - a_i >= sum_j o_j``; we know no
proof that such a solution is never optimal, so the optima below are those of
the uncut model (the problem their IP states), and the benchmark checks that
every schedule it reports ends by ``T``.

*MC-SF is the same rule.* At lsched's iteration boundary ``t``, a request started
at ``p`` has emitted ``e = t - p`` tokens and has ``r = p + o - t`` to go;
:mod:`lsched.policies.mc_sf` predicts it to hold ``s' + e + K - 1 = s + (t+K) - p``
tokens ``K`` iterations ahead and to complete at ``K = r``, and a waiting request
``s' + K - 1 = s + (t+K) - t``, completing at ``K = o``. With ``x = t + K`` these
are their usages and completion times; both take the waiting requests by
ascending ``o``, ties by index (lsched's stable sort over waiting requests in
index order, which for this family is arrival order), and stop at the first
failure. lsched's extra checks never bind here: the unit-slot profile sets no
batch limits, the next iteration's KV is at most the KV at the first completion
(the same requests, each holding more), and its idle-replica exception admits a
request alone, which always passes their check (``s + o_i <= M``).

Sampling (``convention="jaillet"``)
-----------------------------------
The released code has no instance generator. As in the default convention,
``M ~ U{30..50}`` per instance and ``o_i ~ U{1..M - s}`` per request (the issue's
reading of the paper), but ``s ~ U{1..5}`` is drawn **once per instance** (their
code's scalar ``s``), and the instance stores the prompt ``s + 1`` for every
request. Their IP indexes time by the integer arrival (``range(a[i], T+1)``,
l. 63), so arrivals are integers: ``floor`` of the arrival process's times
(for a Poisson process of rate ``lambda`` per slot, independent Poisson(lambda)
counts per slot). The paper's exact arrival discretisation is not in the code;
this one is an assumption.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from lsched.errors import InputError

#: Values of :func:`lsched.generators.families.jaillet`'s ``convention``.
CONVENTIONS: tuple[str, ...] = ("lsched", "jaillet")

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def check_convention(value: object) -> str:
    """Return ``value`` if it is one of :data:`CONVENTIONS`, else raise."""
    if not isinstance(value, str) or value not in CONVENTIONS:
        raise InputError(
            f"got {value!r}; expected one of {list(CONVENTIONS)}", field="convention"
        )
    return value


def code_convention_draws(
    n: int,
    capacity: int,
    prompt_range: tuple[int, int],
    arrival_s: FloatArray,
    rng_prompt: np.random.Generator,
    rng_output: np.random.Generator,
) -> tuple[FloatArray, IntArray, IntArray]:
    """Arrivals, lsched prompts and outputs of one instance in their convention.

    Parameters
    ----------
    n
        Number of requests.
    capacity
        The instance's ``M``.
    prompt_range
        Inclusive range of their prompt size ``s``, drawn once.
    arrival_s
        Arrival times of the arrival process (floored here).
    rng_prompt, rng_output
        The family's prompt and output streams.

    Returns
    -------
    tuple
        ``floor(arrival_s)``; ``s + 1`` for every request (lsched's prompt, see
        the module docstring); ``o_i ~ U{1..M - s}``.
    """
    s = int(rng_prompt.integers(prompt_range[0], prompt_range[1] + 1))
    output = rng_output.integers(1, capacity - s + 1, size=n, dtype=np.int64)
    prompt = np.full(n, s + 1, dtype=np.int64)
    return np.floor(arrival_s), prompt, output
