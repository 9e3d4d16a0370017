"""The per-run rules: run order, shape, features, batch limits and KV
capacity."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lsched.profile import DeploymentProfile
from lsched.validator.replay import _Replay
from lsched.validator.report import _PREFILL, FloatArray, IntArray, _Collector
from lsched.validator.swaps import _SwapKV


def _check_order(
    run_ids: list[int],
    replica: IntArray,
    start: FloatArray,
    end: FloatArray,
    replicas: int,
    out: _Collector,
) -> None:
    """Per replica, in run id order: each run starts at or after the previous end."""
    for rep in range(replicas):
        index = np.flatnonzero(replica == rep)
        early = np.flatnonzero(start[index[1:]] < end[index[:-1]])
        for j in early.tolist():
            prev, run = index[j], index[j + 1]
            out.add(
                "run-order",
                f"starts at {float(start[run])!r} s, before run {run_ids[prev]} "
                f"on replica {rep} ends at {float(end[prev])!r} s",
                run=run_ids[run],
            )


def _check_shape(
    run_ids: list[int],
    n_it: IntArray,
    m_pos: IntArray,
    m_req: IntArray,
    m_kind: IntArray,
    p_pos: IntArray,
    p_req: IntArray,
    out: _Collector,
) -> None:
    m = len(run_ids)
    seqs = np.bincount(m_pos, minlength=m)
    for r in np.flatnonzero(seqs == 0).tolist():
        out.add("run-shape", "has no members", run=run_ids[r])
    prefills = np.bincount(m_pos[m_kind == _PREFILL], minlength=m)
    for r in np.flatnonzero((prefills > 0) & (n_it != 1)).tolist():
        out.add(
            "run-shape",
            f"has {n_it[r]} iterations and a prefill chunk; a run with prefill has "
            "exactly 1",
            run=run_ids[r],
        )
    for pos, req, rule in ((m_pos, m_req, "run-shape"), (p_pos, p_req, "preemption")):
        pairs = pd.DataFrame({"pos": pos, "req": req})
        for r, i in pairs[pairs.duplicated()].itertuples(index=False):
            out.add(rule, "listed twice in the run", run=run_ids[r], request=int(i))


def _check_features(
    runs: pd.DataFrame,
    run_ids: list[int],
    own: dict[str, IntArray],
    out: _Collector,
) -> None:
    columns = {
        "P": "prefill_tokens",
        "Q": "prefill_attention",
        "D": "decode_steps",
        "K": "kv_read_tokens",
        "H": "has_prefill",
    }
    logged = {k: runs[c].to_numpy(dtype=np.int64) for k, c in columns.items()}
    wrong = np.zeros(len(run_ids), dtype=bool)
    for k in columns:
        wrong |= logged[k] != own[k]
    for r in np.flatnonzero(wrong).tolist():
        parts = [
            f"{columns[k]} = {logged[k][r]}, expected {own[k][r]}"
            for k in columns
            if logged[k][r] != own[k][r]
        ]
        out.add("run-features", "; ".join(parts), run=run_ids[r])


def _check_limits(
    profile: DeploymentProfile,
    run_ids: list[int],
    seqs: IntArray,
    batched: IntArray,
    out: _Collector,
) -> None:
    for r in np.flatnonzero(seqs > profile.max_num_seqs).tolist():
        out.add(
            "max-num-seqs",
            f"{seqs[r]} requests in the batch; max_num_seqs = {profile.max_num_seqs}",
            run=run_ids[r],
        )
    limit = profile.max_num_batched_tokens
    for r in np.flatnonzero(batched > limit).tolist():
        out.add(
            "max-num-batched-tokens",
            f"{batched[r]} prefill tokens + decode steps; max_num_batched_tokens = "
            f"{limit}",
            run=run_ids[r],
        )


def _check_kv(
    profile: DeploymentProfile,
    runs: pd.DataFrame,
    run_ids: list[int],
    replica: IntArray,
    n_it: IntArray,
    D: IntArray,
    m_pos: IntArray,
    p_pos: IntArray,
    replay: _Replay,
    replicas: int,
    out: _Collector,
    arrivals: tuple[IntArray, IntArray] | None = None,
    pinned: IntArray | None = None,
    swap: _SwapKV | None = None,
) -> IntArray:
    """KV capacity and the ``kv_tokens`` column; returns KV after each first iteration.

    The KV a replica holds changes by: members' growth during a run, preemptions
    (before it) and completions (freed after its last iteration, so a completing
    request still counts in that iteration). Within a run KV only grows, so its
    last iteration holds the most. In a disaggregated cluster, ``arrivals`` (run
    positions, tokens) is KV adopted on a decode replica, held from that run on,
    and ``pinned`` the blocks a prefill replica keeps pinned during each run
    (counted against the capacity, not in ``kv_tokens``). ``swap``: KV that swaps
    move off and back onto the running set, the blocks asynchronous copies pin
    during each run, and at each asynchronous swap-in decided while the replica
    idles the blocks surely held then (:func:`_swap_kv`): those pinned, and those
    of the requests running before the next run that did not join on the way.
    """
    m = len(run_ids)
    blocks = profile.kv_blocks
    completing = replay.completes

    def per_run(pos: IntArray, values: IntArray) -> IntArray:
        return np.bincount(pos, weights=values.astype(np.float64), minlength=m).astype(
            np.int64
        )

    during_tokens = per_run(m_pos, replay.after - replay.before) - per_run(
        p_pos, replay.freed
    )
    during_blocks = per_run(
        m_pos, blocks(replay.after) - blocks(replay.before)
    ) - per_run(p_pos, blocks(replay.freed))
    if arrivals is not None:
        pos, tokens = arrivals
        during_tokens += per_run(pos, tokens)
        during_blocks += per_run(pos, blocks(tokens))
    if swap is not None:
        during_tokens += per_run(swap.pos, swap.tokens)
        during_blocks += per_run(swap.pos, swap.blocks)
    freed_tokens = per_run(m_pos[completing], replay.after[completing])
    freed_blocks = per_run(m_pos[completing], blocks(replay.after[completing]))

    last_tokens = np.zeros(m, dtype=np.int64)
    last_blocks = np.zeros(m, dtype=np.int64)
    for rep in range(replicas):
        index = np.flatnonzero(replica == rep)
        # held after run r = all changes up to r, less the frees after r itself
        last_tokens[index] = (
            np.cumsum(during_tokens[index] - freed_tokens[index]) + freed_tokens[index]
        )
        last_blocks[index] = (
            np.cumsum(during_blocks[index] - freed_blocks[index]) + freed_blocks[index]
        )
    capacity = profile.kv_capacity_blocks
    # held before the run's iterations: after them, less what its members grew
    before_blocks = last_blocks - per_run(
        m_pos, blocks(replay.after) - blocks(replay.before)
    )
    pins = np.zeros(m, dtype=np.int64)
    if pinned is not None:
        pins += pinned
    if swap is not None:
        pins += swap.pinned
    last_blocks = last_blocks + pins
    over = last_blocks > capacity
    for r in np.flatnonzero(over).tolist():
        also = "" if not pins[r] else f" ({pins[r]} pinned or reserved)"
        out.add(
            "kv-capacity",
            f"holds {last_blocks[r]} KV blocks{also} after its last iteration; "
            f"capacity {capacity} blocks of {profile.block_tokens} tokens",
            run=run_ids[r],
        )
    if swap is not None and swap.idle:
        # running while the replica idles before run k: those held before it,
        # less those that joined on the way (an adoption, an asynchronous swap-in)
        running = before_blocks - swap.joined
        if arrivals is not None:
            running -= per_run(arrivals[0], blocks(arrivals[1]))
        flagged: set[int] = set()
        for k, t, held in swap.idle:
            total = int(running[k]) + held
            if total > capacity and k not in flagged and not over[k]:
                flagged.add(k)
                out.add(
                    "kv-capacity",
                    f"holds at least {total} KV blocks ({held} pinned by swap "
                    f"copies) at {t!r} s, where a swap-in is decided while the "
                    f"replica idles before the run; capacity {capacity} blocks of "
                    f"{profile.block_tokens} tokens",
                    run=run_ids[k],
                )
    first_tokens = last_tokens - (n_it - 1) * D
    logged = runs["kv_tokens"].to_numpy(dtype=np.int64)
    for r in np.flatnonzero(logged != first_tokens).tolist():
        out.add(
            "kv-tokens",
            f"kv_tokens = {logged[r]}; the replica holds {first_tokens[r]} KV tokens "
            "after the first iteration",
            run=run_ids[r],
        )
    return first_tokens
