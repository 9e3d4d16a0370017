"""The long-context profile ``llama3-70b-a100-tp8-128k`` (Mooncake's traces).

Its constants against the arithmetic its header states, its iteration time on
hand-computed batches, the generator that writes it, and a replay of the start of
Mooncake's synthetic trace in which a prompt over the 131,072-token context is
rejected and counted while every other request is served with its tokens conserved.
"""

from __future__ import annotations

import importlib.util
import math
import tomllib
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lsched.evaluator import simulate
from lsched.profile import FEATURES, batch_features, load_profile, models_dir
from lsched.traces import read_trace

NAME = "llama3-70b-a100-tp8-128k"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SPLITWISE = SHARED / "calibration" / "splitwise_perf_model.csv"
MOONCAKE = SHARED / "traces" / "mooncake_synthetic.jsonl"
GIB = 2**30
L = 131_072


def _raw() -> dict[str, Any]:
    return tomllib.loads((models_dir() / f"{NAME}.toml").read_text())


def _weights() -> dict[str, float]:
    """The piece's weights as the TOML file writes them (read without lsched)."""
    (piece,) = _raw()["iteration_time"]["pieces"]
    return {feature: float(piece.get(feature, 0.0)) for feature in FEATURES}


def test_constants_equal_the_stated_arithmetic() -> None:
    profile = load_profile(NAME)
    raw = _raw()
    # Llama-3.1-70B from its config: embeddings + untied lm_head, 80 blocks of
    # q,o (8192^2 each), k,v (8192 x 1024 each), MLP (3 x 8192 x 28672), 2 norms,
    # and the final norm
    block = 2 * 8192**2 + 2 * 8192 * 1024 + 3 * 8192 * 28672 + 2 * 8192
    params = 2 * 128_256 * 8192 + 80 * block + 8192
    assert params == raw["model"]["num_params"] == 70_553_706_496
    assert raw["kv"]["weight_bytes"] == 2 * params
    # 320 KiB per token: Mooncake's "320 KB" for LLaMA3-70B
    assert profile.kv_bytes_per_token == 2 * 80 * 8 * 128 * 2 == 320 * 1024
    # floor((8 x 80 GiB x 0.9 - weights - 8 x 2 GiB) / 320 KiB), in exact rationals
    free = 8 * 80 * GIB * Fraction(9, 10) - 2 * params - 8 * 2 * GIB
    capacity = math.floor(free / (320 * 1024))
    assert profile.kv_capacity_tokens == capacity == 1_404_382
    assert profile.kv_capacity_tokens >= 10 * L  # ten requests at full context
    assert (profile.max_model_len, profile.max_num_batched_tokens) == (L, 2048)
    assert (profile.max_num_seqs, profile.block_tokens) == (256, 16)
    assert profile.hardware.num_gpus == profile.hardware.tensor_parallel == 8
    assert profile.hardware.gpu_memory_bytes == 80 * GIB
    # the costs are the Llama-2-70B A100 TP8 fit itself, extrapolated
    base = load_profile("llama2-70b-a100-tp8").iteration_time.regimes
    np.testing.assert_array_equal(profile.iteration_time.regimes[0], base[0])
    assert profile.fit_mape == load_profile("llama2-70b-a100-tp8").fit_mape


def test_iteration_time_on_hand_computed_batches() -> None:
    profile = load_profile(NAME)
    w = _weights()
    phi = batch_features(
        4,
        # batch 0: a 2048-token chunk after 4096 tokens of its own context;
        # batch 1: a whole 1024-token prompt and three decode steps;
        # batch 2: one decode step at full context; batch 3: a whole 128k prompt
        prefill_batch=[0, 1, 3],
        prefill_tokens=[2048, 1024, L],
        prefill_ctx_before=[4096, 0, 0],
        decode_batch=[1, 1, 1, 2],
        decode_kv_tokens=[100, 200, 300, L],
    )
    chunk = (
        w["const"] + 2048 * w["prefill_tokens"] + 2048 * 6144 * w["prefill_attention"]
    )
    mixed = (
        w["const"]
        + 1024 * w["prefill_tokens"]
        + 1024**2 * w["prefill_attention"]
        + 3 * w["decode_steps"]
        + 600 * w["kv_read_tokens"]
    )
    decode = w["const"] + w["decode_steps"] + L * w["kv_read_tokens"]
    whole = w["const"] + L * w["prefill_tokens"] + L**2 * w["prefill_attention"]
    expected = [chunk, mixed, decode, whole]
    np.testing.assert_allclose(profile.iteration_time_s(phi), expected, rtol=1e-12)
    # the figures the header states, worked out from the weights by hand
    np.testing.assert_allclose(
        expected, [0.371856, 0.171606, 0.131104, 133.7327], rtol=1e-5
    )


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "fit_splitwise", models_dir() / "fit_splitwise.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_writes_the_committed_file_and_its_figures() -> None:
    if not SPLITWISE.is_file():
        pytest.skip(f"{SPLITWISE} is absent: Splitwise measurements not available")
    module = _generator()
    file_name, text = module.render_long_context(SPLITWISE)
    assert file_name == f"{NAME}.toml"
    assert text == (models_dir() / file_name).read_text()
    w = _weights()
    fig = module.long_context_figures(np.array([w[f] for f in FEATURES]))
    c, n = 2048, L // 2048
    # chunk k of c tokens after (k - 1) c: Q = c * k c, summed in closed form
    chunked = n * (w["const"] + c * w["prefill_tokens"])
    chunked += w["prefill_attention"] * c * c * n * (n + 1) / 2
    assert fig["chunked_s"] == pytest.approx(chunked, rel=1e-12)
    assert fig["prefill_q_s"] == pytest.approx(L * L * w["prefill_attention"])
    assert fig["hbm_s"] == pytest.approx(L * 327_680 / (8 * 2.039e12))
    # FLOPs of 8192 tokens: 2 x 68,452,352,000 x n + 2 x 80 x 8192 x n^2
    flops = 2 * 68_452_352_000 * 8192 + 2 * 80 * 8192 * 8192**2
    seconds = w["const"] + 8192 * w["prefill_tokens"] + 8192**2 * w["prefill_attention"]
    assert fig["efficiency"] == pytest.approx(flops / (seconds * 8 * 312e12))
    assert 1 < fig["prefill_s"] / fig["flop_scaled_s"] < 5  # pessimistic, bounded


def test_mooncake_prefix_is_served_and_the_overlong_prompt_rejected() -> None:
    """The first 50 requests and the trace's longest prompt (191,378 tokens) under
    vLLM V1's policy: the long one is rejected at arrival, counted, its hashes kept;
    every other request completes, processing ``s + o - 1`` tokens plus those it
    recomputed, each run taking what the TOML's weights give."""
    if not MOONCAKE.is_file():
        pytest.skip(f"{MOONCAKE} is absent: Mooncake trace not available")
    trace, _ = read_trace(MOONCAKE)
    s = trace.prompt_tokens
    assert int((s > L).sum()) == 10 and int(s.max()) == 191_378  # the header's
    longest = int(np.argmax(s))
    instance = trace.subset(np.array([*range(50), longest]))
    profile = load_profile(NAME)
    result = simulate(instance, profile, policy="vllm", log=True)
    requests = result.requests
    assert result.metrics["num_rejected"] == 1
    assert (
        requests["rejected"].iloc[50] == "prompt 191378 tokens > max_model_len 131072"
    )
    assert requests["replica"].iloc[50] == -1
    offsets = instance.prefix_hash_offsets
    assert offsets[51] - offsets[50] == math.ceil(191_378 / 512) == 374
    served = requests.iloc[:50]
    assert (served["rejected"] == "").all() and (served["truncated_tokens"] == 0).all()
    assert result.metrics["num_completed"] == 50
    assert (served["completion_s"] >= served["first_token_s"]).all()
    assert (served["first_token_s"] > instance.arrival_s[:50]).all()
    timeline = result.timeline()
    work = (timeline["tokens"] * timeline["iterations"]).groupby(timeline["request"])
    processed = work.sum().reindex(range(51), fill_value=0).to_numpy()
    expected = instance.prompt_tokens + instance.output_tokens - 1
    expected[50] = 0  # rejected: never runs
    np.testing.assert_array_equal(processed, expected + requests["recomputed_tokens"])
    _check_run_times(result.runs, profile.kv_capacity_tokens)


def _check_run_times(runs: pd.DataFrame, capacity: int) -> None:
    """Each run of n iterations takes sum over k < n of w . phi_k, where iteration
    k reads K + k D KV tokens; the KV held stays within the capacity."""
    w = _weights()
    n = runs["iterations"].to_numpy(np.float64)
    first = w["const"] + sum(
        w[f] * runs[f].to_numpy(np.float64) for f in FEATURES if f != "const"
    )
    growth = w["kv_read_tokens"] * runs["decode_steps"].to_numpy(np.float64)
    duration = n * first + growth * n * (n - 1) / 2
    np.testing.assert_allclose(runs["end_s"] - runs["start_s"], duration, rtol=1e-9)
    peak = runs["kv_tokens"] + (runs["iterations"] - 1) * runs["decode_steps"]
    assert int(peak.max()) <= capacity
