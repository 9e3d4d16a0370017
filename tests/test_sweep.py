"""`lsched sweep` / :mod:`lsched.sweep`: the case product, resumable storage, executors.

The sweep under test: the first 6 requests of ``instances/default.csv`` (Jaillet's
M = 48 travels with it) and two generated Jaillet instances (n = 6, seeds 0 and
1), on ``unit-slot`` as is and with ``kv_capacity_tokens = 60``, under three
policies and CP-SAT: 3 x 2 x 4 = 24 cases, each a few milliseconds (CP-SAT proves
these tiny instances optimal in well under a second). On ``unit-slot`` one slot
is one second, so a policy's latency and the solver's are in the same unit and
the solver's proven bound must be below every policy's value.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from cli_helpers import run

from lsched.errors import InputError
from lsched.evaluator import simulate
from lsched.predictors import apply_predictor
from lsched.profile import load_profile
from lsched.sweep import (
    BASE_COLUMNS,
    TIMING_COLUMNS,
    Case,
    consolidate,
    load_config,
    load_results,
    open_executor,
    parts_dir,
    run_case,
    run_sweep,
    write_part,
)
from lsched.traces import read_trace

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "instances" / "default.csv"

CONFIG = """\
[sweep]
out = "results.parquet"
instances = [{ path = "traces/default.csv", limit = 6 }]
profiles = ["unit-slot", { name = "unit-slot", sets = ["kv_capacity_tokens=60"] }]
policies = ["fcfs", "mc-sf", "sarathi:chunk=256"]
objective = "latency"
predictor = "oracle"

[[sweep.generate]]
family = "jaillet"
n = 6
seeds = [0, 1]

[[sweep.solver]]
backend = "cpsat"
time_limit = 10
threads = 1
seed = 0
"""
NUM_CASES = 3 * 2 * 4


class Interrupted(Exception):
    """Stands for a crash (or Ctrl-C) in the middle of a sweep."""


def make_sweep(folder: Path, text: str = CONFIG) -> Path:
    """A config and its trace in ``folder``; returns the config's path."""
    (folder / "traces").mkdir(parents=True)
    shutil.copy(DEFAULT, folder / "traces" / "default.csv")
    path = folder / "sweep.toml"
    path.write_text(text, encoding="utf-8")
    return path


def deterministic(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows without wall-clock columns, in case-id order."""
    return (
        frame.drop(columns=list(TIMING_COLUMNS))
        .sort_values("case_id")
        .reset_index(drop=True)
    )


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """A sweep run in one go on the local executor: the reference rows."""
    config = make_sweep(tmp_path_factory.mktemp("clean"))
    report = run_sweep(config, workers=1)
    assert (report.cases, report.ran, report.skipped, report.remaining) == (
        NUM_CASES,
        NUM_CASES,
        0,
        0,
    )
    assert report.errors == 0
    # the parts were folded into the one file and removed
    out = config.parent / "results.parquet"
    assert report.out == out and out.is_file()
    assert not parts_dir(out).exists()
    stored = pd.read_parquet(out)
    pd.testing.assert_frame_equal(stored, load_results(out))
    return stored


# -- the config and the cases ------------------------------------------------------


def test_config_is_the_product_with_stable_case_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(make_sweep(tmp_path / "a"))
    cases = config.cases()
    assert len(cases) == NUM_CASES
    assert [s.label for s in config.instances] == [
        "traces/default.csv:limit=6",
        "jaillet-n6-s0",
        "jaillet-n6-s1",
    ]
    assert [p.label for p in config.profiles] == [
        "unit-slot",
        "unit-slot:kv_capacity_tokens=60",
    ]
    assert [c.method for c in cases[:4]] == [
        "fcfs",
        "mc-sf",
        "sarathi:chunk=256",
        "cpsat:time_limit=10,threads=1,seed=0",
    ]
    assert [c.kind for c in cases[:4]] == ["policy"] * 3 + ["solver"]
    ids = [c.case_id for c in cases]
    assert len(set(ids)) == NUM_CASES
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    # out is relative to the config file, not to the working directory
    assert config.out == (tmp_path / "a" / "results.parquet")

    # the same sweep in another folder, read from elsewhere: the same ids
    moved = make_sweep(tmp_path / "b")
    monkeypatch.chdir(tmp_path)
    assert [c.case_id for c in load_config(moved).cases()] == ids

    # a different time limit is a different solver case; the policies keep theirs
    changed = make_sweep(
        tmp_path / "c", CONFIG.replace("time_limit = 10", "time_limit = 11")
    )
    other = load_config(changed).cases()
    for before, after in zip(cases, other, strict=True):
        assert (before.case_id == after.case_id) == (before.kind == "policy")

    # a predictor concerns the policies: the solver cases keep their ids
    predicted = make_sweep(
        tmp_path / "e", CONFIG.replace('"oracle"', '"noise:sigma=0.5,seed=1"')
    )
    other = load_config(predicted).cases()
    for before, after in zip(cases, other, strict=True):
        assert (before.case_id == after.case_id) == (before.kind == "solver")

    # spelling a policy's default parameter does not make a new case
    spelled = make_sweep(
        tmp_path / "d", CONFIG.replace('"fcfs"', '"fcfs:chunked=true"')
    )
    assert [c.case_id for c in load_config(spelled).cases()] == ids


def test_run_case_is_picklable_and_repeatable(tmp_path: Path) -> None:
    case = load_config(make_sweep(tmp_path)).cases()[0]  # fcfs, default.csv[:6]
    copy = pickle.loads(pickle.dumps(case))
    assert isinstance(copy, Case) and copy.case_id == case.case_id
    first, second = run_case(case), run_case(copy)
    assert first.keys() == second.keys()
    pd.testing.assert_series_equal(  # NaN (no SLO deadlines) equals NaN here
        pd.Series(first).drop(list(TIMING_COLUMNS)),
        pd.Series(second).drop(list(TIMING_COLUMNS)),
    )
    assert np.isnan(first["slo_attainment"])
    # the row's objective is the evaluator's: recompute it from a direct run
    instance, _ = read_trace(DEFAULT, limit=6)
    profile = load_profile("unit-slot").replace(kv_capacity_tokens=48)
    direct = simulate(apply_predictor(instance, "oracle"), profile, "fcfs")
    latency = float(
        np.sum(direct.requests["completion_s"].to_numpy() - instance.arrival_s)
    )
    assert first["objective_value"] == latency
    assert first["makespan_s"] == direct.metrics["makespan_s"]
    assert first["status"] == "ok" and first["kv_capacity_tokens"] == 48


# -- a clean run -------------------------------------------------------------------


def test_clean_run_has_one_checked_row_per_case(
    clean: pd.DataFrame, tmp_path: Path
) -> None:
    ids = [c.case_id for c in load_config(make_sweep(tmp_path)).cases()]
    assert sorted(clean["case_id"]) == sorted(ids)
    assert list(clean.columns[: len(BASE_COLUMNS)]) == list(BASE_COLUMNS)

    solver = clean[clean["kind"] == "solver"]
    policy = clean[clean["kind"] == "policy"]
    assert len(solver) == 6 and len(policy) == 18
    assert (solver["status"] == "optimal").all()
    assert (solver["gap"] == 0).all()
    # the replayed objective is the solver's and, being optimal, the bound
    assert (solver["objective_value"] == solver["solver_objective"]).all()
    assert (solver["objective_value"] == solver["bound"]).all()
    assert (solver["slot_s"] == 1.0).all()
    assert (policy["status"] == "ok").all()
    assert (policy["num_completed"] == policy["num_requests"]).all()
    assert policy["bound"].isna().all() and solver["makespan_s"].isna().all()

    # no policy beats the proven optimum of its instance and profile
    best = solver.set_index(["instance", "profile"])["bound"]
    for _, row in policy.iterrows():
        assert row["objective_value"] >= best[(row["instance"], row["profile"])]

    # the instance's own M = 48 applies unless the profile's sets override it
    default = clean[clean["instance"] == "traces/default.csv:limit=6"]
    capacity = default.groupby("profile")["kv_capacity_tokens"].unique()
    assert capacity["unit-slot"].tolist() == [48]
    assert capacity["unit-slot:kv_capacity_tokens=60"].tolist() == [60]
    assert (default["num_requests"] == 6).all()


# -- interrupted and resumed ---------------------------------------------------


def test_crashed_sweep_reruns_to_every_case_exactly_once(
    clean: pd.DataFrame, tmp_path: Path
) -> None:
    config = make_sweep(tmp_path)
    out = config.parent / "results.parquet"
    seen: list[str] = []

    def crash_after_five(row: Any) -> None:
        seen.append(row["case_id"])
        if len(seen) == 5:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_sweep(config, workers=1, on_case=crash_after_five)
    # nothing consolidated, but the five finished cases are on disk, readable
    assert not out.exists()
    stored = load_results(out)
    assert sorted(stored["case_id"]) == sorted(seen)

    report = run_sweep(config, workers=1)
    assert (report.skipped, report.ran, report.remaining) == (5, NUM_CASES - 5, 0)
    final = load_results(out)
    assert final["case_id"].is_unique and len(final) == NUM_CASES
    pd.testing.assert_frame_equal(deterministic(final), deterministic(clean))
    # the rows stored before the crash were kept, not recomputed
    before = stored.set_index("case_id")["runtime_s"]
    after = final.set_index("case_id")["runtime_s"]
    assert after[before.index].tolist() == before.tolist()


def test_max_cases_stops_and_a_rerun_finishes(
    clean: pd.DataFrame, tmp_path: Path
) -> None:
    config = make_sweep(tmp_path)
    out = config.parent / "results.parquet"
    first = run_sweep(config, workers=1, max_cases=4)
    assert (first.ran, first.remaining, len(first.results)) == (4, NUM_CASES - 4, 4)
    assert len(pd.read_parquet(out)) == 4 and not parts_dir(out).exists()

    second = run_sweep(config, workers=1)
    assert (second.skipped, second.ran, second.remaining) == (4, NUM_CASES - 4, 0)
    # the report lists the config's cases in config order
    assert second.results["case_id"].tolist() == [
        c.case_id for c in load_config(config).cases()
    ]
    pd.testing.assert_frame_equal(deterministic(second.results), deterministic(clean))

    written = out.read_bytes()
    third = run_sweep(config, workers=1)
    assert (third.skipped, third.ran) == (NUM_CASES, 0)
    assert out.read_bytes() == written  # nothing to do, nothing rewritten


def test_load_results_survives_a_crash_inside_consolidation(tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    assert load_results(out).empty
    assert list(load_results(out).columns) == list(BASE_COLUMNS)
    rows = [
        {"case_id": "a1", "kind": "policy", "status": "ok", "objective_value": 3.0},
        {"case_id": "b2", "kind": "solver", "status": "optimal", "bound": 2.0},
    ]
    parts = [write_part(out, row) for row in rows]
    # a writer killed mid-write leaves only a hidden temporary: never read
    (parts_dir(out) / ".part-c3.parquet.0123.tmp").write_bytes(b"half a file")
    assert load_results(out)["case_id"].tolist() == ["a1", "b2"]

    saved = parts[0].read_bytes()
    consolidate(out)
    assert pd.read_parquet(out)["case_id"].tolist() == ["a1", "b2"]
    assert not parts[0].exists() and not parts[1].exists()
    # killed after writing the consolidated file, before deleting a part
    parts[0].write_bytes(saved)
    frame = load_results(out)
    assert frame["case_id"].tolist() == ["a1", "b2"]
    assert frame["objective_value"].iloc[0] == 3.0
    assert np.isnan(frame["objective_value"].iloc[1])

    # a Parquet file that is not sweep results is refused, never merged into
    other = tmp_path / "other.parquet"
    pd.DataFrame({"x": [1]}).to_parquet(other)
    with pytest.raises(InputError, match="no case_id column") as info:
        load_results(other)
    assert info.value.file == str(other)


# -- executors -------------------------------------------------------------------


def test_dask_executor_gives_the_local_results(
    clean: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    distributed = pytest.importorskip("distributed")
    config = make_sweep(tmp_path)
    out = tmp_path / "dask.parquet"
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        dashboard_address=None,
    ) as cluster:
        code, stdout, _ = run(
            [
                "sweep", str(config), "--executor", "dask",
                "--address", cluster.scheduler_address, "--out", str(out), "--json",
            ],
            capsys,
        )  # fmt: skip
    assert code == 0
    report = json.loads(stdout)
    assert (report["cases"], report["ran"], report["errors"]) == (NUM_CASES,) * 2 + (0,)
    assert report["out"] == str(out)
    assert not (config.parent / "results.parquet").exists()  # --out wins
    pd.testing.assert_frame_equal(
        deterministic(load_results(out)), deterministic(clean)
    )


def test_executor_settings_are_checked() -> None:
    bad = (
        ({"kind": "dask"}, "address", "tcp://HOST:PORT"),
        ({"kind": "threads"}, "executor", "expected one of local, dask"),
        ({"kind": "local", "workers": 0}, "workers", "expected an integer >= 1"),
        ({"kind": "local", "address": "tcp://h:1"}, "address", "dask executor only"),
    )
    for options, field, message in bad:
        with pytest.raises(InputError, match=message) as info, open_executor(**options):
            pass
        assert info.value.field == field


# -- the command line ----------------------------------------------------------------


def test_cli_error_rows_and_retry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # mc-sf ranks by predicted length: without a predictor the case cannot run
    config = make_sweep(
        tmp_path,
        '[sweep]\ninstances = ["traces/default.csv"]\nprofiles = ["unit-slot"]\n'
        'policies = ["fcfs", "mc-sf"]\n',
    )
    args = ["sweep", str(config), "--workers", "1", "--json"]
    code, stdout, _ = run(args, capsys)
    assert code == 0
    report = json.loads(stdout)  # stdout is one JSON object, no progress bar
    assert (report["cases"], report["ran"], report["errors"]) == (2, 2, 1)
    assert report["out"] == str(tmp_path / "sweep.parquet")  # default: <stem>
    rows = load_results(tmp_path / "sweep.parquet").set_index("method")
    assert rows.loc["mc-sf", "status"] == "error"
    assert "predicted" in rows.loc["mc-sf", "error"]
    assert np.isnan(rows.loc["mc-sf", "objective_value"])
    assert rows.loc["fcfs", "status"] == "ok"
    assert [m["method"] for m in report["methods"]] == ["fcfs", "mc-sf"]

    code, stdout, _ = run(args, capsys)
    assert (code, json.loads(stdout)["ran"]) == (0, 0)
    code, stdout, _ = run([*args, "--retry-errors"], capsys)
    again = json.loads(stdout)
    assert (code, again["skipped"], again["ran"], again["errors"]) == (0, 1, 1, 1)
    assert load_results(tmp_path / "sweep.parquet")["case_id"].is_unique


#: Broken configs: what follows ``[sweep]`` and ``instances``, and the error's
#: line, field and message (the config's first two lines are those two).
BROKEN = {
    "unknown key": (
        'profiles = ["unit-slot"]\npolicies = ["fcfs"]\npolices = ["fcfs"]\n',
        5,
        "sweep.polices",
        "unknown key 'polices'; expected one of out, instances",
    ),
    "unknown table": (
        'profiles = ["unit-slot"]\npolicies = ["fcfs"]\n[sweep.x]\n',
        5,
        "sweep.x",
        "unknown key 'x'; expected one of",
    ),
    "unknown policy": (
        'profiles = ["unit-slot"]\npolicies = ["fcfs", "fifo"]\n',
        4,
        "sweep.policies",
        "unknown policy 'fifo'; expected one of",
    ),
    "unknown profile": (
        'profiles = ["unit-slt"]\npolicies = ["fcfs"]\n',
        3,
        "sweep.profiles",
        "unknown profile 'unit-slt'; known profiles:",
    ),
    "bad override": (
        'profiles = [{ name = "unit-slot", sets = ["kv=1"] }]\npolicies = ["fcfs"]\n',
        3,
        "sweep.profiles.sets",
        "profile field 'kv' is unknown; expected one of",
    ),
    "bad solver": (
        'profiles = ["unit-slot"]\n[[sweep.solver]]\nbackend = "gurobi"\n',
        5,
        "sweep.solver.backend",
        "got 'gurobi'; expected one of cpsat, milp, lns",
    ),
    "bad generator option": (
        'profiles = ["unit-slot"]\npolicies = ["fcfs"]\n[[sweep.generate]]\n'
        'family = "jaillet"\nn = 4\nkv_capacity = 2\n',
        8,
        "sweep.generate.kv_capacity",
        "expected",
    ),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_bad_config_is_one_located_line_and_exit_2(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body, line, field, expected = BROKEN[name]
    config = make_sweep(
        tmp_path, '[sweep]\ninstances = ["traces/default.csv"]\n' + body
    )
    with pytest.raises(InputError) as info:
        load_config(config)
    assert (info.value.file, info.value.line, info.value.field) == (
        str(config),
        line,
        field,
    )
    assert expected in info.value.message

    code, stdout, err = run(["sweep", str(config), "--json"], capsys)
    assert (code, stdout) == (2, "")
    assert err.count("\n") == 1 and err.startswith("lsched: error: ")
    assert f"{config}:{line}: field '{field}'" in err


def test_cli_rejects_missing_files_and_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["sweep", str(tmp_path / "none.toml")], capsys)
    assert code == 2 and "no such file; expected a sweep config" in err

    config = make_sweep(
        tmp_path,
        '[sweep]\ninstances = ["traces/gone.csv"]\nprofiles = ["unit-slot"]\n'
        'policies = ["fcfs"]\n',
    )
    code, _, err = run(["sweep", str(config)], capsys)
    assert code == 2 and f"{config}:2: field 'sweep.instances': no such file" in err

    (tmp_path / "traces" / "gone.csv").write_bytes(DEFAULT.read_bytes())
    for options, message in (
        (["--executor", "dask"], "field '--address': is required"),
        (["--executor", "ray"], "field '--executor': got 'ray'"),
        (["--address", "tcp://127.0.0.1:1"], "applies to the dask executor only"),
        (["--workers", "0"], "field '--workers': got 0"),
        (["--out", str(tmp_path / "r.csv")], "field '--out': got suffix '.csv'"),
    ):
        code, stdout, err = run(["sweep", str(config), *options], capsys)
        assert (code, stdout) == (2, ""), options
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "sweep.parquet").exists()  # nothing ran
