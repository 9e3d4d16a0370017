"""The adapter rules: ``max-loras``, ``adapter-resident``, ``adapter-load`` and
``adapter-memory``.

Restated from the docstrings of :mod:`lsched.adapters` and
:mod:`lsched.evaluator.adapters`, with the validator's own residency: nothing is
shared with the engine. The spec (sizes, ``max_loras``, slots) and the profile
(``host.h2d_bytes_per_s``, the iteration time's ``adapter_s`` and
``lora_token_s``) are read as data; a request's adapter is its name in the
instance's ``adapter`` column (``""`` or no column: the base model).

The log's ``adapter_loads`` table (run, adapter, start_s, end_s, evicted) is
replayed per replica in run order, from an empty set of resident adapters:

1. ``max-loras``: the distinct adapters of a run's members number at most
   ``max_loras`` (the engine's rule over the running requests implies it);
2. before the run, its loads in row order: the adapter loaded is not resident;
   the adapter it evicts (if any) is resident and no member of the run uses it,
   and a load that evicts nothing finds a free slot (``adapter-resident``);
3. ``adapter-load``: the loads run back to back from the run's start, each
   lasting ``size / h2d_bytes_per_s`` (``rtol``);
4. ``adapter-resident``: every member's adapter is resident during the run;
5. ``adapter-memory``: at most ``slots`` adapters are resident (so within
   ``slots * slot_bytes`` bytes, every adapter being at most a slot, which the
   spec checks);
6. ``merged-batch``: a run in the ``merged_runs`` table (run, adapter) has only
   members of that adapter, and is charged no adapter columns; a run whose mode
   (its merged adapter, or unmerged) differs from its replica's previous run's
   (unmerged before the first) takes ``merge_switch_s`` more, a switch.

Which adapter a load evicts among those no running request uses (the least
recently used) is not checked: the log does not say which requests run
outside a run's members. The run's loads and its adapter columns, ``adapter_s``
per distinct adapter and ``lora_token_s`` per LoRA token (prefill chunk tokens
and decode steps of members with an adapter), lengthen it (``run-duration``);
the metrics ``adapter_loads``, ``adapter_load_s`` and ``adapter_switches`` are
recomputed.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lsched.instance import Instance
from lsched.profile import DeploymentProfile
from lsched.validator.replay import _Log
from lsched.validator.report import FloatArray, _close, _Collector


@dataclass(frozen=True)
class _AdapterCheck:
    """Per run position the seconds the adapters add, and the metrics."""

    extra_s: FloatArray
    metrics: dict[str, float]


def _check_adapters(
    instance: Instance,
    profile: DeploymentProfile,
    log: _Log,
    spec: Any,
    loads: pd.DataFrame | None,
    merged: pd.DataFrame | None,
    rtol: float,
    out: _Collector,
) -> _AdapterCheck:
    """Rules 1 to 6 of the module docstring over ``log`` (nothing without a
    ``spec``)."""
    if spec is None:
        return _AdapterCheck(np.zeros(len(log.run_ids)), {})
    names = instance.adapter.tolist() if instance.adapter is not None else None
    names = names or [""] * len(instance)
    members, tokens = _members(log, names)
    by_run = _by_run(log, loads, ["adapter", "start_s", "end_s", "evicted"])
    modes = {pos: row[0] for pos, rows in _by_run(log, merged, ["adapter"]).items()
             for row in rows}  # fmt: skip
    time = profile.iteration_time
    extra = np.zeros(len(log.run_ids))
    resident: dict[int, OrderedDict[str, None]] = defaultdict(OrderedDict)
    mode: dict[int, str] = defaultdict(str)  # per replica, "": unmerged
    loaded, switches = 0.0, 0
    for pos, run in enumerate(log.run_ids):
        used = [names[r] for r in members[pos] if names[r]]
        distinct = set(used)
        _check_batch(spec, distinct, modes.get(pos), len(used) < len(members[pos]),
                     run, out)  # fmt: skip
        replica = int(log.replica[pos])
        res = resident[replica]
        seconds = _replay_loads(
            spec, profile, res, by_run[pos], distinct, float(log.start[pos]), run,
            rtol, out,
        )  # fmt: skip
        loaded += seconds
        for a in used:
            if a not in res:
                out.add(
                    "adapter-resident",
                    f"adapter {a!r} runs without being resident",
                    run=run,
                )
            else:
                res.move_to_end(a)
        if pos not in modes:  # unmerged: the adapter columns
            seconds += time.adapter_s * len(distinct) + time.lora_token_s * tokens[pos]
        if modes.get(pos, "") != mode[replica]:  # a switch (rule 6)
            mode[replica] = modes.get(pos, "")
            seconds += time.merge_switch_s
            switches += 1
        extra[pos] = seconds
    count = sum(len(rows) for rows in by_run.values())
    metrics = {"adapter_loads": float(count), "adapter_load_s": loaded,
               "adapter_switches": float(switches)}  # fmt: skip
    return _AdapterCheck(extra, metrics)


def _members(log: _Log, names: list[str]) -> tuple[dict, dict]:
    """Per run position its members (row order) and its LoRA tokens."""
    members: dict[int, list[int]] = defaultdict(list)
    tokens: dict[int, int] = defaultdict(int)
    for pos, r, c in zip(log.m_pos.tolist(), log.m_req.tolist(),
                         log.m_tokens.tolist(), strict=True):  # fmt: skip
        members[pos].append(r)
        if names[r]:
            tokens[pos] += c
    return members, tokens


def _by_run(
    log: _Log, table: pd.DataFrame | None, columns: list[str]
) -> dict[int, list[tuple]]:
    """The rows of a table keyed by ``run``, as tuples of ``columns`` per run
    position (row order)."""
    by_run: dict[int, list[tuple]] = defaultdict(list)
    if table is None or not len(table):
        return by_run
    positions = log.runs.index.get_indexer(table["run"]).tolist()
    rows = zip(*(table[c].tolist() for c in columns), strict=True)
    for pos, row in zip(positions, rows, strict=True):
        by_run[pos].append(row)
    return by_run


def _check_batch(
    spec: Any,
    distinct: set[str],
    merged: str | None,
    has_base: bool,
    run: int,
    out: _Collector,
) -> None:
    """Rule 1, and rule 6's members: a merged run (``merged``: its adapter) has
    only members of that adapter (``has_base``: a member on the base model)."""
    if len(distinct) > spec.max_loras:
        out.add(
            "max-loras",
            f"{len(distinct)} distinct adapters "
            f"{sorted(distinct)} > max_loras {spec.max_loras}",
            run=run,
        )
    if merged is not None and (has_base or distinct != {merged}):
        out.add(
            "merged-batch",
            f"a run merged on {merged!r} has members of "
            f"{sorted(distinct)}{' and the base model' * has_base}",
            run=run,
        )


def _replay_loads(
    spec: Any,
    profile: DeploymentProfile,
    res: OrderedDict[str, None],
    rows: list[tuple],
    distinct: set[str],
    start_s: float,
    run: int,
    rtol: float,
    out: _Collector,
) -> float:
    """Rules 2, 3 and 5 for one run's loads (``res``: its replica's resident
    adapters, updated); returns their seconds."""
    slots = spec.max_loras if spec.slots is None else spec.slots
    sizes = dict(spec.sizes or {})
    h2d = float(profile.host.h2d_bytes_per_s)  # type: ignore[union-attr]
    t, total = start_s, 0.0
    for adapter, start, end, evicted in rows:
        if adapter in res:
            out.add(
                "adapter-resident",
                f"adapter {adapter!r} loaded while resident",
                run=run,
            )
        if evicted:
            if evicted not in res or evicted in distinct:
                out.add(
                    "adapter-resident",
                    f"adapter {evicted!r} evicted while "
                    "not resident or used by the run",
                    run=run,
                )
            res.pop(evicted, None)
        elif len(res) >= slots:
            out.add(
                "adapter-resident",
                f"adapter {adapter!r} loaded with all "
                f"{slots} slots taken and nothing evicted",
                run=run,
            )
        seconds = sizes.get(adapter, spec.size_bytes) / h2d
        # logged times are absolute: allow their rounding
        atol = 4 * np.finfo(np.float64).eps * max(abs(start), abs(end))
        if not (
            _close(start, t, rtol, atol) and _close(end - start, seconds, rtol, atol)
        ):
            out.add(
                "adapter-load",
                f"adapter {adapter!r} loaded from {start!r} to "
                f"{end!r} s; expected from {t!r} s for {seconds!r} s",
                run=run,
            )
        t += seconds
        total += seconds
        res[adapter] = None
        if len(res) > slots:
            out.add(
                "adapter-memory",
                f"{len(res)} adapters resident > {slots} slots",
                run=run,
            )
    return total
