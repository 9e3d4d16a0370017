"""The ``lsched`` group itself: a light ``--help``, ``--version``, commands loaded
when they run, tables that never cut a number.

Start-up is checked through what gets imported, never through how long it takes
(``benchmarks/cli`` has the timings).
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import run

from lsched.cli import COMMANDS, load_command
from lsched.cli._common import print_table

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "instances" / "default.csv"
#: Libraries that only the commands using them may load.
HEAVY = ("pyomo", "ortools", "matplotlib", "dask", "distributed", "numba", "scipy")
#: What the bare group (``--help``, ``--version``) needs none of either.
DATA = ("numpy", "pandas", "pyarrow")
#: Runs ``lsched ARGS`` in a fresh interpreter; prints the top-level modules loaded.
PROBE = """
import json, sys
from lsched.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def _loaded(*args: str) -> tuple[set[str], str]:
    """The top-level modules ``lsched ARGS`` imports, and what it printed."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,  # a guard against hanging only
    )
    *printed, modules = done.stdout.strip().splitlines()
    return set(json.loads(modules)), "\n".join(printed)


@pytest.mark.parametrize("args", [["--help"], ["--version"], []])
def test_the_group_alone_loads_no_heavy_library(args: list[str]) -> None:
    loaded, printed = _loaded(*args)
    assert not loaded & {*HEAVY, *DATA}
    assert "lsched" in printed


def test_simulate_loads_no_solver_or_plotting_library() -> None:
    loaded, printed = _loaded("simulate", str(DEFAULT), "--model", "unit-slot")
    assert "makespan_s" in printed
    assert not loaded & set(HEAVY)


def test_goodput_loads_matplotlib_only_for_a_plot() -> None:
    trace = ROOT / "instances" / "poisson-lognormal-n500-s0.csv"
    model = "opt-13b-a100-tp1-distserve"
    args = ("--limit", "20", "--model", model, "--slo", "ttft=2")
    loaded, printed = _loaded("goodput", str(trace), *args)
    assert "goodput" in printed
    assert not loaded & set(HEAVY)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--version"], capsys)
    assert code == 0
    assert out.strip() == f"lsched {importlib.metadata.version('lsched')}"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_listed_help_is_the_command_s_own(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    command = load_command(name)
    assert command.name == name
    assert (command.help or "").strip().splitlines()[0] == COMMANDS[name][2]
    code, out, _ = run([name, "--help"], capsys)
    assert code == 0
    assert f"lsched {name}" in out


def test_group_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for name in COMMANDS:
        assert f" {name} " in out
    assert "--version" in out


def test_a_one_command_group_keeps_its_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    measurements = tmp_path / "m.csv"
    measurements.write_text("prefill_tokens,time_s\n0,0.01\n10,0.02\n20,0.03\n")
    code, out, err = run(["profile", "fit", str(measurements), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["n"] == 3


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["simulat"], capsys)
    assert code == 2
    assert "simulate" in err


def test_tables_never_cut_numbers_off_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    values = [1_256_061_234 + k for k in range(12)]
    print_table("wide", [f"column {k}" for k in range(12)], [values])
    out = capsys.readouterr().out
    assert "…" not in out
    for value in values:
        assert f"{value:,}" in out
