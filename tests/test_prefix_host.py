"""The prefix cache's host tier (rule 5 of :mod:`lsched.evaluator.prefix`) by hand.

Three 1,100-token prompts on ``llama2-70b-a100-tp4`` (KV blocks of 16 tokens,
327,680 KV bytes per token, host-to-device 25 GB/s: PCIe 4.0 x16, the default of
:mod:`lsched.tiers`) with Mooncake's 512-token hash blocks, under ``vllm``, and
the replica's KV cut to 2,048 tokens (128 blocks), so that an evictable hash
block takes ``g = 512 / 16 = 32`` KV blocks:

- A (hashes [1, 2, 3], one output token) arrives at 0 and completes in its
  prefill: its three blocks become evictable (96 KV blocks);
- C (hashes [7, 8, 9], one token) arrives at 5: its 69 blocks beside the 96
  make 165 > 128, so ``ceil(37 / 32) = 2`` blocks are evicted before its run,
  ``lru`` taking A's first two (blocks 1 and 2);
- B (hashes [1, 2, 4], three tokens) arrives at 10.

With the GPU cache alone B finds nothing (its chain starts at block 1, evicted)
and its TTFT is its whole prefill, ``0.26150 s`` (``test_prefix_engine``). With
a host tier of 10,000 tokens (19 blocks) every block A and C computed was
written through to it, so B's leading run over both tiers is ``h = 2`` blocks:
it takes ``x = min(2 x 512, 1100, 1099) = 1024`` tokens, both blocks copied
from the host, ``y = 1024`` tokens, ``1024 x 327,680 / 25e9 = 0.0134217728 s``
before its prefill, which computes ``P = 76`` tokens with ``Q = 76 x 1100 =
83,600`` (``0.0572010 s``, 0.20430 s less than the whole prompt,
``test_prefix_engine``): TTFT ``0.0134218 + 0.0572010 = 0.0706228 s``,
shorter by ``0.2615042 - 0.0706228 = 0.1908814 s``. With a host tier of
1,024 tokens (2 blocks) A's writes keep blocks 2 and 3, C's then 8 and 9: B
finds nothing again.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_refused, run, shared_prefix_trace
from prefix_helpers import hashed_instance
from reference_engine import simulate_naive
from test_cached_bounds import PROFILES, _shared_prefix_instance

from lsched.cluster import Cluster, Pool
from lsched.errors import InputError
from lsched.evaluator import SimulationResult, simulate
from lsched.formulations.bounds.cached import cached_work_bounds
from lsched.instance import Instance
from lsched.prefix import PrefixCacheSpec, parse_prefix_cache
from lsched.profile import DeploymentProfile, load_profile
from lsched.tiers import HostTier
from lsched.validator import ValidationReport, validate_cluster, validate_schedule

COPY_S = 1024 * 327_680 / 25e9


def _prefill_s(profile: DeploymentProfile, p: int, q: int) -> float:
    """One prefill-only iteration of ``P = p``, ``Q = q`` (the cost model)."""
    phi = np.array([[1.0, p, q, 0.0, 0.0, 1.0]])
    return float(profile.iteration_time_s(phi)[0])


def _profile() -> DeploymentProfile:
    return load_profile("llama2-70b-a100-tp4").replace(kv_capacity_tokens=2048)


def _acb() -> Instance:
    """A at 0, C at 5, B at 10 (module docstring)."""
    hashes = [[1, 2, 3], [7, 8, 9], [1, 2, 4]]
    return hashed_instance(
        np.array([0.0, 5.0, 10.0]),
        np.array([1100, 1100, 1100]),
        np.array([1, 1, 3]),
        hashes,
        512,
    )


def _run(cache: str) -> SimulationResult:
    return simulate(_acb(), _profile(), "vllm", prefix_cache=cache, log=True)


def test_a_host_hit_delays_the_prefill_by_the_copy_and_saves_its_compute() -> None:
    """B's TTFT is the copy plus the prefill of its 76 uncached tokens (module
    docstring); both engines and the validator agree."""
    profile = _profile()
    assert (profile.kv_bytes_per_token, profile.host.h2d_bytes_per_s) == (
        327_680,
        25e9,
    )
    assert pytest.approx(0.0134217728, rel=1e-12) == COPY_S
    cached_s = _prefill_s(profile, 76, 83_600)
    whole_s = _prefill_s(profile, 1100, 1_210_000)
    assert (cached_s, whole_s) == pytest.approx((0.0572010, 0.2615042), abs=5e-8)
    gpu = _run("lru")
    assert gpu.requests["cached_tokens"].tolist() == [0, 0, 0]
    assert gpu.evictions is not None
    assert gpu.evictions.values.tolist() == [[1, 2], [2, 3]]
    host = _run("lru:host_capacity_tokens=10000")
    assert host.requests["cached_tokens"].tolist() == [0, 0, 1024]
    ttft = {
        name: result.requests["first_token_s"].iloc[2] - 10.0
        for name, result in (("gpu", gpu), ("host", host))
    }
    assert ttft["gpu"] == pytest.approx(whole_s, rel=1e-12)
    assert ttft["host"] == pytest.approx(COPY_S + cached_s, rel=1e-12)
    assert ttft["gpu"] - ttft["host"] == pytest.approx(0.1908814, abs=5e-8)
    assert host.runs is not None
    prefill = host.runs.iloc[2]
    assert (prefill["prefill_tokens"], prefill["prefill_attention"]) == (76, 83_600)
    assert prefill["end_s"] - prefill["start_s"] == pytest.approx(ttft["host"])
    assert host.metrics["host_hit_tokens"] == 1024
    assert host.metrics["host_copy_s"] == pytest.approx(COPY_S, rel=1e-12)
    naive = simulate_naive(_acb(), profile, "vllm", prefix_cache=("lru", None, 10000))
    assert naive.first_token_s[2] - 10.0 == pytest.approx(ttft["host"], rel=1e-12)
    assert (naive.host_hit_tokens, naive.host_copy_s) == (1024, COPY_S)
    for cache, result in (("lru", gpu), ("lru:host_capacity_tokens=10000", host)):
        pool = Pool(profile, "vllm", prefix_cache=cache)
        validate_cluster(_acb(), Cluster((pool,)), result).raise_if_invalid()


def test_a_host_cache_of_two_blocks_keeps_nothing_b_can_use() -> None:
    """A 1,024-token host cache holds A's blocks 2 and 3, then C's 8 and 9:
    B's chain (block 1 first) is nowhere, so it computes its whole prompt."""
    result = _run("lru:host_capacity_tokens=1024")
    assert result.requests["cached_tokens"].tolist() == [0, 0, 0]
    assert result.metrics["host_hit_tokens"] == 0
    ttft = result.requests["first_token_s"].iloc[2] - 10.0
    assert ttft == pytest.approx(_prefill_s(_profile(), 1100, 1_210_000), rel=1e-12)
    naive = simulate_naive(_acb(), _profile(), "vllm", prefix_cache=("lru", None, 1024))
    assert naive.cached_tokens is not None
    assert naive.cached_tokens.tolist() == [0, 0, 0]


def _validate(
    result: SimulationResult, cache: str, **forged: object
) -> ValidationReport:
    tables = {
        "runs": result.runs,
        "members": result.members,
        "preemptions": result.preemptions,
        "evictions": result.evictions,
    } | forged
    spec = parse_prefix_cache(cache)
    return validate_schedule(_acb(), _profile(), replicas=1, prefix_cache=spec,
                             **tables)  # fmt: skip


def _rules(report: ValidationReport) -> set[str]:
    return {v.rule for v in report.violations}


def test_forged_host_logs_fail() -> None:
    """B's run without its copy breaks ``run-duration``; the log checked with a
    2-block host cache, which cannot have kept B's blocks, breaks
    ``prefix-cache``."""
    result = _run("lru:host_capacity_tokens=10000")
    assert _validate(result, "lru:host_capacity_tokens=10000").ok
    assert result.runs is not None
    runs = result.runs.copy()
    runs.loc[runs.index[2], "end_s"] -= COPY_S
    assert "run-duration" in _rules(
        _validate(result, "lru:host_capacity_tokens=10000", runs=runs)
    )
    small = _validate(result, "lru:host_capacity_tokens=1024")
    assert "prefix-cache" in _rules(small)
    messages = " ".join(v.message for v in small.violations)
    assert "not resident" in messages or "at most 0" in messages


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lru:host_capacity_tokens=lots", "got 'lots'; expected an integer >= 1"),
        ("lru:host_capacity_tokens=0", "prefix_cache.host_capacity_tokens"),
        ("lru:capacity_tokens=512,host_capacity_tokens=4096",
         "expected at most one"),
        ("lru:host_tokens=4096", "expected some of ['capacity_tokens', "
                                 "'host_capacity_tokens', 'pool_capacity_tokens']"),
        ("lru:host_capacity_tokens=512,pool_capacity_tokens=4096",
         "got host_capacity_tokens and pool_capacity_tokens; expected at most one"),
    ],
)  # fmt: skip
def test_bad_host_caches_are_refused(text: str, message: str) -> None:
    with pytest.raises(InputError) as error:
        parse_prefix_cache(text)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_host_cache_over_the_host_memory_is_refused() -> None:
    """16 GiB of host memory (4 GiB per GPU, 4 GPUs) hold ``17,179,869,184 //
    327,680 = 52,428`` tokens of KV: 52,428 fit, 52,429 do not."""
    profile = _profile()
    Pool(profile, "vllm", prefix_cache="lru:host_capacity_tokens=52428")
    with pytest.raises(InputError) as error:
        Pool(profile, "vllm", prefix_cache="lru:host_capacity_tokens=52429")
    assert "expected at most the 52428 tokens" in str(error.value)
    assert "prefix_cache.host_capacity_tokens" in str(error.value)
    spec = PrefixCacheSpec("lru", None, 3_000_000)
    assert parse_prefix_cache(spec.label) == spec
    bigger = dataclasses.replace(
        profile.host, memory_bytes=3_000_000 * profile.kv_bytes_per_token
    )
    Pool(profile.replace(host=bigger), "vllm", prefix_cache=spec)


def test_cli_host_tier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A host cache that fits reports its metrics (the GPU keeps the shared
    block: no copy); Mooncake's 3,000,000 tokens exceed the default host
    memory, refused with exit 2 from the flag and from a cluster file."""
    # two 600-token prompts 10 s apart sharing their first 512-token block
    trace = str(shared_prefix_trace(tmp_path, 2, 10_000, 2))
    args = ["simulate", trace, "--model", "llama2-70b-a100-tp4"]
    code, out, err = run(
        [*args, "--json", "--prefix-cache", "lru:host_capacity_tokens=50000"], capsys
    )
    assert code == 0, err
    metrics = json.loads(out)["policies"][0]["metrics"]
    assert metrics["prefill_tokens_saved"] == 512
    assert (metrics["host_hit_tokens"], metrics["host_copy_s"]) == (0, 0)
    huge = "lru:host_capacity_tokens=3000000"
    assert_refused(*run([*args, "--prefix-cache", huge], capsys),
                   "--prefix-cache", "3000000 tokens", "52428 tokens")  # fmt: skip
    cluster = tmp_path / "pool.toml"
    cluster.write_text('[[pool]]\nmodel = "llama2-70b-a100-tp4"\npolicy = "vllm"\n'
                       f'prefix_cache = "{huge}"\n')  # fmt: skip
    code, out, err = run(["simulate", trace, "--cluster", str(cluster)], capsys)
    assert_refused(code, out, err, "pool.toml", "prefix_cache", "3000000 tokens")


def test_the_cached_bounds_hold_for_runs_with_a_host_tier() -> None:
    """``cached_work`` and ``cached_prefill_queue`` stay below the total latency
    and makespan of ``vllm`` runs with a host tier whose copies take 1e-4 s per
    token, on a replica whose KV holds just the largest request (so its GPU
    cache loses blocks the host keeps): the copies only add time
    (:mod:`lsched.formulations.bounds.cached`). Not vacuous: some runs copy."""
    copied = 0.0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        instance = _shared_prefix_instance(rng, int(rng.choice([16, 64])))
        base = load_profile(PROFILES[seed % 2])
        peak = int((instance.prompt_tokens + instance.output_tokens).max())
        rate = base.kv_bytes_per_token * 1e4  # bytes/s: 1e-4 s per token
        profile = base.replace(
            kv_capacity_tokens=-(-peak // base.block_tokens) * base.block_tokens,
            host=HostTier(2**40, rate, rate),
        )
        result = simulate(instance, profile, "vllm",
                          prefix_cache="lru:host_capacity_tokens=100000")  # fmt: skip
        copied += result.metrics["host_hit_tokens"]
        done = result.requests["completion_s"].to_numpy()
        runs = {
            "latency": float((done - instance.arrival_s).sum()),
            "makespan": float(done.max() - instance.arrival_s.min()),
        }
        for objective, value in runs.items():
            found = cached_work_bounds(instance, profile, objective, replicas=1)
            assert max(found.values()) <= value * (1 + 1e-9), (seed, objective)
    assert copied > 0
