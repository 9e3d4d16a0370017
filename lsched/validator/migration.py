"""A run with live migration checked from its log and its stage table
(:func:`_validate_migration`; restated from the docstring of
:mod:`lsched.evaluator.migration`, sharing no code with it).

The log's runs and members name each request's replica run by run; the stage
table (``request, source, target, stage, start_s, end_s, blocks, bytes, last,
outcome``) each copy stage. A *move* is a request's rows up to its first
``last`` row or ``aborted`` outcome. Rules:

``migration-overlap``
    A request's runs, on whatever replicas, never overlap in time: each starts
    at or after the end of its previous one (less the 1 ns tolerance). Where
    its replica changes from ``A`` to ``B`` a move ``A -> B`` ended with
    ``outcome = migrated`` (end ``e``): its last run on ``A`` ended by the last
    stage's start, and its first on ``B`` starts at or after ``e``.
``migration-tokens``
    Walking its members in time order over every replica (a prefill chunk that
    reaches ``s_i + emitted`` emits a token, a decode member one per
    iteration, a preemption frees its KV), a request emits exactly ``o_i'``
    tokens in all; on ``B`` it arrives holding ``s_i + E - 1`` tokens of KV
    (``E`` emitted on ``A``), which the move's stages copied:
    ``sum blocks = ceil((s_i + E - 1) / b)``; its first token and completion
    agree with its records.
``migration-kv``
    On every replica, after every run, the blocks of the requests resident
    there (``ceil(tokens / b)``: a request from its first run there, or from its
    arrival ``e`` when it migrated in, until its completion, its preemption, or
    the end ``e`` of its move out: pinned while the last stage copies; one whose
    KV the target dropped at its adoption, to be prefilled again, holds none in
    the runs that start from ``e`` on, the adoption's boundary or later) plus the
    blocks reserved there for the stages of moves under way are within the
    replica's capacity. A stage's blocks are reserved at the target's first
    boundary at or after the stage's start (they count for the runs that start
    from then on) until its move lands or aborts.
``migration-downtime``
    Each stage lasts ``latency_s + bytes / bandwidth`` of the link between the
    two pools, with ``bytes = blocks x b x kv_bytes_per_token`` (the source's
    profile); a request's ``migration_downtime_s`` is the sum of its completed
    moves' last stages' durations, ``migrations`` their count,
    ``migrated_bytes`` the sum of its stages' bytes and ``migration_aborts`` at
    least its aborted moves with a stage; the metrics are their sums.

Iteration times, policies' limits and prefix caches are not checked here: the
naive reference engine replays such runs (``tests/reference_engine.py``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import pandas as pd

from lsched.validator import pools
from lsched.validator.report import (
    ARRIVAL_TOLERANCE_S,
    ValidationReport,
    _close,
    _Collector,
    _frozen,
)

_TOL = ARRIVAL_TOLERANCE_S


def _validate_migration(
    fit: Any, cluster: Any, result: Any, rtol: float
) -> ValidationReport:
    """Check a colocated run with migration (module docstring)."""
    instance = fit.served
    out = _Collector()
    pools._check_rejections(result.requests, result, out)
    rows = _member_rows(result)
    moves = _moves(result.migrations)
    replicas = _replica_profiles(cluster)
    first, done, segments = _walk_requests(
        instance, rows, result, moves, replicas, out, rtol
    )
    _check_kv(result, rows, segments, moves, replicas, out)
    metrics = _check_stages(instance, cluster, result, moves, replicas, out, rtol)
    return ValidationReport(
        tuple(out.kept), metrics, _frozen(first), _frozen(done), None, out.extra
    )


def _replica_profiles(cluster: Any) -> list[Any]:
    return [p for p in cluster.pools for _ in range(p.replicas)]


def _member_rows(result: Any) -> pd.DataFrame:
    """Every member with its run's replica, times and iterations, in time order."""
    runs = result.runs
    rows = result.members.merge(
        runs[["replica", "start_s", "end_s", "iterations"]],
        left_on="run",
        right_index=True,
    )
    return rows.sort_values(["start_s", "run"], kind="stable")


def _moves(stages: pd.DataFrame) -> dict[int, list[dict[str, Any]]]:
    """Per request, its moves in order: each a dict with its rows and outcome."""
    moves: dict[int, list[dict[str, Any]]] = defaultdict(list)
    current: dict[int, dict[str, Any]] = {}
    for row in stages.itertuples(index=False):
        i = int(row.request)
        move = current.get(i)
        if move is None:
            move = current[i] = {
                "rows": [],
                "source": int(row.source),
                "target": int(row.target),
            }
            moves[i].append(move)
        move["rows"].append(row)
        if row.outcome:
            move["outcome"] = row.outcome
            move["end"] = float(row.end_s)
            move["last_start"] = float(row.start_s)
            del current[i]
    return moves


def _walk_requests(
    instance: Any,
    rows: pd.DataFrame,
    result: Any,
    moves: dict[int, list[dict[str, Any]]],
    replicas: list[Any],
    out: _Collector,
    rtol: float,
) -> tuple[Any, Any, list]:
    """Each request's members in time order (``migration-overlap``,
    ``migration-tokens``); its first token, completion, and the segments it is
    resident on a replica: (replica, request, start, end, [(run end, tokens)],
    start is an arrival)."""
    n = len(instance)
    first, done = np.full(n, np.nan), np.full(n, np.nan)
    preempted: dict[int, list[float]] = defaultdict(list)  # request -> times
    starts = result.runs["start_s"]
    for run, i in zip(
        result.preemptions["run"], result.preemptions["request"], strict=True
    ):
        preempted[int(i)].append(float(starts[run]))
    segments: list = []
    for i, group in rows.groupby("request", sort=True):
        i = int(i)
        landed = [m for m in moves.get(i, []) if m.get("outcome") == "migrated"]
        s, o = int(instance.prompt_tokens[i]), int(instance.output_tokens[i])
        processed = emitted = 0
        target, prev, seg = s, None, None
        frees = sorted(preempted.get(i, []))
        for row in group.itertuples(index=False):
            c, start, end = int(row.replica), float(row.start_s), float(row.end_s)
            if prev is not None and start < prev[1] - _TOL:
                out.add(
                    "migration-overlap",
                    f"starts at {start} before its run on "
                    f"replica {prev[0]} ends at {prev[1]}",
                    run=int(row.run),
                    request=i,
                )
            chain = [
                m for m in landed if not m.get("used") and m["end"] <= start + _TOL
            ]
            if prev is not None and (c != prev[0] or chain):
                seg = _switch(
                    i,
                    s,
                    emitted,
                    processed,
                    prev,
                    row,
                    chain,
                    replicas,
                    seg,
                    segments,
                    out,
                )
                processed = s + emitted - 1 if row.kind == "decode" else 0
                target = s + emitted if row.kind != "decode" else target
            while frees and frees[0] <= start + _TOL:  # preempted before this run
                processed, target = 0, s + emitted
                if seg is not None:
                    seg[3] = frees[0]
                    seg = None
                frees.pop(0)
            if seg is None:
                seg = [c, i, start, math.inf, [], False]
                segments.append(seg)
            if row.kind == "decode":
                processed += int(row.iterations)
                emitted += int(row.iterations)
            else:
                if processed == 0:
                    target = s + emitted
                processed += int(row.tokens)
                emitted += processed == target
            seg[4].append((end, processed))
            if emitted >= 1 and math.isnan(first[i]):
                first[i] = end
            if emitted >= o and math.isnan(done[i]):
                done[i] = end
                seg[3] = end
            prev = (c, end)
        if emitted != o:
            out.add(
                "migration-tokens",
                f"emits {emitted} tokens over its replicas; expected {o}",
                request=i,
            )
    _check_records(result.requests, first, done, out, rtol)
    return first, done, segments


def _switch(
    i: int,
    s: int,
    emitted: int,
    processed: int,
    prev: tuple,
    row: Any,
    chain: list,
    replicas: list[Any],
    seg: list | None,
    segments: list,
    out: _Collector,
) -> list | None:
    """Request ``i`` ran on ``prev`` and next runs at ``row`` after the completed
    moves ``chain``, which must lead from the one replica to the other; its
    segments on the replicas it passed through, and on the last from the final
    move's end (``None``: it starts at its first run there)."""
    path = [prev[0]] + [m["target"] for m in chain]
    linked = all(m["source"] == a for m, a in zip(chain, path, strict=False))
    if not chain or not linked or path[-1] != int(row.replica):
        out.add(
            "migration-overlap",
            f"runs on replica {row.replica} after replica {prev[0]} without "
            "completed moves between them",
            run=int(row.run),
            request=i,
        )
        return seg
    if prev[1] > chain[0]["last_start"] + _TOL or (
        float(row.start_s) < chain[-1]["end"] - _TOL
    ):
        out.add(
            "migration-overlap",
            f"runs on replica {prev[0]} until {prev[1]} and on {row.replica} from "
            f"{row.start_s}; its moves ran [{chain[0]['last_start']}, "
            f"{chain[-1]['end']}]",
            run=int(row.run),
            request=i,
        )
    carried = s + emitted - 1
    for move in chain:
        move["used"] = True
        block = replicas[move["source"]].profile.block_tokens
        copied = sum(int(r.blocks) for r in move["rows"])
        if processed != carried or copied != -(-carried // block):
            out.add(
                "migration-tokens",
                f"holds {processed} KV tokens when it moves, {copied} blocks "
                f"copied; expected {carried} tokens in {-(-carried // block)} blocks",
                request=i,
            )
        if seg is not None:
            seg[3] = move["end"]  # pinned on the source until the move lands
        seg = [move["target"], i, move["end"], math.inf, [(move["end"], carried)], True]
        segments.append(seg)
    if row.kind != "decode":  # dropped at its adoption: prefilled again later
        assert seg is not None
        seg[3] = chain[-1]["end"]  # no run on the target starts before that
        return None
    return seg


def _check_records(
    requests: pd.DataFrame, first: Any, done: Any, out: _Collector, rtol: float
) -> None:
    for column, derived in (("first_token_s", first), ("completion_s", done)):
        claimed = requests[column].to_numpy(dtype=float)
        for i in range(len(derived)):
            if not _close(float(claimed[i]), float(derived[i]), rtol, 1e-9):
                out.add(
                    "migration-tokens",
                    f"{column} {claimed[i]}; the log gives {derived[i]}",
                    request=i,
                )


def _check_kv(
    result: Any,
    rows: pd.DataFrame,
    segments: list,
    moves: dict[int, list[dict[str, Any]]],
    replicas: list[Any],
    out: _Collector,
) -> None:
    """``migration-kv``: every run's resident blocks plus reservations."""
    runs = result.runs
    by_replica: dict[int, list] = defaultdict(list)
    for seg in segments:
        by_replica[seg[0]].append(seg)
    reserved: dict[int, list[tuple[float, float, int]]] = defaultdict(list)
    for group in moves.values():
        for move in group:
            release = move.get("end", math.inf)
            for r in move["rows"]:
                reserved[move["target"]].append(
                    (float(r.start_s), release, int(r.blocks))
                )
    for run in runs.itertuples():
        c = int(run.replica)
        profile = replicas[c].profile
        block, capacity = profile.block_tokens, profile.kv_capacity_blocks
        start, end = float(run.start_s), float(run.end_s)
        held = 0
        for seg in by_replica[c]:
            if not seg[2] - _TOL <= start < seg[3] - _TOL:
                continue
            tokens = [x for t, x in seg[4] if t <= end + _TOL]
            held += -(-tokens[-1] // block) if tokens else 0
        held += sum(b for s0, s1, b in reserved[c] if s0 - _TOL <= start < s1 - _TOL)
        if held > capacity:
            out.add(
                "migration-kv",
                f"replica {c} holds {held} blocks with its "
                f"reservations after the run; capacity {capacity}",
                run=int(run.Index),
            )


def _check_stages(
    instance: Any,
    cluster: Any,
    result: Any,
    moves: dict[int, list[dict[str, Any]]],
    replicas: list[Any],
    out: _Collector,
    rtol: float,
) -> dict[str, float]:
    """``migration-downtime``: stage durations, per-request columns, metrics."""
    n = len(instance)
    down, nbytes = np.zeros(n), np.zeros(n)
    moved, aborted = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    for i, group in moves.items():
        for move in group:
            source, target = replicas[move["source"]], replicas[move["target"]]
            link = cluster.link(source.name, target.name)
            for r in move["rows"]:
                size = (
                    float(r.blocks)
                    * source.profile.block_tokens
                    * (source.profile.kv_bytes_per_token)
                )
                seconds = float(link.latency_s) + size / float(
                    link.bandwidth_bytes_per_s
                )
                if not _close(float(r.bytes), size, rtol) or not _close(
                    float(r.end_s) - float(r.start_s), seconds, rtol, 1e-9
                ):
                    out.add(
                        "migration-downtime",
                        f"a stage of {r.blocks} blocks "
                        f"moves {r.bytes} B over [{r.start_s}, {r.end_s}]; "
                        f"expected {size} B in {seconds} s",
                        request=i,
                    )
                nbytes[i] += size
            if move.get("outcome") == "migrated":
                moved[i] += 1
                down[i] += seconds
            elif move.get("outcome") == "aborted":
                aborted[i] += 1
    requests = result.requests
    for column, derived in (
        ("migration_downtime_s", down),
        ("migrated_bytes", nbytes),
        ("migrations", moved),
    ):
        claimed = requests[column].to_numpy(dtype=float)
        for i in np.flatnonzero(~_close_all(claimed, derived, rtol)):
            out.add(
                "migration-downtime",
                f"{column} {claimed[i]}; the stages give {derived[i]}",
                request=int(i),
            )
    short = requests["migration_aborts"].to_numpy() < aborted
    for i in np.flatnonzero(short):
        out.add(
            "migration-downtime",
            f"migration_aborts {requests['migration_aborts'][i]}"
            f" below its {aborted[i]} aborted moves",
            request=int(i),
        )
    metrics = {
        "migrations": float(moved.sum()),
        "migrated_bytes": float(nbytes.sum()),
        "migration_downtime_s": float(down.sum()),
    }
    for key, value in metrics.items():
        if not _close(float(result.metrics.get(key, math.nan)), value, rtol, 1e-9):
            out.add("metric", f"{key} {result.metrics.get(key)}; expected {value}")
    return metrics


def _close_all(a: Any, b: Any, rtol: float) -> Any:
    return np.array(
        [_close(float(x), float(y), rtol, 1e-9) for x, y in zip(a, b, strict=True)]
    )
