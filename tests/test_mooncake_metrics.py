"""Mooncake's TBT and effective capacity (:mod:`lsched.metrics`,
:mod:`lsched.evaluator.gaps`, :mod:`lsched.validator.tbt`): hand-derived values
on written-down gaps and on a small run whose every token time is worked out
below; the validator recomputes them from the log and flags forged ones. The
naive engine's twin (``tests/reference_engine.py``, ``_naive_tbt``) is compared
on random instances in ``test_engine_equivalence`` and ``test_prefix_equivalence``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run
from prefix_helpers import hashed_instance

from lsched.cluster import Cluster, Pool
from lsched.errors import InputError
from lsched.evaluator import simulate, simulate_cluster
from lsched.evaluator.gaps import token_times
from lsched.instance import Instance
from lsched.metrics import effective_capacity, mooncake_tbt, tbt_gaps_counted
from lsched.profile import IterationTime, load_profile
from lsched.validator import validate_schedule

DATA = Path(__file__).parent / "data" / "traces"


def test_gaps_counted_round_up_with_at_least_one() -> None:
    # ceil(g / 10): 1..10 gaps -> 1, 11..20 -> 2, 21 -> 3; no gap -> 0
    got = tbt_gaps_counted([0, 1, 9, 10, 11, 20, 21])
    assert got.tolist() == [0, 1, 1, 1, 2, 2, 3]


def test_tbt_of_written_gaps() -> None:
    # request 0: 12 tokens, 11 gaps; the two longest (ceil(11/10) = 2) are 3 and 2
    gaps0 = [1.0, 0.5, 3.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 2.0]
    # request 1: 2 tokens, one gap of 0.25; request 2: one token, no gap;
    # request 3: 11 tokens, 10 gaps, the longest alone (0.75) counts
    gaps3 = [0.1] * 4 + [0.75] + [0.1] * 5
    times = {
        0: np.concatenate([[10.0], 10.0 + np.cumsum(gaps0)]),
        1: np.array([1.0, 1.25]),
        2: np.array([7.0]),
        3: np.concatenate([[0.0], np.cumsum(gaps3)]),
    }
    request = np.concatenate([np.full(len(t), i) for i, t in times.items()])
    when = np.concatenate(list(times.values()))
    order = np.random.default_rng(3).permutation(len(when))  # any order
    tbt = mooncake_tbt(request[order], when[order], 5)  # request 4: no token
    assert tbt[0] == pytest.approx((3.0 + 2.0) / 2, rel=1e-12)
    assert tbt[1] == pytest.approx(0.25, rel=1e-12)
    assert tbt[3] == pytest.approx(0.75, rel=1e-12)
    assert math.isnan(tbt[2]) and math.isnan(tbt[4])


def test_effective_capacity_by_hand() -> None:
    ttft = np.array([2.0, 3.5, 1.5, np.nan, 31.0])  # the 4th was never served
    tbt = np.array([2.0, 1.0, np.nan, np.nan, 0.1])
    # threshold 1 s: the 2nd (TBT 1 <= 1) and 3rd (no gap) meet; the 5th misses
    # on TTFT (31 > 30), the 4th was not served, the 1st misses on TBT
    assert effective_capacity(ttft, tbt, 1.0) == pytest.approx(2 / 5)
    assert effective_capacity(ttft, tbt, 0.5) == pytest.approx(1 / 5)
    assert effective_capacity(ttft, tbt, 1.0, ttft_limit_s=3.0) == pytest.approx(1 / 5)
    assert effective_capacity(ttft, tbt, 3.0, ttft_limit_s=40.0) == pytest.approx(4 / 5)
    with pytest.raises(InputError, match="tbt_threshold_s"):
        effective_capacity(ttft, tbt, 0.0)


def _worked_run() -> tuple[Instance, object]:
    """The instance and profile of :func:`test_simulated_tbt_by_hand`."""
    weights = np.array([[1.0, 0.25, 0.0, 0.0, 0.0, 0.0]])  # 1 s + 0.25 s per P
    profile = load_profile("unit-slot").replace(
        iteration_time=IterationTime((weights,)), max_model_len=40
    )
    instance = Instance(
        arrival_s=np.array([0.0, 2.5, 20.0, 21.0]),
        prompt_tokens=np.array([4, 8, 2, 50]),
        output_tokens=np.array([13, 2, 1, 3]),
    )
    return instance, profile


def test_simulated_tbt_by_hand() -> None:
    """vLLM on one replica, an iteration taking ``1 + 0.25 P`` seconds:

    - [0, 2]: A's prompt (P = 4, 2 s): A's token 1 at 2.
    - [2, 3]: A decodes (B arrives at 2.5, mid-iteration): token 2 at 3.
    - [3, 6]: A decodes, B's prompt (P = 8, 3 s): A's token 3 and B's token 1
      at 6 (B's TTFT 3.5).
    - [6, 7]: both decode: A's token 4, B's token 2 (B done, one gap of 1 s).
    - [7, 16]: A decodes alone, tokens 5..13 at 8..16 (one held run).
    - C arrives at 20: its prompt (P = 2, 1.5 s), one token at 21.5, no gap.
    - D's prompt (50) exceeds max_model_len 40: rejected.

    A's 12 gaps are 1, 3 and ten of 1 s: TBT = mean of the ceil(12/10) = 2
    longest = (3 + 1) / 2 = 2 s; B's TBT is its one gap, 1 s; C has none.
    Effective capacity at 100, 200 and 300 ms: only C (TTFT 1.5 s, no gap)
    meets, 1 of the 4 requests (D, rejected, is a miss).
    """
    instance, profile = _worked_run()
    result = simulate(instance, profile, "vllm", log=True)
    tbt = result.requests["tbt_s"].to_numpy()
    np.testing.assert_allclose(tbt[:2], [2.0, 1.0], rtol=1e-12)
    assert np.isnan(tbt[2:]).all()
    m = result.metrics
    assert m["num_rejected"] == 1
    assert m["tbt_mean_s"] == pytest.approx(1.5, rel=1e-12)
    for key in ("100ms", "200ms", "300ms"):
        assert m[f"effective_capacity_tbt_{key}"] == pytest.approx(0.25)
    assert result.replica_metrics is not None
    assert result.replica_metrics.loc[0, "tbt_mean_s"] == pytest.approx(1.5)
    # the held run of A's tokens 5..13 is one run of 9 iterations
    assert int(result.runs["iterations"].max()) == 9


def test_validator_recomputes_and_flags_forged_tbt() -> None:
    instance, profile = _worked_run()
    result = simulate(instance, profile, "vllm", log=True)

    def check(requests: object, metrics: object) -> object:
        return validate_schedule(
            instance, profile, result.runs, result.members, result.preemptions,
            replicas=1, requests=requests, metrics=metrics,
        )  # fmt: skip

    report = check(result.requests, result.metrics)
    assert report.ok, report
    assert report.metrics["tbt_mean_s"] == pytest.approx(1.5, rel=1e-12)
    forged = result.requests.copy()
    forged.loc[0, "tbt_s"] = 1.0  # the mean of all of A's gaps, not its longest
    metrics = dict(result.metrics) | {"effective_capacity_tbt_300ms": 0.5}
    report = check(forged, metrics)
    messages = [v.message for v in report.violations]
    assert any(m.startswith("tbt_s = 1.0; the log gives 2.0") for m in messages)
    assert any("effective_capacity_tbt_300ms = 0.5" in m for m in messages)


@pytest.mark.parametrize("disaggregated", [False, True])
def test_token_times_agree_with_the_records(disaggregated: bool) -> None:
    """Every request emits ``o_i`` tokens in the log, the first at its
    ``first_token_s`` and the last at its ``completion_s`` (from the engine's
    records), in a colocated run with preemptions and a disaggregated one (token
    1 on the prefill replica, the rest on the decode replica after the KV
    transfer)."""
    rng = np.random.default_rng(11)
    n = 14
    instance = Instance(
        arrival_s=np.sort(rng.uniform(0.0, 0.5, n)),
        prompt_tokens=rng.integers(10, 300, n),
        output_tokens=rng.integers(1, 40, n),
    )
    profile = load_profile("opt-13b-a100-tp1-vllm")
    if disaggregated:
        cluster = Cluster(
            (Pool(profile, "vllm", 1, name="p", role="prefill"),
             Pool(profile, "vllm", 1, name="d", role="decode"))
        )  # fmt: skip
    else:  # a KV of 600 tokens: preemptions and recomputes
        cluster = Cluster((Pool(profile.replace(kv_capacity_tokens=600), "vllm", 1),))
    result = simulate_cluster(instance, cluster, log=True)
    assert disaggregated or result.metrics["preemptions"] > 0
    request, when = token_times(instance, cluster, result.runs, result.members)
    counts = np.bincount(request, minlength=n)
    np.testing.assert_array_equal(counts, instance.output_tokens)
    first = np.full(n, np.inf)
    last = np.full(n, -np.inf)
    np.minimum.at(first, request, when)
    np.maximum.at(last, request, when)
    records = result.requests
    np.testing.assert_allclose(first, records["first_token_s"], rtol=1e-12)
    np.testing.assert_allclose(last, records["completion_s"], rtol=1e-12)


def test_cli_tbt_reports_mooncake_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    """``--tbt`` keeps the log: the JSON and the table carry TBT and effective
    capacity; without it they are absent. A request's TBT averages its longest
    gaps, so it is at least its TPOT (the mean gap): their means over the same
    requests (every one with two tokens or more) keep that order."""
    trace = str(DATA / "mooncake_sample.jsonl")
    args = ["simulate", trace, "--model", "llama2-70b-a100-tp4"]
    code, out, err = run([*args, "--tbt", "--json"], capsys)
    assert code == 0, err
    (metrics,) = (p["metrics"] for p in json.loads(out)["policies"])
    assert metrics["tbt_mean_s"] >= metrics["tpot_mean_s"] > 0
    shares = [metrics[f"effective_capacity_tbt_{ms}ms"] for ms in (100, 200, 300)]
    assert 0 <= shares[0] <= shares[1] <= shares[2] <= 1
    code, out, err = run([*args, "--tbt"], capsys)
    assert code == 0, err
    assert "effective_capacity_tbt_300ms" in out and "tbt_mean_s" in out
    code, out, err = run([*args, "--json"], capsys)
    assert code == 0, err
    assert "tbt_mean_s" not in json.loads(out)["policies"][0]["metrics"]


def test_per_replica_hit_ratio_is_its_requests_cached_share() -> None:
    """Per replica, ``prefix_hit_ratio`` is its requests' cached tokens over
    their prompts (no preemption here: one admission each); replica 0 (requests
    0, 2, 4) finds 4 tokens for requests 2 and 4: 8 / 16."""
    hashes = [[1, 2], [1, 3], [1, 2, 4], [5], [1, 2, 6], [5, 7]]
    instance = hashed_instance(
        np.arange(6.0) * 0.01,
        np.array([4, 4, 6, 2, 6, 4]),
        np.array([3, 2, 2, 2, 2, 2]),
        hashes,
        2,
    )
    unit = load_profile("unit-slot")
    result = simulate(instance, unit, "vllm", replicas=2, prefix_cache="lru")
    assert result.metrics["preemptions"] == 0
    requests = result.requests
    assert result.replica_metrics is not None
    for replica, row in result.replica_metrics.iterrows():
        mine = requests[requests["replica"] == replica]
        share = mine["cached_tokens"].sum() / instance.prompt_tokens[mine.index].sum()
        assert row["prefix_hit_ratio"] == pytest.approx(share)
    assert result.replica_metrics.loc[0, "prefix_hit_ratio"] == pytest.approx(0.5)
