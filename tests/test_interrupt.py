"""Ctrl-C (SIGINT): stop promptly, keep what is finished, say ``interrupted``.

Issue 20, part 3. In-process: :func:`lsched.interrupt.request` from a timer
thread stops a running solver (CP-SAT, HiGHS). As a user would: ``lsched solve
--backend milp`` and ``lsched compare`` get SIGINT once they say they started,
and must exit 130 with status ``interrupted``; the timeouts only guard against a
hang.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lsched import interrupt
from lsched.formulations import cpsat, milp
from lsched.formulations.result import Status
from lsched.formulations.slot import SlotProblem
from lsched.overrides import deployment_profile
from lsched.traces import read_trace

ROOT = Path(__file__).resolve().parents[1]
N40 = ROOT / "instances" / "jaillet-n40-s3.csv"
N20 = ROOT / "instances" / "jaillet-n20-s2.csv"
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
    problem = _problem(N20)
    solve = {"cpsat": cpsat.solve, "milp": milp.solve}[backend]
    with interrupt.session():
        timer = _request_after(3.0)
        result = solve(problem, time_limit=300)
        timer.join()
    if result.status is Status.OPTIMAL:  # proved before the request: allowed
        return
    assert result.status is Status.INTERRUPTED
    assert result.start is not None and result.objective is not None


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


def _interrupt_cli(args: list[str]) -> tuple[int, str, str]:
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
    for line in process.stderr:  # wait until it says it started
        lines.append(line)
        if "started" in line:
            break
    else:
        raise AssertionError(f"never said it started: {''.join(lines)}")
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
