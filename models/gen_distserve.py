# ruff: noqa: E501  (the TOML template below keeps its long lines verbatim)
"""Regenerate the OPT profiles from DistServe's fitted iteration-time constants.

Run from the repository root:  ./run python models/gen_distserve.py

Reads ../shared/calibration/distserve_profiler-a100-80g.{distserve,vllm}.json and
../shared/calibration/distserve_max_num_tokens.csv (copies of LLMServe/DistServe's
simdistserve/estimators/profile_data/, Apache-2.0) and writes
models/opt-{13b,66b}-a100-tp{TP}-{distserve,vllm}.toml for every (model, TP) in
PROFILES. Nothing is fitted: each JSON constant is divided by 1000 (ms -> s) and
placed on the feature it multiplies, as the file header explains, so the profiles
reproduce simdistserve's iteration times exactly (tests/test_profile.py checks this
at rtol 1e-12). The KV capacity is DistServe's measured max_num_tokens at (TP, PP 1).
Writes nothing outside models/; each file is written atomically.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

from lsched.profile import kv_bytes_per_token, models_dir

GIB = 2**30
GPU = "A100-SXM4-80GB"
GPU_MEMORY_BYTES = 80 * GIB  # NVIDIA A100 80GB datasheet
DTYPE_BYTES = 2  # fp16
ENGINES = ("distserve", "vllm")


class Opt(NamedTuple):
    """OPT architecture (Zhang et al., OPT, 2022, Table 1; Hugging Face configs)."""

    key: str  # DistServe's model key
    tag: str  # file-name prefix
    label: str  # for humans
    num_layers: int
    hidden_size: int
    num_heads: int
    vocab_size: int = 50272
    max_positions: int = 2048

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_params(self) -> int:
        """Parameters of the Hugging Face OPT model (tied lm_head, biases included).

        Per layer: attention 4h^2 + 4h, MLP (ffn 4h) 8h^2 + 5h, two layer norms 4h;
        plus token embeddings V*h, learned positions (2048 + 2 offset)*h and the
        final layer norm 2h.
        """
        h = self.hidden_size
        per_layer = 12 * h * h + 13 * h
        embeddings = (self.vocab_size + self.max_positions + 2) * h
        return self.num_layers * per_layer + embeddings + 2 * h


OPT_13B = Opt("facebook/opt-13b", "opt-13b", "OPT-13B", 40, 5120, 40)
OPT_66B = Opt("facebook/opt-66b", "opt-66b", "OPT-66B", 64, 9216, 72)

#: (model, TP) written by main(): every TP degree DistServe's JSON covers.
PROFILES = [
    (OPT_13B, 1),
    (OPT_13B, 2),
    (OPT_13B, 4),
    (OPT_66B, 2),
    (OPT_66B, 3),
    (OPT_66B, 4),
    (OPT_66B, 8),
]


def calibration_dir() -> Path:
    return models_dir().parent.parent / "shared" / "calibration"


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def max_num_tokens(calibration: Path, model: str, tp: int) -> int:
    """DistServe's measured KV capacity (tokens) of one instance at (tp, pp = 1)."""
    with (calibration / "distserve_max_num_tokens.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            if (row["model"], int(row["tp"]), int(row["pp"])) == (model, tp, 1):
                return int(row["max_num_tokens"])
    raise KeyError(f"no max_num_tokens for ({model}, tp={tp}, pp=1)")


def check_memory(opt: Opt, tp: int, capacity: int) -> None:
    """The fp16 weights and DistServe's KV capacity fit in tp x 80 GiB."""
    memory = tp * GPU_MEMORY_BYTES
    weights = opt.num_params * DTYPE_BYTES
    kv = capacity * kv_bytes_per_token(
        opt.num_layers, opt.num_heads, opt.head_dim, DTYPE_BYTES
    )
    if weights >= memory:
        raise ValueError(
            f"{opt.label} TP{tp}: weights {weights} B >= memory {memory} B"
        )
    if capacity < 1 or weights + kv > memory:
        raise ValueError(
            f"{opt.label} TP{tp}: weights {weights} B + KV {kv} B > memory {memory} B"
        )
    if opt.num_heads % tp or opt.hidden_size % tp:
        raise ValueError(f"{opt.label}: {opt.num_heads} heads do not split over TP{tp}")


def _abc(values: list[float]) -> str:
    return ", ".join(repr(float(v)) for v in values)


def _piece(pre: list[float], dec: list[float]) -> str:
    a_pre, b_pre, c_pre = pre
    a_dec, b_dec, c_dec = dec
    weights = [
        ("const", a_dec / 1000),
        ("prefill_tokens", b_pre / 1000),
        ("prefill_attention", c_pre / 1000),
        ("decode_steps", c_dec / 1000),
        ("kv_read_tokens", b_dec / 1000),
        ("has_prefill", (a_pre + 1 - a_dec) / 1000),
    ]
    items = ", ".join(f"{name} = {float(w)!r}" for name, w in weights)
    return f"pieces = [\n  {{ {items} }},\n]"


def render(opt: Opt, tp: int, engine: str, calibration: Path) -> tuple[str, str]:
    """(file name, TOML text) for one model, TP degree and DistServe engine fit."""
    json_name = f"distserve_profiler-a100-80g.{engine}.json"
    params = json.loads((calibration / json_name).read_text())[opt.key][str(tp)]
    threshold = params["decoding_large_small_bs_threshold"]
    capacity = max_num_tokens(calibration, opt.key, tp)
    check_memory(opt, tp, capacity)
    bytes_per_token = kv_bytes_per_token(
        opt.num_layers, opt.num_heads, opt.head_dim, DTYPE_BYTES
    )
    pre, small, large = (
        params[k] for k in ("prefill", "decoding_smallbs", "decoding_largebs")
    )
    name = f"{opt.tag}-a100-tp{tp}-{engine}"
    text = f"""\
# {opt.label} on A100-80GB, TP {tp}: DistServe's fitted "{engine}" iteration-time
# constants, represented exactly (generated from the JSON below; weights in seconds).
#
# Source: LLMServe/DistServe (Apache-2.0), simdistserve/estimators/profile_data/
# profiler-a100-80g.{engine}.json = ../shared/calibration/{json_name},
# key ["{opt.key}"]["{tp}"], in milliseconds:
#   prefill           a, b, c = {_abc(pre)}
#   decoding_smallbs  a, b, c = {_abc(small)}
#   decoding_largebs  a, b, c = {_abc(large)}
#   decoding_large_small_bs_threshold = {threshold}
#
# How simdistserve times an iteration (estimators/time_estimator.py and base/worker.py,
# LLMServe/DistServe commit f06659fe, PP = 1):
#   prefill batch (prompt lengths l_i):  a + b*sum(l_i) + c*sum(l_i^2) + 1   (pp_const = 1*pp ms)
#   decode batch (B requests, context lengths x_i = prompt + tokens decoded so far):
#       (a, b, c) = decoding_smallbs if B < threshold else decoding_largebs   (strict <)
#       a + b*sum(x_i + 1) + c*B                (token_generated_list = x_i + 1)
#   plus, on every iteration, add_ray_overhead = 2 + 1e-4 * sum(current_context_len) ms,
#   where current_context_len = prompt length for a prefilling request and x_i for a decoding one.
# The "{engine}" engine uses the same Worker class, so the same rules and overhead apply.
#
# Mapping to phi = [1, P, Q, D, K, H] (lsched.profile):
#   sum(l_i) = P, sum(l_i^2) = Q (unchunked: ctx_before = 0), B = D, sum(x_i + 1) = K
#   (K counts each step's own new token), sum(current_context_len) = P + K - D
#   ("context" overhead tokens). The regime switches on decode_steps at {threshold}: regime 0
#   for D < {threshold} (small), regime 1 for D >= {threshold} (large). Each regime is one piece:
#     const = a_dec, kv_read_tokens = b_dec, decode_steps = c_dec,
#     prefill_tokens = b_pre, prefill_attention = c_pre, has_prefill = a_pre + 1 - a_dec,
#   so a prefill-only batch (D = K = 0, H = 1) costs a_pre + 1 + b_pre*P + c_pre*Q and a
#   decode-only batch (H = P = Q = 0) a_dec + b_dec*K + c_dec*D, as in simdistserve.
#   Weights are ms / 1000.
# Mixed batches: DistServe's engines never mix prefill and decode in one iteration (the
# Worker runs a prefill batch or a decode batch; chunked prefill is off by default). lsched
# times a mixed batch as the prefill time plus the decode marginal costs
# (b_dec*K + c_dec*D, regime by D) plus the overhead: an extrapolation, not DistServe's.

name = "{name}"
description = "{opt.label} on A100-80GB TP{tp}, DistServe {engine} fit (exact, with simdistserve's overheads)"
block_tokens = 16
max_num_seqs = 256
max_num_batched_tokens = 2048
max_model_len = {opt.max_positions}
replicas = 1

[hardware]
gpu = "{GPU}"
num_gpus = {tp}
tensor_parallel = {tp}
pipeline_parallel = 1
gpu_memory_bytes = {GPU_MEMORY_BYTES}  # 80 GiB (NVIDIA A100 80GB datasheet)

[model]
name = "{opt.key}"
num_layers = {opt.num_layers}
hidden_size = {opt.hidden_size}
num_heads = {opt.num_heads}
num_kv_heads = {opt.num_heads}
head_dim = {opt.head_dim}
dtype_bytes = {DTYPE_BYTES}  # fp16

[kv]
# bytes_per_token is derived from [model]: 2 * {opt.num_layers} * {opt.num_heads} * {opt.head_dim} * {DTYPE_BYTES} = {bytes_per_token}
# capacity given, not derived: DistServe's measured max_num_tokens for ({opt.key}, tp={tp}, pp=1)
capacity_tokens = {capacity}

[iteration_time]
switch_feature = "decode_steps"
thresholds = [{threshold}]
overhead_s = 0.002             # 2 ms: add_ray_overhead base_overhead
overhead_per_token_s = 1e-07   # 1e-4 ms per context token: add_ray_overhead k
overhead_tokens = "context"    # P + K - D = sum(current_context_len)

[[iteration_time.regimes]]  # D < {threshold}: decoding_smallbs
{_piece(pre, small)}

[[iteration_time.regimes]]  # D >= {threshold}: decoding_largebs
{_piece(pre, large)}

[sources]
iteration_time = "DistServe (Zhong et al., OSDI 2024) simdistserve profiler-a100-80g.{engine}.json, ['{opt.key}']['{tp}'], ms -> s; timing rules from simdistserve/estimators/time_estimator.py and base/worker.py"
overhead = "simdistserve/base/worker.py Worker.add_ray_overhead: 2 ms + 1e-4 ms * sum(current_context_len), every iteration at PP=1; prefill pp_const 1 ms in time_estimator.get_prefill_time"
kv_capacity_tokens = "DistServe simdistserve/estimators/profile_data/max_num_tokens.csv (= ../shared/calibration/distserve_max_num_tokens.csv), {opt.key} tp={tp} pp=1"
kv_bytes_per_token = "OPT config ({opt.key}): {opt.num_layers} layers, {opt.num_heads} heads, head_dim {opt.head_dim}, fp16 (Zhang et al., OPT, 2022, Table 1)"
limits = "vLLM defaults: max_num_seqs 256, max_num_batched_tokens = max(max_model_len, 2048), block 16; max_model_len 2048 = OPT max_position_embeddings"
"""
    return f"{name}.toml", text


def main() -> None:
    calibration = calibration_dir()
    for opt, tp in PROFILES:
        for engine in ENGINES:
            file_name, text = render(opt, tp, engine, calibration)
            _atomic_write(models_dir() / file_name, text)
            print(f"wrote models/{file_name}")


if __name__ == "__main__":
    main()
