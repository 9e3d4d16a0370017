"""The evaluator: every schedule, offline or online, is scored here.

:func:`simulate` replays an instance on a deployment under a policy, iteration by
iteration in meaning and event by event in cost (:mod:`lsched.evaluator.engine`),
and returns a :class:`SimulationResult` with per-request records, the metrics of
:mod:`lsched.metrics` and, on request, the iteration log.

Replicas are independent once a request is dispatched: request ``i`` (instance
position) runs on replica ``i mod C`` (round robin in arrival order) unless an
explicit ``assignment`` says otherwise, or a state-dependent ``dispatch`` rule
(:mod:`lsched.evaluator.dispatch`: ``least-outstanding``, ``least-kv``) chooses
at its arrival, which simulates the replicas jointly in time. Each replica gets a
fresh policy object. The iteration model and
the request lifecycle are those of DESIGN.md, restated in
:mod:`lsched.policies.base`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pandas as pd

from lsched.errors import InputError
from lsched.evaluator.dispatch import JOINT_RULES, check_dispatch, run_joint
from lsched.evaluator.engine import ReplicaEngine
from lsched.evaluator.result import (
    MEMBER_COLUMNS,
    REQUEST_COLUMNS,
    RUN_COLUMNS,
    SimulationResult,
)
from lsched.instance import Instance
from lsched.metrics import schedule_metrics
from lsched.policies import PolicySpec, parse_policy
from lsched.profile import DeploymentProfile

__all__ = ["SimulationResult", "assign_replicas", "simulate"]


def assign_replicas(
    instance: Instance, replicas: int, assignment: npt.ArrayLike | None = None
) -> np.ndarray:
    """Replica of every request: round robin, or ``assignment`` checked."""
    n = len(instance)
    if replicas < 1:
        raise InputError(f"got {replicas}; expected >= 1", field="replicas")
    if assignment is None:
        return np.arange(n, dtype=np.int64) % replicas
    raw = np.asarray(assignment)
    array = raw.astype(np.int64) if raw.dtype.kind in "iuf" else raw
    if (
        array.shape != (n,)
        or array.dtype != np.int64
        or np.any(array != raw)  # 0.7 is no replica id
        or np.any((array < 0) | (array >= replicas))
    ):
        raise InputError(
            f"expected {n} replica ids in 0..{replicas - 1}", field="assignment"
        )
    return array


def check_fits(instance: Instance, profile: DeploymentProfile) -> None:
    """Raise if a request's peak KV (``s + o - 1`` tokens) exceeds the capacity."""
    peak = instance.prompt_tokens + instance.output_tokens - 1
    blocks = profile.kv_blocks(peak)
    too_big = np.flatnonzero(blocks > profile.kv_capacity_blocks)
    if len(too_big):
        i = int(too_big[0])
        raise InputError(
            f"request {i} needs {int(peak[i])} KV tokens at its peak (prompt "
            f"{int(instance.prompt_tokens[i])} + output "
            f"{int(instance.output_tokens[i])} - 1), more than the capacity of "
            f"{profile.kv_capacity_tokens} tokens ({profile.kv_capacity_blocks} "
            f"blocks of {profile.block_tokens}) on profile {profile.name}; "
            f"{len(too_big)} request(s) can never complete",
            field="kv_capacity_tokens",
        )


def simulate(
    instance: Instance,
    profile: DeploymentProfile,
    policy: str | PolicySpec,
    *,
    replicas: int | None = None,
    assignment: npt.ArrayLike | None = None,
    dispatch: str | None = None,
    log: bool = False,
    progress: Callable[[int], None] | None = None,
) -> SimulationResult:
    """Replay ``instance`` on ``profile`` under ``policy``.

    Parameters
    ----------
    instance
        The requests.
    profile
        Deployment: iteration time, KV capacity and block size, batch limits.
    policy
        A :class:`PolicySpec` or its text form ``name[:key=value,...]``.
    replicas
        Number of replicas ``C``; the profile's by default.
    assignment
        Replica id per request; round robin in arrival order by default.
    dispatch
        ``round-robin``, ``static`` (the ``assignment``), ``least-outstanding``
        or ``least-kv`` (:mod:`lsched.evaluator.dispatch`); by default
        ``static`` with an assignment, else ``round-robin``.
    log
        Keep the iteration log (runs, members, preemptions).
    progress
        Called with the number of requests finished so far, about every 0.5 %
        of the instance and at the end.

    Returns
    -------
    SimulationResult

    Raises
    ------
    InputError
        If a request can never fit in KV, or on a bad ``replicas``/``assignment``/
        ``dispatch``.
    PolicyError
        If the policy returns a batch that breaks the model's rules, or stalls.
    """
    spec = parse_policy(policy) if isinstance(policy, str) else policy
    replicas = profile.replicas if replicas is None else replicas
    check_fits(instance, profile)
    if dispatch is None:
        dispatch = "round-robin" if assignment is None else "static"
    dispatch = check_dispatch(dispatch, assignment is not None)
    if dispatch in JOINT_RULES:
        assign_replicas(instance, replicas)  # checks replicas
        where = np.zeros(len(instance), dtype=np.int64)
    else:
        where = assign_replicas(instance, replicas, assignment)
    started = time.perf_counter()

    columns = {
        "replica": where,
        "admitted_s": np.full(len(instance), np.nan),
        "first_token_s": np.full(len(instance), np.nan),
        "completion_s": np.full(len(instance), np.nan),
        "preemptions": np.zeros(len(instance), dtype=np.int64),
        "recomputed_tokens": np.zeros(len(instance), dtype=np.int64),
    }
    busy_s = kv_token_seconds = 0.0
    iterations = 0
    runs: list[pd.DataFrame] = []
    members: list[pd.DataFrame] = []
    preempted: list[pd.DataFrame] = []
    finished = 0
    step = max(1, len(instance) // 200)
    reported = 0

    def count(k: int) -> None:
        nonlocal finished, reported
        finished += k
        if progress is not None and finished - reported >= step:
            reported = finished
            progress(finished)

    def collect(c: int, ids: np.ndarray, engine: ReplicaEngine) -> None:
        nonlocal busy_s, kv_token_seconds, iterations
        m = len(ids)
        columns["admitted_s"][ids] = engine.admitted_s[:m]
        columns["first_token_s"][ids] = engine.first_token_s[:m]
        columns["completion_s"][ids] = engine.completion_s[:m]
        columns["preemptions"][ids] = engine.preemptions[:m]
        columns["recomputed_tokens"][ids] = engine.recomputed[:m]
        busy_s += engine.busy_s
        kv_token_seconds += engine.kv_token_seconds
        iterations += engine.iterations
        if engine.log is not None:
            offset = sum(len(r) for r in runs)
            runs.append(_runs_frame(engine.log.runs, c, offset))
            members.append(_members_frame(engine.log.members, ids, offset))
            preempted.append(
                pd.DataFrame(
                    [(run + offset, int(ids[r])) for run, r in engine.log.preemptions],
                    columns=["run", "request"],
                    dtype=np.int64,
                )
            )

    if dispatch in JOINT_RULES:
        where[:], engines = run_joint(
            instance, profile, spec, replicas, dispatch, log=log, on_finished=count
        )
        for c, joint in enumerate(engines):
            if joint.ids:
                collect(c, np.array(joint.ids, dtype=np.int64), joint)
    for c in range(replicas if dispatch not in JOINT_RULES else 0):
        ids = np.flatnonzero(where == c)
        if len(ids) == 0:
            continue
        predicted = instance.predicted_output_tokens
        engine = ReplicaEngine(
            instance.arrival_s[ids],
            instance.prompt_tokens[ids],
            instance.output_tokens[ids],
            None if predicted is None else predicted[ids],
            profile,
            spec.make(),
            log=log,
            on_finished=count,
            priority=None if instance.priority is None else instance.priority[ids],
            tenant=None if instance.tenant is None else instance.tenant[ids],
        )
        engine.run()
        collect(c, ids, engine)

    if progress is not None:
        progress(finished)
    requests = pd.DataFrame(columns, columns=list(REQUEST_COLUMNS))
    metrics = schedule_metrics(
        instance,
        requests["first_token_s"].to_numpy(),
        requests["completion_s"].to_numpy(),
        busy_s=busy_s,
        kv_token_seconds=kv_token_seconds,
        kv_capacity_tokens=profile.kv_capacity_tokens,
        replicas=replicas,
        preemptions=int(requests["preemptions"].sum()),
        recomputed_tokens=int(requests["recomputed_tokens"].sum()),
    )
    return SimulationResult(
        policy=spec.label,
        profile=profile.name,
        replicas=replicas,
        requests=requests,
        metrics=metrics,
        iterations=iterations,
        runtime_s=time.perf_counter() - started,
        runs=_concat(runs, RUN_COLUMNS, index="run") if log else None,
        members=_concat(members, MEMBER_COLUMNS) if log else None,
        preemptions=_concat(preempted, ("run", "request")) if log else None,
    )


def _runs_frame(rows: list[tuple], replica: int, offset: int) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(RUN_COLUMNS[1:]))
    frame.insert(0, "replica", replica)
    frame.index = pd.RangeIndex(offset, offset + len(frame), name="run")
    return frame


def _members_frame(
    parts: list[tuple[np.ndarray, ...]], ids: np.ndarray, offset: int
) -> pd.DataFrame:
    if not parts:
        return pd.DataFrame(columns=list(MEMBER_COLUMNS))
    run, local, kind, tokens, before = (
        np.concatenate(c) for c in zip(*parts, strict=True)
    )
    return pd.DataFrame(
        {
            "run": run + offset,
            "request": ids[local],
            "kind": kind,
            "tokens": tokens,
            "processed_before": before,
        }
    )


def _concat(
    frames: list[pd.DataFrame], columns: tuple[str, ...], index: str | None = None
) -> pd.DataFrame:
    if not frames:
        frame = pd.DataFrame(columns=list(columns))
        if index:
            frame.index.name = index
        return frame
    return pd.concat(frames, ignore_index=index is None)
