"""Figures from simulation and solve results (matplotlib, no global state).

Every function builds a :class:`matplotlib.figure.Figure` with its own Agg canvas
(no pyplot, no backend switch, no change to ``rcParams``), returns it and, given
``path``, writes it as a PNG atomically (:mod:`lsched.atomic`).

============================  =====================================================
function                      what it shows
============================  =====================================================
:func:`batch_composition`     prefill tokens and decode steps of every iteration,
                              stacked, over time (one panel per replica)
:func:`request_gantt`         one row per request: its prefill and decode
                              iterations as bars (waits and preemptions as gaps)
:func:`kv_usage`              KV tokens held in every iteration against the
                              capacity (one line per replica)
:func:`gap_bars`              gap to a lower bound, in percent, per policy
:func:`solve_progress`        incumbent and bound over solve time, per solver
:func:`goodput_curve`         SLO attainment against the request rate per GPU,
                              with the target and the goodput found
============================  =====================================================

The first three read a :class:`~lsched.evaluator.result.SimulationResult` simulated
with ``log=True``; their data come from its ``runs`` and ``members`` tables, so they
plot what the evaluator replayed, not a recomputation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lsched.atomic import atomic_target
from lsched.errors import InputError
from lsched.evaluator.result import SimulationResult
from lsched.formulations.result import LOG_COLUMNS

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from lsched.formulations.result import SolveResult
    from lsched.goodput import GoodputResult
    from lsched.profile import DeploymentProfile

__all__ = [
    "batch_composition",
    "gap_bars",
    "goodput_curve",
    "kv_usage",
    "request_gantt",
    "solve_progress",
]

PathLike = str | os.PathLike[str]

PREFILL_COLOR = "tab:orange"
DECODE_COLOR = "tab:blue"
CAPACITY_COLOR = "tab:red"
#: Relative mismatch tolerated between a run's logged duration and the profile's
#: iteration times summed over the run (:func:`kv_usage`).
DURATION_RTOL = 1e-6


# -- simulation results -----------------------------------------------------------


def batch_composition(
    result: SimulationResult,
    *,
    path: PathLike | None = None,
    title: str | None = None,
    yscale: str = "linear",
) -> Figure:
    """Prefill tokens and decode steps per iteration over time, stacked.

    Each iteration is a step as wide as its duration: prefill tokens from 0, decode
    steps on top, so the top edge is the batch's token load ``P + D``. Idle time
    (no iteration) is drawn at 0. One panel per replica, sharing the time axis.

    Parameters
    ----------
    result
        A simulation with its iteration log (``simulate(..., log=True)``).
    path
        Write the figure here as a PNG (atomically).
    title
        Figure title; by default the policy and profile.
    yscale
        ``"linear"`` or ``"symlog"`` (shows a few decode steps next to prompts of
        thousands of tokens).

    Returns
    -------
    matplotlib.figure.Figure
        Panel ``c`` holds two :class:`~matplotlib.patches.StepPatch` artists,
        labelled ``"prefill tokens"`` and ``"decode steps"``.

    Raises
    ------
    InputError
        If ``result`` is not a :class:`SimulationResult` or has no iteration log, or
        on another ``yscale``.
    """
    runs = _runs(result)
    if yscale not in ("linear", "symlog"):
        raise InputError(f"got {yscale!r}; expected linear or symlog", field="yscale")
    replicas = result.replicas
    figure = _figure(9.0, 1.0 + 2.0 * replicas)
    axes = figure.subplots(replicas, 1, sharex=True, squeeze=False)[:, 0]
    for c, ax in enumerate(axes):
        mine = runs[runs["replica"] == c]
        prefill = mine["prefill_tokens"].to_numpy(dtype=np.float64)
        load = prefill + mine["decode_steps"].to_numpy(dtype=np.float64)
        start, end = mine["start_s"].to_numpy(), mine["end_s"].to_numpy()
        if len(mine):
            edges, (bottom, top) = _steps(start, end, (prefill, load), 0.0)
            ax.stairs(
                bottom, edges, fill=True, color=PREFILL_COLOR, label="prefill tokens"
            )
            ax.stairs(
                top,
                edges,
                baseline=bottom,
                fill=True,
                color=DECODE_COLOR,
                label="decode steps",
            )
        ax.set_ylabel(f"replica {c}\ntokens" if replicas > 1 else "tokens / iteration")
        ax.set_yscale(yscale)
        ax.set_ylim(bottom=0)
    _legend(axes[0])
    axes[-1].set_xlabel("time (s)")
    figure.suptitle(title or f"batch composition: {_label(result)}")
    return _finish(figure, path)


def request_gantt(
    result: SimulationResult,
    *,
    path: PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """One row per request: the iterations it took part in, prefill or decode.

    Consecutive iterations of the same kind form one bar, so a bar ends where the
    request waits (not in the batch, or preempted) or switches from prefill to
    decode. Row ``i`` is the request at instance position ``i``.

    Parameters
    ----------
    result
        A simulation with its iteration log (``simulate(..., log=True)``).
    path
        Write the figure here as a PNG (atomically).
    title
        Figure title; by default the policy and profile.

    Returns
    -------
    matplotlib.figure.Figure
        One axes with two bar containers (``barh``), labelled ``"prefill"`` and
        ``"decode"``; bar ``j`` of a container spans ``[left, left + width]`` on row
        ``y``.

    Raises
    ------
    InputError
        If ``result`` is not a :class:`SimulationResult` or has no iteration log.
    """
    runs = _runs(result)
    segments = _segments(runs, result.members)
    n = len(result.requests)
    figure = _figure(9.0, min(2.0 + 0.12 * n, 12.0))
    ax = figure.add_subplot()
    for kind, color in (("prefill", PREFILL_COLOR), ("decode", DECODE_COLOR)):
        part = segments[segments["kind"] == kind]
        ax.barh(
            part["request"],
            part["end_s"] - part["start_s"],
            left=part["start_s"],
            height=0.8,
            color=color,
            label=kind,
        )
    ax.set_ylim(n - 0.5, -0.5)  # request 0 on top
    ax.set_xlabel("time (s)")
    ax.set_ylabel("request")
    _legend(ax)
    figure.suptitle(title or f"requests: {_label(result)}")
    return _finish(figure, path)


def kv_usage(
    result: SimulationResult,
    profile: DeploymentProfile,
    *,
    path: PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """KV tokens held in every iteration, per replica, against the capacity.

    The log gives the KV held in a run's first iteration and its growth (one token
    per decode step per iteration); the iterations' own boundaries inside a held
    decode run come from ``profile``'s iteration times. Between iterations (idle
    replica) nothing is drawn. The capacity line is the largest KV a valid schedule
    can hold: ``kv_capacity_blocks * block_tokens`` tokens (``kv_capacity_tokens``
    rounded down to whole blocks).

    Parameters
    ----------
    result
        A simulation with its iteration log (``simulate(..., log=True)``).
    profile
        The deployment it was simulated on.
    path
        Write the figure here as a PNG (atomically).
    title
        Figure title; by default the policy and profile.

    Returns
    -------
    matplotlib.figure.Figure
        One axes: a :class:`~matplotlib.patches.StepPatch` per replica with a
        run on it (values in KV tokens, ``nan`` in idle gaps), and the capacity as a
        horizontal line labelled ``"capacity"``.

    Raises
    ------
    InputError
        If ``result`` has no iteration log, or ``profile`` is not the one it was
        simulated on (another name, or iteration times that do not add up to the
        logged run durations).
    """
    runs = _runs(result)
    if profile.name != result.profile:
        raise InputError(
            f"got profile {profile.name!r}; the result was simulated on "
            f"{result.profile!r}",
            field="profile",
        )
    left, right, kv, replica = _iterations(runs, profile)
    figure = _figure(9.0, 4.0)
    ax = figure.add_subplot()
    for c in range(result.replicas):
        mine = replica == c
        if np.any(mine):
            edges, (values,) = _steps(left[mine], right[mine], (kv[mine],), np.nan)
            label = f"replica {c}" if result.replicas > 1 else "KV held"
            ax.stairs(values, edges, label=label, linewidth=1.2)
    capacity = profile.kv_capacity_blocks * profile.block_tokens
    ax.axhline(capacity, color=CAPACITY_COLOR, linestyle="--", label="capacity")
    blocks = (
        f"{capacity} tokens\n= {profile.kv_capacity_blocks} x {profile.block_tokens}"
    )
    ax.text(
        1.01,
        capacity,
        blocks,
        transform=ax.get_yaxis_transform(),
        va="center",
        color=CAPACITY_COLOR,
        fontsize="small",
    )
    ax.set_ylim(0, capacity * 1.08)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("KV tokens held")
    _legend(ax)
    figure.suptitle(title or f"KV usage: {_label(result)}")
    return _finish(figure, path)


# -- comparisons and solves -------------------------------------------------------


def gap_bars(
    values: Mapping[str, float],
    bound: float,
    *,
    path: PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """Gap of each policy's objective to a lower bound, in percent.

    Bar of policy ``p``: ``100 * (values[p] - bound) / values[p]`` (0 when both are
    0), labelled with its value; policies top to bottom in the mapping's order.

    Parameters
    ----------
    values
        Objective per policy (e.g. total latency), same units as ``bound``.
    bound
        A lower bound on every value (e.g. :attr:`SolveResult.bound` or one of
        :mod:`lsched.formulations.bounds.slot`).
    path
        Write the figure here as a PNG (atomically).
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        One axes with one horizontal bar per policy (``ax.patches``), widths the
        gaps in percent, y tick labels the policy names.

    Raises
    ------
    InputError
        On an empty mapping, a value or bound that is not finite or is negative, or
        a value below the bound (then the bound is not one).
    """
    if not isinstance(values, Mapping) or not values:
        raise InputError("expected a non-empty mapping policy -> value", field="values")
    bound = _finite(bound, "bound")
    gaps = []
    for name, value in values.items():
        value = _finite(value, f"values[{name!r}]")
        if value < 0 or bound < 0:
            raise InputError(
                f"got value {value} and bound {bound}; expected non-negative "
                "objectives",
                field=f"values[{name!r}]",
            )
        if value < bound - 1e-9 * max(1.0, abs(bound)):
            raise InputError(
                f"got {value}, below the bound {bound}; expected value >= bound",
                field=f"values[{name!r}]",
            )
        gaps.append(0.0 if value == 0 else max(0.0, 100.0 * (value - bound) / value))
    names = [str(name) for name in values]
    figure = _figure(7.0, 1.2 + 0.45 * len(names))
    ax = figure.add_subplot()
    bars = ax.barh(np.arange(len(names)), gaps, color=DECODE_COLOR, height=0.6)
    ax.bar_label(bars, labels=[f"{g:.1f} %" for g in gaps], padding=3)
    ax.set_yticks(np.arange(len(names)), labels=names)
    ax.set_ylim(len(names) - 0.5, -0.5)  # first policy on top
    ax.set_xlim(0, max(max(gaps) * 1.2, 1.0))
    ax.set_xlabel(f"gap to bound {bound:g} (%)")
    figure.suptitle(title or "gap to bound per policy")
    return _finish(figure, path)


def solve_progress(
    log: pd.DataFrame | SolveResult | Mapping[str, pd.DataFrame | SolveResult],
    *,
    path: PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """Incumbent objective and proven bound over solve time, as step lines.

    Parameters
    ----------
    log
        A solver log (columns ``time_s``, ``objective``, ``bound``: see
        :data:`lsched.formulations.result.LOG_COLUMNS`), a
        :class:`~lsched.formulations.result.SolveResult`, or a mapping
        label -> either, drawn on one axes (one colour per solver). A
        ``SolveResult``'s lines are extended to its ``runtime_s``.
    path
        Write the figure here as a PNG (atomically).
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        One axes with two :class:`~matplotlib.lines.Line2D` per solver, labelled
        ``"<label> incumbent"`` (solid) and ``"<label> bound"`` (dashed); their
        data are the log's ``time_s`` and ``objective``/``bound`` (``nan`` where
        not yet known, e.g. a ``-inf`` bound).

    Raises
    ------
    InputError
        On an empty mapping, or a log without the columns above.
    """
    if isinstance(log, Mapping):
        if not log:
            raise InputError("expected at least one solver log", field="log")
        items = list(log.items())
    else:
        items = [(getattr(log, "solver", "solver"), log)]
    figure = _figure(8.0, 4.5)
    ax = figure.add_subplot()
    for k, (label, entry) in enumerate(items):
        time_s, objective, bound = _solve_log(entry, str(label))
        color = f"C{k % 10}"
        ax.step(
            time_s, objective, where="post", color=color, label=f"{label} incumbent"
        )
        ax.step(
            time_s,
            bound,
            where="post",
            color=color,
            linestyle="--",
            label=f"{label} bound",
        )
    ax.set_xlabel("solve time (s)")
    ax.set_ylabel("objective")
    if ax.lines:
        _legend(ax)
    figure.suptitle(title or "incumbent and bound over solve time")
    return _finish(figure, path)


# -- goodput ----------------------------------------------------------------------

#: Colours of :func:`goodput_curve`'s lines.
ATTAINMENT_COLORS = {"TTFT": "tab:orange", "TPOT": "tab:blue", "both": "black"}


def goodput_curve(
    result: GoodputResult,
    *,
    path: PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """SLO attainment against the request rate per GPU, from a goodput search.

    One line per attainment (TTFT, TPOT, both) through every rate tried, sorted by
    rate, with markers; a dashed horizontal line at the target and, where a rate
    passed, a dotted vertical line at the goodput. The x axis is logarithmic when
    the rates tried span a factor of 10 or more.

    Parameters
    ----------
    result
        A :class:`~lsched.goodput.GoodputResult`.
    path
        Write the figure here as a PNG (atomically).
    title
        Figure title; by default the goodput's one-line message.

    Returns
    -------
    matplotlib.figure.Figure
        One axes; its lines are labelled ``"TTFT"``, ``"TPOT"`` (only for the
        deadlines judged), ``"both"`` (x: rates per GPU, y: attainment in percent),
        ``"target"`` and, if a rate passed, ``"goodput"``.

    Raises
    ------
    InputError
        If ``result`` has no rates tried.
    """
    trials = sorted(getattr(result, "trials", ()), key=lambda t: t.rate_per_gpu)
    if not trials:
        raise InputError("expected a goodput result with rates tried", field="result")
    rates = np.array([t.rate_per_gpu for t in trials])
    figure = _figure(7.0, 4.5)
    ax = figure.add_subplot()
    series = {
        "TTFT": [t.attainment_ttft for t in trials],
        "TPOT": [t.attainment_tpot for t in trials],
        "both": [t.attainment for t in trials],
    }
    for label, values in series.items():
        shares = 100.0 * np.array(values, dtype=np.float64)
        if np.isnan(shares).all():  # no such deadline
            continue
        ax.plot(
            rates,
            shares,
            marker="o",
            markersize=4,
            color=ATTAINMENT_COLORS[label],
            linewidth=2.0 if label == "both" else 1.2,
            label=label,
        )
    ax.axhline(
        100.0 * result.target, color=CAPACITY_COLOR, linestyle="--", label="target"
    )
    if result.goodput_per_gpu > 0:
        ax.axvline(
            result.goodput_per_gpu, color="tab:green", linestyle=":", label="goodput"
        )
    if rates.max() >= 10 * rates.min():
        ax.set_xscale("log")
    ax.set_xlabel("request rate per GPU (req/s)")
    ax.set_ylabel("requests within SLO (%)")
    ax.set_ylim(-2, 102)
    _legend(ax)
    figure.suptitle(title or result.message, fontsize="medium", wrap=True)
    return _finish(figure, path)


# -- helpers ----------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _finish(figure: Figure, path: PathLike | None) -> Figure:
    if path is not None:
        with atomic_target(path) as temporary:
            figure.savefig(temporary, format="png", dpi=100)
    return figure


def _legend(ax: Axes) -> None:
    """The legend in one row above the axes, clear of the data."""
    ax.legend(
        loc="lower left",
        bbox_to_anchor=(0.0, 1.0),
        ncols=4,
        frameon=False,
        fontsize="small",
        borderaxespad=0.2,
    )


def _label(result: SimulationResult) -> str:
    return f"{result.policy} on {result.profile}"


def _runs(result: SimulationResult) -> pd.DataFrame:
    if not isinstance(result, SimulationResult):
        raise InputError(
            f"got {type(result).__name__}; expected a SimulationResult",
            field="result",
        )
    if result.runs is None or result.members is None:
        raise InputError(
            "the result has no iteration log; simulate with log=True", field="result"
        )
    return result.runs.sort_values(["replica", "start_s"], kind="stable")


def _steps(
    left: np.ndarray,
    right: np.ndarray,
    values: tuple[np.ndarray, ...],
    fill: float,
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Stair edges and values for back-to-back intervals, ``fill`` in the gaps.

    ``left``/``right``: sorted, non-overlapping intervals. Returns ``edges`` (one
    more than the values) and each of ``values`` with a ``fill`` step inserted
    wherever an interval does not start where the previous one ended.
    """
    gap = np.flatnonzero(left[1:] > right[:-1])
    starts = np.concatenate([left, right[gap]])
    order = np.argsort(starts, kind="stable")
    edges = np.append(starts[order], right[-1])
    filled = tuple(
        np.concatenate([v.astype(np.float64), np.full(len(gap), fill)])[order]
        for v in values
    )
    return edges, filled


def _iterations(
    runs: pd.DataFrame, profile: DeploymentProfile
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every logged iteration: start, end, KV tokens held, replica."""
    n = runs["iterations"].to_numpy(dtype=np.int64)
    run = np.repeat(np.arange(len(runs)), n)
    first = np.cumsum(n) - n
    k = np.arange(n.sum()) - first[run]
    col = {name: runs[name].to_numpy()[run] for name in runs.columns}
    decode = col["decode_steps"]
    kv = col["kv_tokens"] + k * decode
    phi = np.column_stack(
        [
            np.ones(len(run)),
            col["prefill_tokens"],
            col["prefill_attention"],
            decode,
            col["kv_read_tokens"] + k * decode,
            col["has_prefill"],
        ]
    ).astype(np.float64)
    dt = np.asarray(profile.iteration_time_s(phi), dtype=np.float64)
    total = np.cumsum(dt)
    before = total - dt - (total[first] - dt[first])[run]  # time before k in its run
    summed = np.add.reduceat(dt, first) if len(first) else dt
    start, end = runs["start_s"].to_numpy(), runs["end_s"].to_numpy()
    logged = end - start
    bad = np.flatnonzero(~np.isclose(summed, logged, rtol=DURATION_RTOL, atol=0))
    if len(bad):
        j = int(bad[0])
        raise InputError(
            f"run {runs.index[j]} lasted {logged[j]:.9g} s in the log but "
            f"{summed[j]:.9g} s under profile {profile.name!r}; expected the profile "
            "the result was simulated on",
            field="profile",
        )
    left = start[run] + before * (logged / summed)[run]
    right = np.empty_like(left)
    right[:-1] = left[1:]
    right[first + n - 1] = end  # a run's last iteration ends where the run does
    return left, right, kv.astype(np.float64), col["replica"]


def _segments(runs: pd.DataFrame, members: pd.DataFrame) -> pd.DataFrame:
    """Bars of :func:`request_gantt`: maximal back-to-back runs of one kind."""
    table = members[["run", "request", "kind"]].join(
        runs[["start_s", "end_s"]], on="run"
    )
    table = table.sort_values(["request", "start_s"], kind="stable")
    request = table["request"].to_numpy()
    kind = table["kind"].to_numpy()
    start = table["start_s"].to_numpy(dtype=np.float64)
    end = table["end_s"].to_numpy(dtype=np.float64)
    new = np.ones(len(table), dtype=bool)
    new[1:] = (
        (request[1:] != request[:-1])
        | (kind[1:] != kind[:-1])
        | (start[1:] != end[:-1])
    )
    label = np.cumsum(new)
    return (
        pd.DataFrame(
            {
                "segment": label,
                "request": request,
                "kind": kind,
                "start_s": start,
                "end_s": end,
            }
        )
        .groupby("segment")
        .agg(
            request=("request", "first"),
            kind=("kind", "first"),
            start_s=("start_s", "min"),
            end_s=("end_s", "max"),
        )
        .reset_index(drop=True)
    )


def _solve_log(
    entry: pd.DataFrame | SolveResult, label: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``time_s``, ``objective``, ``bound`` of a log, infinities as ``nan``."""
    frame = getattr(entry, "log", entry)
    if not isinstance(frame, pd.DataFrame) or not set(LOG_COLUMNS) <= set(frame):
        raise InputError(
            f"expected a SolveResult or a DataFrame with columns "
            f"{', '.join(LOG_COLUMNS)}",
            field=f"log[{label!r}]",
        )
    columns = [
        pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=np.float64)
        for c in LOG_COLUMNS
    ]
    time_s, objective, bound = (np.where(np.isinf(c), np.nan, c) for c in columns)
    runtime = getattr(entry, "runtime_s", None)
    if runtime is not None and len(time_s) and runtime > np.nanmax(time_s):
        # a SolveResult: hold the last values until the solve ended
        time_s = np.append(time_s, runtime)
        objective = np.append(objective, objective[-1])
        bound = np.append(bound, bound[-1])
    return time_s, objective, bound


def _finite(value: object, name: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"got {value!r}; expected a number", field=name) from None
    if not math.isfinite(number):
        raise InputError(f"got {number}; expected a finite number", field=name)
    return number
