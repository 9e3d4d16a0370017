"""Bounds for a cluster (disaggregated prefill and decode, pools of different
profiles): hand-derived critical paths, <= every policy run on the cluster, the
colocated bounds as before, and ``lsched bound`` / ``lsched compare --cluster``."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_refused, run
from test_engine_equivalence import PROFILES, TIME_SCALE_S, tight_profile

from lsched.cluster import Cluster, Link, Pool
from lsched.comparison import compare_cluster, objective_value
from lsched.evaluator import simulate_cluster
from lsched.formulations.bounds.cluster import CLUSTER_BOUNDS, cluster_bounds
from lsched.formulations.bounds.suite import bound_report, cluster_bound_report
from lsched.formulations.bounds.work import work_bounds
from lsched.instance import Instance
from lsched.profile import DeploymentProfile, IterationTime, load_profile

UNIT = load_profile("unit-slot")  # every iteration 1 s; KV 1 byte per token
POLICIES = ("fcfs", "vllm", "sarathi:chunk=8", "vllm-v0")
#: Profiles of the random clusters, and the time scale of their arrivals.
BASES = {
    name: (PROFILES[name], TIME_SCALE_S[name])
    for name in ("unit-slot", "opt-13b-a100-tp1-vllm", "synthetic-roofline")
} | {"opt-13b-a100-tp1-distserve": (load_profile("opt-13b-a100-tp1-distserve"), 0.03)}


def make(arrival, prompt, output) -> Instance:
    return Instance(
        arrival_s=np.asarray(arrival, dtype=float),
        prompt_tokens=np.asarray(prompt),
        output_tokens=np.asarray(output),
    )


def disaggregated(
    prefill: DeploymentProfile,
    decode: DeploymentProfile,
    replicas: tuple[int, int] = (1, 1),
    link: Link | None = None,
    policy: str = "fcfs",
) -> Cluster:
    pools = (
        Pool(prefill, policy, replicas[0], name="p", role="prefill"),
        Pool(decode, policy, replicas[1], name="d", role="decode"),
    )
    return Cluster(pools, links=() if link is None else (link,))


# -- hand-derived ----------------------------------------------------------------


def test_one_request_with_a_transfer_is_exact_on_unit_slots() -> None:
    # s = 5, o = 4 at 2: prefill 1 s (token 1 at 3); 5 bytes over 2 B/s plus
    # 0.5 s latency arrive at 6; three decode steps end at 9. Latency 7.
    instance = make([2.0], [5], [4])
    link = Link("p", "d", bandwidth_bytes_per_s=2.0, latency_s=0.5)
    cluster = disaggregated(UNIT, UNIT, link=link)
    for objective in ("latency", "makespan"):
        bounds = cluster_bounds(instance, cluster, objective)
        assert bounds["critical_path"] == pytest.approx(1 + 3 + 3)
        assert max(bounds.values()) == pytest.approx(7.0)
    result = simulate_cluster(instance, cluster)
    assert result.requests["transfer_end_s"].iloc[0] == pytest.approx(6.0)
    assert objective_value(result, instance, "latency") == pytest.approx(7.0)


def test_one_output_token_is_just_the_prefill() -> None:
    instance = make([0.0], [50], [1])
    link = Link("p", "d", bandwidth_bytes_per_s=1.0, latency_s=10.0)
    bounds = cluster_bounds(instance, disaggregated(UNIT, UNIT, link=link))
    assert bounds["critical_path"] == pytest.approx(1.0)


def test_the_critical_path_takes_the_fastest_link() -> None:
    # prompt 8 (8 bytes): p1 -> d 8 s + 1 s, p2 -> d 2 s, o = 3: 1 + 2 + 2
    pools = (
        Pool(UNIT, "fcfs", 1, name="p1", role="prefill"),
        Pool(UNIT, "fcfs", 1, name="p2", role="prefill"),
        Pool(UNIT, "fcfs", 1, name="d", role="decode"),
    )
    links = (Link("p1", "d", 1.0, 1.0), Link("p2", "d", 4.0))
    cluster = Cluster(pools, links=links)
    assert cluster_bounds(make([0.0], [8], [3]), cluster)["critical_path"] == 5.0
    assert cluster.describe() == (
        "disaggregated: 1 prefill p1 (unit-slot) + 1 prefill p2 (unit-slot) + "
        "1 decode d (unit-slot); links p1->d 1 B/s + 1 s fifo, p2->d 4 B/s + 0 s fifo"
    )


def test_decode_work_hand_derived() -> None:
    # 1 s per prefill token and per decode step, nothing else. Four requests
    # s = 1, o = 5 at 0 on four prefill replicas and one decode replica, an ideal
    # link: each needs 4 s of decode work there, none before 1 s. SRPT from 1 s
    # ends them at 5, 9, 13, 17: latency >= 44 (critical paths alone: 4 x 5),
    # makespan >= 17. fcfs decodes the four together (4 s an iteration) from 1 s:
    # all end at 17 (latency 68, makespan 17: tight).
    weights = np.zeros(6)
    weights[[1, 3]] = 1.0
    profile = UNIT.replace(iteration_time=IterationTime(regimes=(weights[None, :],)))
    instance = make(np.zeros(4), np.ones(4), np.full(4, 5))
    cluster = disaggregated(profile, profile, (4, 1))
    latency = cluster_bounds(instance, cluster, "latency")
    assert latency["critical_path"] == pytest.approx(20.0)
    assert latency["decode_work"] == pytest.approx(44.0)
    assert cluster_bounds(instance, cluster, "makespan")["decode_work"] == 17.0
    result = simulate_cluster(instance, cluster)
    assert objective_value(result, instance, "latency") == pytest.approx(68.0)
    assert objective_value(result, instance, "makespan") == pytest.approx(17.0)


def test_one_colocated_pool_gives_the_colocated_bounds() -> None:
    rng = np.random.default_rng(7)
    instance = make(
        np.sort(rng.uniform(0, 3, 9)), rng.integers(1, 30, 9), rng.integers(1, 20, 9)
    )
    profile = load_profile("llama-65b-pang2025")  # two pieces: many candidates
    cluster = Cluster.colocated(profile, "fcfs", 3)
    for objective in ("latency", "makespan"):
        colocated = work_bounds(instance, profile, objective, replicas=3)
        ours = cluster_bounds(instance, cluster, objective)
        for name, value in colocated.items():
            assert ours[name] == pytest.approx(value, rel=1e-12), name
        report = cluster_bound_report(instance, cluster, objective)
        same = bound_report(instance, profile, objective, replicas=3)
        assert report == same
        assert {b.holds_for for b in report.bounds} == {
            "colocated: 3 x llama-65b-pang2025"
        }


def test_cluster_report_lists_the_slot_bounds_as_out_of_scope() -> None:
    cluster = disaggregated(UNIT, UNIT)
    report = cluster_bound_report(make([0.0], [3], [3]), cluster, "latency")
    assert [b.name for b in report.bounds] == [f"cluster.{n}" for n in CLUSTER_BOUNDS]
    assert all(b.scope == "any" for b in report.bounds)
    assert {b.holds_for for b in report.bounds} == {cluster.describe()}
    assert {s.name for s in report.skipped} == {
        "slot.energy",
        "slot.sawtooth",
        "slot.lagrangian",
        "slot.lp",
        "slot.clique_lp",
        "seconds.bucket_lp",
        "seconds.bucket_lagrangian",
        "timed.lp",
    }
    assert all("disaggregated" in s.detail for s in report.skipped)


# -- <= every policy ---------------------------------------------------------------


def random_cluster(rng: np.random.Generator, instance: Instance) -> Cluster:
    """1-3 prefill and 1-3 decode replicas of one or two profiles, a finite or
    infinite link (fifo or shared); sometimes a colocated pool beside them, or
    only colocated pools of two profiles.

    Limits that bind (KV between the largest peak and 3x it, a few sequences,
    budgets near the longest request), except where this evaluator does not keep
    them yet: a decode replica adopts a transferred request past
    ``max_num_seqs``, and a prefill replica's policy does not see its pinned KV.
    So decode pools take 1,000 sequences and prefill pools room for every
    prompt twice over.
    """
    one, two = (str(n) for n in rng.choice(list(BASES), 2))
    (first, scale), (second, _) = BASES[one], BASES[two]

    def fitted(base: DeploymentProfile, role: str = "colocated") -> DeploymentProfile:
        profile = tight_profile(rng, base, instance, limits=False)
        # room for a recompute's prefill (prompt + tokens so far): vllm-v0 does
        # not chunk, and stalls on one over its budget
        peak = instance.prompt_tokens + instance.output_tokens
        budget = int(peak.max() + rng.integers(0, 30))
        seqs = 1000 if role == "decode" else int(rng.choice([2, 3, 1000]))
        if role == "prefill":
            room = 2 * int(instance.prompt_tokens.sum())
            profile = profile.replace(
                kv_capacity_tokens=profile.kv_capacity_tokens + room
            )
        return profile.replace(max_num_seqs=seqs, max_num_batched_tokens=budget)

    kind = rng.choice(["disaggregated", "disaggregated", "mixed", "colocated"])
    if kind == "colocated":
        pools = (
            Pool(fitted(first), "fcfs", int(rng.integers(1, 3)), name="a"),
            Pool(fitted(second), "fcfs", int(rng.integers(1, 3)), name="b"),
        )
        return Cluster(pools, router="least-outstanding")
    prefill, decode = fitted(first, "prefill"), fitted(second, "decode")
    pools = (
        Pool(prefill, "fcfs", int(rng.integers(1, 4)), name="p", role="prefill"),
        Pool(decode, "fcfs", int(rng.integers(1, 4)), name="d", role="decode"),
    )
    if kind == "mixed":
        pools += (Pool(fitted(first), "fcfs", 1, name="c"),)
    links = ()
    if rng.random() < 0.7:  # finite: a transfer of the mean prompt ~ 0.5 time unit
        nbytes = float(instance.prompt_tokens.mean()) * prefill.kv_bytes_per_token
        links = (
            Link(
                "p",
                "d",
                bandwidth_bytes_per_s=nbytes / (0.5 * scale),
                latency_s=float(rng.choice([0.0, 0.1 * scale])),
                sharing=str(rng.choice(["fifo", "share"])),
            ),
        )
    router = str(rng.choice(["round-robin", "least-outstanding"]))
    return Cluster(pools, router=router, links=links, decode_router=router)


def with_policy(cluster: Cluster, policy: str) -> Cluster:
    pools = tuple(replace(p, policy=policy) for p in cluster.pools)
    return replace(cluster, pools=pools)


@pytest.mark.parametrize("seed", range(32))
def test_bounds_below_every_policy_on_the_cluster(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    name = str(rng.choice(list(BASES)))
    n = int(rng.integers(2, 12))
    scale = BASES[name][1]
    arrival = np.cumsum(rng.exponential(scale * rng.choice([0.3, 2.0]), n))
    if seed % 4 == 0:
        arrival = np.zeros(n)
    instance = make(arrival, rng.integers(1, 41, n), rng.integers(1, 41, n))
    cluster = random_cluster(rng, instance)
    bounds = {
        objective: cluster_bounds(instance, cluster, objective)
        for objective in ("latency", "makespan")
    }
    for policy in POLICIES:
        result = simulate_cluster(instance, with_policy(cluster, policy))
        assert result.metrics["num_rejected"] == 0
        for objective, found in bounds.items():
            assert set(found) == set(CLUSTER_BOUNDS)
            value = objective_value(result, instance, objective)
            for bound, low in found.items():
                assert low <= value * (1 + 1e-9), (objective, policy, bound, value)


# -- compare and the CLI -------------------------------------------------------------


def test_compare_cluster_skips_the_solve_and_bounds_every_row() -> None:
    instance = make([0.0, 0.0, 1.0], [4, 6, 3], [3, 5, 1])
    link = Link("p", "d", bandwidth_bytes_per_s=4.0)
    cluster = disaggregated(UNIT, UNIT, (2, 1), link, policy="vllm-v0")
    result = compare_cluster(instance, cluster, policies=["fcfs", "sarathi"])
    assert [row.policy for row in result.policies] == ["fcfs", "sarathi"]
    assert all(b.name.startswith("cluster.") for b in result.bounds)
    for row in result.policies:
        assert row.objective_value >= result.best_bound
        assert row.gap is not None and row.gap >= 0
    solve = [s for s in result.not_computed if s.kind == "solve"]
    assert len(solve) == 1 and "disaggregated" in solve[0].detail
    own = compare_cluster(instance, cluster)  # the cluster's own policy
    assert [row.policy for row in own.policies] == ["vllm-v0"]


def test_compare_cluster_scores_a_rejecting_run_on_what_it_served() -> None:
    # the decode replica holds 6 tokens: the request of peak 4 + 5 - 1 = 8 is
    # rejected at arrival; the gap is taken to the bounds of the other two
    small = UNIT.replace(kv_capacity_tokens=6)
    instance = make([0.0, 0.0, 0.0], [4, 2, 3], [5, 3, 2])
    result = compare_cluster(instance, disaggregated(UNIT, small), policies=["fcfs"])
    row = result.policies[0]
    assert row.result.metrics["num_rejected"] == 1
    served = make([0.0, 0.0], [2, 3], [3, 2])
    bound = max(cluster_bounds(served, disaggregated(UNIT, small)).values())
    assert row.objective_value >= bound
    assert row.gap == pytest.approx((row.objective_value - bound) / row.objective_value)


CLUSTER_FILE = """\
[[pool]]
name = "p"
role = "prefill"
replicas = 2
model = "unit-slot"
policy = "vllm-v0"

[[pool]]
name = "d"
role = "decode"
model = "unit-slot"
policy = "vllm-v0"

[[link]]
from = "p"
to = "d"
bandwidth_bytes_per_s = 2.0
latency_s = 0.5
"""


@pytest.fixture
def cluster_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(CLUSTER_FILE, encoding="utf-8")
    return path


def test_cli_bound_on_a_cluster(
    tiny: Path, cluster_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["bound", str(tiny), "--cluster", str(cluster_file), "--json"]
    code, out, _ = run(args, capsys)
    assert code == 0
    data = json.loads(out)
    assert set(data["bounds"]) == {f"cluster.{n}" for n in CLUSTER_BOUNDS}
    # two requests s = 1, o = 3 at 0: prefill 1 s, 1 byte at 2 B/s + 0.5 s, 2 steps
    assert data["bounds"]["cluster.critical_path"] == pytest.approx(2 * 4.0)
    topology = set(data["holds_for"].values())
    assert topology == {
        "disaggregated: 2 prefill p (unit-slot) + 1 decode d (unit-slot); "
        "links p->d 2 B/s + 0.5 s fifo"
    }
    assert {s["name"] for s in data["skipped"]} >= {"slot.lp", "timed.lp"}
    code, out, _ = run(["bound", str(tiny), "--cluster", str(cluster_file)], capsys)
    assert code == 0 and "cluster.decode_work" in out and "disaggregated" in out


def test_cli_compare_on_a_cluster(
    tiny: Path, cluster_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["compare", str(tiny), "--cluster", str(cluster_file)]
    code, out, _ = run(
        [*base, "--policy", "fcfs", "--policy", "vllm", "--json"], capsys
    )
    assert code == 0
    data = json.loads(out)
    assert [p["policy"] for p in data["policies"]] == ["fcfs", "vllm"]
    assert data["solver"] is None
    assert set(data["bounds"]) == {f"cluster.{n}" for n in CLUSTER_BOUNDS}
    assert all(
        topology.startswith("disaggregated: 2 prefill p (unit-slot)")
        for topology in data["bound_holds_for"].values()
    )
    for row in data["policies"]:
        assert row["objective_value"] >= data["best_bound"]
    (solve,) = [s for s in data["skipped"] if s["kind"] == "solve"]
    assert solve["reason"] == "out_of_scope" and "disaggregated" in solve["detail"]
    code, out, _ = run(base, capsys)  # the cluster file's own policies
    assert code == 0 and "vllm-v0" in out and "not computed" in out


@pytest.mark.parametrize("command", ["bound", "compare"])
@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--model", "unit-slot"], "--model"),
        (["--replicas", "2"], "--replicas"),
        (["--set", "max_num_seqs=2"], "--set"),
    ],
)
def test_cli_cluster_with_model_options_is_refused(
    tiny: Path,
    cluster_file: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    extra: list[str],
    needle: str,
) -> None:
    args = [command, str(tiny), "--cluster", str(cluster_file), *extra]
    code, out, err = run(args, capsys)
    assert_refused(code, out, err, needle, "--cluster")


@pytest.mark.parametrize("command", ["bound", "compare"])
def test_cli_without_model_or_cluster_is_refused(
    tiny: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    code, out, err = run([command, str(tiny)], capsys)
    assert_refused(code, out, err, "--model", "--cluster")


def test_no_under_estimator_anywhere_gives_no_bound() -> None:
    profile = load_profile("opt-66b-a100-tp2-vllm")  # no usable under-estimator
    instance = make([0.0], [3], [2])
    assert cluster_bounds(instance, disaggregated(profile, profile)) == {}
    mixed = cluster_bounds(instance, disaggregated(profile, UNIT))
    assert mixed["critical_path"] == pytest.approx(1.0)  # the decode step; 0 s before
    assert math.isfinite(mixed["work"])
