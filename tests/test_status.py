"""The status logic on hand-made inputs: no solver, no clock.

DESIGN.md's result statuses; issue 20, part 8: a solve that stops on its time
limit says ``time_limit`` whatever the solver's internal status, and the status
never depends on how fast the machine is.
"""

from __future__ import annotations

import math

import pytest

from lsched.formulations.result import (
    CPSAT_OTHER_LIMITS,
    Status,
    Stop,
    combined_status,
    cpsat_stop,
    decide_status,
    highs_stop,
)

INF = math.inf


@pytest.mark.parametrize(
    ("stop", "objective", "bound", "infeasible", "expected"),
    [
        # a bound that meets the objective proves it, however the solver stopped
        (Stop.FINISHED, 10.0, 10.0, False, Status.OPTIMAL),
        (Stop.TIME_LIMIT, 10.0, 10.0, False, Status.OPTIMAL),
        (Stop.INTERRUPTED, 10.0, 10.0, False, Status.OPTIMAL),
        (Stop.ERROR, 10.0, 10.0, False, Status.OPTIMAL),
        # an open gap: the stop decides
        (Stop.TIME_LIMIT, 10.0, 9.0, False, Status.TIME_LIMIT),
        (Stop.TIME_LIMIT, None, -INF, False, Status.TIME_LIMIT),
        (Stop.INTERRUPTED, 10.0, 9.0, False, Status.INTERRUPTED),
        (Stop.INTERRUPTED, None, -INF, False, Status.INTERRUPTED),
        (Stop.FINISHED, 10.0, 9.0, False, Status.FEASIBLE),  # relaxed gap
        (Stop.OTHER_LIMIT, 10.0, 9.0, False, Status.FEASIBLE),
        (Stop.OTHER_LIMIT, None, -INF, False, Status.UNKNOWN),
        (Stop.ERROR, 10.0, 9.0, False, Status.UNKNOWN),
        (Stop.FINISHED, None, -INF, False, Status.UNKNOWN),
        # a proof of infeasibility
        (Stop.FINISHED, None, INF, True, Status.INFEASIBLE),
        (Stop.TIME_LIMIT, None, -INF, True, Status.INFEASIBLE),
        (Stop.FINISHED, 10.0, -INF, False, Status.FEASIBLE),
        # the one tolerance, OPTIMALITY_RTOL, of max(1, |objective|)
        (Stop.TIME_LIMIT, 10.0, 10.0 - 9e-6, False, Status.OPTIMAL),
        (Stop.TIME_LIMIT, 10.0, 10.0 - 2e-5, False, Status.TIME_LIMIT),
        (Stop.TIME_LIMIT, 0.5, 0.5 - 9e-7, False, Status.OPTIMAL),
        (Stop.TIME_LIMIT, 0.5, 0.5 - 2e-6, False, Status.TIME_LIMIT),
    ],
)
def test_decide_status(stop, objective, bound, infeasible, expected):
    assert decide_status(stop, objective, bound, infeasible=infeasible) is expected


@pytest.mark.parametrize(
    ("name", "interrupted", "other", "expected"),
    [
        ("OPTIMAL", False, False, Stop.FINISHED),
        ("INFEASIBLE", False, False, Stop.FINISHED),
        ("MODEL_INVALID", False, False, Stop.ERROR),
        # the failure under load: CP-SAT said FEASIBLE, its clock said otherwise
        ("FEASIBLE", False, False, Stop.TIME_LIMIT),
        ("UNKNOWN", False, False, Stop.TIME_LIMIT),
        ("FEASIBLE", False, True, Stop.OTHER_LIMIT),
        ("FEASIBLE", True, False, Stop.INTERRUPTED),
        ("UNKNOWN", True, True, Stop.INTERRUPTED),
        ("OPTIMAL", True, False, Stop.INTERRUPTED),
    ],
)
def test_cpsat_stop(name, interrupted, other, expected):
    assert cpsat_stop(name, interrupted=interrupted, other_limits=other) is expected


def test_a_cpsat_time_limit_that_feasible_reports_is_time_limit():
    # issue 20: test_time_limit_returns_the_incumbent[cpsat] got FEASIBLE
    stop = cpsat_stop("FEASIBLE", interrupted=False, other_limits=False)
    assert decide_status(stop, 120.0, 100.0) is Status.TIME_LIMIT


def test_cpsat_other_limits_are_parameters():
    from ortools.sat.python import cp_model

    parameters = cp_model.CpSolver().parameters
    assert all(hasattr(parameters, name) for name in CPSAT_OTHER_LIMITS)


@pytest.mark.parametrize(
    ("text", "interrupted", "deadline", "expected"),
    [
        ("Optimal", False, False, Stop.FINISHED),
        ("Optimal", False, True, Stop.FINISHED),
        ("Infeasible", False, False, Stop.FINISHED),
        ("Time limit reached", False, False, Stop.TIME_LIMIT),
        ("Interrupted by user", False, True, Stop.TIME_LIMIT),  # our deadline
        ("Interrupted by user", True, True, Stop.INTERRUPTED),
        ("Time limit reached", True, True, Stop.INTERRUPTED),
        ("Solution limit reached", False, False, Stop.OTHER_LIMIT),
        ("Iteration limit reached", False, False, Stop.OTHER_LIMIT),
        ("Solve error", False, False, Stop.ERROR),
        ("Unknown", False, False, Stop.ERROR),
        ("Unknown", False, True, Stop.TIME_LIMIT),
    ],
)
def test_highs_stop(text, interrupted, deadline, expected):
    got = highs_stop(text, interrupted=interrupted, deadline_passed=deadline)
    assert got is expected


def test_highs_status_texts_are_highs_own():
    import highspy

    highs = highspy.Highs()
    texts = {
        highs.modelStatusToString(getattr(highspy.HighsModelStatus, name))
        for name in ("kOptimal", "kInfeasible", "kTimeLimit", "kInterrupt")
    }
    assert texts == {
        "Optimal",
        "Infeasible",
        "Time limit reached",
        "Interrupted by user",
    }


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([Status.OPTIMAL, Status.OPTIMAL], Status.OPTIMAL),
        ([], Status.OPTIMAL),
        ([Status.OPTIMAL, Status.FEASIBLE], Status.FEASIBLE),
        ([Status.OPTIMAL, Status.TIME_LIMIT], Status.TIME_LIMIT),
        ([Status.TIME_LIMIT, Status.INTERRUPTED], Status.INTERRUPTED),
        ([Status.UNKNOWN, Status.FEASIBLE], Status.UNKNOWN),
    ],
)
def test_combined_status(statuses, expected):
    assert combined_status(statuses) is expected


def test_interrupted_is_a_status():
    assert Status("interrupted") is Status.INTERRUPTED
