"""Placement search: every split of ``N`` GPUs into pools, rated by goodput per GPU.

DistServe chooses a deployment by enumerating the parallel configurations of each
phase, simulating each and bisecting its per-GPU rate
(``simdistserve/benchmarks/search_configs.py``, ``parallel_bisect.py``). lsched
does the same over the deployment profiles it is given (each profile fixes a model
on a GPU type at one TP/PP degree, ``g`` GPUs per replica):

- *colocated*: for each profile, ``floor(N / g)`` replicas in one colocated pool;
- *disaggregated*: for each ordered pair of profiles of the same model (equal
  ``kv_bytes_per_token``), ``p >= 1`` prefill replicas of the first and ``d >= 1``
  decode replicas of the second with ``p g_p + d g_d <= N``, joined by one link.

Each candidate is rated by :func:`lsched.goodput.goodput` (the largest rate per
GPU it uses at which the target share of requests meets the SLO); the table is
sorted best first. Candidates are independent, so they run on the sweep
executors (:func:`lsched.sweep.open_executor`: local processes or Dask).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from lsched.cluster import Cluster, Link, Pool
from lsched.errors import InputError
from lsched.instance import Instance
from lsched.profile import DeploymentProfile
from lsched.slo import SLO

#: Columns of :func:`search`'s table.
COLUMNS = (
    "placement",
    "kind",
    "prefill",
    "decode",
    "gpus",
    "goodput_per_gpu",
    "status",
    "rates_tried",
    "search_s",
)


@dataclass(frozen=True)
class Placement:
    """One candidate: its label, its cluster, the GPUs it uses and its kind
    (``colocated`` or ``disaggregated``)."""

    label: str
    cluster: Cluster
    gpus: int
    kind: str
    prefill: str = ""
    decode: str = ""


@dataclass(frozen=True)
class PlacementOptions:
    """How candidates are built: the policy of every pool (or one per role), the
    routers, the link between a prefill and a decode pool, DistServe's pull."""

    policy: str = "vllm-v0"
    prefill_policy: str | None = None
    decode_policy: str | None = None
    router: str = "least-outstanding"
    decode_router: str = "round-robin"
    link: dict[str, Any] = field(default_factory=dict)
    pull: float | None = None
    colocated: bool = True


def _gpus(profile: DeploymentProfile) -> int:
    return int(profile.hardware.num_gpus)


def placements(
    gpus: int,
    profiles: Sequence[DeploymentProfile],
    options: PlacementOptions | None = None,
) -> list[Placement]:
    """Every candidate of the module docstring for ``gpus`` GPUs.

    Raises
    ------
    InputError
        If ``gpus`` is not a positive integer, no profile is given, or no
        candidate fits in ``gpus``.
    """
    options = options or PlacementOptions()
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise InputError(f"got {gpus!r}; expected an integer >= 1", field="gpus")
    if not profiles:
        raise InputError("expected at least one profile", field="profiles")
    found: list[Placement] = []
    if options.colocated:
        for profile in profiles:
            replicas = gpus // _gpus(profile)
            if replicas:
                pool = Pool(profile, options.policy, replicas, name="colocated")
                found.append(
                    Placement(
                        f"colocated {replicas}x {profile.name}",
                        Cluster((pool,), options.router),
                        replicas * _gpus(profile),
                        "colocated",
                    )
                )
    for first in profiles:
        for second in profiles:
            if first.kv_bytes_per_token == second.kv_bytes_per_token:
                found += _splits(gpus, first, second, options)
    if not found:
        raise InputError(
            f"no replica of any profile fits in {gpus} GPU(s)", field="gpus"
        )
    return found


def _splits(
    gpus: int,
    prefill: DeploymentProfile,
    decode: DeploymentProfile,
    options: PlacementOptions,
) -> list[Placement]:
    """Every ``p`` prefill x ``d`` decode split of ``gpus`` GPUs."""
    g_p, g_d = _gpus(prefill), _gpus(decode)
    out = []
    for p in range(1, gpus // g_p + 1):
        for d in range(1, (gpus - p * g_p) // g_d + 1):
            pools = (
                Pool(
                    prefill,
                    options.prefill_policy or options.policy,
                    p,
                    name="prefill",
                    role="prefill",
                ),
                Pool(
                    decode,
                    options.decode_policy or options.policy,
                    d,
                    name="decode",
                    role="decode",
                    pull=options.pull,
                ),
            )
            link = Link("prefill", "decode", **options.link)
            cluster = Cluster(pools, options.router, (link,), options.decode_router)
            label = f"{p}P {prefill.name} + {d}D {decode.name}"
            out.append(
                Placement(
                    label,
                    cluster,
                    p * g_p + d * g_d,
                    "disaggregated",
                    prefill.name,
                    decode.name,
                )
            )
    return out


def rate(
    placement: Placement, instance: Instance, slo: SLO, goodput_options: dict
) -> dict[str, Any]:
    """One row of :func:`search`'s table: ``placement`` rated by goodput (a
    top-level function, so that executors can pickle it)."""
    from lsched.goodput import goodput

    started = time.perf_counter()
    result = goodput(instance, placement.cluster, slo, **goodput_options)
    return {
        "placement": placement.label,
        "kind": placement.kind,
        "prefill": placement.prefill,
        "decode": placement.decode,
        "gpus": placement.gpus,
        "goodput_per_gpu": result.goodput_per_gpu,
        "status": result.status,
        "rates_tried": len(result.trials),
        "search_s": time.perf_counter() - started,
    }


def search(
    instance: Instance,
    candidates: Sequence[Placement],
    slo: SLO,
    *,
    goodput_options: dict | None = None,
    executor: str = "local",
    address: str | None = None,
    workers: int | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> pd.DataFrame:
    """Rate every candidate (:func:`rate`); the table best first (goodput per
    GPU, then fewer GPUs). ``executor="local"`` with ``workers=1`` runs in this
    process; otherwise on :func:`lsched.sweep.open_executor`."""
    options = goodput_options or {}
    rows: list[dict[str, Any]] = []
    if executor == "local" and workers == 1:
        for candidate in candidates:
            rows.append(rate(candidate, instance, slo, options))
            if on_row is not None:
                on_row(rows[-1])
    else:
        from lsched.sweep import open_executor

        with open_executor(executor, address=address, workers=workers) as (pool, _):
            futures = [pool.submit(rate, c, instance, slo, options) for c in candidates]
            for future in futures:
                rows.append(future.result())
                if on_row is not None:
                    on_row(rows[-1])
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.sort_values(
        ["goodput_per_gpu", "gpus"], ascending=[False, True], kind="stable"
    ).reset_index(drop=True)
