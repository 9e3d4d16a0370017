"""Shared by the slot-model tests: problems from lists, a brute-force optimum that
shares no code with lsched, and seeded random small cases."""

from __future__ import annotations

import itertools

import numpy as np

from lsched.formulations.slot import SlotProblem


def make_problem(
    arrival,
    prompt,
    output,
    *,
    capacity,
    weight=None,
    block=1,
    seqs=None,
    budget=None,
    objective="latency",
):
    n = len(arrival)
    return SlotProblem(
        arrival=np.asarray(arrival, dtype=np.float64),
        prompt_tokens=np.asarray(prompt, dtype=np.int64),
        output_tokens=np.asarray(output, dtype=np.int64),
        weight=np.ones(n, dtype=np.int64) if weight is None else np.asarray(weight),
        kv_capacity_blocks=capacity,
        block_tokens=block,
        max_num_seqs=seqs,
        max_num_batched_tokens=budget,
        objective=objective,
    )


def brute_force(arrival, prompt, output, weight, capacity, block, seqs, budget, obj):
    """Optimal integer objective by enumerating all start slots, with a
    feasibility check written from the slot model's rules (no lsched code).

    Any optimal schedule has no idle slot after the last release (R), so every
    completion is at most R + sum(o): starts range over [r_i, R + sum(o) - o_i].
    """
    release = np.ceil(np.asarray(arrival)).astype(int)
    prompt, output = np.asarray(prompt), np.asarray(output)
    weight = np.asarray(weight)
    horizon = int(release.max() + output.sum())
    ranges = [
        range(int(r), horizon - int(o) + 1)
        for r, o in zip(release, output, strict=True)
    ]
    starts = np.array(list(itertools.product(*ranges)), dtype=np.int64)  # (m, n)
    ok = np.ones(len(starts), dtype=bool)
    for tau in range(horizon):
        age = tau - starts  # offset j of each request in slot tau
        running = (age >= 0) & (age < output)
        blocks = -(-(prompt + age) // block) * running
        ok &= blocks.sum(axis=1) <= capacity
        if seqs is not None:
            ok &= running.sum(axis=1) <= seqs
        if budget is not None:
            tokens = np.where(age == 0, prompt, 1) * running
            ok &= tokens.sum(axis=1) <= budget
    starts = starts[ok]
    if obj == "latency":
        values = (starts + output) @ weight
    elif obj == "ttft":
        values = starts @ weight
    else:
        values = (starts + output).max(axis=1)
    a = np.asarray(arrival, dtype=np.float64)
    offset = {
        "latency": -float(weight @ a),
        "ttft": float(weight @ (1 - a)),
        "makespan": -float(a.min()),
    }[obj]
    return float(values.min()) + offset


def random_case(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 6))
    objective = ("latency", "ttft", "makespan")[seed % 3]
    # a few (prompt, output) kinds, so that identical requests occur
    kinds = [(int(rng.integers(1, 4)), int(rng.integers(1, 5))) for _ in range(3)]
    chosen = [kinds[k] for k in rng.integers(0, len(kinds), size=n)]
    prompt = [p for p, _ in chosen]
    output = [o for _, o in chosen]
    if n == 5:  # keep the enumeration small
        output = [min(o, 3) for o in output]
    arrival = np.sort(rng.choice([0.0, 0.0, 0.5, 1.0, 2.0], size=n))
    weight = rng.integers(1, 4, size=n) if seed % 2 else np.ones(n, dtype=np.int64)
    block = int(rng.choice([1, 2]))
    peak = max(-(-(p + o - 1) // block) for p, o in zip(prompt, output, strict=True))
    capacity = peak + int(rng.integers(0, peak + 1))
    seqs = int(rng.integers(1, 4)) if seed % 4 == 1 else None
    budget = max(prompt) + int(rng.integers(0, 3)) if seed % 5 == 2 else None
    return arrival, prompt, output, weight, capacity, block, seqs, budget, objective
