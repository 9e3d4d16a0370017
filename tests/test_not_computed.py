"""Nothing is dropped silently (issue 20, part 4): every bound or solve that was not
computed is listed with its reason, in ``lsched bound`` and ``lsched compare``, in
the JSON (``skipped``) and in the tables (``not computed``).

The limits cannot be met by construction (a zero or 1 ns LP limit; instances above
a size cap; two replicas where the models have one), not by machine speed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import run

from lsched.comparison import TIMED_MAX_REQUESTS, compare
from lsched.formulations.bounds.suite import LP_MAX_REQUESTS, bound_report
from lsched.formulations.result import Reason
from lsched.profile import load_profile
from lsched.traces import read_trace

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "instances" / "default.csv"
GSM8K = ROOT / "instances" / "gsm8k-n100-s0.csv"  # 100 requests: above every cap
AZURE = ROOT.parent / "shared" / "traces" / "azure_code_2023.csv"
REAL = "llama2-70b-a100-tp4"  # one replica, seconds not slots
TINY = "1e-9"  # an LP limit no build meets


def _skipped(payload: dict) -> dict[str, dict]:
    return {item["name"]: item for item in payload["skipped"]}


def _table_row(out: str, name: str) -> str:
    """The line of the ``not computed`` table that names ``name``."""
    table = out[out.index("not computed") :]
    rows = [
        line
        for line in table.splitlines()
        if line.split("│")[1:2] and line.split("│")[1].strip() == name
    ]
    assert len(rows) == 1, out
    return rows[0]


# -- the Python API -----------------------------------------------------------------


def test_every_bound_is_computed_or_listed():
    instance, _ = read_trace(DEFAULT)
    profile = load_profile("unit-slot")
    report = bound_report(instance, profile, "latency", lp_time_limit=0.0)
    names = {b.name for b in report.bounds} | {s.name for s in report.skipped}
    assert names == {
        "seconds.critical_path",
        "seconds.work",
        "seconds.prefill_queue",
        "seconds.cached_work",
        "seconds.cached_prefill_queue",
        "slot.energy",
        "slot.sawtooth",
        "slot.lagrangian",
        "slot.lp",
        "slot.clique_lp",
        "timed.lp",
        "seconds.bucket_lp",
        "seconds.bucket_lagrangian",
    }
    assert not {b.name for b in report.bounds} & {s.name for s in report.skipped}
    reasons = {s.name: s.reason for s in report.skipped}
    assert reasons == {
        "seconds.cached_work": Reason.OUT_OF_SCOPE,  # no prefix hashes
        "seconds.cached_prefill_queue": Reason.OUT_OF_SCOPE,
        "slot.lp": Reason.TIME_LIMIT,
        "slot.clique_lp": Reason.TIME_LIMIT,
        "timed.lp": Reason.OUT_OF_SCOPE,
        "seconds.bucket_lp": Reason.TIME_LIMIT,
        "seconds.bucket_lagrangian": Reason.TIME_LIMIT,
    }


def test_makespan_lists_the_lagrangian_as_out_of_scope():
    instance, _ = read_trace(DEFAULT)
    report = bound_report(instance, load_profile("unit-slot"), "makespan")
    reasons = {s.name: s.reason for s in report.skipped}
    assert reasons["slot.lagrangian"] == Reason.OUT_OF_SCOPE
    assert "seconds.prefill_queue" not in reasons  # a latency bound only


def test_slot_lp_above_its_size_cap_is_listed():
    instance, _ = read_trace(DEFAULT)
    report = bound_report(
        instance, load_profile("unit-slot"), lp_max_requests=len(instance) - 1
    )
    (lp,) = [s for s in report.skipped if s.name == "slot.lp"]
    assert lp.reason == Reason.SIZE and f"> {len(instance) - 1}" in lp.detail


def test_compare_lists_the_solve_it_does_not_run():
    instance, _ = read_trace(GSM8K, limit=TIMED_MAX_REQUESTS + 1)
    result = compare(instance, load_profile(REAL), policies=["fcfs"], backend="cpsat")
    assert result.solve is None
    (solve,) = [s for s in result.not_computed if s.kind == "solve"]
    assert solve.reason == Reason.SIZE
    assert result.to_dict()["skipped"][-1]["name"] == "solve"


# -- lsched bound -------------------------------------------------------------------


def test_bound_lists_the_slot_lp_on_its_time_limit(capsys):
    args = ["bound", str(DEFAULT), "-m", "unit-slot", "--lp-time-limit", TINY]
    code, out, err = run([*args, "--json"], capsys)
    assert code == 0, err
    payload = json.loads(out)
    assert "slot.lp" not in payload["bounds"]
    assert _skipped(payload)["slot.lp"]["reason"] == "time_limit"
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert "time_limit" in _table_row(out, "slot.lp")


def test_bound_lists_the_timed_lp_above_its_size(capsys):
    args = ["bound", str(GSM8K), "-m", REAL]
    code, out, err = run([*args, "--json"], capsys)
    assert code == 0, err
    timed = _skipped(json.loads(out))["timed.lp"]
    assert timed["reason"] == "size"
    assert f"100 requests > {LP_MAX_REQUESTS}" in timed["detail"]
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert "size" in _table_row(out, "timed.lp")


@pytest.mark.skipif(not AZURE.exists(), reason="the shared Azure trace is absent")
def test_the_readme_azure_example_lists_the_timed_lp(capsys):
    code, out, err = run(["bound", str(AZURE), "-m", REAL, "--json"], capsys)
    assert code == 0, err
    payload = json.loads(out)
    assert "timed.lp" not in payload["bounds"]
    assert _skipped(payload)["timed.lp"]["reason"] == "size"


# -- lsched compare -----------------------------------------------------------------


def test_compare_lists_the_slot_lp_on_its_time_limit(capsys):
    args = ["compare", str(DEFAULT), "-m", "unit-slot", "-p", "fcfs"]
    args += ["--backend", "none", "--lp-time-limit", TINY]
    code, out, err = run([*args, "--json"], capsys)
    assert code == 0, err
    payload = json.loads(out)
    assert "slot.lp" not in payload["bounds"]
    skipped = _skipped(payload)
    assert skipped["slot.lp"]["reason"] == "time_limit"
    assert skipped["solve"]["reason"] == "not_requested"
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert "time_limit" in _table_row(out, "slot.lp")
    assert "not_requested" in _table_row(out, "solve")


def test_compare_cpsat_on_a_real_profile_lists_the_skipped_solve(capsys):
    args = ["compare", str(GSM8K), "-m", REAL, "-p", "fcfs", "--backend", "cpsat"]
    args += ["--limit", str(TIMED_MAX_REQUESTS + 1), "--lp-time-limit", TINY]
    code, out, err = run([*args, "--json"], capsys)
    assert code == 0, err
    payload = json.loads(out)
    assert payload["solver"] is None
    solve = _skipped(payload)["solve"]
    assert solve["kind"] == "solve" and solve["reason"] == "size"
    assert f"up to {TIMED_MAX_REQUESTS} requests" in solve["detail"]
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert "size" in _table_row(out, "solve")


def test_compare_with_two_replicas_lists_the_skipped_solve(capsys):
    args = ["compare", str(DEFAULT), "-m", "unit-slot", "-p", "fcfs"]
    args += ["--replicas", "2"]
    code, out, err = run([*args, "--json"], capsys)
    assert code == 0, err
    payload = json.loads(out)
    assert payload["solver"] is None
    skipped = _skipped(payload)
    assert skipped["solve"]["reason"] == "out_of_scope"
    assert "2 replicas" in skipped["solve"]["detail"]
    for name in ("slot.lp", "slot.sawtooth", "timed.lp"):
        assert skipped[name]["reason"] == "out_of_scope"
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert "2 replicas" in _table_row(out, "solve")
