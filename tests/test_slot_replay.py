"""``score_start_slots`` against the real engine and a plain per-slot loop.

For random small Jaillet instances (Jaillet et al. 2025's family: ``M`` in
30..50, prompts 1..5, outputs up to ``M - s``) with arrivals at 0 or Poisson, and
random start slots (sequential ones, always feasible since each request fits
alone, and overlapping ones, some infeasible), the vectorised scores must agree

(a) with :func:`replay_start_slots` through the evaluator: feasibility (no
    :class:`PolicyError`), the rule the engine reports, total latency, makespan and
    total TTFT from ``result.requests``, and the peaks from the iteration log, whose
    every run passes :func:`validate_schedule`;
(b) with a plain-Python loop over slots written here, field by field.

Hand-derived examples pin the formulas down (module docstring of
:mod:`lsched.evaluator.slots`).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lsched.errors import InputError
from lsched.evaluator import slots as slots_module
from lsched.evaluator.fixed import replay_start_slots
from lsched.evaluator.slots import SlotScores, score_start_slots
from lsched.generators import Poisson, jaillet
from lsched.instance import Instance
from lsched.policies import PolicyError
from lsched.profile import load_profile
from lsched.validator import validate_schedule

UNIT = load_profile("unit-slot")


def _two(arrival: tuple[float, float] = (0.0, 0.0)) -> Instance:
    """Requests (s=2, o=3) and (s=3, o=2)."""
    return Instance(arrival_s=list(arrival), prompt_tokens=[2, 3], output_tokens=[3, 2])


# -- the independent per-slot loop ----------------------------------------------------


def loop_scores(
    instance: Instance,
    starts: np.ndarray,
    *,
    kv_capacity_tokens: int,
    block_tokens: int = 1,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
) -> dict[str, list]:
    """Every field of SlotScores, one candidate and one slot at a time."""
    a = instance.arrival_s.tolist()
    s = instance.prompt_tokens.tolist()
    o = instance.output_tokens.tolist()
    b = block_tokens
    blocks_cap = kv_capacity_tokens // b
    out: dict[str, list] = {k: [] for k in SlotScores.__dataclass_fields__}
    for row in np.atleast_2d(starts).tolist():
        n = len(row)
        out["total_latency"].append(sum(row[i] + o[i] - a[i] for i in range(n)))
        out["total_ttft"].append(sum(row[i] + 1 - a[i] for i in range(n)))
        out["makespan"].append(max(row[i] + o[i] for i in range(n)) - min(a))
        peaks = {"tokens": 0, "blocks": 0, "seqs": 0, "batched": 0}
        violation, where = "", -1
        early = [row[i] for i in range(n) if row[i] < math.ceil(a[i])]
        if early:
            violation, where = "arrival", min(early)
        for t in range(min(row), max(row[i] + o[i] for i in range(n))):
            active = [i for i in range(n) if row[i] <= t < row[i] + o[i]]
            tokens = sum(s[i] + t - row[i] for i in active)
            blocks = sum(-(-(s[i] + t - row[i]) // b) for i in active)
            batched = sum(s[i] if t == row[i] else 1 for i in active)
            for key, value in zip(
                peaks, (tokens, blocks, len(active), batched), strict=True
            ):
                peaks[key] = max(peaks[key], value)
            if violation:
                continue
            if max_num_seqs is not None and len(active) > max_num_seqs:
                violation, where = "max_num_seqs", t
            elif (
                max_num_batched_tokens is not None and batched > max_num_batched_tokens
            ):
                violation, where = "max_num_batched_tokens", t
            elif blocks > blocks_cap:
                violation, where = "kv", t
        out["peak_kv_tokens"].append(peaks["tokens"])
        out["peak_kv_blocks"].append(peaks["blocks"])
        out["peak_batch_size"].append(peaks["seqs"])
        out["peak_batched_tokens"].append(peaks["batched"])
        out["violation"].append(violation)
        out["violation_slot"].append(where)
        out["feasible"].append(violation == "")
    return out


def assert_same(
    scores: SlotScores, expected: dict[str, list], rows: slice = slice(None)
) -> None:
    for name, values in expected.items():
        got = getattr(scores, name)[rows]
        if got.dtype.kind == "f":
            np.testing.assert_allclose(got, values, rtol=1e-12, err_msg=name)
        else:
            np.testing.assert_array_equal(got, values, err_msg=name)


# -- hand-derived examples ---------------------------------------------------------


def test_two_requests_at_slot_zero_hand_derived() -> None:
    # slot 0: 2 + 3 = 5; slot 1: 3 + 4 = 7; slot 2: 4 (request 1 done at 2)
    scores = score_start_slots(_two(), [0, 0], kv_capacity_tokens=10)
    assert scores.feasible.tolist() == [True]
    assert scores.peak_kv_tokens.tolist() == [7]
    assert scores.total_latency.tolist() == [3 + 2]
    assert scores.total_ttft.tolist() == [1 + 1]
    assert scores.makespan.tolist() == [3]
    assert scores.peak_batch_size.tolist() == [2]
    assert scores.peak_batched_tokens.tolist() == [2 + 3]  # both prefill in slot 0
    assert scores.violation.tolist() == [""]
    assert scores.violation_slot.tolist() == [-1]

    tight = score_start_slots(_two(), [0, 0], kv_capacity_tokens=6)
    assert tight.feasible.tolist() == [False]
    assert tight.violation.tolist() == ["kv"]
    assert tight.violation_slot.tolist() == [1]  # 5 <= 6 at slot 0, 7 > 6 at slot 1


def test_kv_blocks_hand_derived() -> None:
    # b = 2, M = 6 -> 3 blocks; slot 0: 1 + 2 = 3, slot 1: 2 + 2 = 4, slot 2: 2
    scores = score_start_slots(_two(), [0, 0], kv_capacity_tokens=6, block_tokens=2)
    assert scores.peak_kv_blocks.tolist() == [4]
    assert scores.peak_kv_tokens.tolist() == [7]
    assert (scores.violation.tolist(), scores.violation_slot.tolist()) == (["kv"], [1])
    roomy = score_start_slots(_two(), [0, 0], kv_capacity_tokens=8, block_tokens=2)
    assert roomy.feasible.tolist() == [True]


def test_first_kv_break_inside_a_long_segment() -> None:
    # one request s=1, o=10 from slot 3 holds 1 + (t - 3) tokens: > 5 first at t=8
    inst = Instance(arrival_s=[0.0], prompt_tokens=[1], output_tokens=[10])
    scores = score_start_slots(inst, [[3], [0]], kv_capacity_tokens=5)
    assert scores.violation_slot.tolist() == [8, 5]
    assert scores.peak_kv_tokens.tolist() == [10, 10]


def test_batch_limits_and_their_order() -> None:
    both = dict(kv_capacity_tokens=10, max_num_batched_tokens=4)
    # slot 0 processes 2 + 3 prompt tokens > 4
    assert score_start_slots(_two(), [0, 0], **both).violation.tolist() == [
        "max_num_batched_tokens"
    ]
    # staggered: slot 1 has request 0's decode (1) and request 1's prompt (3)
    assert score_start_slots(_two(), [0, 1], **both).feasible.tolist() == [True]
    # two rules broken in slot 0: the engine checks max_num_seqs first
    scores = score_start_slots(
        _two(), [0, 0], kv_capacity_tokens=4, max_num_seqs=1, max_num_batched_tokens=4
    )
    assert (scores.violation.tolist(), scores.violation_slot.tolist()) == (
        ["max_num_seqs"],
        [0],
    )
    # the earliest slot wins over the order of rules: KV at 1 before seqs at 2
    inst = Instance(
        arrival_s=[0.0, 0.0, 0.0], prompt_tokens=[5, 5, 1], output_tokens=[4, 1, 1]
    )
    scores = score_start_slots(inst, [0, 0, 2], kv_capacity_tokens=10, max_num_seqs=1)
    assert scores.violation.tolist() == ["max_num_seqs"]  # 2 sequences in slot 0
    scores = score_start_slots(inst, [0, 1, 2], kv_capacity_tokens=10, max_num_seqs=1)
    # slot 1: request 0 holds 6, request 1 prefills 5: 11 > 10 and 2 sequences > 1
    assert scores.violation.tolist() == ["max_num_seqs"]
    assert scores.violation_slot.tolist() == [1]
    scores = score_start_slots(inst, [0, 1, 2], kv_capacity_tokens=10, max_num_seqs=2)
    assert (scores.violation.tolist(), scores.violation_slot.tolist()) == (
        ["kv"],
        [1],
    )


def test_arrival_is_checked_first() -> None:
    # request 1 arrives at 1.5: its earliest slot is 2
    # (slot 2 holds 4 + 3 = 7 tokens, within M = 7)
    scores = score_start_slots(_two((0.0, 1.5)), [[0, 1], [0, 2]], kv_capacity_tokens=7)
    assert scores.violation.tolist() == ["arrival", ""]
    assert scores.violation_slot.tolist() == [1, -1]
    np.testing.assert_allclose(scores.total_latency, [3 + (1 + 2 - 1.5), 3 + 2.5])


def test_one_row_and_many_rows_agree() -> None:
    inst = _two()
    many = score_start_slots(inst, np.array([[0, 0], [4, 1]]), kv_capacity_tokens=6)
    one = score_start_slots(inst, np.array([4.0, 1.0]), kv_capacity_tokens=6)
    assert len(one) == 1
    for name in SlotScores.__dataclass_fields__:
        assert getattr(one, name)[0] == getattr(many, name)[1], name
    with pytest.raises(ValueError):
        many.feasible[0] = False  # read-only
    none = score_start_slots(inst, np.zeros((0, 2), dtype=int), kv_capacity_tokens=6)
    assert len(none) == 0 and none.violation.shape == (0,)


@pytest.mark.parametrize(
    ("starts", "kwargs", "field"),
    [
        ([0, 0, 0], {}, "starts"),
        ([[[0, 0]]], {}, "starts"),
        ([[0, 0], [1]], {}, "starts"),  # ragged
        ([0.5, 0], {}, "starts"),
        ([np.nan, 0], {}, "starts"),
        (["a", "b"], {}, "starts"),
        ([0, 0], {"kv_capacity_tokens": 0}, "kv_capacity_tokens"),
        ([0, 0], {"kv_capacity_tokens": 3, "block_tokens": 4}, "kv_capacity_tokens"),
        ([0, 0], {"block_tokens": 1.5}, "block_tokens"),
        ([0, 0], {"max_num_seqs": 0}, "max_num_seqs"),
        ([0, 0], {"max_num_batched_tokens": True}, "max_num_batched_tokens"),
    ],
)
def test_bad_input(starts: object, kwargs: dict, field: str) -> None:
    kwargs = {"kv_capacity_tokens": 10, **kwargs}
    with pytest.raises(InputError) as info:
        score_start_slots(_two(), starts, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


# -- random instances: the engine and the plain loop ---------------------------------


def _candidates(instance: Instance, rng: np.random.Generator, m: int) -> np.ndarray:
    """Sequential schedules (feasible), random overlapping ones, all-at-once."""
    earliest = np.ceil(instance.arrival_s).astype(np.int64)
    o = instance.output_tokens
    rows = []
    for k in range(m):
        order = rng.permutation(len(instance)) if k % 2 else np.arange(len(instance))
        if k % 5 == 4:  # everything as early as possible
            S = earliest.copy()
        elif k % 3 == 0:  # one after another in some order: each fits alone
            S = np.zeros(len(instance), dtype=np.int64)
            t = 0
            for i in order:
                S[i] = t = max(t, earliest[i])
                t += o[i]
        else:  # random offsets: overlaps, often too many for M
            spread = int(o.sum()) // (1 + k % 4)
            S = earliest + rng.integers(0, spread + 1, size=len(instance))
        rows.append(S)
    return np.array(rows)


CASES = [
    # (seed, n, poisson arrivals, block, max_num_seqs, max_num_batched_tokens)
    (0, 5, False, 1, None, None),
    (1, 6, True, 1, None, None),
    (2, 7, True, 1, 3, None),
    (3, 6, False, 1, None, 8),
    (4, 8, True, 2, None, None),
    (5, 6, True, 4, 2, 9),
    (6, 4, False, 3, None, None),
    (7, 9, True, 1, 4, 7),
]


@pytest.mark.parametrize(("seed", "n", "poisson", "block", "seqs", "budget"), CASES)
def test_scores_agree_with_engine_and_loop(
    seed: int, n: int, poisson: bool, block: int, seqs: int | None, budget: int | None
) -> None:
    arrivals = Poisson(rate_per_s=0.3) if poisson else None
    instance = jaillet(n, seed=seed, arrivals=arrivals)
    m_tokens = int(instance.params["kv_capacity_tokens"])
    # whole blocks covering M, so every request still fits alone
    capacity = -(-m_tokens // block) * block
    limits = dict(max_num_seqs=seqs, max_num_batched_tokens=budget)
    starts = _candidates(instance, np.random.default_rng(seed), 12)
    scores = score_start_slots(
        instance, starts, kv_capacity_tokens=capacity, block_tokens=block, **limits
    )
    assert_same(
        scores,
        loop_scores(
            instance, starts, kv_capacity_tokens=capacity, block_tokens=block, **limits
        ),
    )

    profile = UNIT.replace(
        kv_capacity_tokens=capacity,
        block_tokens=block,
        max_num_seqs=seqs or UNIT.max_num_seqs,
        max_num_batched_tokens=budget or UNIT.max_num_batched_tokens,
    )
    a = instance.arrival_s
    for k, S in enumerate(starts):
        try:
            result = replay_start_slots(instance, profile, S, log=True)
        except PolicyError as exc:
            assert not scores.feasible[k], f"candidate {k}: engine says {exc}"
            rule = {"kv": "KV", "max_num_seqs": "max_num_seqs"}.get(
                str(scores.violation[k]), str(scores.violation[k])
            )
            assert rule in str(exc), (scores.violation[k], str(exc))
            continue
        assert scores.feasible[k], f"candidate {k} replays but scores infeasible"
        done = result.requests["completion_s"].to_numpy()
        first = result.requests["first_token_s"].to_numpy()
        np.testing.assert_array_equal(done, S + instance.output_tokens)
        assert scores.total_latency[k] == pytest.approx((done - a).sum(), rel=1e-12)
        assert scores.total_ttft[k] == pytest.approx((first - a).sum(), rel=1e-12)
        assert scores.makespan[k] == pytest.approx(done.max() - a.min(), rel=1e-12)
        runs, members = result.runs, result.members
        assert runs is not None and members is not None
        # iteration j of a run holds kv_tokens + j * D: the last one the most
        last_kv = runs["kv_tokens"] + (runs["iterations"] - 1) * runs["decode_steps"]
        assert scores.peak_kv_tokens[k] == last_kv.max()
        sizes = members.groupby("run").size()
        assert scores.peak_batch_size[k] == sizes.max()
        batched = runs["prefill_tokens"] + runs["decode_steps"]
        assert scores.peak_batched_tokens[k] == batched.max()
        report = validate_schedule(
            instance,
            profile,
            runs,
            members,
            result.preemptions,
            replicas=1,
            requests=result.requests,
            metrics=result.metrics,
        )
        report.raise_if_invalid()
    # the cases mix both outcomes
    assert scores.feasible.any()


def test_cases_cover_feasible_and_infeasible() -> None:
    outcomes = set()
    for seed, n, poisson, block, seqs, budget in CASES:
        instance = jaillet(n, seed=seed, arrivals=Poisson(0.3) if poisson else None)
        capacity = -(-int(instance.params["kv_capacity_tokens"]) // block) * block
        scores = score_start_slots(
            instance,
            _candidates(instance, np.random.default_rng(seed), 12),
            kv_capacity_tokens=capacity,
            block_tokens=block,
            max_num_seqs=seqs,
            max_num_batched_tokens=budget,
        )
        outcomes |= set(scores.violation.tolist())
    assert {"", "kv", "max_num_seqs", "max_num_batched_tokens"} <= outcomes


def test_arrival_violations_match_the_replay_check() -> None:
    instance = jaillet(6, seed=11, arrivals=Poisson(rate_per_s=0.5))
    m_tokens = int(instance.params["kv_capacity_tokens"])
    S = _candidates(instance, np.random.default_rng(0), 1)[0]
    late = int(np.flatnonzero(instance.arrival_s > 0)[0])
    S[late] = math.ceil(instance.arrival_s[late]) - 1
    scores = score_start_slots(instance, S, kv_capacity_tokens=m_tokens)
    assert scores.violation.tolist() == ["arrival"]
    with pytest.raises(InputError) as info:
        replay_start_slots(instance, UNIT.replace(kv_capacity_tokens=m_tokens), S)
    assert info.value.field == "start_slots"
    assert f"request {late} starts at slot {S[late]}" in str(info.value)


def test_chunked_candidates_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    instance = jaillet(7, seed=21, arrivals=Poisson(rate_per_s=0.4))
    starts = _candidates(instance, np.random.default_rng(3), 10)
    kwargs = dict(kv_capacity_tokens=60, block_tokens=2, max_num_seqs=3)
    whole = score_start_slots(instance, starts, **kwargs)
    monkeypatch.setattr(slots_module, "CHUNK_ELEMENTS", 1)  # one row per block
    chunked = score_start_slots(instance, starts, **kwargs)
    for name in SlotScores.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(whole, name), getattr(chunked, name))


def test_many_candidates_are_vectorised() -> None:
    # 400 candidates x 60 requests in one call, checked on a sample by the loop
    instance = jaillet(60, seed=5, arrivals=Poisson(rate_per_s=0.2))
    rng = np.random.default_rng(9)
    starts = np.ceil(instance.arrival_s).astype(np.int64) + rng.integers(
        0, 400, size=(400, 60)
    )
    kwargs = dict(kv_capacity_tokens=200, block_tokens=2, max_num_seqs=12)
    scores = score_start_slots(instance, starts, **kwargs)
    assert_same(
        scores, loop_scores(instance, starts[::50], **kwargs), slice(None, None, 50)
    )
