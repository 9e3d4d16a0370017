"""`lsched simulate`: JSON shape, the instance's own KV capacity, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import assert_refused, must_not_run, run

from lsched.evaluator import simulate
from lsched.profile import load_profile
from lsched.traces import read_trace, write_trace

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "instances" / "default.csv"


def test_json_lists_each_policy_with_its_metrics(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_file = tmp_path / "requests.csv"
    code, out, _ = run(
        [
            "simulate", str(DEFAULT), "--model", "unit-slot", "--policy", "fcfs",
            "--policy", "fcfs:chunked=false", "--json",
            "--requests-out", str(out_file),
        ],
        capsys,
    )  # fmt: skip
    assert code == 0
    report = json.loads(out)
    assert [p["policy"] for p in report["policies"]] == ["fcfs", "fcfs:chunked=false"]
    for entry in report["policies"]:
        for key in ("makespan_s", "ttft_mean_s", "ttft_p99_s", "e2e_mean_s",
                    "tpot_mean_s", "throughput_tok_s", "busy_fraction",
                    "kv_utilization", "preemptions", "num_completed"):  # fmt: skip
            assert key in entry["metrics"]
        assert entry["metrics"]["num_completed"] == 10
        assert entry["iterations"] >= 1 and entry["runtime_s"] >= 0
    # the default instance carries Jaillet's M: the CLI must simulate with it
    instance, _ = read_trace(DEFAULT)
    capacity = instance.params["kv_capacity_tokens"]
    direct = simulate(
        instance, load_profile("unit-slot").replace(kv_capacity_tokens=capacity), "fcfs"
    )
    assert (
        report["policies"][0]["metrics"]["makespan_s"] == direct.metrics["makespan_s"]
    )
    records = pd.read_csv(out_file)
    assert len(records) == 20 and set(records["policy"]) == {
        "fcfs",
        "fcfs:chunked=false",
    }
    assert (records["completion_s"] >= records["first_token_s"]).all()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--policy", "nope"], "unknown policy 'nope'"),
        (["--policy", "fcfs:chunked=maybe"], "expected true or false"),
        (["--policy", "fcfs:colour=red"], "key one of: chunked"),
        (["--kv-capacity-tokens", "20"], "more than the capacity of 20 tokens"),
        (["--model", "nope"], "nope"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    extra: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["simulate", str(DEFAULT), "--model", "unit-slot", *extra]
    code, _, err = run(args, capsys)
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_result_exports_round_trip_through_json() -> None:
    instance, _ = read_trace(DEFAULT)
    profile = load_profile("unit-slot").replace(
        kv_capacity_tokens=instance.params["kv_capacity_tokens"]
    )
    result = simulate(instance, profile, "fcfs", log=True)
    record = json.loads(result.to_json(include_log=True))
    assert len(record["requests"]) == len(instance)
    assert len(record["runs"]) == len(result.runs)
    assert sum(r["iterations"] for r in record["runs"]) == result.iterations
    assert len(record["preemptions"]) == record["metrics"]["preemptions"]
    frame = result.metrics_frame
    assert frame.index.tolist() == ["fcfs"]
    assert frame.loc["fcfs", "makespan_s"] == result.metrics["makespan_s"]
    assert "runs" not in json.loads(result.to_json())


@pytest.mark.parametrize("option", ["--requests-out", "--timeline-out"])
def test_output_equal_to_the_trace_is_refused(
    option: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "trace.parquet"
    write_trace(read_trace(DEFAULT)[0], trace)
    before = trace.read_bytes()
    (tmp_path / "sub").mkdir()
    spelled = tmp_path / "sub" / ".." / "trace.parquet"  # the same file, spelled apart
    for out_path in (trace, spelled):
        args = ["simulate", str(trace), "--model", "unit-slot", option, str(out_path)]
        code, out, err = run(args, capsys)
        assert_refused(code, out, err, "also an input", str(out_path))
    assert trace.read_bytes() == before


@pytest.mark.parametrize("option", ["--requests-out", "--timeline-out"])
def test_missing_output_folder_is_refused_before_work(
    option: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("lsched.cli.simulate.read_trace", must_not_run)
    target = tmp_path / "nowhere" / "out.parquet"
    args = ["simulate", str(DEFAULT), "--model", "unit-slot", option, str(target)]
    code, out, err = run(args, capsys)
    assert_refused(code, out, err, str(target), "no such folder")


def test_requests_out_suffix_is_checked_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("lsched.cli.simulate.read_trace", must_not_run)
    args = ["simulate", str(DEFAULT), "--model", "unit-slot",
            "--requests-out", str(tmp_path / "r.txt")]  # fmt: skip
    code, out, err = run(args, capsys)
    assert_refused(code, out, err, "expected .csv or .parquet")


def test_json_counts_are_integers(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["simulate", str(DEFAULT), "--model", "unit-slot", "--replicas", "2"]
    code, out, _ = run([*args, "--json"], capsys)
    assert code == 0
    (entry,) = json.loads(out)["policies"]
    tables = [entry["metrics"], entry, *entry["pools"], *entry["per_replica"]]
    counts = ("num_completed", "num_rejected", "preemptions", "recomputed_tokens",
              "iterations", "replicas")  # fmt: skip
    seen = 0
    for table in tables:
        for key in counts:
            if key in table:
                assert type(table[key]) is int, (key, table[key])
                seen += 1
    assert seen >= 15
    assert entry["metrics"]["preemptions"] > 0  # the counts are not all trivial
    assert type(entry["metrics"]["makespan_s"]) is float  # other metrics stay floats


AZURE = ROOT.parent / "shared" / "traces" / "azure_code_2023.csv"


@pytest.mark.skipif(not AZURE.is_file(), reason=f"real trace not found at {AZURE}")
def test_azure_trace_on_whole_prompt_policies_rejects_and_cuts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Prompts up to 7,437 tokens against max_model_len 4,096: vllm-v0 and orca
    (whole-prompt prefills within a 4,096-token budget) once stalled at the end
    of the run; now the long prompts are rejected at arrival and the outputs that
    run past 4,096 tokens cut, and both policies serve the rest."""
    limit = 300
    out_file = tmp_path / "requests.csv"
    args = [
        "simulate",
        str(AZURE),
        "--model",
        "llama2-70b-a100-tp4",
        "-p",
        "vllm-v0",
        "-p",
        "orca",
        "--limit",
        str(limit),
    ]
    code, out, err = run([*args, "--json", "--requests-out", str(out_file)], capsys)
    assert code == 0, err
    instance, _ = read_trace(AZURE, limit=limit)
    cap = load_profile("llama2-70b-a100-tp4").max_model_len
    s, o = instance.prompt_tokens, instance.output_tokens
    too_long = s > cap
    cut = (~too_long) & (o > cap - s + 1)  # vLLM V0 stops at s + o > cap
    assert too_long.sum() > 0 and cut.sum() > 0  # the prefix has both
    report = json.loads(out)
    for entry in report["policies"]:
        metrics = entry["metrics"]
        assert metrics["num_rejected"] == too_long.sum()
        assert metrics["num_truncated"] == cut.sum()
        assert metrics["num_completed"] == limit - too_long.sum()
    records = pd.read_csv(out_file, keep_default_na=False)
    for _, rows in records.groupby("policy"):
        assert (rows["replica"].to_numpy() == -1).tolist() == too_long.tolist()
        expected = (o - (cap - s + 1)).clip(min=0) * ~too_long
        assert rows["truncated_tokens"].tolist() == expected.tolist()
    # the table shows both counts, which the run has
    code, out, err = run(args, capsys)
    assert code == 0, err
    for name, count in (("num_rejected", too_long.sum()), ("num_truncated", cut.sum())):
        row = next(line for line in out.splitlines() if name in line)
        assert row.count(str(count)) == 2  # one column per policy


def test_the_table_leaves_out_counts_that_are_zero(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(["simulate", str(DEFAULT), "--model", "unit-slot"], capsys)
    assert code == 0, err
    assert "num_rejected" not in out and "num_truncated" not in out


@pytest.mark.skipif(not AZURE.is_file(), reason=f"real trace not found at {AZURE}")
def test_max_model_len_clips_the_trace_before_the_replay(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--max-model-len`` clips the trace as it is read (prompt + output within
    it): nothing is left for the replay to reject or cut."""
    code, out, err = run(
        [
            "simulate",
            str(AZURE),
            "--model",
            "llama2-70b-a100-tp4",
            "-p",
            "orca",
            "--limit",
            "100",
            "--max-model-len",
            "4096",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    metrics = json.loads(out)["policies"][0]["metrics"]
    assert metrics["num_rejected"] == metrics["num_truncated"] == 0
    assert metrics["num_completed"] == 100
