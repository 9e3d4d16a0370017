"""The ``schema`` rule: the log's tables have their columns, known ids and
values of the right kind, or the log is not replayed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lsched.instance import Instance
from lsched.validator.report import (
    MEMBER_COLUMNS,
    PREEMPTION_COLUMNS,
    RUN_COLUMNS,
    SWAP_COLUMNS,
    _Collector,
)


def _integral(values: pd.Series) -> bool:
    array = values.to_numpy()
    if array.size == 0 or np.issubdtype(array.dtype, np.integer):
        return True
    if array.dtype == bool:
        return True
    if not np.issubdtype(array.dtype, np.number):
        return False
    return bool(np.all(np.isfinite(array)) and np.all(array == np.round(array)))


def _check_schema(
    instance: Instance,
    runs: pd.DataFrame,
    members: pd.DataFrame,
    preemptions: pd.DataFrame,
    replicas: int,
    out: _Collector,
) -> bool:
    """Check the log's shape; False if it cannot be replayed."""
    ok = True
    for table, name, columns in (
        (runs, "runs", RUN_COLUMNS),
        (members, "members", MEMBER_COLUMNS),
        (preemptions, "preemptions", PREEMPTION_COLUMNS),
    ):
        missing = [c for c in columns if c not in table.columns]
        if missing:
            out.add("schema", f"table {name} lacks column(s) {missing}")
            ok = False
    if not ok:
        return False
    if not runs.index.is_unique or not _integral(runs.index.to_series()):
        out.add("schema", "runs: expected unique integer run ids as the index")
        return False
    integer_columns = [
        (runs, "runs", c) for c in RUN_COLUMNS if c not in ("start_s", "end_s")
    ]
    integer_columns += [(members, "members", c) for c in MEMBER_COLUMNS if c != "kind"]
    integer_columns += [(preemptions, "preemptions", c) for c in PREEMPTION_COLUMNS]
    for table, name, column in integer_columns:
        if not _integral(table[column]):
            out.add("schema", f"{name}.{column}: expected integers")
            ok = False
    for column in ("start_s", "end_s"):
        values = runs[column].to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(values)):
            out.add("schema", f"runs.{column}: expected finite times")
            ok = False
    if not ok:
        return False
    n = len(instance)
    replica = runs["replica"].to_numpy()
    if np.any((replica < 0) | (replica >= replicas)):
        run = int(runs.index[np.flatnonzero((replica < 0) | (replica >= replicas))[0]])
        out.add("schema", f"replica outside 0..{replicas - 1}", run=run)
        ok = False
    iterations = runs["iterations"].to_numpy()
    # no valid run is longer than the longest output (each iteration emits a token)
    longest = int(instance.output_tokens.max())
    bad = (iterations < 1) | (iterations > longest)
    if np.any(bad):
        run = int(runs.index[np.flatnonzero(bad)[0]])
        out.add(
            "schema",
            f"iterations = {int(iterations[np.flatnonzero(bad)[0]])}; expected "
            f"1..{longest} (the longest output)",
            run=run,
        )
        ok = False
    known = set(runs.index.tolist())
    for table, name in ((members, "members"), (preemptions, "preemptions")):
        unknown = ~table["run"].isin(known).to_numpy()
        if np.any(unknown):
            out.add(
                "schema",
                f"{name}: run {int(table['run'].iloc[np.flatnonzero(unknown)[0]])} "
                "is not in runs",
            )
            ok = False
        request = table["request"].to_numpy()
        outside = (request < 0) | (request >= n)
        if np.any(outside):
            out.add(
                "schema",
                f"{name}: request {int(request[np.flatnonzero(outside)[0]])} is not "
                f"in the instance (0..{n - 1})",
            )
            ok = False
    kinds = set(members["kind"].astype(str).unique().tolist())
    if not kinds <= {"prefill", "decode"}:
        out.add("schema", f"members.kind: got {sorted(kinds)}; expected prefill/decode")
        ok = False
    return ok


def _check_swap_schema(
    instance: Instance, runs: pd.DataFrame, swaps: pd.DataFrame, out: _Collector
) -> bool:
    """Check the swaps table's shape (runs already passed); False if it cannot be
    replayed."""
    missing = [c for c in SWAP_COLUMNS if c not in swaps.columns]
    if missing:
        out.add("schema", f"table swaps lacks column(s) {missing}")
        return False
    ok = True
    for column in ("run", "request", "tokens"):
        if not _integral(swaps[column]):
            out.add("schema", f"swaps.{column}: expected integers")
            ok = False
    for column in ("start_s", "end_s"):
        values = swaps[column].to_numpy()
        numeric = values.size == 0 or np.issubdtype(values.dtype, np.number)
        if not numeric or not np.all(np.isfinite(values.astype(np.float64))):
            out.add("schema", f"swaps.{column}: expected finite times")
            ok = False
    directions = set(swaps["direction"].astype(str).unique().tolist())
    if not directions <= {"out", "in"}:
        out.add("schema", f"swaps.direction: got {sorted(directions)}; expected out/in")
        ok = False
    if not ok:
        return False
    run = swaps["run"].to_numpy(dtype=np.int64)
    request = swaps["request"].to_numpy(dtype=np.int64)
    tokens = swaps["tokens"].to_numpy(dtype=np.int64)
    start = swaps["start_s"].to_numpy(dtype=np.float64)
    end = swaps["end_s"].to_numpy(dtype=np.float64)
    unknown = ~np.isin(run, runs.index.to_numpy())
    if np.any(unknown):
        out.add("schema", f"swaps: run {int(run[unknown][0])} is not in runs")
        ok = False
    n = len(instance)
    outside = (request < 0) | (request >= n)
    if np.any(outside):
        out.add(
            "schema",
            f"swaps: request {int(request[outside][0])} is not in the instance "
            f"(0..{n - 1})",
        )
        ok = False
    for bad, what in (
        (tokens < 1, lambda k: f"tokens = {int(tokens[k])}; expected >= 1"),
        (
            end < start,
            lambda k: (
                f"copy ends at {float(end[k])!r} s, before it starts at "
                f"{float(start[k])!r} s"
            ),
        ),
    ):
        if np.any(bad):
            k = int(np.flatnonzero(bad)[0])
            out.add("schema", f"swaps: {what(k)}", run=int(run[k]),
                    request=int(request[k]))  # fmt: skip
            ok = False
    return ok
