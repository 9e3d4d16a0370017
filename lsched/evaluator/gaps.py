"""Every output token's emission time, from the iteration log, for Mooncake's TBT.

The records keep two times per request (token 1 and token ``o_i``); Mooncake's
TBT (:func:`lsched.metrics.mooncake_tbt`) needs every inter-token gap, which
only the log has (so these metrics come with ``log=True``; O(tokens) memory).

From the log's ``runs`` and ``members`` (:mod:`lsched.evaluator.result`):

- **Iteration ends.** A run of ``n`` iterations has phi_k = ``[1, P, Q, D, K +
  k D, H]`` at iteration ``k`` (the log's definition); its pool's cost model
  times each, ``t_k``. Iteration ``k`` ends at ``end_s - sum_{j > k} t_j``: the
  last at the logged end, each earlier one a whole iteration before the next
  (a blocking swap's copy lengthens a run's first iteration only, and a run with
  copies has one iteration).
- **Tokens.** A decode member emits one token at the end of each of its run's
  ``n`` iterations. A prefill member emits one at its run's end when its chunk
  reaches the prefill target: ``processed_before + tokens = s_i + e``, with
  ``e`` the tokens the request emitted before (the target of its last
  admission, DESIGN.md "The iteration model"; a request adopted by a decode
  replica of a disaggregated cluster has emitted token 1 on its prefill
  replica). ``e`` is counted over the request's members in the order of their
  runs' ends (one request's runs never end together), across replicas.

Cost: one cost-model evaluation per iteration of the multi-iteration runs, a
loop over the members (scalar steps), NumPy over the tokens.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lsched.cluster import Cluster
from lsched.instance import Instance
from lsched.metrics import mooncake_tbt


def iteration_ends(
    cluster: Cluster, runs: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray]:
    """Every iteration's end, runs in table order: the ends and each run's offset
    into them (run ``r``'s iteration ``k`` ends at ``ends[offset[r] + k]``)."""
    n = runs["iterations"].to_numpy(dtype=np.int64)
    end = runs["end_s"].to_numpy(dtype=np.float64)
    offset = np.cumsum(n) - n
    ends = np.repeat(end, n)
    pool = cluster.replica_pool[runs["replica"].to_numpy(dtype=np.int64)]
    for k, spec in enumerate(cluster.pools):
        long = np.flatnonzero((pool == k) & (n > 1))
        if not len(long):
            continue
        m = n[long]
        run = np.repeat(np.arange(len(long)), m)
        it = np.arange(int(m.sum())) - np.repeat(np.cumsum(m) - m, m)
        phi = np.zeros((len(run), 6), dtype=np.float64)
        phi[:, 0] = 1.0
        for col, name in enumerate(("prefill_tokens", "prefill_attention"), 1):
            phi[:, col] = runs[name].to_numpy(dtype=np.float64)[long][run]
        d = runs["decode_steps"].to_numpy(dtype=np.float64)[long][run]
        phi[:, 3] = d
        phi[:, 4] = runs["kv_read_tokens"].to_numpy(dtype=np.float64)[long][run]
        phi[:, 4] += it * d
        phi[:, 5] = runs["has_prefill"].to_numpy(dtype=np.float64)[long][run]
        t = np.asarray(spec.profile.iteration_time_s(phi), dtype=np.float64)
        # time of the iterations after each: the run's total less the running sum
        done = np.cumsum(t)
        first = np.cumsum(m) - m
        total = np.add.reduceat(t, first)
        after = total[run] - (done - np.repeat(done[first] - t[first], m))
        ends[np.repeat(offset[long], m) + it] = end[long][run] - after
    return ends, offset


def token_times(
    instance: Instance,
    cluster: Cluster,
    runs: pd.DataFrame,
    members: pd.DataFrame,
) -> tuple[np.ndarray, np.ndarray]:
    """Every output token of the log (module docstring): the request (instance
    position) that emitted it and when, seconds."""
    ends, offset = iteration_ends(cluster, runs)
    position = pd.Series(np.arange(len(runs)), index=runs.index)
    pos = position.loc[members["run"].to_numpy()].to_numpy(dtype=np.int64)
    req = members["request"].to_numpy(dtype=np.int64)
    decode = (members["kind"] == "decode").to_numpy()
    n = runs["iterations"].to_numpy(dtype=np.int64)[pos]
    end = runs["end_s"].to_numpy(dtype=np.float64)[pos]
    emits = np.where(decode, n, 0)
    emits[~decode] = _prefill_emits(instance, members, req, end, decode, emits)
    steps = emits[decode]
    first = np.repeat(offset[pos[decode]], steps)
    k = np.arange(int(steps.sum())) - np.repeat(np.cumsum(steps) - steps, steps)
    prefill = ~decode & (emits > 0)
    request = np.concatenate([np.repeat(req[decode], steps), req[prefill]])
    when = np.concatenate([ends[first + k], end[prefill]])
    return request, when


def _prefill_emits(
    instance: Instance,
    members: pd.DataFrame,
    req: np.ndarray,
    end: np.ndarray,
    decode: np.ndarray,
    emits: np.ndarray,
) -> np.ndarray:
    """Per prefill member (table order), 1 if its chunk reaches the prefill
    target, else 0; ``emits`` holds the decode members' tokens."""
    order = np.lexsort((end, req))
    reach = (
        members["processed_before"].to_numpy(dtype=np.int64)
        + members["tokens"].to_numpy(dtype=np.int64)
        - instance.prompt_tokens[req]
    ).tolist()  # the emitted count e at which the chunk reaches s_i + e
    out = np.zeros(len(req), dtype=np.int64)
    owner, emitted = -1, 0
    for j, i, is_decode, tokens in zip(
        order.tolist(),
        req[order].tolist(),
        decode[order].tolist(),
        emits[order].tolist(),
        strict=True,
    ):
        if i != owner:
            owner, emitted = i, 0
        if is_decode:
            emitted += tokens
        elif reach[j] == emitted:
            out[j] = 1
            emitted += 1
    return out[~decode]


def log_tbt(
    instance: Instance,
    cluster: Cluster,
    runs: pd.DataFrame,
    members: pd.DataFrame,
) -> np.ndarray:
    """Per request (instance position), Mooncake's TBT from the log; NaN for a
    request with no gap (one token, or never served)."""
    request, when = token_times(instance, cluster, runs, members)
    return mooncake_tbt(request, when, len(instance))
