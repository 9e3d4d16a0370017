"""Run HiGHS on a Pyomo model under a hard wall-clock limit.

From Pyomo to HiGHS
-------------------
The model is built in Pyomo and compiled to matrices by Pyomo's public
``LinearStandardFormCompiler`` (``mixed_form=True``: each row keeps its sense),
then passed to a ``highspy.Highs`` object with ``passModel``. That is the
simplest robust route: one vectorised pass with no temporary files and no
name mangling (unlike writing an LP/MPS file and reading it back), and full
control of the ``Highs`` object (options, MIP start, callbacks) without relying
on private attributes of a Pyomo solver plugin (``appsi_highs`` keeps its
``Highs`` object in ``_solver_model`` and runs it itself). The column list maps
HiGHS values back to Pyomo variables.

The wall-clock limit
--------------------
HiGHS's own ``time_limit`` is checked only at some points of its search, and
has been seen to overrun by minutes. Here the limit is a wall-clock deadline
(``time.monotonic()``), enforced twice:

* HiGHS's ``time_limit`` is set to the time left before the deadline (plus
  the time the same ``Highs`` object has already run: HiGHS counts its limit
  over every run of one object, which matters for warm re-solves);
* HiGHS runs in a worker thread (:func:`lsched.interrupt.run_stoppable`), so a
  Ctrl-C reaches Python while it works: the callback below then interrupts it
  too, and the outcome's stop says ``interrupted``;
* a callback subscribed to the simplex, IPM and MIP interrupt events (HiGHS
  calls these many times per second: per simplex iteration batch, per node,
  during cut rounds) sets ``user_interrupt`` once the deadline has passed, so
  HiGHS stops with model status ``kInterrupt`` and keeps its incumbent and bound.

HiGHS's thread pool is global to the process and sized by the first solve;
when a later run asks for another ``threads`` value HiGHS refuses to start, and
:func:`run` then resets the pool (``Highs.resetGlobalScheduler``) and retries.

The remaining overrun is the longest stretch of HiGHS work between two callbacks
(and postsolve), typically milliseconds.

Building the model inside the limit
-----------------------------------
The limit is for the whole call, the Pyomo build and its compilation included
(issue 20). :func:`build_and_load` runs a model builder that checks the clock
as it goes (:func:`build_check`, called once per slot or iteration of the
model: past the deadline or on a user's stop it raises :class:`BuildStopped`),
then compiles the model unless the compilation would overrun: Pyomo's compiler
cannot be stopped midway, and takes about :data:`COMPILE_SHARE` of the build's
time. A caller that gets :class:`BuildStopped` returns its heuristic schedule
with the status the stop gives (``time_limit`` or ``interrupted``); HiGHS then
gets only the time left (:func:`run`'s ``deadline``).

Quiet
-----
``highspy.Highs()`` prints HiGHS's banner ("Running HiGHS 1.16.0 ...") on the
C-level stdout, once per process, from its constructor: ``Highs.__init__`` calls
``enableCallbacks``, whose ``setCallback`` writes the log header while
``output_flag`` is still on. Setting the option after construction is too late,
so :class:`_QuietHighs` turns output off inside ``enableCallbacks``, before
that first write (nothing else of lsched prints it; Pyomo is only used to build
the model, never to run HiGHS).

Progress
--------
``kCallbackMipImprovingSolution`` reports each new incumbent and the interrupt
and ``kCallbackMipLogging`` events report the dual bound; each improvement of
either is passed to ``on_event(time_s, objective, bound)`` in solver units (the
caller adds its constant). An exception raised by ``on_event`` interrupts the
solve and is re-raised after HiGHS has returned.

In a solve of the driver
------------------------
A MILP backend (:mod:`lsched.formulations.driver`) builds its model in the time
its run has left (:func:`search_built`, which reports a build that did not finish
as the attempt's stop) and runs HiGHS with the run's deadline, threads and seed,
logging HiGHS's progress in the run (:func:`run_in`); :func:`column_values` and
:func:`solution` map a schedule's variable values to HiGHS columns and back.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import highspy
import numpy as np
import numpy.typing as npt
import pyomo.environ as pyo
from pyomo.common.collections import ComponentMap
from pyomo.repn.plugins.standard_form import LinearStandardFormCompiler

from lsched.formulations.driver import Attempt, SolveRun
from lsched.formulations.result import Stop, highs_stop
from lsched.interrupt import requested, run_stoppable

FloatArray = npt.NDArray[np.float64]
T = TypeVar("T")

#: Pyomo's compile time (model to matrices) as a share of the build time, with a
#: margin: measured 0.37-0.45 on the slot model (Jaillet n = 40 and 60) and
#: 0.37-0.43 on the timed model (Jaillet n = 20 and 30, llama2-70b-a100-tp4).
COMPILE_SHARE = 0.6


class _QuietHighs(highspy.Highs):
    """``highspy.Highs`` with output off from the start: no banner, no log."""

    def enableCallbacks(self) -> None:
        # called by Highs.__init__; the banner is written by its setCallback
        highspy._Highs.setOptionValue(self, "output_flag", False)
        super().enableCallbacks()


#: HiGHS options that make "optimal" mean optimal for an integer objective with
#: integer coefficients: an absolute gap below one closes it.
INTEGER_GAP: dict[str, float] = {"mip_rel_gap": 0.0, "mip_abs_gap": 1.0 - 1e-6}

#: ``on_event(time_s, objective or None, bound)``, solver units.
EventCallback = Callable[[float, float | None, float], None]


@dataclass
class LoadedModel:
    """A Pyomo model loaded into a ``highspy.Highs`` object.

    Attributes
    ----------
    highs
        The solver object, model passed.
    columns
        Pyomo variables in HiGHS column order.
    offset
        Objective constant (included in HiGHS's objective values).
    size
        ``variables``, ``constraints``, ``nonzeros``, ``integers``.
    """

    highs: highspy.Highs
    columns: list[Any]
    offset: float
    size: dict[str, int]


@dataclass
class HighsOutcome:
    """What one HiGHS run returned, in solver units.

    Attributes
    ----------
    stop
        Why HiGHS stopped (:func:`lsched.formulations.result.highs_stop`); the
        caller decides the status with
        :func:`lsched.formulations.result.decide_status`.
    infeasible
        Whether HiGHS proved the model infeasible.
    model_status
        HiGHS's own status text.
    objective
        Incumbent objective, or ``None`` without one.
    bound
        Best dual bound (``-inf`` if none).
    values
        Column values of the incumbent, or ``None``.
    nodes
        Branch-and-bound nodes.
    runtime_s
        Wall-clock seconds of the run.
    interrupted
        Whether the wall-clock callback stopped it.
    events
        ``(time_s, objective, bound)`` per improvement, as passed to ``on_event``.
    """

    stop: Stop
    infeasible: bool
    model_status: str
    objective: float | None
    bound: float
    values: FloatArray | None
    nodes: int
    runtime_s: float
    interrupted: bool = False
    events: list[tuple[float, float | None, float]] = field(default_factory=list)


class BuildStopped(Exception):
    """A model was not built and loaded in time, or the user stopped it.

    ``args`` are ``(reason, stage)``: the reason ``"time_limit"`` or
    ``"interrupted"`` (a :class:`~lsched.formulations.result.Stop` value), the
    stage ``"model build"`` or ``"model compile"``.
    """

    def __init__(self, reason: str, stage: str = "model build") -> None:
        super().__init__(reason, stage)

    @property
    def stop(self) -> Stop:
        """Why: :attr:`Stop.TIME_LIMIT` or :attr:`Stop.INTERRUPTED`."""
        return Stop(self.args[0])

    @property
    def stage(self) -> str:
        """Where: ``"model build"`` or ``"model compile"``."""
        return str(self.args[1])


def build_check(stop_at: float | None) -> Callable[[], None]:
    """A check for a model builder to call as it goes (once per slot, say).

    It raises :class:`BuildStopped` on a user's stop request
    (:mod:`lsched.interrupt`) or once ``stop_at`` (``time.monotonic()``; ``None``:
    no limit) has passed.
    """

    def check() -> None:
        if requested():
            raise BuildStopped("interrupted")
        if stop_at is not None and time.monotonic() >= stop_at:
            raise BuildStopped("time_limit")

    return check


def build_and_load(
    build: Callable[[], T],
    model_of: Callable[[T], pyo.ConcreteModel],
    *,
    deadline: float,
    relax: bool = False,
) -> tuple[T, LoadedModel]:
    """``build()`` a model, then compile it into HiGHS, both before ``deadline``.

    Parameters
    ----------
    build
        Builds the model, checking the clock as it goes (:func:`build_check`
        with ``stop_at=deadline``).
    model_of
        The Pyomo model of what ``build`` returned.
    deadline
        ``time.monotonic()`` seconds.
    relax
        Load the LP relaxation (:func:`load`).

    Returns
    -------
    tuple
        What ``build`` returned, and the loaded model.

    Raises
    ------
    BuildStopped
        From ``build``; or after it, on a stop request or when compiling would
        end past ``deadline`` (estimated as :data:`COMPILE_SHARE` of the build's
        time: the compiler cannot be stopped midway); or after compiling, on a
        stop request or past ``deadline``.
    """
    began = time.monotonic()
    built = build()
    built_at = time.monotonic()
    if requested():
        raise BuildStopped("interrupted", "model build")
    if built_at + COMPILE_SHARE * (built_at - began) >= deadline:
        raise BuildStopped("time_limit", "model build")
    loaded = load(model_of(built), relax=relax)
    if requested():
        raise BuildStopped("interrupted", "model compile")
    if time.monotonic() >= deadline:
        raise BuildStopped("time_limit", "model compile")
    return built, loaded


def load(model: pyo.ConcreteModel, *, relax: bool = False) -> LoadedModel:
    """Compile ``model`` (linear, one minimised objective) and pass it to HiGHS.

    Parameters
    ----------
    model
        A linear Pyomo model.
    relax
        Pass every variable as continuous (the LP relaxation).
    """
    form = LinearStandardFormCompiler().write(model, mixed_form=True)
    columns = list(form.columns)
    a = form.A.tocsc()
    n_cols, n_rows = len(columns), a.shape[0]
    senses = np.array([row.bound_type for row in form.rows], dtype=np.int64)
    rhs = np.asarray(form.rhs, dtype=np.float64)
    inf = highspy.kHighsInf
    row_lower = np.where(senses <= 0, rhs, -inf) if n_rows else np.empty(0)
    row_upper = np.where(senses >= 0, rhs, inf) if n_rows else np.empty(0)
    col_lower = np.array(
        [-inf if v.lb is None else float(v.lb) for v in columns], dtype=np.float64
    )
    col_upper = np.array(
        [inf if v.ub is None else float(v.ub) for v in columns], dtype=np.float64
    )
    integer = np.array(
        [0 if relax or v.is_continuous() else 1 for v in columns], dtype=np.int32
    )
    cost = np.asarray(form.c.toarray()[0], dtype=np.float64)
    offset = float(form.c_offset[0])
    highs = pass_model(
        a,
        cost,
        (col_lower, col_upper),
        (row_lower.astype(np.float64), row_upper.astype(np.float64)),
        integer=integer,
        offset=offset,
    )
    size = {
        "variables": n_cols,
        "constraints": n_rows,
        "nonzeros": int(a.nnz),
        "integers": int(integer.sum()),
    }
    return LoadedModel(highs=highs, columns=columns, offset=offset, size=size)


def pass_model(
    a: Any,
    cost: FloatArray,
    col_bounds: tuple[FloatArray, FloatArray],
    row_bounds: tuple[FloatArray, FloatArray],
    *,
    integer: npt.NDArray[np.int32] | None = None,
    offset: float = 0.0,
) -> highspy.Highs:
    """A quiet ``highspy.Highs`` holding ``min cost x + offset`` subject to
    ``row_lower <= a x <= row_upper`` and ``col_lower <= x <= col_upper``.

    Parameters
    ----------
    a
        The constraint matrix, a ``scipy.sparse`` CSC matrix.
    cost, col_bounds, row_bounds
        Objective coefficients, ``(lower, upper)`` per column and per row
        (``highspy.kHighsInf`` for none).
    integer
        1 for an integer column, 0 for a continuous one; all continuous by
        default.
    offset
        Objective constant.
    """
    n_cols, n_rows = a.shape[1], a.shape[0]
    if integer is None:
        integer = np.zeros(n_cols, dtype=np.int32)
    highs = _QuietHighs()
    highs.passModel(
        n_cols,
        n_rows,
        int(a.nnz),
        int(highspy.MatrixFormat.kColwise),
        int(highspy.ObjSense.kMinimize),
        offset,
        cost,
        *col_bounds,
        *row_bounds,
        a.indptr.astype(np.int32),
        a.indices.astype(np.int32),
        a.data.astype(np.float64),
        integer,
    )
    return highs


def run(
    loaded: LoadedModel,
    *,
    deadline: float,
    threads: int = 1,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    start: FloatArray | None = None,
    start_objective: float | None = None,
    on_event: EventCallback | None = None,
    origin: float | None = None,
) -> HighsOutcome:
    """Solve ``loaded`` until optimal or until ``deadline`` (``time.monotonic()``).

    Parameters
    ----------
    loaded
        From :func:`load`.
    deadline
        Wall-clock deadline, ``time.monotonic()`` seconds.
    threads
        HiGHS ``threads`` option.
    seed
        HiGHS ``random_seed``.
    options
        Further HiGHS options (override the defaults set here).
    start
        Column values of a feasible solution (MIP start).
    start_objective
        Its objective: only better incumbents are reported.
    on_event
        Called on each improvement (module docstring).
    origin
        ``time.monotonic()`` that event times count from; the start of this run
        by default.

    Returns
    -------
    HighsOutcome
        Never raises on a time-out; HiGHS option errors raise ``ValueError``.
    """
    highs = loaded.highs
    began = time.monotonic()
    settings: dict[str, Any] = {
        # HiGHS's clock runs over all runs of one object (a warm re-solve), so
        # the limit is the time it has run so far plus the time left
        "time_limit": highs.getRunTime() + max(deadline - began, 1e-3),
        "threads": int(threads),
        "random_seed": int(seed),
    }
    settings.update(options or {})
    _configure(highs, settings, start)
    origin = began if origin is None else origin
    watch = _Watch(deadline, origin, start_objective, on_event)
    ran, user = _solve(highs, watch)
    return _outcome(loaded, watch, ran, user, began)


def _configure(
    highs: highspy.Highs, settings: dict[str, Any], start: FloatArray | None
) -> None:
    """Set HiGHS options (``ValueError`` on one HiGHS rejects) and the MIP start."""
    for name, value in settings.items():
        if highs.setOptionValue(name, value) == highspy.HighsStatus.kError:
            raise ValueError(f"HiGHS rejected option {name}={value!r}")
    if start is not None:
        solution = highspy.HighsSolution()
        solution.col_value = list(map(float, start))
        solution.value_valid = True
        highs.setSolution(solution)


class _Watch:
    """The callbacks of one :func:`run`: progress events and the interrupt.

    Parameters
    ----------
    deadline
        Wall-clock deadline, ``time.monotonic()`` seconds.
    origin
        ``time.monotonic()`` that event times count from.
    start_objective
        Objective of the MIP start, if any: only better incumbents are reported.
    on_event
        Called on each improvement (module docstring).
    """

    def __init__(
        self,
        deadline: float,
        origin: float,
        start_objective: float | None,
        on_event: EventCallback | None,
    ) -> None:
        self.deadline = deadline
        self.origin = origin
        self.on_event = on_event
        #: Best objective and bound reported so far (solver units).
        self.objective = math.inf if start_objective is None else start_objective
        self.bound = -math.inf
        #: Whether the deadline callback stopped HiGHS.
        self.interrupted = False
        #: Whether a user's stop request (:mod:`lsched.interrupt`) came.
        self.user = False
        #: What ``on_event`` raised, re-raised after HiGHS returns.
        self.error: Exception | None = None
        #: ``(time_s, objective, bound)`` per improvement.
        self.events: list[tuple[float, float | None, float]] = []

    def subscribe(self, highs: highspy.Highs) -> None:
        """Subscribe to the interrupt, improving-solution and logging events."""
        highs.cbSimplexInterrupt.subscribe(self.interrupt)
        highs.cbIpmInterrupt.subscribe(self.interrupt)
        highs.cbMipInterrupt.subscribe(self.interrupt)
        highs.cbMipImprovingSolution.subscribe(self.improving)
        highs.cbMipLogging.subscribe(self.logging)

    def report(self, objective: float | None, bound: float | None) -> None:
        """Record an event, and pass it to ``on_event``, if either improved."""
        better = False
        if objective is not None and objective < self.objective - 1e-9:
            self.objective, better = objective, True
        if bound is not None and math.isfinite(bound) and bound > self.bound + 1e-9:
            self.bound, better = bound, True
        if not better:
            return
        finite = self.objective if math.isfinite(self.objective) else None
        event = (time.monotonic() - self.origin, finite, self.bound)
        self.events.append(event)
        if self.on_event is not None and self.error is None:
            try:
                self.on_event(*event)
            except Exception as error:  # re-raised after HiGHS returns
                self.error = error

    def interrupt(self, event: Any) -> None:
        """Interrupt HiGHS on a user's stop, past the deadline or after an error
        of ``on_event``; report the MIP's progress on the way."""
        if event.callback_type == highspy.cb.HighsCallbackType.kCallbackMipInterrupt:
            out = event.data_out
            self.report(_finite(out.mip_primal_bound), _finite(out.mip_dual_bound))
        if self.user:
            event.interrupt()
        elif time.monotonic() >= self.deadline or self.error is not None:
            self.interrupted = self.error is None
            event.interrupt()

    def improving(self, event: Any) -> None:
        """Report a new incumbent."""
        self.report(float(event.data_out.objective_function_value), None)

    def logging(self, event: Any) -> None:
        """Report the MIP's incumbent and dual bound."""
        out = event.data_out
        self.report(_finite(out.mip_primal_bound), _finite(out.mip_dual_bound))


def _solve(highs: highspy.Highs, watch: _Watch) -> tuple[Any, bool]:
    """Run HiGHS with ``watch``'s callbacks (retrying once with a fresh thread
    pool); HiGHS's run status and whether a user stopped it.

    Re-raises what ``on_event`` raised.
    """
    watch.subscribe(highs)
    try:
        ran, user = _run_stoppable(highs, watch)
        if (
            ran == highspy.HighsStatus.kError
            and highs.getModelStatus() == highspy.HighsModelStatus.kNotset
        ):
            # HiGHS's thread pool is per process and fixed by the first solve; a
            # different ``threads`` makes ``run`` fail before it starts.
            highspy.Highs.resetGlobalScheduler(True)
            ran, user = _run_stoppable(highs, watch)
    finally:
        highs.clearCallbacks()
    if watch.error is not None:
        raise watch.error
    return ran, user


def _outcome(
    loaded: LoadedModel, watch: _Watch, ran: Any, user: bool, began: float
) -> HighsOutcome:
    """What HiGHS returned, read off ``loaded`` after the run that began at
    ``began`` (``time.monotonic()``); the final incumbent and bound are reported
    to ``watch``."""
    highs = loaded.highs
    model_status = highs.getModelStatus()
    if ran == highspy.HighsStatus.kError and model_status in (
        highspy.HighsModelStatus.kNotset,
        highspy.HighsModelStatus.kSolveError,
        highspy.HighsModelStatus.kModelError,
    ):
        return HighsOutcome(
            stop=Stop.ERROR,
            infeasible=False,
            model_status=highs.modelStatusToString(model_status),
            objective=None,
            bound=-math.inf,
            values=None,
            nodes=0,
            runtime_s=time.monotonic() - began,
            interrupted=bool(watch.interrupted),
            events=watch.events,
        )
    info = highs.getInfo()
    solution = highs.getSolution()
    has_value = info.primal_solution_status == 2 and solution.value_valid
    values = np.asarray(solution.col_value, dtype=np.float64) if has_value else None
    objective = float(info.objective_function_value) if has_value else None
    is_mip = loaded.size["integers"] > 0
    if is_mip:
        bound = _finite(info.mip_dual_bound)
        bound = -math.inf if bound is None else bound
    elif model_status == highspy.HighsModelStatus.kOptimal:
        bound = float(info.objective_function_value)
    else:
        bound = -math.inf
    if objective is not None:
        watch.report(objective, bound)
    text = highs.modelStatusToString(model_status)
    passed = bool(watch.interrupted) or time.monotonic() >= watch.deadline
    return HighsOutcome(
        stop=highs_stop(text, interrupted=user, deadline_passed=passed),
        infeasible=model_status == highspy.HighsModelStatus.kInfeasible,
        model_status=text,
        objective=objective,
        bound=bound,
        values=values,
        nodes=int(info.mip_node_count) if is_mip else 0,
        runtime_s=time.monotonic() - began,
        interrupted=bool(watch.interrupted),
        events=watch.events,
    )


def _run_stoppable(highs: highspy.Highs, watch: _Watch) -> tuple[Any, bool]:
    """``highs.run()``, stopped by a user's request (:mod:`lsched.interrupt`)."""

    def work() -> Any:
        try:
            return highs.run()
        finally:
            if threading.current_thread() is not threading.main_thread():
                # as highspy's own threaded solve: HiGHS's scheduler is per thread
                highspy._Highs.resetThreadScheduler(False)

    def stop() -> None:
        watch.user = True

    return run_stoppable(work, stop)


def lp_relaxation(loaded: LoadedModel, *, deadline: float) -> float:
    """Optimal value of ``loaded`` (:func:`load` with ``relax=True``), model units.

    ``-inf`` if HiGHS does not prove the LP optimal by ``deadline``
    (``time.monotonic()`` seconds), or on a user's stop.
    """
    outcome = run(loaded, deadline=deadline)
    finished = outcome.stop is Stop.FINISHED and outcome.model_status == "Optimal"
    return outcome.bound if finished else -math.inf


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) and abs(value) < highspy.kHighsInf else None


class Built(Protocol):
    """A backend's built model: its Pyomo model is :attr:`model`."""

    @property
    def model(self) -> pyo.ConcreteModel:
        """The Pyomo model to load into HiGHS."""
        ...


B = TypeVar("B", bound=Built)


def search_built(
    solve_run: SolveRun,
    build: Callable[[], B],
    search: Callable[[B, LoadedModel, float], Attempt],
    *,
    solver: str,
    **stopped_info: Any,
) -> Attempt:
    """Build and load a model in the time ``solve_run`` has left, then search it.

    Parameters
    ----------
    solve_run
        The driver's run.
    build
        Builds the model, giving up past the run's deadline (:func:`build_check`).
    search
        ``search(built, loaded, build_s)``: the attempt on the loaded model,
        ``build_s`` the run's seconds when it was loaded.
    solver
        :attr:`Attempt.solver` if the build does not finish.
    **stopped_info
        Further :attr:`Attempt.info` if the build does not finish.

    Returns
    -------
    Attempt
        ``search``'s; or, when the model could not be built (and compiled) in
        time or the user stopped it, the stop that says why, with
        ``info["stopped_in"]`` (the stage) and ``info["build_s"]``: the driver
        keeps the incumbent.
    """
    try:
        built, loaded = build_and_load(
            build, lambda b: b.model, deadline=solve_run.deadline
        )
    except BuildStopped as stopped:
        info = {
            "stopped_in": stopped.stage,
            "build_s": solve_run.elapsed_s(),
            **stopped_info,
        }
        return Attempt(solver=solver, stop=stopped.stop, info=info)
    return search(built, loaded, solve_run.elapsed_s())


def _same(value: float) -> float:
    return value


def run_in(
    solve_run: SolveRun,
    loaded: LoadedModel,
    *,
    options: dict[str, Any],
    start: FloatArray | None,
    start_objective: float,
    to_problem: Callable[[float], float] = _same,
) -> HighsOutcome:
    """:func:`run` with ``solve_run``'s deadline, threads and seed, its progress
    logged in ``solve_run``.

    Parameters
    ----------
    solve_run
        The driver's run (its clock is the events' origin).
    loaded, options, start, start_objective
        As :func:`run`.
    to_problem
        A model value (objective or bound) in problem units, for the log; the
        identity by default.
    """

    def on_event(time_s: float, objective: float | None, bound: float) -> None:
        solve_run.record(
            None if objective is None else to_problem(objective), to_problem(bound)
        )

    return run(
        loaded,
        deadline=solve_run.deadline,
        threads=solve_run.num_workers,
        seed=solve_run.seed,
        options=options,
        start=start,
        start_objective=start_objective,
        on_event=on_event,
        origin=solve_run.began,
    )


def consistent(loaded: LoadedModel, outcome: HighsOutcome) -> bool:
    """Whether HiGHS's objective is that of the values it returned."""
    if outcome.values is None or outcome.objective is None:
        return True
    lp = loaded.highs.getLp()
    value = float(np.dot(lp.col_cost_, outcome.values)) + float(lp.offset_)
    return abs(value - outcome.objective) <= 1e-6 * max(1.0, abs(value))


def run_in_from_start(
    solve_run: SolveRun,
    loaded: LoadedModel,
    model: pyo.ConcreteModel,
    *,
    options: dict[str, Any],
    start: FloatArray,
    start_objective: float,
    to_problem: Callable[[float], float] = _same,
) -> tuple[HighsOutcome, LoadedModel, bool]:
    """:func:`run_in` from the MIP start ``start``, solved again without it when
    HiGHS's objective is not that of the values it returns (:func:`consistent`).

    HiGHS 1.16 was seen to map a MIP start into its presolved space with a wrong
    objective, prune with it and return "optimal" with the start's values and a
    wrong bound (the timed model's 8.908 for a start of 8.953,
    :mod:`lsched.formulations.timed.milp`; the co-migration model's 988 for a
    start of 2256 whose optimum is 1623, :mod:`lsched.formulations.comigration`).
    Without the time (or leave) to solve again, the values and bound are dropped
    and the stop says why.

    Returns
    -------
    tuple
        The outcome, the loaded model it belongs to (``model`` loaded again
        after a restart), and whether it was restarted.
    """

    def solve_from(loaded: LoadedModel, begin: FloatArray | None) -> HighsOutcome:
        return run_in(
            solve_run, loaded, options=options, start=begin,
            start_objective=start_objective, to_problem=to_problem,
        )  # fmt: skip

    outcome = solve_from(loaded, start)
    if consistent(loaded, outcome):
        return outcome, loaded, False
    if requested() or time.monotonic() >= solve_run.deadline:
        untrusted = replace(
            outcome,
            stop=Stop.INTERRUPTED if requested() else Stop.TIME_LIMIT,
            objective=None,
            bound=-math.inf,
            values=None,
        )
        return untrusted, loaded, False
    loaded = load(model)
    return solve_from(loaded, None), loaded, True


def column_values(loaded: LoadedModel, values: Mapping[Any, float]) -> FloatArray:
    """``values`` (Pyomo variable to value, every column's) in HiGHS column order:
    a MIP start."""
    return np.array([values[v] for v in loaded.columns], dtype=np.float64)


def solution(loaded: LoadedModel, values: FloatArray) -> ComponentMap:
    """HiGHS's column ``values`` by Pyomo variable."""
    return ComponentMap(zip(loaded.columns, values, strict=True))
