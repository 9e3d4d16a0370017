"""The bound registry (issue 21): one table of bound specs, each stating its
objectives, model and schedules as data; a bound added to the table for one test
shows in ``lsched bound`` and ``lsched compare`` and is gone afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import run

from lsched.cluster import Cluster, Pool
from lsched.comparison import compare
from lsched.errors import InputError
from lsched.formulations.bounds import registry
from lsched.formulations.bounds.registry import (
    BoundSpec,
    Migration,
    Model,
    Preemption,
    Schedules,
    Topology,
    bound_spec,
)
from lsched.formulations.bounds.suite import bound_report, cluster_bound_report
from lsched.formulations.result import Reason
from lsched.profile import load_profile
from lsched.traces import read_trace

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "instances" / "default.csv"
UNIT = load_profile("unit-slot")

#: Valid for every schedule: total E2E (sum of C_i - a_i) and makespan (max C -
#: min a) are sums and spans of non-negative times.
ZERO = BoundSpec(
    Model.SECONDS,
    "zero",
    frozenset({"latency", "makespan"}),
    Schedules(Preemption.ANY, Topology.ANY),
    lambda context: 0.0,
)
#: The same, stated for one replica only: listed elsewhere as out of scope.
ZERO_ONE_REPLICA = BoundSpec(
    Model.SECONDS,
    "zero_one_replica",
    frozenset({"latency"}),
    Schedules(Preemption.NON_PREEMPTIVE, Topology.ONE_REPLICA),
    lambda context: 0.0,
)


@pytest.fixture
def zero_bounds(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The table with :data:`ZERO` and :data:`ZERO_ONE_REPLICA` at its end, for
    one test (monkeypatch restores it)."""
    monkeypatch.setattr(registry, "BOUNDS", (*registry.BOUNDS, ZERO, ZERO_ONE_REPLICA))
    yield


def _table_row(out: str, name: str) -> str:
    """The one table line whose first column is ``name``."""
    rows = [
        line
        for line in out.splitlines()
        if line.split("│")[1:2] and line.split("│")[1].strip() == name
    ]
    assert len(rows) == 1, out
    return rows[0]


def test_the_table_names_each_bound_once() -> None:
    names = [spec.name for spec in registry.BOUNDS]
    assert len(names) == len(set(names))
    assert "seconds.zero" not in names  # the fixture's bound does not leak
    # on one replica a run with migration on moves nothing (registry docstring)
    assert bound_spec("slot.lp").schedules == Schedules(
        Preemption.NON_PREEMPTIVE, Topology.ONE_REPLICA, migration=Migration.ANY
    )
    assert bound_spec("seconds.work").schedules.preemption is Preemption.ANY
    with pytest.raises(InputError, match=r"seconds\.zero"):
        bound_spec("seconds.zero")


def test_a_spec_states_known_objectives() -> None:
    with pytest.raises(InputError, match="objectives"):
        BoundSpec(Model.SECONDS, "x", frozenset({"ttft"}), ZERO.schedules, ZERO.compute)
    with pytest.raises(InputError, match="bound"):
        BoundSpec(Model.SECONDS, "a.b", ZERO.objectives, ZERO.schedules, ZERO.compute)


@pytest.mark.usefixtures("zero_bounds")
def test_a_registered_bound_is_in_every_report() -> None:
    instance, _ = read_trace(DEFAULT)
    assert bound_spec("seconds.zero") is ZERO
    report = bound_report(instance, UNIT, "latency", lp_time_limit=0.0)
    found = {b.name: b for b in report.bounds}
    assert found["seconds.zero"].value == 0.0
    assert found["seconds.zero"].scope == "any"
    assert found["seconds.zero"].holds_for == "colocated: 1 x unit-slot"
    assert found["seconds.zero_one_replica"].scope == "slot"
    # its topology decides: one replica only, so out of scope on two
    report = bound_report(instance, UNIT, "latency", replicas=2, lp_time_limit=0.0)
    assert "seconds.zero" in {b.name for b in report.bounds}
    (skipped,) = [s for s in report.skipped if s.name == "seconds.zero_one_replica"]
    assert skipped.reason == Reason.OUT_OF_SCOPE
    assert skipped.detail == "2 replicas; it holds for one replica"
    # its objectives decide: a latency bound is not listed for makespan
    report = bound_report(instance, UNIT, "makespan", lp_time_limit=0.0)
    listed = {b.name for b in report.bounds} | {s.name for s in report.skipped}
    assert "seconds.zero" in listed
    assert "seconds.zero_one_replica" not in listed
    # any deployment: a cluster beyond one pool too
    cluster = Cluster(
        (Pool(UNIT, "fcfs", 1, name="a"), Pool(UNIT, "fcfs", 2, name="b"))
    )
    report = cluster_bound_report(instance, cluster, "latency", lp_time_limit=0.0)
    assert "seconds.zero" in {b.name for b in report.bounds}


@pytest.mark.usefixtures("zero_bounds")
def test_a_registered_bound_is_in_lsched_bound(capsys: pytest.CaptureFixture) -> None:
    args = ["bound", str(DEFAULT), "-m", "unit-slot", "--lp-time-limit", "0"]
    code, out, err = run([*args, "--json"], capsys)
    assert code == 0, err
    payload = json.loads(out)
    assert payload["bounds"]["seconds.zero"] == 0.0
    assert payload["scopes"]["seconds.zero"] == "any"
    assert payload["holds_for"]["seconds.zero"] == "colocated: 1 x unit-slot"
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert "all" in _table_row(out, "seconds.zero")


@pytest.mark.usefixtures("zero_bounds")
def test_a_registered_bound_is_in_compare(capsys: pytest.CaptureFixture) -> None:
    instance, _ = read_trace(DEFAULT)
    result = compare(instance, UNIT, policies=["fcfs"], backend=None, lp_time_limit=0)
    found = {b.name: b.value for b in result.bounds}
    assert found["seconds.zero"] == 0.0
    assert result.best_bound > 0.0  # the best bound is still the best
    args = ["compare", str(DEFAULT), "-m", "unit-slot", "-p", "fcfs"]
    args += ["--backend", "none", "--lp-time-limit", "0"]
    code, out, err = run([*args, "--json"], capsys)
    assert code == 0, err
    payload = json.loads(out)
    assert payload["bounds"]["seconds.zero"] == 0.0
    assert payload["bound_scopes"]["seconds.zero"] == "any"
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert "all" in _table_row(out, "seconds.zero")
