"""`lsched solve` and `--set`: real solvers, hand-derived optima, bad input.

The tiny trace: two requests, prompt s = 1, output o = 3, both arriving at 0, on
``unit-slot`` (block size 1). By the slot model's rules
(:mod:`lsched.formulations.slot`), a request started at slot S holds s + j = 1, 2,
3 tokens in slots S, S + 1, S + 2 and completes at E = S + 3. With the second
start d >= 0 slots after the first (both at their earliest by symmetry, first at
0), the busiest slot holds:

* d = 0: slot 2 holds 3 + 3 = 6 tokens;
* d = 1: slot 2 holds 3 + 2 = 5 tokens (slot 3: 3 alone);
* d = 2: slot 2 holds 3 + 1 = 4 tokens (slot 3: 2 alone, the first has completed);
* d >= 3: no overlap, 3 tokens.

So with capacity M the smallest feasible d is 0 (M >= 6), 1 (M = 5), 2 (M = 4)
or 3 (M = 3), and since every objective grows with d, the optimum starts
(0, d): latency = E_0 + E_1 = 3 + (d + 3) = 6 + d, makespan = d + 3, TTFT =
(0 + 1) + (d + 1) = 2 + d. In particular M = 4 allows a partial overlap: starts
(0, 2), latency 8 (not 9 as with no overlap at all), makespan 5, TTFT 4.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import assert_refused, must_not_run, run

from lsched.errors import InputError
from lsched.evaluator import simulate
from lsched.overrides import parse_overrides, parse_value
from lsched.profile import load_profile
from lsched.traces import read_trace

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "instances" / "default.csv"


def test_default_instance_solves_to_optimum_and_replays(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_file = tmp_path / "schedule.parquet"
    code, out, _ = run(
        [
            "solve", str(DEFAULT), "--model", "unit-slot", "--formulation", "slot",
            "--backend", "cpsat", "--objective", "latency", "--time-limit", "20",
            "--json", "--out", str(out_file),
        ],
        capsys,
    )  # fmt: skip
    assert code == 0
    report = json.loads(out)  # exactly one JSON object on stdout
    assert report["status"] == "optimal"
    assert report["objective"] == report["replay_objective"]
    assert report["bound"] == report["objective"]
    assert report["gap"] == 0.0 and report["runtime_s"] > 0
    assert report["solver"].startswith("cpsat/")
    assert (report["formulation"], report["backend"], report["objective_name"]) == (
        "slot",
        "cpsat",
        "latency",
    )
    # Jaillet's M = 48 travels with the instance (instances/manifest.json)
    assert report["num_requests"] == 10 and report["kv_capacity_tokens"] == 48
    assert report["slot_s"] == 1.0

    instance, _ = read_trace(DEFAULT)
    schedule = pd.read_parquet(out_file)
    assert list(schedule.columns) == [
        "request",
        "arrival_slot",
        "start_slot",
        "first_token_slot",
        "completion_slot",
    ]
    assert schedule["request"].tolist() == list(range(10))
    assert (
        schedule["completion_slot"] - schedule["start_slot"]
    ).tolist() == instance.output_tokens.tolist()
    assert (schedule["first_token_slot"] == schedule["start_slot"] + 1).all()
    assert (schedule["start_slot"] >= np.ceil(schedule["arrival_slot"])).all()
    latency = (schedule["completion_slot"] - schedule["arrival_slot"]).sum()
    assert latency == report["objective"]


@pytest.mark.parametrize("backend", ["cpsat", "milp"])
@pytest.mark.parametrize(
    ("objective", "optimum"), [("latency", 8.0), ("makespan", 5.0), ("ttft", 4.0)]
)
def test_tiny_trace_hand_derived_optimum(
    backend: str,
    objective: str,
    optimum: float,
    tiny: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out_file = tmp_path / "schedule.csv"
    code, out, _ = run(
        [
            "solve", str(tiny), "--model", "unit-slot",
            "--set", "kv_capacity_tokens=4", "--backend", backend,
            "--objective", objective, "--time-limit", "10", "--json",
            "--out", str(out_file),
        ],
        capsys,
    )  # fmt: skip
    assert code == 0
    report = json.loads(out)
    assert report["status"] == "optimal"
    assert report["objective"] == report["bound"] == optimum
    assert report["replay_objective"] == optimum
    assert report["backend"] == backend and report["kv_capacity_tokens"] == 4
    # starts (0, 2) or (2, 0): the partial overlap of the module docstring
    schedule = pd.read_csv(out_file)
    assert sorted(schedule["start_slot"]) == [0, 2]
    assert (schedule["completion_slot"] - schedule["start_slot"] == 3).all()


@pytest.mark.parametrize(("capacity", "latency"), [(3, 9.0), (5, 7.0), (6, 6.0)])
def test_set_capacity_changes_the_optimum(
    capacity: int, latency: float, tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        [
            "solve", str(tiny), "--model", "unit-slot",
            "--set", f"kv_capacity_tokens={capacity}", "--json",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0
    report = json.loads(out)
    assert report["objective"] == report["bound"] == report["replay_objective"]
    assert report["objective"] == latency  # 6 + d (module docstring)


def test_table_output_names_status_and_objective(
    tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        [
            "solve", str(tiny), "-m", "unit-slot", "--set", "kv_capacity_tokens=4",
            "--backend", "milp",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0
    words = ("status", "optimal", "objective", "bound", "gap", "runtime_s")
    for word in (*words, "milp/time-indexed", "incumbent_source", "replay_objective"):
        assert word in out
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--backend", "gurobi"], "'--backend'"),
        (
            ["--formulation", "exact"],
            "'--formulation': got 'exact'; expected one of: slot, timed",
        ),
        (["--formulation", "timed", "--backend", "lns"], "'--backend'"),
        (["--formulation", "timed", "--objective", "ttft"], "'--objective'"),
        (["--objective", "throughput"], "'--objective'"),
        (["--set", "nosuchfield=1"], "--set nosuchfield"),
        (["--set", "hardware=a100"], "--set hardware"),
        (["--set", "max_num_seqs"], "expected FIELD=VALUE"),
        (["--set", "kv_capacity_tokens=many"], "--set kv_capacity_tokens"),
        (["--set", "kv_capacity_tokens=2"], "kv_capacity_tokens"),
        (["--time-limit", "0"], "'--time-limit'"),
        (["--out", "schedule.txt"], "'--out'"),
        (["--model", "nope"], "unknown profile 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    extra: list[str], needle: str, tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["solve", str(tiny), "--model", "unit-slot", "--time-limit", "5", *extra]
    code, out, err = run(args, capsys)
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert out == ""


def test_capacity_below_a_request_names_the_field(
    tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        ["solve", str(tiny), "-m", "unit-slot", "--set", "kv_capacity_tokens=2"],
        capsys,
    )
    assert code == 2
    assert "field 'kv_capacity_tokens'" in err and "--set kv_capacity_tokens" in err
    assert "needs 3 KV blocks" in err and "capacity of 2" in err


def test_missing_trace_and_typer_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["solve", str(tmp_path / "none.csv"), "-m", "unit-slot"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    code, _, _ = run(
        ["solve", str(DEFAULT), "-m", "unit-slot", "--workers", "x"], capsys
    )
    assert code == 2  # Typer's own parsing error
    code, _, _ = run(["solve", str(DEFAULT)], capsys)
    assert code == 2  # --model is required


# -- --set on simulate, and the parser ----------------------------------------------


def test_simulate_set_overrides_profile_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(
        [
            "simulate", str(DEFAULT), "--model", "unit-slot", "--json",
            "--set", "max_num_seqs=2", "--set", "kv_capacity_tokens=60",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0
    instance, _ = read_trace(DEFAULT)
    profile = load_profile("unit-slot").replace(kv_capacity_tokens=60, max_num_seqs=2)
    direct = simulate(instance, profile, "fcfs")
    metrics = json.loads(out)["policies"][0]["metrics"]
    assert metrics["makespan_s"] == direct.metrics["makespan_s"]
    # and the override really mattered: the instance's own M = 48, no batch cap
    default = simulate(
        instance, load_profile("unit-slot").replace(kv_capacity_tokens=48), "fcfs"
    )
    assert metrics["makespan_s"] != default.metrics["makespan_s"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--set", "kv_capacity_tokens=20"], "more than the capacity of 20 tokens"),
        (["--set", "nosuchfield=1"], "--set nosuchfield"),
        (["--set", "max_num_seqs=0"], "--set max_num_seqs"),
        (
            ["--set", "kv_capacity_tokens=30", "--kv-capacity-tokens", "40"],
            "expected one capacity",
        ),
    ],
)
def test_simulate_bad_set_is_one_line_and_exit_2(
    extra: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["simulate", str(DEFAULT), "-m", "unit-slot", *extra], capsys)
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_parse_overrides_reads_int_float_text() -> None:
    assert parse_value("8") == 8 and isinstance(parse_value("8"), int)
    assert parse_value("0.25") == 0.25
    assert parse_value("abc") == "abc"
    parsed = parse_overrides(["max_num_seqs=8", "fit_mape=0.05", "name=123"])
    assert parsed == {"max_num_seqs": 8, "fit_mape": 0.05, "name": "123"}
    with pytest.raises(InputError, match="given twice"):  # which one was meant?
        parse_overrides(["max_num_seqs=8", "max_num_seqs=16"])
    with pytest.raises(InputError, match="--set colour"):
        parse_overrides(["colour=red"])


def test_timed_formulation_solves_and_replays(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # on unit slots the timed model is the slot model: latency 6 + d = 8 at M = 4
    out = tmp_path / "timed.csv"
    code, stdout, _ = run(
        [
            "solve", str(tiny), "--model", "unit-slot", "--formulation", "timed",
            "--backend", "milp", "--set", "kv_capacity_tokens=4", "--out", str(out),
            "--json",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0
    summary = json.loads(stdout)
    assert summary["status"] == "optimal"
    assert summary["objective"] == pytest.approx(8.0)
    assert summary["replay_objective"] == pytest.approx(8.0)
    frame = pd.read_csv(out)
    assert frame["completion_s"].sum() == pytest.approx(8.0)
    assert sorted(frame["start_iteration"]) == [0, 2]


# -- --out: never an input, its folder checked first -------------------------------


def test_out_equal_to_the_trace_is_refused(
    tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tiny.read_bytes()
    args = ["solve", str(tiny), "--model", "unit-slot", "--out", str(tiny)]
    code, out, err = run(args, capsys)
    assert_refused(code, out, err, "also an input", str(tiny), "'--out'")
    assert tiny.read_bytes() == before


def test_missing_out_folder_is_refused_before_work(
    tiny: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("lsched.cli.solve.read_trace", must_not_run)
    target = tiny.parent / "nowhere" / "schedule.csv"
    args = ["solve", str(tiny), "--model", "unit-slot", "--out", str(target)]
    code, out, err = run(args, capsys)
    assert_refused(code, out, err, str(target), "no such folder")
