"""The engine's prefix cache by hand, and the inputs it refuses.

Hand-derived cases pin the rules of :mod:`lsched.evaluator.prefix` to numbers on
both engines (the fast one and ``tests/reference_engine.py``) and the validator;
bad inputs fail with a one-line :class:`~lsched.errors.InputError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import assert_refused, run, shared_prefix_trace
from prefix_helpers import hashed_instance
from reference_engine import simulate_naive

from lsched.cluster import Cluster, Pool
from lsched.errors import InputError
from lsched.evaluator import simulate
from lsched.instance import Instance
from lsched.policies import Batch, ReplicaView
from lsched.prefix import PrefixCacheSpec, parse_prefix_cache
from lsched.profile import FEATURES, load_profile
from lsched.validator import validate_cluster


def test_a_cached_prefix_shortens_ttft_by_the_prefill_difference() -> None:
    """Two 1,100-token prompts sharing their first two 512-token hash blocks
    (Mooncake's block size) on ``llama2-70b-a100-tp4``, whose iteration time is
    one affine piece ``t = w0 + wP P + wQ Q + wD D + wK K`` (Splitwise fit).

    A arrives at 0 and emits its one token in its prefill; B arrives at 10 s,
    alone. Without a cache B's prefill is ``P = 1100``, ``Q = 1100 x 1100 =
    1,210,000``. With one B finds ``h = 2`` blocks cached and skips ``x =
    min(2 x 512, 1100, 1099) = 1024`` tokens: its chunk is ``c = 76`` tokens, ``P
    = 76`` and ``Q = c (x + c) = 76 x 1100 = 83,600``: the attention over the
    cached context is still charged (it would be ``76 x 76 = 5,776`` without).
    Its TTFT (the prefill iteration alone) shortens by ``wP (1100 - 76) + wQ
    (1,210,000 - 83,600) = 1.8942e-4 x 1024 + 9.1741e-9 x 1,126,400 = 0.19397 +
    0.01033 = 0.20430 s`` (0.26150 s -> 0.05720 s).
    """
    profile = load_profile("llama2-70b-a100-tp4")
    instance = hashed_instance(
        [0.0, 10.0], [1100, 1100], [1, 3], [[1, 2, 3], [1, 2, 4]], 512
    )
    (w,) = profile.iteration_time.regimes[0]
    w_p, w_q = (
        w[FEATURES.index("prefill_tokens")],
        w[FEATURES.index("prefill_attention")],
    )
    saved = w_p * (1100 - 76) + w_q * (1_210_000 - 83_600)
    assert saved == pytest.approx(0.20430, abs=5e-6)
    ttft = {}
    for cache in (None, "lru"):
        result = simulate(instance, profile, "vllm", prefix_cache=cache, log=True)
        ttft[cache] = result.requests["first_token_s"].iloc[1] - 10.0
        assert result.runs is not None
        prefill = result.runs.iloc[1]
        assert (prefill["prefill_tokens"], prefill["prefill_attention"]) == (
            (1100, 1_210_000) if cache is None else (76, 83_600)
        )
    assert ttft[None] - ttft["lru"] == pytest.approx(saved, rel=1e-9)
    assert ttft[None] == pytest.approx(0.26150417, rel=1e-7)
    naive = simulate_naive(instance, profile, "vllm", prefix_cache=("lru", None))
    assert naive.first_token_s[1] - 10.0 == pytest.approx(ttft["lru"], rel=1e-12)
    assert naive.cached_tokens is not None
    assert naive.cached_tokens.tolist() == [0, 1024]
    cached = simulate(instance, profile, "vllm", prefix_cache="lru", log=True)
    assert cached.metrics["prefill_tokens_saved"] == 1024
    assert cached.metrics["prefix_hit_ratio"] == pytest.approx(1024 / 2200)
    pool = Pool(profile, "vllm", prefix_cache="lru")
    validate_cluster(instance, Cluster((pool,)), cached).raise_if_invalid()


class _Spec:
    """A PolicySpec look-alike for a scripted policy."""

    label = "scripted"
    params = None

    def make(self) -> Any:
        return _SmallFirstChunk()


class _SmallFirstChunk:
    """Finishes running prefills, decodes the rest, and admits every waiting
    request whole, except request 2, whose first chunk is one token."""

    def decide(self, view: ReplicaView) -> Batch:
        prefill, chunks, decode = [], [], []
        for r in view.running.tolist():
            left = int(view.prefill_target_tokens[r] - view.processed_tokens[r])
            if left:
                prefill.append(r)
                chunks.append(left)
            else:
                decode.append(r)
        for w in view.waiting.tolist():
            prefill.append(w)
            whole = int(view.prompt_tokens[w] + view.emitted_tokens[w])
            chunks.append(1 if w == 2 else whole)
        ids = np.array(prefill, dtype=np.int64)
        return Batch(prefill=ids, prefill_tokens=np.array(chunks, dtype=np.int64),
                     decode=np.array(decode, dtype=np.int64))  # fmt: skip


def test_a_hit_that_does_not_fit_is_cut_to_whole_blocks() -> None:
    """``unit-slot`` (1 s iterations, KV blocks of 1 token) with 7 tokens of KV
    and hash blocks of 2, so an evictable block takes ``g = 2`` KV blocks.

    A (prompt 6, hashes [1, 2, 3], one token) runs [0, 1]: its three blocks
    become evictable. At 1, R (prompt 2, hash [7], one token) is admitted whole
    and B (prompt 6, hashes [1, 2, 3], two tokens) with a chunk of 1: planned,
    ``2 + 1 = 3`` blocks, ``S = 7 - 3 = 4`` free. B is offered ``min(3 x 2, 6,
    5) = 5`` tokens, which would hold ``blocks(6) - blocks(1) = 5 > 4`` more;
    so it takes the most whole hash blocks that fit, ``2 floor(((1 + 4) 1 -
    1) / 2) = 4`` tokens (4 more blocks), pinning blocks 1 and 2, and computes
    its chunk of 1. Before that run: R 2 + B 5 + block 3 (2) = 9 > 7: block 3
    is evicted. R completes (its block 7 evictable). At 2, B computes its last
    token: 6 + 2 = 8 > 7, block 7 is evicted; B's first token at 3, its second
    at 4. Were the whole offer taken, B's 6 tokens beside R's 2 would not fit
    in 7.
    """
    profile = load_profile("unit-slot").replace(kv_capacity_tokens=7)
    instance = hashed_instance(
        [0.0, 1.0, 1.0], [6, 2, 6], [1, 1, 2], [[1, 2, 3], [7], [1, 2, 3]], 2
    )
    naive = simulate_naive(instance, profile, _Spec(), prefix_cache=("lru", None))
    assert naive.cached_tokens is not None
    assert naive.cached_tokens.tolist() == [0, 0, 4]
    assert naive.cut_hits == 1 and naive.evicted_blocks == 2
    assert naive.completion_s.tolist() == [1.0, 2.0, 4.0]
    fast = simulate(instance, profile, _Spec(), prefix_cache="lru", log=True)
    assert fast.requests["cached_tokens"].tolist() == [0, 0, 4]
    assert fast.requests["first_token_s"].tolist() == [1.0, 2.0, 3.0]
    assert fast.requests["completion_s"].tolist() == [1.0, 2.0, 4.0]
    assert fast.evictions is not None
    assert fast.evictions.values.tolist() == [[1, 1], [2, 1]]
    pool = Pool(profile, "fcfs", prefix_cache="lru")
    validate_cluster(instance, Cluster((pool,)), fast).raise_if_invalid()


def test_a_cached_run_takes_the_python_engine() -> None:
    """The compiled kernels have no cache: a cached run says why it is on the
    Python engine, and gives the records the Python engine gives."""
    instance = hashed_instance([0.0, 1.0], [4, 4], [2, 2], [[1, 2], [1, 2]], 2)
    profile = load_profile("unit-slot")
    compiled = simulate(
        instance, profile, "vllm", engine="compiled", prefix_cache="lru"
    )
    assert compiled.engine == "python: the prefix cache runs on the Python engine only"
    assert compiled.requests["cached_tokens"].tolist() == [0, 3]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prefix_cache": "fifo"}, "expected one of gpu, lru, lru_tail_first"),
        ({"prefix_cache": "lru:capacity_tokens=11"},
         "got 11 tokens; expected at most the 10 tokens of KV of a replica"),
        ({"prefix_cache": "lru:size=3"}, "unknown key(s) ['size']"),
        ({"prefix_cache": "lru", "policy": "vllm-v0:preemption=swap"},
         "swaps KV to the host tier"),
    ],
)  # fmt: skip
def test_bad_caches_are_refused(kwargs: dict[str, Any], message: str) -> None:
    """An unknown rule or key, a cache larger than the replica's KV, a cache
    with a policy that swaps: one line naming the field."""
    instance = hashed_instance([0.0], [4], [2], [[1, 2]], 2)
    profile = load_profile("unit-slot").replace(kv_capacity_tokens=10)
    policy = kwargs.pop("policy", "fcfs")
    with pytest.raises(InputError) as error:
        simulate(instance, profile, policy, **kwargs)
    assert message in str(error.value)
    assert "prefix_cache" in str(error.value) and "\n" not in str(error.value)


def test_an_instance_without_hashes_or_with_too_many_is_refused() -> None:
    profile = load_profile("unit-slot")
    plain = Instance(np.zeros(1), np.array([4]), np.array([2]))
    with pytest.raises(InputError, match="needs the requests' prefix block hashes"):
        simulate(plain, profile, "fcfs", prefix_cache="lru")
    three = hashed_instance([0.0], [4], [2], [[1, 2, 3]], 2)  # ceil(4 / 2) = 2
    with pytest.raises(InputError, match=r"request 0 has 3 hashes; expected at most"):
        simulate(three, profile, "fcfs", prefix_cache="lru")


def test_the_text_form_reads_back() -> None:
    assert parse_prefix_cache("gpu") == PrefixCacheSpec()
    spec = parse_prefix_cache("lru_tail_first:capacity_tokens=64")
    assert spec == PrefixCacheSpec("lru_tail_first", 64)
    assert parse_prefix_cache(spec.label) == spec


# -- the command line ---------------------------------------------------------------


def test_cli_prefix_cache_reports_the_hits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two of three prompts find 512 of their 600 tokens cached: 1024 / 1800."""
    trace = str(shared_prefix_trace(tmp_path))
    args = ["simulate", trace, "--model", "llama2-70b-a100-tp4", "--json"]
    code, out, err = run([*args, "--prefix-cache", "lru"], capsys)
    assert code == 0, err
    (run_,) = json.loads(out)["policies"]
    assert run_["metrics"]["prefill_tokens_saved"] == 1024
    assert run_["metrics"]["prefix_hit_ratio"] == pytest.approx(1024 / 1800)
    assert run_["engine"] == "python: the prefix cache runs on the Python engine only"
    code, out, err = run(args, capsys)  # no cache: no cache metrics
    assert code == 0, err
    assert "prefix_hit_ratio" not in json.loads(out)["policies"][0]["metrics"]


def test_cli_cluster_file_prefix_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pool's ``prefix_cache`` key; an unknown rule there names the file and
    the key."""
    trace = str(shared_prefix_trace(tmp_path))
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    pool = '[[pool]]\nmodel = "llama2-70b-a100-tp4"\npolicy = "vllm"\n'
    good.write_text(pool + 'prefix_cache = "lru_tail_first"\n')
    bad.write_text(pool + 'prefix_cache = "fifo"\n')
    code, out, err = run(["simulate", trace, "--cluster", str(good), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["policies"][0]["metrics"]["prefill_tokens_saved"] == 1024
    code, out, err = run(["simulate", trace, "--cluster", str(bad)], capsys)
    assert_refused(code, out, err, "bad.toml", "pool[0].prefix_cache", "'fifo'")


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--prefix-cache", "mru"], ["--prefix-cache", "'mru'", "lru_tail_first"]),
        (["--prefix-cache", "lru:capacity_tokens=500000"],
         ["--prefix-cache", "500000 tokens", "496503 tokens of KV"]),
        (["--prefix-cache", "lru", "--policy", "vllm-v0:preemption=swap"],
         ["--prefix-cache", "swaps KV to the host tier"]),
    ],
)  # fmt: skip
def test_cli_bad_prefix_cache_exits_2(
    extra: list[str],
    needles: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    trace = str(shared_prefix_trace(tmp_path))
    args = ["simulate", trace, "--model", "llama2-70b-a100-tp4", *extra]
    assert_refused(*run(args, capsys), *needles)


def test_cli_prefix_cache_needs_hashes(capsys: pytest.CaptureFixture[str]) -> None:
    trace = str(Path(__file__).parent / "data" / "traces" / "azure_sample.csv")
    args = ["simulate", trace, "--model", "llama2-70b-a100-tp4"]
    code, out, err = run([*args, "--prefix-cache", "lru"], capsys)
    assert_refused(code, out, err, "prefix_cache", "prefix block hashes")


def test_a_cache_on_a_decode_pool_is_refused() -> None:
    """A decode pool takes no cache (its replicas prefill nothing to reuse);
    prefill pools do (``tests/test_conductor.py``)."""
    profile = load_profile("unit-slot")
    with pytest.raises(InputError, match="on a decode pool; expected a prefill") as e:
        Pool(profile, "vllm", role="decode", prefix_cache="lru")
    assert e.value.field == "pool pool0: prefix_cache"
