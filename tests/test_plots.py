"""Plots: every function writes a non-empty PNG, and what it draws is the input.

The content checks read the artists back (step values and edges, bar widths, line
data) and compare them with figures computed independently of the plot code: the
run table's totals, the evaluator's KV-utilisation metric, the per-request
records, the solver log.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from lsched import plots
from lsched.errors import InputError
from lsched.evaluator import simulate
from lsched.formulations.result import SolveResult, Status
from lsched.formulations.slot import SlotProblem, cpsat
from lsched.generators.families import gsm8k, jaillet
from lsched.profile import load_profile
from lsched.traces import read_trace

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def unit():
    """instances/default.csv on the unit-slot profile (M = 48): FCFS preempts."""
    instance, _ = read_trace("instances/default.csv")
    profile = load_profile("unit-slot").replace(kv_capacity_tokens=48)
    return instance, profile, simulate(instance, profile, "fcfs", log=True)


@pytest.fixture(scope="module")
def timed():
    """A real cost model (iteration time grows with KV read) on two replicas."""
    instance = gsm8k(40, seed=3)
    profile = load_profile("llama2-70b-a100-tp4").replace(
        kv_capacity_tokens=4000, block_tokens=16
    )
    return instance, profile, simulate(instance, profile, "vllm", replicas=2, log=True)


def _png(path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write cleaned up


def _stairs(ax):
    return {p.get_label(): p.get_data() for p in ax.patches}


# -- batch composition ------------------------------------------------------------


def test_batch_composition_stacks_the_logged_batches(unit, tmp_path):
    _, _, result = unit
    figure = plots.batch_composition(result, path=tmp_path / "batch.png")
    _png(tmp_path / "batch.png")
    assert isinstance(figure, Figure)
    (ax,) = figure.axes
    data = _stairs(ax)
    prefill, decode = data["prefill tokens"], data["decode steps"]
    runs = result.runs
    width = np.diff(prefill.edges)
    # areas = tokens processed: each run's P and D times its duration (1 s a slot)
    assert np.dot(prefill.values, width) == pytest.approx(
        (runs["prefill_tokens"] * runs["iterations"]).sum()
    )
    assert np.dot(decode.values - decode.baseline, width) == pytest.approx(
        (runs["decode_steps"] * runs["iterations"]).sum()
    )
    np.testing.assert_array_equal(decode.baseline, prefill.values)  # stacked
    assert prefill.edges[0] == runs["start_s"].min()
    assert prefill.edges[-1] == runs["end_s"].max()


def test_batch_composition_one_panel_per_replica_idle_at_zero(timed, tmp_path):
    _, _, result = timed
    figure = plots.batch_composition(
        result, path=tmp_path / "b.png", title="x", yscale="symlog"
    )
    _png(tmp_path / "b.png")
    assert len(figure.axes) == 2
    assert figure.axes[0].get_yscale() == "symlog"
    assert figure.get_suptitle() == "x"
    with pytest.raises(InputError, match="yscale"):
        plots.batch_composition(result, yscale="log")
    for c, ax in enumerate(figure.axes):
        runs = result.runs[result.runs["replica"] == c]
        top = _stairs(ax)["decode steps"]
        assert (
            np.nanmax(top.values)
            == (runs["prefill_tokens"] + runs["decode_steps"]).max()
        )
        busy = (top.values > 0).astype(float) @ np.diff(top.edges)
        assert busy == pytest.approx((runs["end_s"] - runs["start_s"]).sum())


# -- request Gantt ----------------------------------------------------------------


def test_request_gantt_bars_follow_the_records(unit, tmp_path):
    instance, _, result = unit
    figure = plots.request_gantt(result, path=tmp_path / "gantt.png")
    _png(tmp_path / "gantt.png")
    (ax,) = figure.axes
    bars = {c.get_label(): c for c in ax.containers}
    rows = []
    for kind, container in bars.items():
        for patch in container.patches:
            y = patch.get_y() + patch.get_height() / 2
            rows.append(
                (round(y), kind, patch.get_x(), patch.get_x() + patch.get_width())
            )
    frame = pd.DataFrame(rows, columns=["request", "kind", "left", "right"])
    records = result.requests
    first = frame.groupby("request")["left"].min()
    last = frame.groupby("request")["right"].max()
    np.testing.assert_allclose(first.to_numpy(), records["admitted_s"].to_numpy())
    np.testing.assert_allclose(last.to_numpy(), records["completion_s"].to_numpy())
    # one slot per iteration: decode bar lengths add up to the decode steps
    decode = frame[frame["kind"] == "decode"]
    runs = result.runs
    assert (decode["right"] - decode["left"]).sum() == pytest.approx(
        (runs["decode_steps"] * runs["iterations"]).sum()
    )
    # a preempted request re-prefills, so it has more than one prefill bar
    prefills = frame[frame["kind"] == "prefill"].groupby("request").size()
    np.testing.assert_array_equal(
        prefills.to_numpy(), 1 + records["preemptions"].to_numpy()
    )
    assert len(instance) == len(first)


def test_request_gantt_bars_are_the_logged_iterations(timed):
    # vLLM pauses decoding for prefill iterations: decode bars break there
    _, _, result = timed
    (ax,) = plots.request_gantt(result).axes
    per_kind = {c.get_label(): c for c in ax.containers}
    duration = result.runs["end_s"] - result.runs["start_s"]
    members = result.members.join(duration.rename("d"), on="run")
    for kind, container in per_kind.items():
        patches = container.patches
        width = sum(p.get_width() for p in patches)
        expected = members.loc[members["kind"] == kind, "d"].sum()
        assert width == pytest.approx(expected, rel=1e-9)
        assert len(patches) <= (members["kind"] == kind).sum()
    decode = per_kind["decode"].patches
    assert len(decode) < (members["kind"] == "decode").sum()  # runs were merged
    assert len(decode) > len(result.requests)  # and split where decoding paused


# -- KV usage ---------------------------------------------------------------------


@pytest.mark.parametrize("case", ["unit", "timed"])
def test_kv_usage_stays_under_capacity_and_integrates_to_the_metric(
    case, request, tmp_path
):
    _, profile, result = request.getfixturevalue(case)
    figure = plots.kv_usage(result, profile, path=tmp_path / "kv.png")
    _png(tmp_path / "kv.png")
    (ax,) = figure.axes
    (capacity,) = [line for line in ax.lines if line.get_label() == "capacity"]
    limit = capacity.get_ydata()[0]
    assert limit == profile.kv_capacity_blocks * profile.block_tokens
    steps = [p.get_data() for p in ax.patches]
    assert len(steps) == result.replicas
    area = 0.0
    for values, edges, _ in steps:
        assert np.nanmax(values) <= limit
        assert np.nanmax(values) > 0
        area += np.nansum(values * np.diff(edges))
    # independent: the evaluator's time-averaged KV (DESIGN.md's KV utilisation)
    metrics = result.metrics
    expected = (
        metrics["kv_utilization"]
        * result.replicas
        * profile.kv_capacity_tokens
        * metrics["makespan_s"]
    )
    assert area == pytest.approx(expected, rel=1e-6)


def test_kv_usage_draws_what_a_too_small_capacity_would_break(unit):
    # the unit case runs against its capacity: FCFS fills M = 48 exactly
    _, profile, result = unit
    values = plots.kv_usage(result, profile).axes[0].patches[0].get_data().values
    assert np.nanmax(values) == profile.kv_capacity_tokens


def test_kv_usage_rejects_another_profile(unit, timed):
    _, profile, result = unit
    with pytest.raises(InputError, match="simulated on"):
        plots.kv_usage(result, timed[1])
    slower = profile.replace(
        iteration_time=load_profile("llama2-70b-a100-tp4").iteration_time
    )
    with pytest.raises(InputError, match="lasted"):
        plots.kv_usage(result, slower)


def test_log_is_required(unit):
    instance, profile, _ = unit
    result = simulate(instance, profile, "fcfs")
    for plot in (plots.batch_composition, plots.request_gantt):
        with pytest.raises(InputError, match="log=True"):
            plot(result)
    with pytest.raises(InputError, match="log=True"):
        plots.kv_usage(result, profile)
    with pytest.raises(InputError, match="SimulationResult"):
        plots.batch_composition(result.runs)


# -- gap bars ---------------------------------------------------------------------


def test_gap_bars_one_labelled_bar_per_policy(tmp_path):
    values = {"fcfs": 600.0, "mc-sf": 500.0, "sarathi:chunk=512": 400.0}
    figure = plots.gap_bars(values, 400.0, path=tmp_path / "gap.png")
    _png(tmp_path / "gap.png")
    (ax,) = figure.axes
    assert len(ax.patches) == len(values)
    widths = [p.get_width() for p in ax.patches]
    np.testing.assert_allclose(widths, [100 / 3, 20.0, 0.0])
    assert [t.get_text() for t in ax.get_yticklabels()] == list(values)
    assert [t.get_text() for t in ax.texts] == ["33.3 %", "20.0 %", "0.0 %"]


@pytest.mark.parametrize(
    ("values", "bound", "match"),
    [
        ({}, 1.0, "non-empty"),
        ({"a": 10.0}, float("nan"), "finite"),
        ({"a": "x"}, 1.0, "number"),
        ({"a": 10.0}, 11.0, "below the bound"),
        ({"a": -1.0}, -2.0, "non-negative"),
    ],
)
def test_gap_bars_rejects_bad_input(values, bound, match):
    with pytest.raises(InputError, match=match):
        plots.gap_bars(values, bound)


# -- solve progress ---------------------------------------------------------------


def test_solve_progress_plots_the_log(tmp_path):
    instance = jaillet(12, seed=2)
    profile = load_profile("unit-slot").replace(
        kv_capacity_tokens=instance.params["kv_capacity_tokens"]
    )
    solved = cpsat.solve(SlotProblem.from_instance(instance, profile), time_limit=1)
    assert len(solved.log) > 0
    hand = pd.DataFrame(
        {
            "time_s": [0.0, 1.0, 2.5],
            "objective": [np.nan, 90.0, 80.0],
            "bound": [-np.inf, 50.0, 70.0],
        }
    )
    figure = plots.solve_progress(
        {"cp-sat": solved, "hand": hand}, path=tmp_path / "solve.png"
    )
    _png(tmp_path / "solve.png")
    (ax,) = figure.axes
    lines = {line.get_label(): line for line in ax.lines}
    assert set(lines) == {
        "cp-sat incumbent",
        "cp-sat bound",
        "hand incumbent",
        "hand bound",
    }
    np.testing.assert_array_equal(lines["hand incumbent"].get_xdata(), hand["time_s"])
    np.testing.assert_array_equal(lines["hand incumbent"].get_ydata(), [np.nan, 90, 80])
    np.testing.assert_array_equal(lines["hand bound"].get_ydata(), [np.nan, 50, 70])
    assert lines["hand bound"].get_drawstyle() == "steps-post"
    # the real solve's lines: its log, ending on its final objective and bound
    incumbent, bound = lines["cp-sat incumbent"], lines["cp-sat bound"]
    assert incumbent.get_xdata()[0] == solved.log["time_s"].iloc[0]
    assert incumbent.get_ydata()[-1] == solved.objective
    assert bound.get_ydata()[-1] == solved.bound
    assert np.all(np.nan_to_num(bound.get_ydata(), nan=-1) <= solved.objective)


def test_solve_progress_holds_a_results_last_values_to_its_runtime():
    log = pd.DataFrame(
        {"time_s": [0.0, 1.0], "objective": [90.0, 80.0], "bound": [-np.inf, 70.0]}
    )
    result = SolveResult(Status.TIME_LIMIT, 80.0, 70.0, 5.0, None, "hand", log)
    figure = plots.solve_progress(result)
    lines = {line.get_label(): line for line in figure.axes[0].lines}
    incumbent, bound = lines["hand incumbent"], lines["hand bound"]
    np.testing.assert_array_equal(incumbent.get_xdata(), [0.0, 1.0, 5.0])
    np.testing.assert_array_equal(incumbent.get_ydata(), [90.0, 80.0, 80.0])
    np.testing.assert_array_equal(bound.get_ydata(), [np.nan, 70.0, 70.0])


def test_solve_progress_single_log_and_bad_input(tmp_path):
    log = pd.DataFrame({"time_s": [0.5], "objective": [3.0], "bound": [2.0]})
    figure = plots.solve_progress(log, path=tmp_path / "one.png")
    _png(tmp_path / "one.png")
    assert len(figure.axes[0].lines) == 2
    with pytest.raises(InputError, match="columns"):
        plots.solve_progress(log.drop(columns="bound"))
    with pytest.raises(InputError, match="at least one"):
        plots.solve_progress({})


def test_no_global_matplotlib_state(unit, tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    _, profile, result = unit
    plots.kv_usage(result, profile)
    assert matplotlib.get_backend() == backend
    # pyplot would keep figures alive; none are created
    import sys

    if "matplotlib.pyplot" in sys.modules:
        assert not sys.modules["matplotlib.pyplot"].get_fignums()
