"""`lsched goodput` (and `lsched simulate --slo`): table, JSON, files, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import assert_refused, must_not_run, run

from lsched.cluster import Cluster
from lsched.generators import LogNormal, Poisson, generate
from lsched.goodput import goodput
from lsched.profile import load_profile
from lsched.slo import SLO
from lsched.traces import read_trace, write_trace

MODEL = "opt-13b-a100-tp1-distserve"
ARGS = ["--model", MODEL, "--slo", "ttft=250ms,tpot=0.1"]


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    instance = generate(
        16,
        arrivals=Poisson(rate_per_s=2.0),
        prompt=LogNormal(median=256, sigma=0.6, max_tokens=1024),
        output=LogNormal(median=24, sigma=0.6, max_tokens=128),
        seed=5,
        name="tiny",
    )
    path = tmp_path_factory.mktemp("goodput") / "tiny.csv"
    write_trace(instance, path)
    return path


def test_the_table_lists_each_rate_then_the_goodput(
    trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["goodput", str(trace), *ARGS, "--replicas", "2"], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("tiny (16 requests) on 2 x opt-13b-a100-tp1-distserve")
    assert lines[0].endswith(
        "2 GPUs: SLO ttft=0.25,tpot=0.1, target 0.9, lsched definitions"
    )
    for column in ("rate/GPU (req/s)", "TTFT", "TPOT", "both", "result"):
        assert column in out
    rows = [line for line in lines if " pass " in line or " fail " in line]
    assert any(" pass " in r for r in rows) and any(" fail " in r for r in rows)
    assert lines[-1].startswith("goodput ") and "req/s per GPU" in lines[-1]
    cluster = Cluster.colocated(load_profile(MODEL), "fcfs", 2)
    instance, _ = read_trace(trace)
    expected = goodput(instance, cluster, SLO(0.25, 0.1))
    assert len(rows) == len(expected.trials)
    assert lines[-1] == expected.message


def test_json_plot_and_out_files(
    trace: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    plot, report, table = tmp_path / "g.png", tmp_path / "g.json", tmp_path / "g.csv"
    args = ["goodput", str(trace), *ARGS, "--definitions", "simdistserve",
            "--attain", "0.8", "--policy", "vllm", "--json"]  # fmt: skip
    code, out, err = run([*args, "--plot", str(plot), "--out", str(report)], capsys)
    assert code == 0, err
    printed = json.loads(out)
    assert printed == json.loads(report.read_text(encoding="utf-8"))
    assert printed["definitions"] == "simdistserve" and printed["target"] == 0.8
    assert printed["pools"][0]["policy"] == "vllm"
    assert printed["status"] == "found" and printed["goodput_per_gpu"] > 0
    assert printed["slo"] == {"ttft_s": 0.25, "tpot_s": 0.1}
    best, worst = printed["bracket"]
    assert best == printed["goodput_per_gpu"] and worst <= best * 1.01
    assert plot.read_bytes().startswith(b"\x89PNG")
    code, out, err = run([*args, "--out", str(table)], capsys)
    assert code == 0, err
    frame = pd.read_csv(table)
    assert frame["rate_per_gpu"].tolist() == [
        t["rate_per_gpu"] for t in printed["trials"]
    ]
    assert frame["passed"].tolist() == [t["passed"] for t in printed["trials"]]
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_cluster_file(
    trace: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(
        f'router = "least-outstanding"\n[[pool]]\nmodel = "{MODEL}"\nreplicas = 2\n'
        'policy = "sarathi:chunk=256"\n',
        encoding="utf-8",
    )
    args = ["goodput", str(trace), "--cluster", str(cluster), "--slo", "ttft=0.5",
            "--json"]  # fmt: skip
    code, out, err = run(args, capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["gpus"] == 2 and report["deadlines"] == ["ttft_deadline_s"]
    assert all(t["attainment_tpot"] is None for t in report["trials"])
    code, out, err = run([*args, "--model", MODEL], capsys)
    assert_refused(code, out, err, "--model", "--cluster")


def test_nothing_meets_the_slo(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["goodput", str(trace), "--model", MODEL, "--slo", "ttft=1ms",
            "--low", "0.5"]  # fmt: skip
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("goodput 0: even the lowest rate")


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--slo", "ttft=fast"], ("--slo ttft", "got 'fast'", "seconds > 0")),
        (["--slo", "latency=1"], ("--slo", "unknown key 'latency'")),
        (["--slo", "ttft=0.5", "--attain", "1.5"], ("--attain", "(0, 1]")),
        (["--slo", "ttft=0.5", "--attain", "0"], ("--attain", "(0, 1]")),
        (["--slo", "ttft=0.5", "--definitions", "vidur"], ("--definitions",)),
        (["--slo", "ttft=0.5", "--low", "3", "--high", "2"], ("--high", "low < high")),
        (["--slo", "ttft=0.5", "--plot", "g.jpg"], ("--plot", ".png")),
        (["--slo", "ttft=0.5", "--out", "g.txt"], ("--out", ".json or .csv")),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    trace: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    needles: tuple[str, ...],
) -> None:
    monkeypatch.setattr("lsched.cli.goodput.read_trace", must_not_run)
    code, out, err = run(["goodput", str(trace), "--model", MODEL, *extra], capsys)
    assert_refused(code, out, err, *needles)


def test_a_missing_trace_and_an_output_over_the_input(
    trace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run(["goodput", "no-such.csv", *ARGS], capsys)
    assert_refused(code, out, err, "no-such.csv")
    monkeypatch.setattr("lsched.cli.goodput.read_trace", must_not_run)
    code, out, err = run(["goodput", str(trace), *ARGS, "--out", str(trace)], capsys)
    assert_refused(code, out, err, "--out", "is also an input")


def test_a_trace_without_a_rate(capsys: pytest.CaptureFixture[str]) -> None:
    default = Path(__file__).resolve().parents[1] / "instances" / "default.csv"
    code, out, err = run(
        ["goodput", str(default), "--model", "unit-slot", "--slo", "ttft=5"], capsys
    )
    assert_refused(code, out, err, "arrival_s", "no rate to scale")


def test_simulate_reports_attainment_with_an_slo(
    trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["simulate", str(trace), *ARGS, "--json"], capsys)
    assert code == 0, err
    metrics = json.loads(out)["policies"][0]["metrics"]
    for key in ("slo_attainment", "slo_attainment_ttft", "slo_attainment_tpot"):
        assert 0 <= metrics[key] <= 1
    assert metrics["slo_attainment"] <= metrics["slo_attainment_ttft"]
    code, out, err = run(["simulate", str(trace), *ARGS], capsys)
    assert code == 0 and "slo_attainment_tpot" in out
    code, out, err = run(["simulate", str(trace), "--model", MODEL], capsys)
    assert code == 0 and "slo_attainment" not in out  # no deadlines, no rows
    code, out, err = run(
        ["simulate", str(trace), "--model", MODEL, "--slo", "tpot=0"], capsys
    )
    assert_refused(code, out, err, "--slo tpot", "seconds > 0")


def test_the_trace_s_own_deadlines_are_kept_and_said_to_be(
    trace: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    instance, _ = read_trace(trace)
    own = tmp_path / "own.csv"
    write_trace(SLO(ttft_s=0.25).apply(instance), own)
    args = ["goodput", str(own), "--model", MODEL, "--json", "--slo"]
    code, out, err = run([*args, "ttft=1ms,tpot=0.1"], capsys)
    assert code == 0
    assert err.strip() == (
        "lsched: the trace's own ttft_deadline_s kept over --slo (--slo-override "
        "replaces them)"
    )
    kept = json.loads(out)
    code, out, _ = run([*args, "ttft=0.25,tpot=0.1"], capsys)
    assert json.loads(out)["goodput_per_gpu"] == kept["goodput_per_gpu"] > 0
    code, out, err = run([*args, "ttft=1ms", "--slo-override", "--low", "1"], capsys)
    assert code == 0 and err == ""
    assert json.loads(out)["status"] == "none"
