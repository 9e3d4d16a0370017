"""`lsched compare --plot`: the plot never replaces an input; its folder is checked
before any bound or solve is computed. `--prefix-cache`: the gaps are taken to
the bounds that hold for any cache; a bad value is refused before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import assert_refused, must_not_run, run, shared_prefix_trace

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "instances" / "default.csv"


def test_plot_onto_the_trace_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "trace.png"  # a CSV trace under a name --plot accepts
    shutil.copy(DEFAULT, trace)
    before = trace.read_bytes()
    args = ["compare", str(trace), "--model", "unit-slot", "--plot", str(trace)]
    code, out, err = run(args, capsys)
    assert_refused(code, out, err, "also an input", str(trace), "'--plot'")
    assert trace.read_bytes() == before


def test_missing_plot_folder_is_refused_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("lsched.cli.compare.read_trace", must_not_run)
    monkeypatch.setattr("lsched.cli.compare.compare", must_not_run)
    target = tmp_path / "nowhere" / "gap.png"
    args = ["compare", str(DEFAULT), "--model", "unit-slot", "--plot", str(target)]
    code, out, err = run(args, capsys)
    assert_refused(code, out, err, str(target), "no such folder")


def test_prefix_cache_scores_against_the_cached_bounds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--prefix-cache lru``: the headline bound is a ``seconds.cached_*`` one,
    every gap to it is >= 0, and the cached runs beat the whole-prompt work bound
    (2 of 3 prompts find 512 of their 600 tokens cached), which would not hold."""
    trace = str(shared_prefix_trace(tmp_path))
    args = ["compare", trace, "--model", "llama2-70b-a100-tp4", "--backend", "none",
            "--lp-time-limit", "0", "--json", "--prefix-cache", "lru"]  # fmt: skip
    code, out, err = run(args, capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["cache"] == "any"
    bounds = report["bounds"]
    cached = {k: v for k, v in bounds.items() if k.startswith("seconds.cached_")}
    assert cached and report["best_bound"] == max(cached.values())
    for row in report["policies"]:
        assert row["metrics"]["prefill_tokens_saved"] == 1024, row["policy"]
        assert row["gap"] is not None and row["gap"] >= 0, row["policy"]
    best_run = min(row["objective_value"] for row in report["policies"])
    assert best_run < bounds["seconds.work"]


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--model", "llama2-70b-a100-tp4", "--prefix-cache", "mru"],
         ["--prefix-cache", "'mru'", "lru_tail_first"]),
        (["--model", "llama2-70b-a100-tp4",
          "--prefix-cache", "lru:capacity_tokens=500000"],
         ["--prefix-cache", "500000 tokens", "496503 tokens of KV"]),
        (["--cluster", "CLUSTER", "--prefix-cache", "lru"],
         ["--prefix-cache", "with --cluster"]),
    ],
)  # fmt: skip
def test_bad_prefix_cache_exits_2_before_work(
    extra: list[str],
    needles: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("lsched.cli.compare.compare", must_not_run)
    cluster = tmp_path / "cluster.toml"
    cluster.write_text('[[pool]]\nmodel = "llama2-70b-a100-tp4"\npolicy = "vllm"\n')
    extra = [str(cluster) if arg == "CLUSTER" else arg for arg in extra]
    trace = str(shared_prefix_trace(tmp_path))
    assert_refused(*run(["compare", trace, *extra], capsys), *needles)
