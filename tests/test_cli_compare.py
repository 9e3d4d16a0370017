"""`lsched compare --plot`: the plot never replaces an input; its folder is checked
before any bound or solve is computed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_helpers import assert_refused, must_not_run, run

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
