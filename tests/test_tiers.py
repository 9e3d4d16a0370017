"""Swap preemption and the host tier: hand-derived cases and bad input.

Every case runs on the ``unit-slot`` profile: an iteration takes 1 s whatever its
batch, KV is counted in tokens (``block_tokens = 1``) and a token of KV is one
byte, so a copy of ``x`` tokens at ``B`` bytes/s takes ``x / B`` seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_refused, run

from lsched.cluster import Cluster
from lsched.comparison import compare
from lsched.errors import InputError
from lsched.evaluator import simulate
from lsched.evaluator.engine import ReplicaEngine
from lsched.formulations.bounds.suite import best_bound, bound_report
from lsched.formulations.result import certified_gap
from lsched.instance import Instance
from lsched.policies import Batch, ReplicaView, parse_policy
from lsched.policies.base import PolicyError
from lsched.profile import load_profile
from lsched.tiers import HostTier


def _unit(capacity: int, host: HostTier) -> object:
    return load_profile("unit-slot").replace(kv_capacity_tokens=capacity, host=host)


def test_vllm_v0_swaps_its_victim_and_swaps_it_back_before_new_prompts() -> None:
    """vLLM V0 with ``preemption=swap``, capacity 7 tokens, 4 B/s each way.
    A (3 + 3) and B (2 + 3) arrive at 0; C (1 + 1) at 2.5.

    - [0, 1]: prefill A and B (5 tokens); [1, 2]: decode both (7 tokens held).
    - At 2, A's step needs an 8th token: the last admitted, B, is swapped out
      (3 tokens, 0.75 s) before A's step: [2, 3.75]; A completes at 3.75.
    - At 3.75, C waits but B is swapped: V0 prefills nothing while a request is
      swapped; B swaps back in (0.75 s) and decodes: [3.75, 5.5]; B completes.
    - [5.5, 6.5]: C's prefill emits its only token.

    With ``preemption=recompute`` B is recomputed instead: A completes at 3; B
    re-prefills its 4 tokens beside C's prompt in [3, 4], where both complete.
    """
    instance = Instance(
        arrival_s=np.array([0.0, 0.0, 2.5]),
        prompt_tokens=np.array([3, 2, 1]),
        output_tokens=np.array([3, 3, 1]),
    )
    profile = _unit(7, HostTier(100, h2d_bytes_per_s=4.0, d2h_bytes_per_s=4.0))
    swap = simulate(instance, profile, "vllm-v0:preemption=swap", engine="python")
    assert swap.requests["completion_s"].tolist() == [3.75, 5.5, 6.5]
    assert swap.requests["swap_outs"].tolist() == [0, 1, 0]
    m = swap.metrics
    assert (m["swap_out_bytes"], m["swap_in_bytes"]) == (3.0, 3.0)
    assert m["swap_stall_s"] == 1.5 and m["recompute_avoided_tokens"] == 3
    assert m["recomputed_tokens"] == 0
    recompute = simulate(instance, profile, "vllm-v0", engine="python")
    assert recompute.requests["completion_s"].tolist() == [3.0, 4.0, 4.0]
    assert recompute.metrics["recomputed_tokens"] == 3
    assert "swap_out_bytes" not in recompute.metrics


def test_fastserve_swaps_instead_of_recomputing() -> None:
    """FastServe on Llama-2-70B with its KV cut to 6,000 tokens and 60 requests
    at 2 per second: without swap its MLFQ recomputes; with swap it keeps its
    reserve by swapping idle requests out, recomputing less. Asynchronous copies
    add nothing to iterations; blocking ones add exactly their bytes / bandwidth.
    """
    rng = np.random.default_rng(7)
    n = 60
    instance = Instance(
        arrival_s=np.sort(rng.uniform(0, 30, n)),
        prompt_tokens=rng.integers(50, 800, n),
        output_tokens=rng.integers(20, 300, n),
    )
    profile = load_profile("llama2-70b-a100-tp4").replace(kv_capacity_tokens=6000)
    recompute = simulate(instance, profile, "fastserve", engine="python")
    assert recompute.metrics["recomputed_tokens"] > 0
    for mode in ("async", "blocking"):
        label = f"fastserve:swap=true,swap_mode={mode}"
        swap = simulate(instance, profile, label, engine="python")
        m = swap.metrics
        assert swap.requests["swap_outs"].sum() > 0
        assert m["recomputed_tokens"] < recompute.metrics["recomputed_tokens"]
        assert m["swap_out_bytes"] == m["swap_in_bytes"]  # everyone came back
        copies_s = 2 * m["swap_out_bytes"] / profile.host.d2h_bytes_per_s
        expected = 0.0 if mode == "async" else copies_s
        assert m["swap_stall_s"] == pytest.approx(expected, rel=1e-12)
        assert (
            m["recompute_avoided_tokens"] * profile.kv_bytes_per_token
            == (m["swap_out_bytes"])
        )


@pytest.mark.parametrize(
    ("host", "field"),
    [
        ({"memory_bytes": -1}, "host.memory_bytes"),
        ({"memory_bytes": 1.5}, "host.memory_bytes"),
        ({"memory_bytes": 10, "h2d_bytes_per_s": 0}, "host.h2d_bytes_per_s"),
        ({"memory_bytes": 10, "d2h_bytes_per_s": -3.0}, "host.d2h_bytes_per_s"),
        ({"memory_bytes": 10, "d2h_bytes_per_s": float("inf")}, "host.d2h_bytes_per_s"),
    ],
)
def test_a_bad_host_tier_names_its_field(host: dict, field: str) -> None:
    with pytest.raises(InputError) as info:
        HostTier(**host)
    assert info.value.field == field


def test_a_swap_mode_that_does_not_exist_is_refused() -> None:
    with pytest.raises(InputError, match="expected one of blocking, async"):
        parse_policy("fastserve:swap=true,swap_mode=sometimes")
    with pytest.raises(InputError, match="expected recompute or swap"):
        parse_policy("vllm-v0:preemption=offload")


def test_a_host_tier_smaller_than_a_request_is_refused_when_swapping() -> None:
    instance = Instance(
        arrival_s=np.zeros(2),
        prompt_tokens=np.array([3, 9]),
        output_tokens=np.array([2, 2]),
    )
    profile = _unit(20, HostTier(9))  # 9 tokens; request 1 peaks at 10
    with pytest.raises(InputError, match="less than one request's peak KV") as info:
        simulate(instance, profile, "vllm-v0:preemption=swap")
    assert info.value.field == "host.memory_bytes"
    simulate(instance, profile, "vllm-v0")  # recompute needs no host tier


def test_the_engine_refuses_swaps_that_break_the_rules() -> None:
    class Bad:
        def __init__(self, batch: Batch) -> None:
            self.batch = batch

        def decide(self, view: ReplicaView) -> Batch:
            ids = view.waiting
            if len(ids):
                return Batch(prefill=ids, prefill_tokens=view.prompt_tokens[ids])
            return self.batch

    cases = [
        (Batch(decode=np.array([0]), swap_in=np.array([0])), "is not swapped"),
        (Batch(swap_out=np.array([0])), "needs an iteration"),
        (Batch(decode=np.array([0]), swap_out=np.array([0])), "not past its prefill"),
    ]
    for batch, message in cases:
        engine = ReplicaEngine(
            np.zeros(1), np.array([3]), np.array([3]), None,
            _unit(10, HostTier(100, 1.0, 1.0)), Bad(batch),
        )  # fmt: skip
        with pytest.raises(PolicyError, match=message):
            engine.run()
    full = ReplicaEngine(
        np.zeros(1), np.array([3]), np.array([3]), None,
        _unit(10, HostTier(2, 1.0, 1.0)),
        Bad(Batch(decode=np.zeros(0, dtype=np.int64), swap_out=np.array([0]))),
    )  # fmt: skip
    with pytest.raises(PolicyError, match="host tier full"):
        full.run()


def test_cli_refuses_bad_host_settings(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trace = Path(__file__).resolve().parents[1] / "instances" / "default.csv"
    base = ["simulate", str(trace), "--model", "unit-slot"]
    for extra, needles in [
        (["--set", "host.h2d_bytes_per_s=0"], ("host.h2d_bytes_per_s", "bytes/s > 0")),
        (["--set", "host.memory_bytes=-5"], ("host.memory_bytes",)),
        (["--set", "host.speed=3"], ("host.speed", "unknown")),
        (
            ["--set", "host.memory_bytes=1", "--policy", "vllm-v0:preemption=swap"],
            ("host.memory_bytes", "peak KV"),
        ),
        (["--policy", "fastserve:swap=true,swap_mode=never"], ("swap_mode",)),
    ]:
        assert_refused(*run(base + extra, capsys), *needles)
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(
        '[[pool]]\nmodel = "unit-slot"\nhost = { memory_bytes = 10, '
        "d2h_bytes_per_s = 0 }\n"
    )
    code, out, err = run(["simulate", str(trace), "--cluster", str(cluster)], capsys)
    assert_refused(code, out, err, "host.d2h_bytes_per_s", "bytes/s > 0")


def test_infinigen_serves_from_host_memory_at_the_fetch_time() -> None:
    """InfiniGen, fetching half the context at 2 B/s, host memory 100 bytes: the
    pool's capacity becomes 100 tokens, and a decode step takes max(1 s, 0.5 * K /
    2) with K = context + 1. A (prompt 4, output 3) alone: prefill [0, 1]; steps
    with K = 5 and 6 take 1.25 s and 1.5 s: [1, 2.25], [2.25, 3.75].
    """
    instance = Instance(
        arrival_s=np.zeros(1), prompt_tokens=np.array([4]), output_tokens=np.array([3])
    )
    profile = _unit(10, HostTier(100, h2d_bytes_per_s=2.0))
    result = simulate(instance, profile, "infinigen:fetch_fraction=0.5")
    assert result.requests["completion_s"].tolist() == [3.75]
    assert result.profile == "unit-slot+offload"
    cluster = Cluster.colocated(profile, parse_policy("infinigen"))
    served = cluster.pools[0].profile
    assert served.kv_capacity_tokens == 100 and "kv_offload" in served.sources
    # building a pool again from its served profile does not offload twice
    again = Cluster.colocated(served, parse_policy("infinigen")).pools[0].profile
    assert again == served
    with pytest.raises(InputError, match=r"share in \(0, 1\]"):
        parse_policy("infinigen:fetch_fraction=0")


def test_compare_bounds_every_policy_of_the_host_tier() -> None:
    """On unit slots, recompute, blocking swap, asynchronous swap and InfiniGen
    each get a certified gap >= 0; swapping runs are not slot-model schedules, and
    InfiniGen's gap is to the bounds of the profile it serves with."""
    rng = np.random.default_rng(3)
    n = 12
    instance = Instance(
        arrival_s=np.sort(rng.integers(0, 6, n)).astype(float),
        prompt_tokens=rng.integers(2, 8, n),
        output_tokens=rng.integers(2, 8, n),
    )
    profile = _unit(30, HostTier(200, 20.0, 20.0))
    labels = ["vllm-v0", "vllm-v0:preemption=swap", "fastserve:swap=true",
              "fastserve:swap=true,swap_mode=blocking", "infinigen"]  # fmt: skip
    report = compare(instance, profile, policies=labels, backend=None)
    rows = {row.policy: row for row in report.policies}
    for label in labels:
        assert rows[label].gap is not None and rows[label].gap >= -1e-12, label
    swapped = rows["vllm-v0:preemption=swap"].result.requests["swap_outs"].sum()
    assert swapped > 0
    assert rows["vllm-v0:preemption=swap"].bound_scope == "any"
    served = Cluster.colocated(profile, parse_policy("infinigen")).pools[0].profile
    own = bound_report(instance, served, "latency").bounds
    expected = certified_gap(rows["infinigen"].objective_value, best_bound(own, "any"))
    assert rows["infinigen"].gap == pytest.approx(expected)
