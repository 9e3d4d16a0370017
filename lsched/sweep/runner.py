"""Running a sweep (:mod:`lsched.sweep`): every case not yet stored, resumably.

:func:`run_sweep` skips the cases already in the results, runs the others on an
executor, stores each row with its provenance the moment it finishes, and
consolidates the results at the end, also when the user stops the run.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lsched.errors import InputError
from lsched.interrupt import POLL_S, request, requested, session
from lsched.provenance import FileHashes, Provenance
from lsched.sweep.cases import Case, case_provenance, run_case
from lsched.sweep.config import SweepConfig, load_config
from lsched.sweep.executors import check_executor, open_executor
from lsched.sweep.store import check_out, consolidate, load_results, write_part


@dataclass(frozen=True)
class SweepReport:
    """What :func:`run_sweep` did.

    Attributes
    ----------
    out
        The consolidated results file.
    cases
        Cases in the config.
    skipped
        Cases already finished before this run.
    ran
        Cases finished by this run.
    remaining
        Cases still to run (``max_cases`` stopped the run early).
    errors
        Cases of the config whose row has status ``error``.
    results
        The rows of the config's finished cases, in config order.
    provenance
        This run's record (:meth:`SweepConfig.provenance`); each row it stored
        has its case's (the ``provenance`` column).
    interrupted
        Whether the user stopped the run (Ctrl-C): the cases finished are stored,
        those in flight were dropped and are counted in ``remaining``.
    """

    out: Path
    cases: int
    skipped: int
    ran: int
    remaining: int
    errors: int
    results: pd.DataFrame = dataclasses.field(repr=False)
    provenance: Provenance | None = dataclasses.field(default=None, repr=False)
    interrupted: bool = False

    def summary(self) -> dict[str, Any]:
        """The JSON view (without the rows)."""
        return {
            "status": "interrupted" if self.interrupted else "complete",
            "out": str(self.out),
            "cases": self.cases,
            "skipped": self.skipped,
            "ran": self.ran,
            "remaining": self.remaining,
            "errors": self.errors,
        }


def _progress_bar(enabled: bool) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not (enabled and console.is_terminal),
    )


class _Stopped(Exception):
    """Ends the executor's block on a user's stop, dropping the cases in flight."""


@session()
def run_sweep(
    config: SweepConfig | str | os.PathLike[str],
    *,
    executor: str = "local",
    address: str | None = None,
    workers: int | None = None,
    out: str | os.PathLike[str] | None = None,
    max_cases: int | None = None,
    retry_errors: bool = False,
    progress: bool = False,
    on_case: Callable[[Mapping[str, Any]], None] | None = None,
) -> SweepReport:
    """Run every case of ``config`` not already in the results.

    Parameters
    ----------
    config
        A :class:`SweepConfig` or the path of its TOML file.
    executor, address, workers
        Where the cases run (:func:`open_executor`).
    out
        Results file, instead of the config's.
    max_cases
        Run at most this many cases, then stop (a rerun goes on).
    retry_errors
        Run again the cases whose stored row has status ``error``.
    progress
        Show a progress bar on stderr (only where stderr is a terminal).
    on_case
        Called with each row once it is stored (in the calling process).

    Returns
    -------
    SweepReport
        With ``interrupted`` set when the user stopped the run (Ctrl-C, or
        :func:`lsched.interrupt.request`): the finished cases are stored, those
        in flight dropped (a local pool's workers ended at once), nothing more is
        started.

    Raises
    ------
    InputError
        On a bad config, ``out``, executor settings or ``max_cases``.
    Exception
        What a case raised other than bad input (noted with its case id), or
        what ``on_case`` raised; rows stored before stay stored.
    """
    check_executor(executor, address=address, workers=workers)
    if not isinstance(config, SweepConfig):
        config = load_config(config)
    target = config.out if out is None else Path(out)
    check_out(target, config.input_files())
    if max_cases is not None and max_cases < 0:
        raise InputError(f"got {max_cases}; expected >= 0", field="max_cases")
    hashes = FileHashes()  # each file read once, at the start of the run
    record = config.provenance(hashes)
    cases = config.cases()
    stored = load_results(target)
    done = set(stored["case_id"])
    if retry_errors:
        done -= set(stored.loc[stored["status"] == "error", "case_id"])
    todo = deque(c for c in cases if c.case_id not in done)
    skipped = len(cases) - len(todo)
    budget = len(todo) if max_cases is None else min(max_cases, len(todo))
    ran = 0
    interrupted = False
    if budget and not requested():
        try:
            ran = _run_cases(
                todo, budget, target, executor, address, workers, progress, on_case,
                len(cases), skipped,
                lambda case: case_provenance(case, record, config.path, hashes),
            )  # fmt: skip
        except _Stopped as stopped:
            ran, interrupted = stopped.args[0], True
    interrupted = interrupted or requested()
    frame = consolidate(target)
    rows = frame.set_index("case_id")
    order = [c.case_id for c in cases if c.case_id in rows.index]
    results = rows.loc[order].reset_index()
    return SweepReport(
        out=target,
        cases=len(cases),
        skipped=skipped,
        ran=ran,
        remaining=len(cases) - len(order),
        errors=int((results["status"] == "error").sum()),
        results=results,
        provenance=record,
        interrupted=interrupted,
    )


def _run_cases(
    todo: deque[Case],
    budget: int,
    target: Path,
    executor: str,
    address: str | None,
    workers: int | None,
    progress: bool,
    on_case: Callable[[Mapping[str, Any]], None] | None,
    total: int,
    skipped: int,
    made_by: Callable[[Case], Provenance],
) -> int:
    """Run up to ``budget`` cases of ``todo``, storing each as it finishes with
    its provenance (``made_by``); the number stored. Raises :class:`_Stopped`
    (with that number) on a user's stop."""
    ran = 0
    with (
        open_executor(executor, address=address, workers=workers) as (pool, width),
        _progress_bar(progress) as bar,
    ):
        task = bar.add_task("sweep", total=total, completed=skipped)
        in_flight: dict[Future[dict[str, Any]], Case] = {}
        try:
            while todo or in_flight:
                while (
                    todo
                    and len(in_flight) < 2 * width
                    and ran + len(in_flight) < budget
                ):
                    case = todo.popleft()
                    in_flight[pool.submit(run_case, case)] = case
                if not in_flight:
                    break
                try:  # wake up now and then to notice a stop request
                    finished, _ = wait(
                        in_flight, timeout=POLL_S, return_when=FIRST_COMPLETED
                    )
                except KeyboardInterrupt:  # Python's default SIGINT handler
                    request()
                    finished = set()
                failure: BaseException | None = None
                for future in finished:
                    case = in_flight.pop(future)
                    try:
                        row = future.result()
                    except Exception as exc:  # keep the others' rows first
                        if failure is None:
                            exc.add_note(
                                f"in sweep case {case.case_id}: "
                                f"{case.instance.label} / {case.profile.label} / "
                                f"{case.method}"
                            )
                            failure = exc
                        continue
                    row = {**row, "provenance": made_by(case).to_json()}
                    write_part(target, row)
                    ran += 1
                    bar.advance(task)
                    if on_case is not None:
                        on_case(row)
                if failure is not None:
                    raise failure
                if requested():  # Ctrl-C: keep what is stored, start nothing
                    raise _Stopped(ran)
        except BaseException:
            for future in in_flight:
                future.cancel()
            raise
    return ran
