"""Clusters: pools of different profiles, plug-in policies and routers registered
from outside the package, rejection, per-replica and per-pool records, cluster
files, and the engine's snapshot/restore.

Independent checks: the naive reference engine replays each pool's requests on
that pool's profile with the replicas the router chose; per-pool and per-replica
metrics are recomputed from the per-request records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from reference_engine import simulate_naive
from test_engine_equivalence import PROFILES, TIME_SCALE_S, random_instance

import lsched
from lsched import plots, predictors
from lsched.cli import main
from lsched.cluster import Cluster, Pool, load_cluster
from lsched.errors import InputError
from lsched.evaluator import SimulationResult, simulate, simulate_cluster
from lsched.evaluator.cluster import ClusterSim
from lsched.evaluator.engine import ReplicaEngine
from lsched.evaluator.records import collect
from lsched.instance import Instance
from lsched.policies import (
    REGISTRY,
    Batch,
    PolicyContext,
    ReplicaLimits,
    ReplicaView,
    parse_policy,
)
from lsched.routers import REGISTRY as ROUTERS
from lsched.routers import ClusterView, Reject
from lsched.traces import read_trace
from lsched.validator import validate_cluster

UNIT = PROFILES["unit-slot"]
SMALL = UNIT.replace(kv_capacity_tokens=120, max_num_seqs=3)
BIG = UNIT.replace(kv_capacity_tokens=400, max_num_seqs=8)


# -- a policy and a router written outside lsched, as in a notebook ---------------


@dataclass(frozen=True)
class ShortestPromptParams:
    chunk: int = 1_000_000


class ShortestPrompt:
    """Whole running set decodes; admits waiting requests shortest prompt first,
    in chunks of at most ``chunk`` tokens, while KV and the limits allow. Never
    preempts, never holds."""

    def __init__(self, params: ShortestPromptParams, context: PolicyContext) -> None:
        self.params = params
        self.context = context
        self.calls = 0  # state, for snapshot/restore

    def decide(self, view: ReplicaView) -> Batch:
        self.calls += 1
        kv, limits = view.kv, view.limits
        running = view.running
        processed = view.processed_tokens[running]
        target = view.prefill_target_tokens[running]
        prefilling = processed < target
        budget = limits.max_num_batched_tokens
        chunks = np.minimum(target - processed, self.params.chunk)
        work = np.where(prefilling, chunks, 1)
        work = np.where(np.cumsum(work) <= budget, work, 0)
        used = int(kv.blocks(processed + work).sum())
        if used > kv.capacity_blocks:
            return Batch(decode=running[~prefilling][:1])  # one step at least
        budget -= int(work.sum())
        seqs = int((work > 0).sum())
        new, new_chunks = [], []
        order = sorted(view.waiting.tolist(), key=lambda w: (view.prompt_tokens[w], w))
        for w in order:
            c = min(
                int(view.prompt_tokens[w] + view.emitted_tokens[w]), self.params.chunk
            )
            c = min(c, budget)
            if (
                c < 1
                or seqs >= limits.max_num_seqs
                or used + kv.blocks(c) > kv.capacity_blocks
            ):
                break
            new.append(w)
            new_chunks.append(c)
            used += kv.blocks(c)
            budget -= c
            seqs += 1
        go = work > 0
        return Batch(
            prefill=np.array([*running[go & prefilling], *new], dtype=np.int64),
            prefill_tokens=np.array(
                [*work[go & prefilling], *new_chunks], dtype=np.int64
            ),
            decode=running[go & ~prefilling],
        )


@dataclass(frozen=True)
class HeadroomParams:
    max_prompt: int = 1_000_000


class Headroom:
    """The replica with the most free KV (capacity minus held), ties to fewer
    unfinished then the lower id; rejects prompts over ``max_prompt``."""

    def __init__(
        self, params: HeadroomParams, context: lsched.routers.RouterContext
    ) -> None:
        self.params = params
        self.capacity = context.kv_capacity_tokens

    def route(self, view: ClusterView) -> int | Reject:
        if view.prompt_tokens > self.params.max_prompt:
            return Reject("prompt too long")
        return min(
            range(view.replicas),
            key=lambda c: (
                view.kv_tokens(c) - self.capacity[c],
                view.outstanding(c),
                c,
            ),
        )


@pytest.fixture(scope="module", autouse=True)
def plugins() -> None:
    lsched.register_policy(
        "test-shortest-prompt", ShortestPrompt, ShortestPromptParams, replace=True
    )
    lsched.register_router("test-headroom", Headroom, HeadroomParams, replace=True)


def _two_pools(
    policy: str = "test-shortest-prompt:chunk=16",
    router: str = "test-headroom:max_prompt=35",
) -> Cluster:
    return Cluster(
        (
            Pool(SMALL, parse_policy(policy), 2, name="small"),
            Pool(BIG, parse_policy("fcfs"), 1, name="big"),
        ),
        router,
    )


def _naive_per_pool(instance: Instance, cluster: Cluster, got: pd.DataFrame) -> None:
    """Each pool's requests on its own profile in the naive engine, with the
    replicas the router chose, give the same records."""
    first = 0
    for pool in cluster.pools:
        mine = np.flatnonzero(got["pool"].to_numpy() == pool.name)
        if len(mine):
            sub = instance.subset(mine)
            where = got["replica"].to_numpy()[mine] - first
            naive = simulate_naive(
                sub, pool.profile, pool.policy, replicas=pool.replicas, assignment=where
            )
            for column in ("admitted_s", "first_token_s", "completion_s"):
                np.testing.assert_allclose(
                    got[column].to_numpy()[mine], getattr(naive, column), rtol=1e-9
                )
            np.testing.assert_array_equal(
                got["preemptions"].to_numpy()[mine], naive.preemptions
            )
        first += pool.replicas


def test_plugins_run_in_a_cluster_of_two_pools_against_the_naive_engine() -> None:
    rng = np.random.default_rng(20251205)
    rejected = served_small = served_big = 0
    for _ in range(25):
        instance = random_instance(
            rng, int(rng.integers(2, 30)), TIME_SCALE_S["unit-slot"]
        )
        cluster = _two_pools()
        got = simulate_cluster(instance, cluster, log=True)
        requests = got.requests
        gone = requests["replica"].to_numpy() == -1
        # rejection: exactly the prompts over 35, with the reason, no times
        np.testing.assert_array_equal(gone, instance.prompt_tokens > 35)
        assert (requests["rejected"][gone] == "prompt too long").all()
        assert requests.loc[gone, ["first_token_s", "completion_s"]].isna().all().all()
        assert got.metrics["num_rejected"] == gone.sum()
        assert got.metrics["num_completed"] == (~gone).sum()
        _naive_per_pool(instance, cluster, requests)
        validate_cluster(instance, cluster, got).raise_if_invalid()
        rejected += int(gone.sum())
        served_small += int((requests["pool"] == "small").sum())
        served_big += int((requests["pool"] == "big").sum())
    # the cases cover what they are meant to
    assert rejected > 0 and served_small > 0 and served_big > 0


def test_policies_get_their_replica_context() -> None:
    seen: list[PolicyContext] = []

    def build(params: object, context: PolicyContext) -> object:
        seen.append(context)
        return REGISTRY["fcfs"].build(REGISTRY["fcfs"].params())

    lsched.register_policy("test-context", build, replace=True)
    cluster = Cluster(
        (
            Pool(SMALL, parse_policy("test-context"), 2, name="a"),
            Pool(BIG, parse_policy("test-context"), 1, name="b"),
        )
    )
    inst = Instance([0, 0, 0], [1, 1, 1], [2, 2, 2], tenant=["x", "y", "x"])
    simulate_cluster(inst, cluster)
    assert [(c.replica, c.pool) for c in seen] == [(0, "a"), (1, "a"), (2, "b")]
    assert seen[2].limits == ReplicaLimits.from_profile(BIG)
    assert seen[0].tenants == ("x", "y")


def test_an_old_style_policy_builder_still_works() -> None:
    """A builder that takes only the parameters (the interface before contexts)."""
    lsched.register_policy(
        "test-old", lambda params: REGISTRY["fcfs"].build(None), replace=True
    )
    inst = Instance([0, 1], [3, 2], [4, 2])
    old = simulate(inst, UNIT, "test-old").requests["completion_s"].tolist()
    assert old == simulate(inst, UNIT, "fcfs").requests["completion_s"].tolist()


def test_old_limits_arithmetic_says_what_changed() -> None:
    with pytest.raises(AttributeError, match=r"view\.kv\.blocks"):
        ReplicaLimits.from_profile(UNIT).kv_blocks  # noqa: B018


def test_registration_errors() -> None:
    with pytest.raises(InputError, match="already registered"):
        lsched.register_policy("fcfs", ShortestPrompt)
    with pytest.raises(InputError, match="without"):
        lsched.register_router("a:b", Headroom)
    with pytest.raises(InputError, match="dataclass"):
        lsched.register_router("test-bad", Headroom, params=dict)
    assert "test-headroom" in ROUTERS


def test_a_bad_router_decision_is_a_clear_error() -> None:
    lsched.register_router("test-nowhere", lambda params: _Fixed(7), replace=True)
    cluster = Cluster((Pool(UNIT, parse_policy("fcfs"), 2),), "test-nowhere")
    with pytest.raises(InputError, match=r"replica id in 0\.\.1"):
        simulate_cluster(Instance([0], [1], [1]), cluster)
    lsched.register_router("test-zero", lambda params: _Fixed(0), replace=True)
    tiny = UNIT.replace(kv_capacity_tokens=4)
    cluster = Cluster(
        (
            Pool(tiny, parse_policy("fcfs"), name="tiny"),
            Pool(UNIT, parse_policy("fcfs")),
        ),
        "test-zero",
    )
    with pytest.raises(InputError, match="could never complete there"):
        simulate_cluster(Instance([0], [3], [5]), cluster)


@dataclass
class _Fixed:
    replica: int

    def route(self, view: ClusterView) -> int:
        return self.replica


# -- per-replica and per-pool records ------------------------------------------------


def test_pool_and_replica_metrics_match_the_records() -> None:
    rng = np.random.default_rng(7)
    instance = random_instance(rng, 40, 0.2)  # a burst: both pools fill
    cluster = _two_pools("fcfs", "least-outstanding")
    got = simulate_cluster(instance, cluster, log=True)
    requests = got.requests
    e2e = requests["completion_s"] - instance.arrival_s
    assert set(requests["pool"]) == {"small", "big"}  # both pools serve
    for name, row in got.pool_metrics.iterrows():
        mine = requests["pool"] == name
        assert row["num_completed"] == mine.sum()
        assert row["e2e_mean_s"] == pytest.approx(e2e[mine].mean(), rel=1e-12)
    for c, row in got.replica_metrics.iterrows():
        mine = requests["replica"] == c
        if mine.any():
            assert row["num_completed"] == mine.sum()
            assert row["e2e_mean_s"] == pytest.approx(e2e[mine].mean(), rel=1e-12)
            busy = got.runs[got.runs["replica"] == c]
            assert row["iterations"] == busy["iterations"].sum()
    assert got.pool_metrics["iterations"].sum() == got.iterations
    # the timeline: every member of every run, with its run's replica
    timeline = got.timeline()
    assert len(timeline) == len(got.members) + len(got.preemptions)
    assert set(timeline["replica"]) <= set(range(3))
    # tokens are conserved: every request processes s_i + o_i - 1 tokens plus
    # those it lost to preemption
    work = (timeline["tokens"] * timeline["iterations"]).groupby(timeline["request"])
    processed = work.sum().reindex(range(len(instance)), fill_value=0).to_numpy()
    expected = instance.prompt_tokens + instance.output_tokens - 1
    np.testing.assert_array_equal(processed, expected + requests["recomputed_tokens"])
    assert requests["recomputed_tokens"].sum() > 0  # the case preempts


# -- cluster files and the CLI -------------------------------------------------------


CLUSTER_TOML = """\
router = "least-outstanding"

[[pool]]
name = "a100"
replicas = 2
model = "unit-slot"
policy = "sarathi"
set = { max_num_seqs = 4 }

[[pool]]
model = "unit-slot"
"""


def test_cluster_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(CLUSTER_TOML)
    cluster = load_cluster(path)
    assert [p.name for p in cluster.pools] == ["a100", "pool1"]
    assert [p.replicas for p in cluster.pools] == [2, 1]
    assert cluster.pools[0].profile.max_num_seqs == 4
    assert cluster.pools[0].policy.name == "sarathi"
    assert cluster.pools[1].policy.name == "fcfs"
    assert cluster.router.name == "least-outstanding"
    assert cluster.num_replicas == 3


#: a prefill pool "p" and a decode pool "d"
_PD = (
    "[[pool]]\nname = 'p'\nrole = 'prefill'\nmodel = 'unit-slot'\n"
    "[[pool]]\nname = 'd'\nrole = 'decode'\nmodel = 'unit-slot'\n"
)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[[pool]]\nmodel = 'unit-slot'\nrole = 'prefill'\n", "pool[0].role"),
        ("[[pool]]\nmodel = 'unit-slot'\nrole = 'mixed'\n", "pool[0].role"),
        ("[[pool]]\nmodel = 'unit-slot'\nrole = 'decode'\n", "pool[0]"),
        (_PD + "[[link]]\nfrom = 'p'\nto = 'x'\n", "link[0].to"),
        (_PD + "[[link]]\nfrom = 'd'\nto = 'd'\n", "link[0].from"),
        (_PD + "[[link]]\nfrom = 'p'\n", "link[0].to"),
        (
            _PD + "[[link]]\nfrom = 'p'\nto = 'd'\nbandwidth_bytes_per_s = 0\n",
            "link[0].bandwidth_bytes_per_s",
        ),
        (
            _PD + "[[link]]\nfrom = 'p'\nto = 'd'\nbandwidth_bytes_per_s = -1e9\n",
            "link[0].bandwidth_bytes_per_s",
        ),
        (_PD + "[[link]]\nfrom = 'p'\nto = 'd'\nlatency_s = -1\n", "link[0].latency_s"),
        (_PD + "[[link]]\nfrom = 'p'\nto = 'd'\nsharing = 'lifo'\n", "link[0].sharing"),
        (_PD + "[[link]]\nfrom = 'p'\nto = 'd'\n" * 2, "link[1]"),
        ("decode_router = 'nope'\n" + _PD, "decode_router"),
        ("[[pool]]\nmodel = 'unit-slot'\nreplicas = 0\n", "pool[0].replicas"),
        ("[[pool]]\nmodel = 'nope'\n", "pool[0].model"),
        ("[[pool]]\nreplicas = 1\n", "pool[0].model"),
        ("[[pool]]\nmodel = 'unit-slot'\npolicy = 'nope'\n", "pool[0].policy"),
        ("[[pool]]\nmodel = 'unit-slot'\ncolour = 1\n", "pool[0]"),
        (
            "[[pool]]\nmodel = 'unit-slot'\nset = { max_num_seqs = 0 }\n",
            "pool[0].set.max_num_seqs",
        ),
        ("[[pool]]\nmodel = 'unit-slot'\nset = { colour = 1 }\n", "pool[0].set"),
        ("router = 'nope'\n[[pool]]\nmodel = 'unit-slot'\n", "router"),
        ("router = 'round-robin'\n", "pool"),
    ],
)
def test_bad_cluster_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, where: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_cluster(path)
    assert info.value.file == str(path)
    assert (info.value.field or "").startswith(where), str(info.value)
    trace = Path(__file__).resolve().parents[1] / "instances" / "default.csv"
    with pytest.raises(SystemExit) as exited:
        main(["simulate", str(trace), "--cluster", str(path)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert str(path) in err and len(err.strip().splitlines()) == 1


def test_cli_cluster_json_and_timeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(CLUSTER_TOML)
    trace = Path(__file__).resolve().parents[1] / "instances" / "default.csv"
    out = tmp_path / "timeline.parquet"
    with pytest.raises(SystemExit) as exited:
        main(
            ["simulate", str(trace), "--cluster", str(path), "--json",
             "--timeline-out", str(out)]
        )  # fmt: skip
    assert int(exited.value.code or 0) == 0
    record = json.loads(capsys.readouterr().out)["policies"][0]
    assert [p["pool"] for p in record["pools"]] == ["a100", "pool1"]
    assert sum(p["num_completed"] for p in record["pools"]) == 10
    timeline = pd.read_parquet(out)
    assert {"run", "replica", "request", "kind", "start_s", "policy"} <= set(timeline)
    # the plots read it back: the same log as a fresh run's
    again = simulate_cluster(read_trace(trace)[0], load_cluster(path), log=True)
    back = SimulationResult.from_timeline(timeline, 10)
    pd.testing.assert_frame_equal(back.runs, again.runs, check_dtype=False)
    pd.testing.assert_frame_equal(
        back.members.sort_values(["run", "request"]).reset_index(drop=True),
        again.members.sort_values(["run", "request"]).reset_index(drop=True),
        check_dtype=False,
    )
    figure = plots.request_gantt(back)
    bars = sum(len(c) for c in figure.axes[0].containers)
    assert bars == len(plots.request_gantt(again).axes[0].containers[0]) + len(
        plots.request_gantt(again).axes[0].containers[1]
    )
    # a timeline written over its input is refused, the input kept
    before = path.read_text()
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "simulate",
                str(trace),
                "--cluster",
                str(path),
                "--timeline-out",
                str(path),
            ]
        )
    assert exited.value.code == 2 and path.read_text() == before
    # --cluster with --model is refused
    with pytest.raises(SystemExit) as exited:
        main(["simulate", str(trace), "--cluster", str(path), "--model", "unit-slot"])
    assert exited.value.code == 2


def test_one_pool_cluster_is_the_model_shorthand() -> None:
    rng = np.random.default_rng(3)
    instance = random_instance(rng, 30, TIME_SCALE_S["unit-slot"])
    for router in ("round-robin", "least-kv"):
        a = simulate(instance, SMALL, "sarathi", replicas=2, dispatch=router)
        b = simulate_cluster(
            instance, Cluster.colocated(SMALL, parse_policy("sarathi"), 2, router)
        )
        pd.testing.assert_frame_equal(a.requests, b.requests)
        assert pd.Series(a.metrics).equals(pd.Series(b.metrics))


# -- snapshot and restore --------------------------------------------------------------


def _policy_cases() -> list[str]:
    return sorted(REGISTRY)


def _engine(instance: Instance, spec: str) -> ReplicaEngine:
    context = PolicyContext(
        0, "pool0", ReplicaLimits.from_profile(SMALL), tenants=("a", "b")
    )
    return ReplicaEngine(
        instance.arrival_s,
        instance.prompt_tokens,
        instance.output_tokens,
        instance.predicted_output_tokens,
        SMALL,
        parse_policy(spec).make(context),
        priority=instance.priority,
        tenant=instance.tenant,
    )


def _records(engine: ReplicaEngine) -> tuple[list[float], ...]:
    return (
        engine.admitted_s.tolist(),
        engine.first_token_s.tolist(),
        engine.completion_s.tolist(),
        engine.preemptions.tolist(),
        [engine.iterations, engine.busy_s, engine.kv_token_seconds],
    )


@pytest.mark.parametrize("name", _policy_cases())
def test_snapshot_restore_gives_identical_runs(name: str) -> None:
    """Run to a time, snapshot, run on; restore, run on again: identical, and
    identical to a run that never stopped."""
    rng = np.random.default_rng([11, len(name)])
    instance = random_instance(rng, 30, TIME_SCALE_S["unit-slot"], exact_clock=True)
    instance = predictors.oracle(instance).replace(
        tenant=rng.choice(["a", "b"], size=len(instance)).tolist(),
        priority=rng.integers(0, 3, size=len(instance)).tolist(),
    )
    whole = _engine(instance, name)
    assert whole.run()
    engine = _engine(instance, name)
    stop_s = float(np.median(whole.completion_s))
    assert not engine.run(until_s=stop_s)
    assert engine.now_s + 1e-9 >= stop_s
    state = engine.snapshot()
    assert engine.run()
    first = _records(engine)
    engine.restore(state)
    assert engine.done < len(instance)
    assert engine.run()
    assert _records(engine) == first == _records(whole)


def test_the_readme_plugin_example_runs_against_the_naive_engine() -> None:
    """The README's notebook example registers a policy and a router; both run
    in a cluster and the naive engine reproduces the records."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("```python", readme.index("From Python (a notebook)"))
    code = readme[start + len("```python") : readme.index("```", start + 9)]
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    rng = np.random.default_rng(42)
    cluster = Cluster(
        (
            Pool(
                SMALL.replace(max_num_seqs=8), parse_policy("longest-first:max_batch=4")
            ),
            Pool(BIG, parse_policy("longest-first"), 2, name="pool1"),
        ),
        "fewest-waiting",
    )
    for _ in range(10):
        instance = random_instance(rng, 25, 0.5)
        got = simulate_cluster(instance, cluster)
        _naive_per_pool(instance, cluster, got.requests)


@pytest.mark.parametrize("router", ["round-robin", "least-kv", "test-headroom"])
def test_cluster_snapshot_restore_gives_identical_runs(router: str) -> None:
    rng = np.random.default_rng([12, len(router)])
    instance = random_instance(rng, 40, 0.5)
    cluster = _two_pools("sarathi", router)
    whole = simulate_cluster(instance, cluster).requests
    sim = ClusterSim(instance, cluster)
    stop_s = float(np.median(whole["completion_s"].dropna()))
    assert not sim.run(until_s=stop_s)
    state = sim.snapshot()
    assert sim.run()
    first = collect(instance, cluster, sim.outcome(), False, 0.0).requests
    sim.restore(state)
    assert sim.run()
    again = collect(instance, cluster, sim.outcome(), False, 0.0).requests
    pd.testing.assert_frame_equal(first, whole)
    pd.testing.assert_frame_equal(again, whole)


def test_the_cluster_validator_catches_a_rejected_request_that_ran() -> None:
    rng = np.random.default_rng(8)
    instance = random_instance(rng, 30, 0.5)
    cluster = _two_pools()
    got = simulate_cluster(instance, cluster, log=True)
    assert validate_cluster(instance, cluster, got).ok
    served = int(np.flatnonzero(got.requests["replica"] >= 0)[0])
    forged = got.requests.copy()
    forged.loc[served, "rejected"] = "forged"
    report = validate_cluster(instance, cluster, replace(got, requests=forged))
    assert "rejection" in report.rules
    # a pool's claimed metric that its log does not give
    pools = got.pool_metrics.copy()
    pools.loc["big", "makespan_s"] += 1.0
    report = validate_cluster(instance, cluster, replace(got, pool_metrics=pools))
    assert report.rules == {"metric"}
