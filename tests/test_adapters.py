"""LoRA adapters: the column, the generator, the spec, the engine, the validator.

The engine's rules (:mod:`lsched.evaluator.adapters`) are checked three ways: a
hand-derived case, the naive twin (``tests/reference_engine.py``, its own
residency, eviction and load times) on seeded random small instances under the
three policies that admit by vLLM's ``max_loras`` rule, and the validator's
replay of every such log.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_refused, run
from reference_engine import simulate_naive

from lsched.adapters import DEFAULT_ADAPTER_BYTES, AdapterSpec, parse_adapters
from lsched.cluster import Cluster, load_cluster
from lsched.errors import InputError
from lsched.evaluator import simulate, simulate_cluster
from lsched.evaluator.adapters import ReplicaAdapters
from lsched.evaluator.engine import ReplicaEngine
from lsched.generators.adapters import assign_adapters
from lsched.instance import Instance
from lsched.policies import Batch, PolicyError, ReplicaView, parse_policy
from lsched.profile import IterationTime, load_profile
from lsched.profile.toml import iteration_time_toml
from lsched.tiers import HostTier
from lsched.traces import native
from lsched.validator import validate_cluster

RTOL = 1e-9


def _profile(h2d: float = 100.0, **changes: object):
    """unit-slot (1 s per iteration, 1 byte of KV per token) with 1,000 tokens
    of KV and a host-to-device link of ``h2d`` bytes/s."""
    host = HostTier(memory_bytes=10**6, h2d_bytes_per_s=h2d, d2h_bytes_per_s=h2d)
    return load_profile("unit-slot").replace(
        **({"kv_capacity_tokens": 1000, "host": host} | changes)
    )


# -- the column and the generator ---------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_adapter_column_survives_native_io(tmp_path: Path, suffix: str) -> None:
    names = np.array(["lora0", "", 'a,"b'])
    instance = Instance([0.0, 1.0, 2.0], [3, 4, 5], [2, 2, 2], adapter=names)
    path = tmp_path / f"t{suffix}"
    write = native.write_csv if suffix == ".csv" else native.write_parquet
    read = native.read_csv if suffix == ".csv" else native.read_parquet
    write(instance, path)
    back = read(path)[0]
    assert back == instance
    assert back.adapter.tolist() == ["lora0", "", 'a,"b']


def test_assign_adapters_is_seeded_and_follows_the_power_law() -> None:
    base = Instance(np.zeros(4000), np.ones(4000, int), np.ones(4000, int))
    one = assign_adapters(base, 5, alpha=1.5, seed=3)
    assert np.array_equal(
        one.adapter, assign_adapters(base, 5, alpha=1.5, seed=3).adapter
    )
    assert not np.array_equal(
        one.adapter, assign_adapters(base, 5, alpha=1.5, seed=4).adapter
    )
    # P(k) = (k + 1)^-1.5 / sum_j j^-1.5: lora0 0.5267, lora4 0.0471 (n = 5)
    weights = np.arange(1, 6) ** -1.5
    expected = weights / weights.sum()
    share = np.array([(one.adapter == f"lora{k}").mean() for k in range(5)])
    sigma = np.sqrt(expected * (1 - expected) / 4000)
    assert np.all(np.abs(share - expected) < 4 * sigma)


def test_trace_gen_adapters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.csv"
    args = ["trace", "gen", "poisson", "--rate", "2", "--n", "50", "--prompt",
            "uniform:low=1,high=8", "--output", "uniform:low=1,high=4", "--out",
            str(out)]  # fmt: skip
    code, _, err = run([*args, "--adapters", "4:alpha=1"], capsys)
    assert code == 0, err
    names = set(native.read_csv(out)[0].adapter.tolist())
    assert names <= {f"lora{k}" for k in range(4)} and "lora0" in names
    code, out_text, err = run([*args, "--adapters", "4:beta=1"], capsys)
    assert_refused(code, out_text, err, "--adapters", "beta")


# -- the spec ----------------------------------------------------------------------


def test_default_size_is_a_rank_8_llama_7b_adapter() -> None:
    # 32 layers x 4 projections x rank 8 x (4096 in + 4096 out) x 2 bytes
    assert DEFAULT_ADAPTER_BYTES == 16_777_216
    spec = parse_adapters("default")
    assert (spec.max_loras, spec.num_slots, spec.memory_bytes) == (1, 1, 16_777_216)


def test_spec_text_form_round_trips() -> None:
    spec = parse_adapters("size_bytes=10,max_loras=2,slots=3,slot_bytes=40,size.x=30")
    assert spec.sizes == {"x": 30} and spec.memory_bytes == 120
    assert parse_adapters(spec.label) == spec


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("max_loras=0", "adapters.max_loras"),
        ("max_loras=2,slots=1", "adapters.slots"),
        ("slot_bytes=5,size_bytes=10", "adapters.size_bytes"),
        ("slot_bytes=50,size.a=9,size.big=60", "adapters.size.big"),
        ("colour=3", "adapters"),
        ("size_bytes=ten", "adapters.size_bytes"),
    ],
)
def test_bad_spec_names_its_field(text: str, field: str) -> None:
    with pytest.raises(InputError) as info:
        parse_adapters(text)
    assert info.value.field == field


def test_slots_come_out_of_the_kv_and_unknown_names_are_refused() -> None:
    profile = _profile()
    pool = Cluster.colocated(profile, "fcfs", 1, adapters="size_bytes=50,slots=2")
    # 2 slots x 50 bytes at 1 byte per KV token: 100 tokens fewer
    assert pool.pools[0].profile.kv_capacity_tokens == 900
    instance = Instance([0.0], [2], [2], adapter=np.array(["x"]))
    with pytest.raises(InputError, match="request 0 names adapter 'x'") as info:
        simulate(instance, profile, "fcfs", adapters="size.a=5")
    assert info.value.field == "adapter"
    with pytest.raises(InputError, match="expected less than"):
        Cluster.colocated(profile, "fcfs", adapters="size_bytes=1000")
    with pytest.raises(InputError, match="does not admit by max_loras"):
        Cluster.colocated(profile, "sjf", adapters="size_bytes=10")


def test_simulate_cli_refuses_bad_adapters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "t.csv"
    native.write_csv(Instance([0.0], [2], [2], adapter=np.array(["a"])), trace)
    for bad in ("max_loras=0", "slot_bytes=1,size_bytes=2"):
        code, out, err = run(
            ["simulate", str(trace), "--model", "unit-slot", "--adapters", bad],
            capsys,
        )
        assert_refused(code, out, err, "--adapters")


# -- the cost columns ---------------------------------------------------------------


def test_adapter_columns_default_to_zero_and_round_trip() -> None:
    time = load_profile("unit-slot").iteration_time
    assert (time.adapter_s, time.lora_token_s) == (0.0, 0.0)
    assert "adapter_s" not in iteration_time_toml(time)  # existing profiles unchanged
    lora = IterationTime(time.regimes, adapter_s=0.012, lora_token_s=1e-5)
    text = iteration_time_toml(lora)
    assert "adapter_s = 0.012" in text and "lora_token_s = 1e-05" in text
    assert lora != time


def test_dlora_profile_gives_dloras_merged_and_unmerged_times() -> None:
    """llama-7b-dlora: a base-model batch takes merge_time, 15 ms; a batch with
    one adapter unmerge_time, 15 + 12 = 27 ms (dLoRA's scheduler.py). The
    first iteration of the adapter's request also loads it: 2**24 bytes at
    2**35 bytes/s (32 GiB/s) = 2**-11 s."""
    profile = load_profile("llama-7b-dlora")
    instance = Instance([0.0, 1.0], [10, 10], [3, 3], adapter=np.array(["a", ""]))
    served = simulate(instance, profile, "vllm", adapters="default")
    done = served.requests["completion_s"].to_numpy()
    assert done[0] == pytest.approx(3 * 0.027 + 2**-11, rel=1e-12)
    assert done[1] == pytest.approx(1.0 + 3 * 0.015, rel=1e-12)


# -- the engine ---------------------------------------------------------------------


def test_an_adapter_load_delays_its_request_by_the_load_time() -> None:
    """unit-slot: 1 s per iteration; adapters of 50 bytes over 100 bytes/s load
    in 50 / 100 = 0.5 s; one slot, max_loras 1 (KV: 1000 - 50 tokens).

    - t = 0: requests 0 (adapter a) and 1 (base model) are admitted; a loads
      first, so the iteration runs 0 -> 0.5 + 1 = 1.5: both first tokens at 1.5
      (1.0 without adapters); their decode ends at 2.5 (2.0).
    - t = 3: request 2 (a) finds a resident: no load, token 1 at 4, done at 5.
    - t = 6: request 3 (b) evicts a (no running request uses it) and loads:
      token 1 at 6 + 0.5 + 1 = 7.5, done at 8.5.
    """
    instance = Instance(
        [0.0, 0.0, 3.0, 6.0], [2, 2, 2, 2], [2, 2, 2, 2],
        adapter=np.array(["a", "", "a", "b"]),
    )  # fmt: skip
    spec = "size_bytes=50,max_loras=1"
    profile = _profile()
    plain = simulate(instance, profile, "fcfs", engine="python")
    served = simulate(instance, profile, "fcfs", adapters=spec, log=True)
    first = served.requests["first_token_s"].to_numpy()
    assert plain.requests["first_token_s"].tolist()[:2] == [1.0, 1.0]
    assert first.tolist() == [1.5, 1.5, 4.0, 7.5]
    assert served.requests["completion_s"].tolist() == [2.5, 2.5, 5.0, 8.5]
    assert served.metrics["adapter_loads"] == 2
    assert served.metrics["adapter_load_s"] == 1.0
    loads = served.adapter_loads
    assert loads[["adapter", "start_s", "end_s", "evicted"]].values.tolist() == [
        ["a", 0.0, 0.5, ""],
        ["b", 6.0, 6.5, "a"],
    ]
    per = served.adapter_metrics
    assert per.loc["a", "ttft_mean_s"] == (1.5 + 1.0) / 2
    assert per.loc["b", "e2e_mean_s"] == 2.5


def test_eviction_takes_the_least_recently_used_adapter() -> None:
    """Two slots, max_loras 1, one-token requests 2 s apart (each done before
    the next arrives), adapters a, b, a, c, b of 50 bytes at 100 bytes/s (0.5 s
    a load). Resident after each: [a], [a, b], [b, a] (a touched), [a, c] (c
    evicts b, the least recently used), [c, b] (b loads again, evicting a). So
    4 loads, and the first tokens at 0 + 0.5 + 1, 2 + 0.5 + 1, 4 + 1,
    6 + 0.5 + 1, 8 + 0.5 + 1."""
    instance = Instance(
        [0.0, 2.0, 4.0, 6.0, 8.0], [1] * 5, [1] * 5,
        adapter=np.array(["a", "b", "a", "c", "b"]),
    )  # fmt: skip
    served = simulate(
        instance, _profile(), "fcfs", adapters="size_bytes=50,slots=2", log=True
    )
    assert served.requests["first_token_s"].tolist() == [1.5, 3.5, 5.0, 7.5, 9.5]
    loads = served.adapter_loads[["adapter", "evicted"]].values.tolist()
    assert loads == [["a", ""], ["b", ""], ["c", "b"], ["b", "a"]]


def test_max_loras_holds_back_a_second_adapter() -> None:
    """max_loras 1: request 1 (b) waits while request 0 (a) runs, although the
    batch has room; it is admitted at a's completion (t = 3, after a's load of
    0.5 s, and 2 more iterations), loads b (0.5 s) and emits at 4.5."""
    instance = Instance([0.0, 0.0], [2, 2], [3, 1], adapter=np.array(["a", "b"]))
    served = simulate(instance, _profile(), "vllm", adapters="size_bytes=50")
    assert served.requests["admitted_s"].tolist() == [0.0, 3.5]
    assert served.requests["first_token_s"].tolist() == [1.5, 5.0]
    two = simulate(instance, _profile(), "vllm", adapters="size_bytes=50,max_loras=2")
    assert two.requests["admitted_s"].tolist() == [0.0, 0.0]


class _BothAdapters:
    """A policy that admits every waiting request, whatever its adapter."""

    def decide(self, view: ReplicaView) -> Batch:
        waiting = view.waiting
        chunks = view.prompt_tokens[waiting]
        decode = view.running
        return Batch(prefill=waiting, prefill_tokens=chunks, decode=decode)


def test_engine_refuses_a_batch_over_max_loras() -> None:
    profile = _profile()
    codes = np.array([0, 1], dtype=np.int64)
    engine = ReplicaEngine(
        np.zeros(2), np.array([2, 2]), np.array([2, 2]), None, profile,
        _BothAdapters(), adapters=ReplicaAdapters(codes, [0.1, 0.1], 1, 1, ["a", "b"]),
    )  # fmt: skip
    with pytest.raises(PolicyError, match="2 distinct adapters"):
        engine.run()


def _dlora_engine(adapter: list[str], arrival: list[float], output: list[int]):
    """A replica under ``dlora`` on a profile of exact binary times: 0.25 s per
    iteration, 0.5 s per distinct adapter unmerged, 0.125 s per switch, 1-byte
    adapters loading in 1 / 16 = 0.0625 s; one-token prompts; max_num_seqs 2."""
    weights = np.array([[0.25, 0.0, 0.0, 0.0, 0.0, 0.0]])
    time = IterationTime(weights, adapter_s=0.5, merge_switch_s=0.125)
    profile = _profile(h2d=16.0, iteration_time=time, max_num_seqs=2)
    names = sorted({a for a in adapter if a})
    codes = np.array([names.index(a) if a else -1 for a in adapter], dtype=np.int64)
    lora = ReplicaAdapters(codes, [1 / 16] * len(names), 2, 2, names)
    n = len(adapter)
    policy = parse_policy("dlora").make()
    return ReplicaEngine(
        np.array(arrival), np.ones(n, np.int64), np.array(output), None, profile,
        policy, log=True, adapters=lora,
    )  # fmt: skip


def test_dlora_switches_modes_as_derived_by_hand() -> None:
    """dLoRA's rules (lsched.policies.dlora), thresholds right = 1, left =
    15 / 27, with F = min(|Q|, max_num_seqs):

    - t = 0: r0, r1 on a; F = 2, n_a = 2 >= 1 x 2: merge a (counts 2, 2). The
      run loads a (0.0625), switches (0.125), runs at 0.25: ends 0.4375.
    - t = 0.4375: n_a = 2 >= left x 2: stay merged (num_iters 2, counts 4, 4);
      both decode: 0.6875, done.
    - t = 1: r2 on b; n_a = 0 < left, n_b = 1 >= 1 x 1: adjust, merged, with
      t_merge = 2 x 0.015 + 0.02 = 0.05 and t_unmerge = 2 x 0.027 = 0.054:
      4 / 0.05 > 4 / 0.054 and 1 - 0.05 > left, so right = 0.95; merge b: load
      b (a free slot of 2), switch, 0.25: done at 1.4375.
    - t = 2: r3 on the base model; n = 0 everywhere: unmerged, a virtual switch;
      adjust, merged, num_iters 1: t_merge = 0.015 + 0.02, t_unmerge = 0.027,
      1 / 0.035 < 1 / 0.027, so right = 0.95 x 1.1; the run unmerges (switch
      0.125) and runs 0.25 with no adapter: done at 2.375.
    """
    engine = _dlora_engine(["a", "a", "b", ""], [0.0, 0.0, 1.0, 2.0], [2, 2, 1, 1])
    engine.run()
    assert engine.first_token_s.tolist() == [0.4375, 0.4375, 1.4375, 2.375]
    assert engine.completion_s.tolist() == [0.6875, 0.6875, 1.4375, 2.375]
    assert engine.adapters.merged == [(0, 0), (1, 0), (2, 1)]
    assert engine.adapters.switches == 3
    assert engine.policy.right == pytest.approx(0.95 * 1.1, rel=1e-15)
    assert engine.policy.left == 15 / 27


def test_dlora_runs_unmerged_when_no_adapter_dominates() -> None:
    """r0 on a, r1 on b at t = 0: F = 2, n_a = n_b = 1 < 1 x 2: unmerged, both
    adapters in one batch (max_loras 2): 0.0625 x 2 loads + 0.25 + 2 x 0.5 =
    1.375, no switch; the left threshold is untouched (no adjustment)."""
    engine = _dlora_engine(["a", "b"], [0.0, 0.0], [1, 1])
    engine.run()
    assert engine.completion_s.tolist() == [1.375, 1.375]
    assert engine.adapters.merged == [] and engine.adapters.switches == 0
    assert engine.policy.left == 15 / 27 and engine.policy.virtual == 1


# -- against the naive twin and the validator ----------------------------------------


def _case(rng: np.random.Generator) -> tuple[Instance, AdapterSpec, object]:
    n = int(rng.integers(6, 15))
    arrivals = np.sort(rng.uniform(0, 2, n).round(2))
    names = rng.choice(["", "a", "b", "c", "d"], size=n, p=[0.2, 0.3, 0.2, 0.15, 0.15])
    instance = Instance(
        arrivals, rng.integers(1, 13, n), rng.integers(1, 7, n), adapter=names
    )
    max_loras = int(rng.integers(1, 4))
    spec = AdapterSpec(
        size_bytes=20, max_loras=max_loras, slots=max_loras + int(rng.integers(0, 3)),
        sizes={"a": 20, "b": 40, "c": int(rng.integers(10, 40)), "d": 15},
    )  # fmt: skip
    # 0.1 s + 10 ms per prefill token + 20 ms per decode step + 50 ms with a
    # prefill; 30 ms per distinct adapter, 2 ms per LoRA token, 40 ms a switch
    time = IterationTime(
        np.array([[0.1, 0.01, 0.0, 0.02, 0.0, 0.05]]),
        adapter_s=0.03,
        lora_token_s=0.002,
        merge_switch_s=0.04,
    )
    profile = _profile(
        h2d=200.0, iteration_time=time, block_tokens=4,
        kv_capacity_tokens=spec.memory_bytes + int(rng.integers(24, 64)),
        max_num_seqs=int(rng.integers(2, 6)), max_num_batched_tokens=24,
    )  # fmt: skip
    return instance, spec, profile


@pytest.mark.parametrize("policy", ["fcfs", "vllm", "sarathi:chunk=8", "dlora"])
def test_engine_agrees_with_the_naive_twin_and_the_validator(policy: str) -> None:
    rng = np.random.default_rng(19)
    loads = switches = 0
    for _ in range(12):
        instance, spec, profile = _case(rng)
        cluster = Cluster.colocated(profile, policy, 2, adapters=spec)
        fast = simulate_cluster(instance, cluster, log=True, engine="python")
        naive = simulate_naive(instance, profile, policy, replicas=2, adapters=spec)
        for column in ("admitted_s", "first_token_s", "completion_s"):
            np.testing.assert_allclose(
                fast.requests[column], getattr(naive, column), rtol=RTOL
            )
        assert fast.requests["preemptions"].tolist() == naive.preemptions.tolist()
        assert fast.metrics["adapter_loads"] == naive.adapter_loads
        assert fast.metrics["adapter_switches"] == naive.adapter_switches
        switches += naive.adapter_switches
        assert fast.metrics["adapter_load_s"] == pytest.approx(
            naive.adapter_load_s, rel=RTOL
        )
        report = validate_cluster(instance, cluster, fast)
        assert report.violations == (), report.violations
        loads += naive.adapter_loads
    assert loads > 12  # the cases load (and evict) adapters
    assert (switches > 0) == (policy == "dlora")  # only dlora merges


def test_validator_catches_a_load_that_is_too_short() -> None:
    instance = Instance([0.0, 0.0], [2, 2], [2, 2], adapter=np.array(["a", "b"]))
    cluster = Cluster.colocated(_profile(), "fcfs", 1, adapters="size_bytes=50")
    result = simulate_cluster(instance, cluster, log=True)
    loads = result.adapter_loads.copy()
    loads.loc[0, "end_s"] = 0.25  # 50 bytes at 100 bytes/s take 0.5 s
    broken = type(result)(**{**vars(result), "adapter_loads": loads})
    rules = {v.rule for v in validate_cluster(instance, cluster, broken).violations}
    assert "adapter-load" in rules
    dropped = type(result)(**{**vars(result), "adapter_loads": loads.iloc[1:]})
    rules = {v.rule for v in validate_cluster(instance, cluster, dropped).violations}
    assert "adapter-resident" in rules


def test_validator_catches_a_wrong_merged_run() -> None:
    """dlora on two requests of a (llama-7b-dlora): n_a = F = 2 >= 1 x F, so it
    merges a; a log that names b for a merged run breaks merged-batch."""
    instance = Instance([0.0, 0.0], [2, 2], [2, 2], adapter=np.array(["a", "a"]))
    profile = load_profile("llama-7b-dlora")
    cluster = Cluster.colocated(profile, "dlora", 1, adapters="max_loras=2")
    result = simulate_cluster(instance, cluster, log=True)
    assert validate_cluster(instance, cluster, result).violations == ()
    merged = result.merged_runs.copy()
    assert merged["adapter"].tolist() == ["a", "a"]  # prefill, then decode
    merged.loc[0, "adapter"] = "b"
    broken = type(result)(**{**vars(result), "merged_runs": merged})
    rules = {v.rule for v in validate_cluster(instance, cluster, broken).violations}
    assert "merged-batch" in rules


def test_cluster_file_takes_an_adapters_table(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[[pool]]\nmodel = "llama-7b-dlora"\npolicy = "vllm"\n'
        "adapters = { max_loras = 2, sizes = { a = 1000, b = 3000 } }\n",
        encoding="utf-8",
    )
    pool = load_cluster(path).pools[0]
    assert pool.adapters == AdapterSpec(max_loras=2, sizes={"a": 1000, "b": 3000})
    # 2 slots of the largest adapter, 3000 bytes, at 524,288 bytes per token: 1 token
    assert pool.profile.kv_capacity_tokens == 117654 - 1
    path.write_text(
        '[[pool]]\nmodel = "unit-slot"\nadapters = { max_loras = 0 }\n',
        encoding="utf-8",
    )
    with pytest.raises(InputError, match="max_loras"):
        load_cluster(path)


def test_snapshot_restores_the_adapters_and_the_mode() -> None:
    """A dlora replica stopped at t = 1, snapshotted, run to its end, restored
    and run again ends the same: residency, loads, mode and switches included."""
    engine = _dlora_engine(["a", "a", "b", ""], [0.0, 0.0, 1.0, 2.0], [2, 2, 1, 1])
    engine.run(until_s=1.0)
    state = engine.snapshot()
    engine.run()
    first = (engine.completion_s.tolist(), list(engine.adapters.loads),
             list(engine.adapters.merged), engine.adapters.switches)  # fmt: skip
    engine.restore(state)
    assert len(engine.adapters.loads) == 1 and engine.adapters.mode == 0
    engine.run()
    again = (engine.completion_s.tolist(), list(engine.adapters.loads),
             list(engine.adapters.merged), engine.adapters.switches)  # fmt: skip
    assert again == first
