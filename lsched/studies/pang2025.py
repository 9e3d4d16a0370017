"""The setting of Pang et al. 2025: GSM8K on LLaMA-65B, replicas, makespan.

B. Pang, K. Li, R. She, F. Wang, "Hybrid offline-online scheduling method for large
language model inference optimization", arXiv:2502.15763 (2025): an offline batch
of GSM8K requests, all present at ``t = 0``, served by several LLaMA-65B clients.
Their hybrid method (bin packing over clients, then a Lagrangian online rule) cuts
the makespan from 201.00 s to 190.58 s against a lower bound near 180 s (a
remaining gap of 5.9 %) and raises utilisation from 80.2 % to 89.1 % (+8.0 % on
average over a 100-case study).

One case here (:func:`pang_case`), on lsched's reading of that setting
(:func:`lsched.generators.gsm8k`, profile ``llama-65b-pang2025``, both with their
stated assumptions):

``baseline``
    vLLM-style continuous batching (``vllm``) with round-robin dispatch.
``hybrid``
    lsched's ``hybrid`` policy (a faithful reading of Pang et al.'s online rule
    that loses here, see its module) on the replicas of their bin packing
    (:func:`lsched.formulations.replicas.assign`).
``hybrid_lr``
    ``hybrid-lr`` (the rule re-derived from a Lagrangian relaxation of the
    makespan problem with the profile's roofline,
    :mod:`lsched.policies.hybrid_lr`, coefficients from
    :func:`~lsched.policies.hybrid_lr.roofline_spec`) on the same replicas.
``best``
    The best schedule found: the bin packing, then per replica the best of a
    list of policies (:func:`lsched.formulations.replicas.sequence`), Sarathi's
    chunked prefill at several chunk sizes among them; or the three above if
    better.
``bound``
    The makespan bound in seconds for every schedule
    (:func:`lsched.formulations.bounds.work.work_bounds`).

Utilisation is reported two ways: the evaluator's busy fraction (sum of iteration
times over ``C x makespan``), which is close to 1 for every method when all
requests are present at the start (no replica idles until its queue drains), and
the *efficiency* ``bound / makespan``, the share of the makespan that even an
ideal schedule needs, which is what separates the methods.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from lsched.evaluator import simulate
from lsched.formulations.bounds.work import work_bounds
from lsched.formulations.replicas import assign, sequence
from lsched.formulations.result import certified_gap
from lsched.generators import gsm8k
from lsched.policies.hybrid_lr import roofline_spec
from lsched.predictors import oracle
from lsched.profile import DeploymentProfile, load_profile

#: Policies tried per replica for the best schedule.
SEQUENCE_POLICIES: tuple[str, ...] = (
    "sarathi:chunk=128",
    "sarathi:chunk=192",
    "sarathi:chunk=256",
    "sarathi:chunk=384",
    "sarathi:chunk=512",
    "mc-sf",
    "vllm",
)


def pang_case(
    seed: int,
    *,
    n: int = 1000,
    profile: DeploymentProfile | None = None,
    replicas: int | None = None,
    time_limit_s: float = 10.0,
    policies: Sequence[str] = SEQUENCE_POLICIES,
) -> dict[str, Any]:
    """Run one seeded case of the study (module docstring).

    Parameters
    ----------
    seed
        Seed of the GSM8K-like instance.
    n
        Requests, all at ``t = 0``.
    profile
        The deployment; ``llama-65b-pang2025`` by default.
    replicas
        ``C``; the profile's by default (2).
    time_limit_s
        Wall-clock limit of the bin packing.
    policies
        Policies tried per replica for the best schedule.

    Returns
    -------
    dict
        One flat row: the makespan and busy fraction of each method, the bound,
        the best schedule's source and certified gap, and the efficiencies.
    """
    began = time.perf_counter()
    profile = load_profile("llama-65b-pang2025") if profile is None else profile
    replicas = profile.replicas if replicas is None else replicas
    # the instance's true lengths: the offline batch of the study is known
    instance = oracle(gsm8k(n, seed=seed))
    bound = max(work_bounds(instance, profile, "makespan", replicas=replicas).values())
    baseline = simulate(instance, profile, "vllm", replicas=replicas)
    packing = assign(instance, profile, replicas, time_limit=time_limit_s, seed=seed)
    hybrid = simulate(
        instance, profile, "hybrid", replicas=replicas, assignment=packing.assignment
    )
    hybrid_lr = simulate(
        instance,
        profile,
        roofline_spec(profile),
        replicas=replicas,
        assignment=packing.assignment,
    )
    best = sequence(
        instance, profile, packing.assignment, policy=list(policies), replicas=replicas
    )
    candidates = {
        f"packing + {best.policy}": (best.makespan_s, best.busy_fraction),
        "vllm": (baseline.metrics["makespan_s"], baseline.metrics["busy_fraction"]),
        "packing + hybrid": (
            hybrid.metrics["makespan_s"],
            hybrid.metrics["busy_fraction"],
        ),
        "packing + hybrid-lr": (
            hybrid_lr.metrics["makespan_s"],
            hybrid_lr.metrics["busy_fraction"],
        ),
    }
    source = min(candidates, key=lambda k: candidates[k][0])
    best_makespan, best_busy = candidates[source]
    base_makespan = baseline.metrics["makespan_s"]
    return {
        "seed": seed,
        "n": n,
        "replicas": replicas,
        "bound_s": bound,
        "baseline_makespan_s": base_makespan,
        "baseline_busy": baseline.metrics["busy_fraction"],
        "hybrid_makespan_s": hybrid.metrics["makespan_s"],
        "hybrid_busy": hybrid.metrics["busy_fraction"],
        "hybrid_lr_makespan_s": hybrid_lr.metrics["makespan_s"],
        "hybrid_lr_busy": hybrid_lr.metrics["busy_fraction"],
        "best_makespan_s": best_makespan,
        "best_busy": best_busy,
        "best_source": source,
        "packing_status": packing.status.value,
        "gap": certified_gap(best_makespan, bound),
        "baseline_efficiency": bound / base_makespan,
        "best_efficiency": bound / best_makespan,
        "improvement": 1.0 - best_makespan / base_makespan,
        "runtime_s": time.perf_counter() - began,
    }


__all__ = ["SEQUENCE_POLICIES", "pang_case"]
