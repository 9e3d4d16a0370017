"""The Pang et al. 2025 study: one small case, checked against its own parts."""

from __future__ import annotations

import pytest

from lsched.evaluator import simulate
from lsched.generators import gsm8k
from lsched.predictors import oracle
from lsched.profile import load_profile
from lsched.studies.pang2025 import pang_case


@pytest.mark.parametrize("seed", [0, 1])
def test_bound_below_every_method_and_best_is_best(seed: int) -> None:
    row = pang_case(seed, n=60, time_limit_s=5)
    methods = (
        "baseline_makespan_s",
        "hybrid_makespan_s",
        "hybrid_lr_makespan_s",
        "best_makespan_s",
    )
    for name in methods:
        assert row["bound_s"] <= row[name], name
    assert row["best_makespan_s"] == min(row[m] for m in methods)
    assert row["hybrid_lr_makespan_s"] < row["baseline_makespan_s"]
    assert row["gap"] == pytest.approx(1 - row["bound_s"] / row["best_makespan_s"])
    assert 0 < row["best_efficiency"] <= 1
    assert 0 < row["baseline_busy"] <= 1 and 0 < row["best_busy"] <= 1
    # the baseline is an independent evaluator run of vLLM with round robin
    profile = load_profile("llama-65b-pang2025")
    again = simulate(oracle(gsm8k(60, seed=seed)), profile, "vllm", replicas=2)
    assert again.metrics["makespan_s"] == pytest.approx(row["baseline_makespan_s"])
