"""Provenance (:mod:`lsched.provenance`): every JSON a command prints or writes, and
every file it writes, records the lsched version, the arguments as given, the
SHA-256 of each input file (recomputed here with hashlib), the policies, the seeds
and the time limits."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import shutil
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from cli_helpers import run

from lsched.evaluator import simulate
from lsched.profile import load_profile
from lsched.provenance import (
    PARQUET_KEY,
    provenance,
    read_provenance,
    sidecar_path,
    write_frame,
)
from lsched.traces import read_trace, write_trace

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "instances" / "default.csv"
UNIT = Path(str(load_profile("unit-slot").path))
VERSION = importlib.metadata.version("lsched")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check(
    record: Mapping[str, Any] | None,
    argv: list[str] | None,
    inputs: list[tuple[str, Path]],
    policies: list[str] = [],  # noqa: B006 (never mutated)
    seeds: Mapping[str, int] | None = None,
    time_limits: Mapping[str, float] | None = None,
) -> None:
    """``record`` names this lsched, ``argv``, exactly ``inputs`` (role, file) with
    their current bytes' SHA-256, the policies, seeds and time limits."""
    assert record is not None
    assert record["schema"] == 1
    assert record["lsched_version"] == VERSION
    assert record["created_utc"].endswith("Z")
    assert record["argv"] == argv
    assert [(i["role"], Path(i["path"])) for i in record["inputs"]] == [
        (role, path.resolve()) for role, path in inputs
    ]
    for item, (_, path) in zip(record["inputs"], inputs, strict=True):
        assert item["sha256"] == sha256(path)
        assert item["bytes"] == path.stat().st_size
    assert record["policies"] == policies
    assert record["seeds"] == dict(seeds or {})
    assert record["time_limits"] == dict(time_limits or {})


def lsched(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """``lsched ARGS`` (with ``--json``): its JSON output."""
    code, out, err = run(args, capsys)
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    """A copy of the default instance, whose bytes a test may change."""
    path = tmp_path / "trace.csv"
    shutil.copy(DEFAULT, path)
    return path


# -- simulate, solve, compare, bound -------------------------------------------------


def test_simulate_records_in_json_csv_and_parquet(
    trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requests, timeline = tmp_path / "r.csv", tmp_path / "t.parquet"
    args = ["simulate", str(trace), "-m", "unit-slot", "-p", "fcfs", "-p",
            "sarathi:chunk=4", "--predictor", "noise:sigma=0.3,seed=4", "--json",
            "--requests-out", str(requests),
            "--timeline-out", str(timeline)]  # fmt: skip
    printed = lsched(args, capsys)
    record = printed["provenance"]
    check(record, args, [("trace", trace), ("profile", UNIT)],
          ["fcfs", "sarathi:chunk=4"], {"predictor": 4})  # fmt: skip
    assert list(printed) == ["policies", "status", "skipped_policies", "provenance"]
    # the same record in every file written: Parquet schema metadata, CSV sidecar
    assert read_provenance(timeline) == record
    assert read_provenance(requests) == record
    sidecar = json.loads(sidecar_path(requests).read_text(encoding="utf-8"))
    assert sidecar["file"] == "r.csv" and sidecar["sha256"] == sha256(requests)
    # the outputs read as before: a plain CSV, a plain Parquet table
    frame = pd.read_csv(requests)
    assert sorted(frame["policy"].unique()) == ["fcfs", "sarathi:chunk=4"]
    assert "policy" in pd.read_parquet(timeline).columns
    # a CSV changed after its sidecar was written: the sidecar is refused
    requests.write_text(requests.read_text() + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="other bytes"):
        read_provenance(requests)


def test_simulate_cluster_records_the_cluster_and_each_profile(
    trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = tmp_path / "mine.toml"
    shutil.copy(UNIT, local)
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(
        '[[pool]]\nmodel = "unit-slot"\npolicy = "fcfs"\n\n'
        '[[pool]]\nmodel = "mine.toml"\npolicy = "sarathi:chunk=4"\n',
        encoding="utf-8",
    )
    args = ["simulate", str(trace), "--cluster", str(cluster), "--json"]
    record = lsched(args, capsys)["provenance"]
    check(record, args,
          [("trace", trace), ("cluster", cluster), ("profile", UNIT),
           ("profile", local)],
          ["fcfs + sarathi:chunk=4"])  # fmt: skip


def test_solve_records_seed_and_time_limit(
    trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schedule = tmp_path / "s.csv"
    args = ["solve", str(trace), "-m", "unit-slot", "--limit", "5", "--time-limit",
            "5", "--seed", "3", "--json", "--out", str(schedule)]  # fmt: skip
    printed = lsched(args, capsys)
    assert printed["status"] == "optimal"
    check(printed["provenance"], args, [("trace", trace), ("profile", UNIT)],
          seeds={"seed": 3}, time_limits={"time_limit": 5.0})  # fmt: skip
    assert read_provenance(schedule) == printed["provenance"]
    parquet = tmp_path / "s.parquet"
    args = [*args[:-1], str(parquet)]
    printed = lsched(args, capsys)
    assert read_provenance(parquet) == printed["provenance"]
    assert "start_slot" in pd.read_parquet(parquet).columns


def test_compare_and_bound_record_policies_seed_and_time_limits(
    trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plot = tmp_path / "gap.png"
    args = ["compare", str(trace), "-m", "unit-slot", "-p", "fcfs", "-p", "sjf",
            "--limit", "5", "--time-limit", "1.5", "--lp-time-limit", "1",
            "--seed", "2", "--json", "--plot", str(plot)]  # fmt: skip
    printed = lsched(args, capsys)
    record = printed["provenance"]
    check(record, args, [("trace", trace), ("profile", UNIT)], ["fcfs", "sjf"],
          {"seed": 2}, {"time_limit": 1.5, "lp_time_limit": 1.0})  # fmt: skip
    assert read_provenance(plot) == record  # a PNG text chunk
    assert plot.read_bytes().startswith(b"\x89PNG")

    args = ["bound", str(trace), "-m", "unit-slot", "--limit", "5",
            "--lp-time-limit", "1", "--json"]  # fmt: skip
    printed = lsched(args, capsys)
    check(printed["provenance"], args, [("trace", trace), ("profile", UNIT)],
          time_limits={"lp_time_limit": 1.0})  # fmt: skip
    assert printed["bounds"]


# -- goodput, placement ------------------------------------------------------------


def test_goodput_records_in_json_csv_and_png(
    trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, table, plot = (tmp_path / n for n in ("g.json", "g.csv", "g.png"))
    args = ["goodput", str(trace), "-m", "unit-slot", "--slo", "ttft=20,tpot=5",
            "--poisson", "1", "--json"]  # fmt: skip
    printed = lsched([*args, "--out", str(report), "--plot", str(plot)], capsys)
    record = printed["provenance"]
    check(record, [*args, "--out", str(report), "--plot", str(plot)],
          [("trace", trace), ("profile", UNIT)], ["fcfs"], {"poisson": 1})  # fmt: skip
    assert json.loads(report.read_text(encoding="utf-8")) == printed
    assert read_provenance(report) == record == read_provenance(plot)
    printed = lsched([*args, "--out", str(table)], capsys)
    assert read_provenance(table) == printed["provenance"]
    assert "rate_per_gpu" in pd.read_csv(table).columns


def test_placement_records_every_profile(
    trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "p.csv"
    args = ["placement", str(trace), "--gpus", "2", "--profiles", "unit-slot",
            "--slo", "ttft=20,tpot=5", "--poisson", "2", "--workers", "1",
            "--prefill-policy", "sarathi:chunk=4", "--json",
            "--out", str(table)]  # fmt: skip
    printed = lsched(args, capsys)
    check(printed["provenance"], args, [("trace", trace), ("profile", UNIT)],
          ["vllm-v0", "sarathi:chunk=4"], {"poisson": 2})  # fmt: skip
    assert read_provenance(table) == printed["provenance"]


# -- sweep -----------------------------------------------------------------------


@contextlib.contextmanager
def _threads(*args: object, **kwargs: object) -> Iterator[tuple[Any, int]]:
    """One thread instead of a spawned process: the same cases, no start-up."""
    with ThreadPoolExecutor(1) as pool:
        yield pool, 1


def test_sweep_records_the_run_and_each_stored_case(
    trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr("lsched.sweep.runner.open_executor", _threads)
    config = tmp_path / "sweep.toml"
    config.write_text(
        '[sweep]\nout = "r.parquet"\ninstances = ["trace.csv"]\n'
        'profiles = ["unit-slot"]\npolicies = ["fcfs"]\n'
        'predictor = "noise:sigma=0.2,seed=9"\n\n'
        '[[sweep.generate]]\nfamily = "jaillet"\nn = 4\nseed = 6\n\n'
        '[[sweep.solver]]\nbackend = "cpsat"\ntime_limit = 3\nseed = 5\n',
        encoding="utf-8",
    )
    args = ["sweep", str(config), "--workers", "1", "--json"]
    printed = lsched(args, capsys)
    solver = "cpsat:time_limit=3,threads=1,seed=5"
    check(printed["provenance"], args,
          [("sweep_config", config), ("trace", trace), ("profile", UNIT)],
          ["fcfs"], {"jaillet-n4-s6": 6, "predictor": 9, solver: 5},
          {solver: 3.0})  # fmt: skip
    rows = pd.read_parquet(tmp_path / "r.parquet")
    assert len(rows) == 4
    for _, row in rows.iterrows():
        record = json.loads(row["provenance"])
        generated = row["instance"] == "jaillet-n4-s6"
        files = [("sweep_config", config)]
        files += [] if generated else [("trace", trace)]
        seeds = {"generate": 6} if generated else {}
        if row["kind"] == "solver":
            check(record, args, [*files, ("profile", UNIT)], [],
                  {**seeds, "seed": 5}, {"time_limit": 3.0})  # fmt: skip
        else:
            check(record, args, [*files, ("profile", UNIT)], ["fcfs"],
                  {**seeds, "predictor": 9})  # fmt: skip
        assert record["created_utc"] == printed["provenance"]["created_utc"]


# -- trace, models, profile ---------------------------------------------------------


def test_trace_commands_record_their_input_and_output(
    trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["trace", "info", str(trace), "--json"]
    check(lsched(args, capsys)["provenance"], args, [("trace", trace)])
    for name in ("c.csv", "c.parquet"):
        target = tmp_path / name
        args = ["trace", "convert", str(trace), str(target), "--json"]
        record = lsched(args, capsys)["provenance"]
        check(record, args, [("trace", trace)])
        assert read_provenance(target) == record
        # the trace reads back as before
        assert len(read_trace(target)[0]) == len(read_trace(trace)[0])
    generated = tmp_path / "gen.parquet"
    args = ["trace", "gen", "jaillet", "--n", "5", "--seed", "7", "--out",
            str(generated), "--json"]  # fmt: skip
    record = lsched(args, capsys)["provenance"]
    check(record, args, [], seeds={"seed": 7})
    assert read_provenance(generated) == record
    assert read_trace(generated)[0].seed == 7


def test_changing_the_trace_bytes_changes_its_hash(
    trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["trace", "info", str(trace), "--json"]
    before = lsched(args, capsys)["provenance"]["inputs"][0]["sha256"]
    trace.write_text(trace.read_text(encoding="utf-8") + "9,1,1\n", encoding="utf-8")
    after = lsched(args, capsys)["provenance"]
    check(after, args, [("trace", trace)])
    assert after["inputs"][0]["sha256"] != before


def test_models_and_profile_fit_record_their_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["models", "show", "unit-slot", "--json"]
    check(lsched(args, capsys)["provenance"], args, [("profile", UNIT)])
    printed = lsched(["models", "list", "--json"], capsys)
    listed = [(i["role"], Path(i["path"])) for i in printed["provenance"]["inputs"]]
    assert listed == [("profile", Path(p["path"])) for p in printed["profiles"]]

    measurements = tmp_path / "m.csv"
    measurements.write_text("prefill_tokens,time_s\n0,0.01\n10,0.02\n20,0.03\n")
    out = tmp_path / "fit.toml"
    args = ["profile", "fit", str(measurements), "--base", "unit-slot", "--out",
            str(out), "--json"]  # fmt: skip
    record = lsched(args, capsys)["provenance"]
    check(record, args, [("measurements", measurements), ("profile", UNIT)])
    assert read_provenance(out) == record  # a TOML comment line
    assert load_profile(out).name == "fit"  # the profile loads as before


# -- the Python API -----------------------------------------------------------------


def test_api_records_without_a_command_line_and_results_are_unchanged(
    trace: Path, tmp_path: Path
) -> None:
    instance, _ = read_trace(trace)
    profile = load_profile("unit-slot")
    record = provenance(
        [("trace", trace), ("profile", profile.path), ("trace", trace)],
        policies=["fcfs"],
        seeds={"seed": 1, "poisson": None},
    )
    check(record.to_dict(), None, [("trace", trace), ("profile", UNIT)], ["fcfs"],
          {"seed": 1})  # fmt: skip
    # recording changes no result: a run's summary is the same before and after
    first = simulate(instance, profile, "fcfs").summary()
    out = tmp_path / "x.parquet"
    write_frame(out, pd.DataFrame({"a": [1, 2]}), record)
    write_trace(instance, tmp_path / "t.parquet", provenance=record)
    second = simulate(instance, profile, "fcfs").summary()
    timing = ("runtime_s", "compile_s")
    assert {k: v for k, v in first.items() if k not in timing} == {
        k: v for k, v in second.items() if k not in timing
    }
    assert read_provenance(out) == record.to_dict()
    assert read_provenance(tmp_path / "t.parquet") == record.to_dict()
    assert read_trace(tmp_path / "t.parquet")[0].name == instance.name
    import pyarrow.parquet as pq

    assert PARQUET_KEY in pq.read_schema(out).metadata
