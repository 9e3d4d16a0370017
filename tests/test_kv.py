"""The block arithmetic of :class:`lsched.kv.KVBlocks`, on values derived by hand,
and how a policy reaches it (``view.kv``; ``ReplicaLimits.kv_blocks`` is gone) and
the engine's running totals (``view.kv_tokens_held``, ``view.kv_blocks_held``)."""

from __future__ import annotations

import numpy as np
import pytest
from test_engine_equivalence import PROFILES, random_instance, tight_profile

from lsched.evaluator.engine import ReplicaEngine
from lsched.kv import KVBlocks
from lsched.policies import Batch, ReplicaLimits, ReplicaView, parse_policy

KV = KVBlocks(capacity_blocks=10, block_tokens=4)  # 40 tokens in blocks of 4


def test_capacity_and_blocks_of_an_int_and_of_an_array() -> None:
    assert KV.capacity_tokens == 40
    # ceil(tokens / 4)
    for tokens, blocks in [(0, 0), (1, 1), (4, 1), (5, 2), (8, 2), (9, 3)]:
        got = KV.blocks(tokens)
        assert got == blocks and type(got) is int
    array = KV.blocks(np.array([0, 1, 4, 5, 8, 9], dtype=np.int64))
    assert array.tolist() == [0, 1, 1, 2, 2, 3] and array.dtype == np.int64
    assert KV.blocks([0, 1, 4, 5]).tolist() == [0, 1, 1, 2]  # a list: an array
    scalar = KV.blocks(np.int64(5))  # a numpy scalar stays one
    assert scalar == 2 and isinstance(scalar, np.integer)


def test_growth_opens_a_block_when_the_last_one_is_full() -> None:
    # ceil((before + work) / 4) - ceil(before / 4)
    assert KV.growth(3, 1) == 1 - 1 == 0
    assert KV.growth(4, 1) == 2 - 1 == 1
    assert KV.growth(0, 1) == 1  # the first token opens the first block
    assert KV.growth(0, 9) == 3
    assert KV.growth(5, 3) == 2 - 2 == 0
    before = np.array([3, 4, 0, 8], dtype=np.int64)
    assert KV.growth(before, 1).tolist() == [0, 1, 1, 1]


def test_decode_growth_counts_the_requests_on_a_block_boundary() -> None:
    processed = np.array([0, 3, 4, 7, 8], dtype=np.int64)
    # p % 4 == 0 for 0, 4 and 8
    assert KV.decode_growth(processed) == 3
    assert KV.decode_growth(processed) == int(KV.growth(processed, 1).sum())
    # blocks of one token: every decode step opens one
    assert KVBlocks(10, 1).decode_growth(np.array([0, 5, 7])) == 3
    assert KV.decode_growth(np.zeros(0, dtype=np.int64)) == 0


def test_fits_is_within_the_capacity() -> None:
    assert KV.fits(7, 3) and not KV.fits(8, 3)
    assert KV.fits(10) and not KV.fits(11)


def test_watermark_blocks_truncates_the_share() -> None:
    assert KV.watermark_blocks(0.01) == 0  # int(0.1)
    assert KV.watermark_blocks(0.25) == 2  # int(2.5)
    assert KV.watermark_blocks(0.99) == 9  # int(9.9)
    assert KV.watermark_blocks(1 - 0.1) == 9  # nested-wait's 1 - buffer: 9.0
    # 0.29 * 100 is 28.999999999999996 in floating point: int() gives 28, as
    # vLLM's int(watermark * num_gpu_blocks) does
    assert KVBlocks(100, 1).watermark_blocks(0.29) == 28
    assert type(KV.watermark_blocks(0.5)) is int


def test_decode_steps_that_fit_by_hand() -> None:
    processed = np.array([3, 6], dtype=np.int64)
    # blocks held after decode step k (0-based), p + k + 1 tokens each:
    # k:      0  1  2  3  4  5  6  7  8  9  10
    # tokens  4  5  6  7  8  9 10 11 12 13 14   (first request)
    #         7  8  9 10 11 12 13 14 15 16 17   (second request)
    # blocks  3  4  5  5  5  6  7  7  7  8  9
    # beside 4 other blocks of a capacity of 10: at most 6 -> steps 0..5 fit
    assert KV.decode_steps_that_fit(4, processed, 20) == 6
    assert KV.decode_steps_that_fit(4, processed, 6) == 6
    assert KV.decode_steps_that_fit(4, processed, 3) == 3
    assert KV.decode_steps_that_fit(5, processed, 20) == 5  # at most 5 blocks
    assert KV.decode_steps_that_fit(3, processed, 20) == 9  # at most 7 blocks
    assert KV.decode_steps_that_fit(2, processed, 20) == 10  # at most 8 blocks


def test_a_policy_reaches_the_arithmetic_as_view_kv() -> None:
    limits = ReplicaLimits(10, 4, 8, 64)
    assert limits.kv == KV
    assert limits.kv_capacity_blocks == 10 and limits.block_tokens == 4
    none = np.zeros(0, dtype=np.int64)
    view = ReplicaView(
        now_s=0.0,
        iteration=0,
        num_arrived=0,
        running=none,
        waiting=none,
        arrival_s=np.zeros(0),
        prompt_tokens=none,
        predicted_output_tokens=None,
        emitted_tokens=none,
        processed_tokens=none,
        prefill_target_tokens=none,
        limits=limits,
    )
    assert view.kv is limits.kv
    # a policy written against the old interface gets a pointer to the new one
    with pytest.raises(AttributeError, match=r"now view\.kv\.blocks\(tokens\)"):
        limits.kv_blocks(5)


def test_blocks_after_a_decode_step() -> None:
    """b = 4: 0 -> 1 token is 1 block, 3 -> 4 still 1, 4 -> 5 opens the 2nd."""
    kv = KVBlocks(capacity_blocks=10, block_tokens=4)
    held = np.array([0, 3, 4, 7, 8])
    np.testing.assert_array_equal(kv.blocks_after_step(held), [1, 1, 2, 2, 3])
    np.testing.assert_array_equal(kv.blocks_after_step(held), kv.blocks(held + 1))
    assert kv.blocks_after_step(4) == 2


class _Summing:
    """Wraps a policy; at every call, the view's running totals must be the sums
    over its arrays (``checked`` counts the calls)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.checked = 0

    def decide(self, view: ReplicaView) -> Batch:
        held = view.processed_tokens[view.running]
        assert view.kv_held is not None
        assert view.kv_tokens_held == int(held.sum())
        assert view.kv_blocks_held == int(view.kv.blocks(held).sum())
        self.checked += 1
        return self.inner.decide(view)  # type: ignore[attr-defined]


@pytest.mark.parametrize("policy", ["fcfs", "vllm-v0", "sarathi:chunk=7"])
def test_the_engine_shows_the_kv_held_that_the_arrays_sum_to(policy: str) -> None:
    """Exact after held stretches too, where the ledger's blocks are a bound."""
    rng = np.random.default_rng([7, len(policy)])
    profile = PROFILES["opt-13b-a100-tp1-vllm"].replace(block_tokens=16)
    checked = 0
    for _ in range(5):
        instance = random_instance(rng, 60, 0.03)
        tight = tight_profile(rng, profile, instance)
        peak = int((instance.prompt_tokens + instance.output_tokens - 1).max())
        tight = tight.replace(
            max_num_batched_tokens=max(tight.max_num_batched_tokens, peak)
        )
        wrapper = _Summing(parse_policy(policy).make())
        engine = ReplicaEngine(
            instance.arrival_s,
            instance.prompt_tokens,
            instance.output_tokens,
            None,
            tight,
            wrapper,  # type: ignore[arg-type]
        )
        assert engine.run()
        checked += wrapper.checked
    assert checked > 50
