"""Ctrl-C (SIGINT): stop promptly, keep what is finished, say ``interrupted``.

Issue 20, part 3. In-process: :func:`lsched.interrupt.request` from a timer
thread stops a running solver (CP-SAT, HiGHS). As a user would: ``lsched solve
--backend milp``, ``compare``, ``bound``, ``simulate`` and ``sweep`` get SIGINT
once they say they started (or, for ``sweep``, once a case is stored), and must
exit 130 with status ``interrupted`` and what was finished kept; the timeouts
only guard against a hang.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from lsched import interrupt
from lsched.formulations.result import Status
from lsched.formulations.slot import SlotProblem, cpsat, milp
from lsched.generators import gsm8k
from lsched.overrides import deployment_profile
from lsched.sweep import load_results
from lsched.traces import read_trace, write_trace

ROOT = Path(__file__).resolve().parents[1]
N40 = ROOT / "instances" / "jaillet-n40-s3.csv"
N20 = ROOT / "instances" / "jaillet-n20-s2.csv"
N60 = ROOT / "instances" / "jaillet-n60-s4.csv"
#: Only a guard against a hang: the stop itself takes well under a second.
GUARD_S = 120


def _problem(path: Path) -> SlotProblem:
    instance, _ = read_trace(path, None)
    profile = deployment_profile("unit-slot", {}, instance)
    return SlotProblem.from_instance(instance, profile, objective="latency", slot_s=1.0)


def _request_after(delay_s: float) -> threading.Timer:
    timer = threading.Timer(delay_s, interrupt.request)
    timer.start()
    return timer


@pytest.mark.parametrize("backend", ["cpsat", "milp"])
def test_a_request_stops_a_running_solver_and_keeps_its_incumbent(backend):
    """CP-SAT is searching after 3 s. The MILP gets the request with its warm
    start (its first progress row), so it lands in the build, which checks for
    requests as it goes; a request that lands once HiGHS has started waits for
    HiGHS's next callback, and its presolve calls none (36 s on this instance;
    the README's Ctrl-C paragraph says so)."""
    problem = _problem(N20)
    with interrupt.session():
        if backend == "cpsat":
            timer = _request_after(3.0)
            result = cpsat.solve(problem, time_limit=300)
            timer.join()
        else:
            result = milp.solve(
                problem, time_limit=300, on_progress=lambda *row: interrupt.request()
            )
    if result.status is Status.OPTIMAL:  # proved before the request: allowed
        return
    assert result.status is Status.INTERRUPTED
    assert result.start is not None and result.objective is not None
    if backend == "milp":
        assert result.info["stopped_in"] == "model build"


def test_a_new_session_forgets_an_old_request():
    problem = _problem(N20)
    interrupt.request()
    # cpsat.solve opens its own session: the stale request does not stop it
    result = cpsat.solve(problem, time_limit=0.5)
    assert result.status is not Status.INTERRUPTED


def test_run_stoppable_turns_keyboard_interrupt_into_a_request():
    stopped = threading.Event()

    def work() -> str:
        stopped.wait(30)
        return "done"

    def fire() -> None:
        time.sleep(0.3)
        signal.raise_signal(signal.SIGINT)  # default handler: KeyboardInterrupt

    # Python's default handler, whatever the test runner installed (pytest-xdist's
    # workers may ignore SIGINT)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with interrupt.session():
            threading.Thread(target=fire).start()
            value, requested = interrupt.run_stoppable(work, stopped.set)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert value == "done" and requested


def _interrupt_cli(
    args: list[str],
    *,
    starts: int = 1,
    ready: Callable[[], bool] | None = None,
) -> tuple[int, str, str]:
    """Run ``lsched ARGS``; SIGINT it a second after its ``starts``-th "started"
    line on stderr (or once ``ready()``); its exit status, stdout and stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "lsched.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    lines = []
    assert process.stderr is not None
    if ready is None:
        seen = 0
        for line in process.stderr:  # wait until it says it started
            lines.append(line)
            seen += "started" in line
            if seen == starts:
                break
        else:
            raise AssertionError(f"never said it started: {''.join(lines)}")
    else:
        give_up = time.monotonic() + GUARD_S
        while not ready():
            if process.poll() is not None or time.monotonic() > give_up:
                process.kill()
                out, err = process.communicate()
                raise AssertionError(f"never got ready: {out}{err}")
            time.sleep(0.1)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    try:
        out, err = process.communicate(timeout=GUARD_S)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return process.returncode, out, "".join(lines) + err


def test_sigint_stops_solve_milp():
    code, out, err = _interrupt_cli(
        ["solve", str(N40), "-m", "unit-slot", "--backend", "milp",
         "--time-limit", "600", "--json"]
    )  # fmt: skip
    assert code == 130, err
    summary = json.loads(out)
    assert summary["status"] == "interrupted"
    assert summary["objective"] is not None  # the heuristic's schedule, kept
    assert "interrupted" in err and "Traceback" not in err


def test_sigint_stops_compare():
    code, out, err = _interrupt_cli(
        ["compare", str(N40), "-m", "unit-slot", "--backend", "milp",
         "--time-limit", "600", "--json"]
    )  # fmt: skip
    assert code == 130, err
    result = json.loads(out)
    assert result["status"] == "interrupted"
    assert result["bounds"]  # the closed-form bounds were finished: kept
    assert "interrupted" in err and "Traceback" not in err


def test_sigint_stops_bound_and_keeps_the_bounds_computed():
    # n = 60: the slot LP alone takes tens of seconds to build and solve
    code, out, err = _interrupt_cli(
        ["bound", str(N60), "-m", "unit-slot", "--lp-time-limit", "600", "--json"]
    )
    assert code == 130, err
    result = json.loads(out)
    assert result["status"] == "interrupted"
    assert result["bounds"]  # the closed forms, finished in milliseconds: kept
    reasons = {item["name"]: item["reason"] for item in result["skipped"]}
    assert reasons["slot.lp"] == "interrupted"
    assert not set(result["bounds"]) & set(reasons)
    assert "interrupted" in err and "Traceback" not in err


def test_sigint_stops_simulate_and_keeps_the_runs_finished(tmp_path):
    # 8,000 requests on the Python engine: FCFS takes about a second, Sarathi
    # with 256-token chunks about 20. SIGINT comes a second into Sarathi's run:
    # FCFS is kept, Sarathi dropped at once, the third never started
    trace = tmp_path / "gsm8k.csv"
    write_trace(gsm8k(8000, seed=0), trace)
    requests = tmp_path / "requests.csv"
    policies = ["fcfs", "sarathi:chunk=256", "fcfs:chunked=false"]
    code, out, err = _interrupt_cli(
        ["simulate", str(trace), "-m", "llama2-70b-a100-tp4", "--engine", "python",
         *(arg for p in policies for arg in ("-p", p)), "--json",
         "--requests-out", str(requests)],
        starts=2,
    )  # fmt: skip
    assert code == 130, err
    result = json.loads(out)
    assert result["status"] == "interrupted"
    assert [run["policy"] for run in result["policies"]] == policies[:1]
    assert result["skipped_policies"] == policies[1:]
    written = pd.read_csv(requests)
    assert set(written["policy"]) == {"fcfs"} and len(written) == 8000
    assert "interrupted" in err and "Traceback" not in err


SWEEP = """\
[sweep]
out = "results.parquet"
instances = ["{trace}"]
profiles = ["unit-slot"]
policies = ["fcfs"]
objective = "latency"

[[sweep.solver]]
backend = "milp"
time_limit = 600
threads = 1
"""


def test_sigint_stops_sweep_and_keeps_the_cases_finished(tmp_path):
    # one worker: the policy case finishes in a moment, then the MILP runs for
    # up to 600 s; SIGINT once the policy's row is stored
    config = tmp_path / "sweep.toml"
    config.write_text(SWEEP.format(trace=N40.as_posix()), encoding="utf-8")
    out = tmp_path / "results.parquet"
    parts = tmp_path / "results.parquet.parts"
    code, stdout, err = _interrupt_cli(
        ["sweep", str(config), "--workers", "1", "--json"],
        ready=lambda: parts.is_dir() and any(parts.glob("part-*.parquet")),
    )
    assert code == 130, err
    report = json.loads(stdout)
    assert report["status"] == "interrupted"
    assert (report["ran"], report["remaining"]) == (1, 1)
    stored = load_results(out)
    assert list(stored["method"]) == ["fcfs"] and list(stored["status"]) == ["ok"]
    assert "interrupted" in err and "Traceback" not in err
