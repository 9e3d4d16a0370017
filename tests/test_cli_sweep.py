"""`lsched sweep --out` and the config's ``out``: never one of the files the sweep
reads (the config, its traces, its profile files); the folder is checked before any
case runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import assert_refused, must_not_run, run

from lsched.traces import read_trace, write_trace

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "instances" / "default.csv"


def _config(tmp_path: Path, out: str = "results.parquet") -> tuple[Path, Path]:
    """A one-case sweep over a Parquet trace; the config and the trace."""
    trace = tmp_path / "trace.parquet"
    write_trace(read_trace(DEFAULT)[0], trace)
    config = tmp_path / "sweep.toml"
    config.write_text(
        f'[sweep]\nout = "{out}"\ninstances = ["trace.parquet"]\n'
        'profiles = ["unit-slot"]\npolicies = ["fcfs"]\n',
        encoding="utf-8",
    )
    return config, trace


def test_out_onto_a_trace_of_the_sweep_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("lsched.cli.sweep.run_sweep", must_not_run)
    config, trace = _config(tmp_path)
    before = trace.read_bytes()
    code, out, err = run(["sweep", str(config), "--out", str(trace)], capsys)
    assert_refused(code, out, err, "also an input", str(trace), "'--out'")
    assert trace.read_bytes() == before


def test_config_out_onto_its_trace_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, trace = _config(tmp_path, out="trace.parquet")
    before = trace.read_bytes()
    code, out, err = run(["sweep", str(config)], capsys)
    assert_refused(code, out, err, "also an input", f"{config}:2", "sweep.out")
    assert trace.read_bytes() == before


def test_missing_out_folder_is_refused_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("lsched.cli.sweep.run_sweep", must_not_run)
    config, _ = _config(tmp_path)
    target = tmp_path / "nowhere" / "results.parquet"
    code, out, err = run(["sweep", str(config), "--out", str(target)], capsys)
    assert_refused(code, out, err, str(target), "no such folder")
