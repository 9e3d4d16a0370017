"""Tests of lsched.profile: cost model, batch features, profiles, TOML files."""

from __future__ import annotations

import importlib.util
import json
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest

from lsched.errors import InputError
from lsched.profile import (
    FEATURES,
    DeploymentProfile,
    IterationTime,
    batch_features,
    list_profiles,
    load_profile,
    models_dir,
    profile_to_toml,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CALIBRATION = SHARED / "calibration"
BROKEN = Path(__file__).resolve().parent / "data" / "profiles"

DISTSERVE_PROFILES = [
    # (profile name, engine, DistServe model key, TP): every (model, TP) of
    # DistServe's profiler-a100-80g JSON, both engines (models/gen_distserve.py)
    ("opt-13b-a100-tp1-distserve", "distserve", "facebook/opt-13b", 1),
    ("opt-13b-a100-tp1-vllm", "vllm", "facebook/opt-13b", 1),
    ("opt-13b-a100-tp2-distserve", "distserve", "facebook/opt-13b", 2),
    ("opt-13b-a100-tp2-vllm", "vllm", "facebook/opt-13b", 2),
    ("opt-13b-a100-tp4-distserve", "distserve", "facebook/opt-13b", 4),
    ("opt-13b-a100-tp4-vllm", "vllm", "facebook/opt-13b", 4),
    ("opt-66b-a100-tp2-distserve", "distserve", "facebook/opt-66b", 2),
    ("opt-66b-a100-tp2-vllm", "vllm", "facebook/opt-66b", 2),
    ("opt-66b-a100-tp3-distserve", "distserve", "facebook/opt-66b", 3),
    ("opt-66b-a100-tp3-vllm", "vllm", "facebook/opt-66b", 3),
    ("opt-66b-a100-tp4-distserve", "distserve", "facebook/opt-66b", 4),
    ("opt-66b-a100-tp4-vllm", "vllm", "facebook/opt-66b", 4),
    ("opt-66b-a100-tp8-distserve", "distserve", "facebook/opt-66b", 8),
    ("opt-66b-a100-tp8-vllm", "vllm", "facebook/opt-66b", 8),
]


def _need_calibration() -> None:
    if not CALIBRATION.is_dir():
        pytest.skip(f"{CALIBRATION} is absent: DistServe/Splitwise data not available")


# -- DistServe, number for number ------------------------------------------------


def _distserve_prefill_ms(params: dict, lengths: list[int]) -> float:
    """simdistserve get_prefill_time (PP = 1) plus Worker.add_ray_overhead."""
    a, b, c = params["prefill"]
    pp = 1
    delay = a + b * sum(lengths) + c * sum(x**2 for x in lengths)
    delay = delay * (1 / pp) + 1 * pp  # pp_const = 1 * pp
    # current_context_len of a prefilling request is its prompt length
    return delay + 2 + 0.0001 * sum(lengths)


def _distserve_decode_ms(params: dict, contexts: list[int]) -> float:
    """simdistserve get_decode_time (PP = 1) plus Worker.add_ray_overhead."""
    batch_size = len(contexts)
    if batch_size < params["decoding_large_small_bs_threshold"]:
        a, b, c = params["decoding_smallbs"]
    else:
        a, b, c = params["decoding_largebs"]
    token_generated = [x + 1 for x in contexts]
    delay = a + b * sum(token_generated) + c * batch_size
    return delay + 2 + 0.0001 * sum(contexts)


@pytest.mark.parametrize(("name", "engine", "model", "tp"), DISTSERVE_PROFILES)
def test_distserve_profiles_reproduce_simdistserve(
    name: str, engine: str, model: str, tp: int
) -> None:
    _need_calibration()
    path = CALIBRATION / f"distserve_profiler-a100-80g.{engine}.json"
    params = json.loads(path.read_text())[model][str(tp)]
    assert params["decoding_large_small_bs_threshold"] == 95
    profile = load_profile(name)
    rng = np.random.default_rng(20240601)

    prefill_batches = [
        [int(x) for x in rng.integers(1, 2049, size=rng.integers(1, 12))]
        for _ in range(150)
    ]
    # batch sizes on both sides of the threshold, the boundary included
    sizes = [1, 2, 50, 94, 95, 96, 150, 256, *rng.integers(1, 300, size=150).tolist()]
    decode_batches = [
        [int(x) for x in rng.integers(1, 2048, size=size)] for size in sizes
    ]

    expected_ms = [_distserve_prefill_ms(params, b) for b in prefill_batches]
    expected_ms += [_distserve_decode_ms(params, b) for b in decode_batches]

    m_pre, m_dec = len(prefill_batches), len(decode_batches)
    pre_index = np.repeat(np.arange(m_pre), [len(b) for b in prefill_batches])
    dec_index = np.repeat(np.arange(m_dec), [len(b) for b in decode_batches]) + m_pre
    phi = batch_features(
        m_pre + m_dec,
        prefill_batch=pre_index,
        prefill_tokens=np.concatenate(prefill_batches),
        decode_batch=dec_index,
        # lsched's K counts each step's own token: DistServe's context + 1
        decode_kv_tokens=np.concatenate(decode_batches) + 1,
    )
    got_ms = profile.iteration_time_s(phi) * 1000.0
    np.testing.assert_allclose(got_ms, expected_ms, rtol=1e-12, atol=0)


def test_distserve_threshold_is_strict_less_than() -> None:
    """Batch size 94 uses decoding_smallbs, 95 uses decoding_largebs."""
    profile = load_profile("opt-13b-a100-tp1-distserve")
    it = profile.iteration_time
    phi = batch_features(
        2,
        decode_batch=np.repeat([0, 1], [94, 95]),
        decode_kv_tokens=np.full(94 + 95, 100),
    )
    assert it.regime_of(phi).tolist() == [0, 1]
    # regime 1 has different decode constants: the time is not the small-batch one
    small_only = IterationTime(
        regimes=(it.regimes[0],),
        overhead_s=it.overhead_s,
        overhead_per_token_s=it.overhead_per_token_s,
    )
    assert it(phi)[0] == small_only(phi)[0]
    assert it(phi)[1] != small_only(phi)[1]


# -- the cost model ---------------------------------------------------------------


def _loop_time(it: IterationTime, phi_row: np.ndarray) -> float:
    """Per-batch evaluation with Python loops, from the documented rule."""
    regime = 0
    if it.switch_feature is not None:
        x = phi_row[FEATURES.index(it.switch_feature)]
        regime = sum(1 for t in it.thresholds if x >= t)
    base = max(
        sum(float(w) * float(f) for w, f in zip(piece, phi_row, strict=True))
        for piece in it.regimes[regime]
    )
    p, d, k = phi_row[1], phi_row[3], phi_row[4]
    tokens = p + k - d if it.overhead_tokens == "context" else p + d
    return base + it.overhead_s + it.overhead_per_token_s * tokens


@pytest.mark.parametrize("name", list_profiles())
def test_vectorised_equals_per_batch_loop(name: str) -> None:
    profile = load_profile(name)
    rng = np.random.default_rng(7)
    m = 400
    phi = np.column_stack(
        [
            np.ones(m),
            rng.integers(0, 4000, m),
            rng.integers(0, 4000, m) ** 2,
            rng.integers(0, 200, m),
            rng.integers(0, 200_000, m),
            rng.integers(0, 2, m),
        ]
    ).astype(float)
    vectorised = profile.iteration_time_s(phi)
    assert vectorised.shape == (m,)
    looped = [_loop_time(profile.iteration_time, row) for row in phi]
    np.testing.assert_allclose(vectorised, looped, rtol=1e-12)
    # any leading shape works and matches
    cube = profile.iteration_time_s(phi.reshape(20, 20, 6))
    np.testing.assert_array_equal(cube.reshape(m), vectorised)


def test_roofline_is_max_of_pieces() -> None:
    it = IterationTime(
        regimes=(np.array([[1.0, 2, 0, 0, 0, 0], [10.0, 0, 0, 1, 0, 0]]),)
    )
    # P = 2: pieces 1 + 4 = 5 and 10 + 0 = 10 -> 10; P = 10: 21 vs 10 -> 21
    phi = np.array([[1, 2, 0, 0, 0, 1], [1, 10, 0, 0, 0, 1]], dtype=float)
    assert it(phi).tolist() == [10.0, 21.0]


def test_effective_regimes_fold_the_overhead() -> None:
    profile = load_profile("opt-66b-a100-tp4-vllm")
    it = profile.iteration_time
    phi = batch_features(
        3,
        prefill_batch=[0, 0],
        prefill_tokens=[300, 20],
        decode_batch=[1, 2] * 60,
        decode_kv_tokens=[500] * 120,
    )
    folded = [
        np.max(phi[i] @ it.effective_regimes[r].T)
        for i, r in enumerate(it.regime_of(phi))
    ]
    np.testing.assert_allclose(it(phi), folded, rtol=1e-13)


def test_batch_features_by_hand() -> None:
    # batch 0: chunk of 100 after 50 cached tokens, chunk of 10 fresh, decode reading 7
    # batch 1: decodes reading 3 and 4; batch 2: empty
    phi = batch_features(
        3,
        prefill_batch=[0, 0],
        prefill_tokens=[100, 10],
        prefill_ctx_before=[50, 0],
        decode_batch=[0, 1, 1],
        decode_kv_tokens=[7, 3, 4],
    )
    assert phi.tolist() == [
        [1, 110, 100 * 150 + 10 * 10, 1, 7, 1],
        [1, 0, 0, 2, 7, 0],
        [1, 0, 0, 0, 0, 0],
    ]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prefill_batch": [0], "prefill_tokens": [0]}, "prefill_tokens"),
        ({"prefill_batch": [3], "prefill_tokens": [5]}, "prefill_batch"),
        ({"prefill_batch": [0, 0], "prefill_tokens": [5]}, "prefill_tokens"),
        ({"decode_batch": [0], "decode_kv_tokens": [0]}, "decode_kv_tokens"),
        ({"decode_batch": [0], "decode_kv_tokens": [1.5]}, "decode_kv_tokens"),
    ],
)
def test_batch_features_rejects_bad_input(kwargs: dict, field: str) -> None:
    with pytest.raises(InputError) as info:
        batch_features(2, **kwargs)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"regimes": (np.array([[np.nan, 0, 0, 0, 0, 0]]),)}, "const"),
        ({"regimes": (np.ones((1, 5)),)}, "iteration_time.regimes[0]"),
        ({"regimes": (np.ones((1, 6)), np.ones((1, 6)))}, "iteration_time.thresholds"),
        (
            {"regimes": (np.ones((1, 6)),) * 2, "thresholds": (5,)},
            "iteration_time.switch_feature",
        ),
        (
            {
                "regimes": (np.ones((1, 6)),) * 2,
                "thresholds": (5,),
                "switch_feature": "batch_size",
            },
            "iteration_time.switch_feature",
        ),
        ({"regimes": (np.ones((1, 6)),), "overhead_s": -1.0}, "overhead_s"),
        ({"regimes": (np.ones((1, 6)),), "overhead_tokens": "all"}, "overhead_tokens"),
    ],
)
def test_iteration_time_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(InputError) as info:
        IterationTime(**kwargs)
    assert info.value.field is not None and info.value.field.endswith(field)


def test_weights_are_read_only() -> None:
    it = load_profile("unit-slot").iteration_time
    with pytest.raises(ValueError, match="read-only"):
        it.regimes[0][0, 0] = 2.0


# -- deployment profiles ------------------------------------------------------------


def test_every_toml_loads_with_sources() -> None:
    names = list_profiles()
    assert len(names) >= 10
    for name in names:
        profile = load_profile(name)
        assert profile.name == name  # file stem and name agree
        assert profile.sources, f"{name} names no source"
        assert profile.kv_capacity_tokens >= profile.block_tokens
        # loading by path gives the same profile
        assert load_profile(models_dir() / f"{name}.toml") == profile


def test_required_profiles_exist() -> None:
    names = set(list_profiles())
    assert {
        "unit-slot",
        "llama-65b-pang2025",
        "llama2-70b-a100-tp4",
        "llama2-70b-a100-tp8",
        "llama2-70b-h100-tp4",
        "llama2-70b-h100-tp8",
        *(row[0] for row in DISTSERVE_PROFILES),
    } <= names


def test_unit_slot_and_capacity_override() -> None:
    unit = load_profile("unit-slot")
    phi = batch_features(
        4,
        prefill_batch=[1, 2],
        prefill_tokens=[5, 9000],
        decode_batch=[2, 3],
        decode_kv_tokens=[3, 70],
    )
    assert unit.iteration_time_s(phi).tolist() == [1.0, 1.0, 1.0, 1.0]
    assert unit.block_tokens == 1
    small = unit.replace(kv_capacity_tokens=37)
    assert small.kv_capacity_tokens == small.kv_capacity_blocks == 37
    assert unit.kv_capacity_tokens == 1_000_000  # the original is unchanged
    with pytest.raises(InputError) as info:
        unit.replace(kv_capacity_tokens=0)
    assert info.value.field == "kv_capacity_tokens"
    with pytest.raises(InputError, match="unknown profile field"):
        unit.replace(kv_capacity=10)


def test_kv_blocks_round_up() -> None:
    profile = load_profile("opt-13b-a100-tp1-vllm")
    assert profile.block_tokens == 16
    assert profile.kv_blocks([1, 16, 17, 32, 33]).tolist() == [1, 1, 2, 2, 3]
    assert profile.kv_capacity_blocks == 66144 // 16


def test_distserve_capacity_matches_their_csv() -> None:
    _need_calibration()
    import csv

    with (CALIBRATION / "distserve_max_num_tokens.csv").open() as handle:
        table = {
            (r["model"], int(r["tp"]), int(r["pp"])): int(r["max_num_tokens"])
            for r in csv.DictReader(handle)
        }
    for name, _, model, tp in DISTSERVE_PROFILES:
        assert load_profile(name).kv_capacity_tokens == table[(model, tp, 1)]


def test_distserve_profiles_cover_their_json() -> None:
    """Every (engine, model, TP) of DistServe's A100 JSON has a shipped profile."""
    _need_calibration()
    covered = {(engine, model, tp) for _, engine, model, tp in DISTSERVE_PROFILES}
    in_json = {
        (engine, model, int(tp))
        for engine in ("distserve", "vllm")
        for model, by_tp in json.loads(
            (CALIBRATION / f"distserve_profiler-a100-80g.{engine}.json").read_text()
        ).items()
        for tp in by_tp
    }
    assert covered == in_json


def test_distserve_script_regenerates_the_committed_files() -> None:
    """models/opt-*.toml stay in sync with models/gen_distserve.py."""
    _need_calibration()
    spec = importlib.util.spec_from_file_location(
        "gen_distserve", models_dir() / "gen_distserve.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    by_key = {opt.key: opt for opt, _ in module.PROFILES}
    assert sorted((opt.key, tp) for opt, tp in module.PROFILES) == sorted(
        {(model, tp) for _, _, model, tp in DISTSERVE_PROFILES}
    )
    for name, engine, model, tp in DISTSERVE_PROFILES:
        # render() also checks that the fp16 weights and the KV capacity fit
        file_name, text = module.render(by_key[model], tp, engine, CALIBRATION)
        assert file_name == f"{name}.toml"
        assert text == (models_dir() / file_name).read_text()
        opt = by_key[model]
        profile = load_profile(name)
        used = (
            opt.num_params * 2 + profile.kv_capacity_tokens * profile.kv_bytes_per_token
        )
        assert profile.hardware.num_gpus == tp
        assert used < tp * profile.hardware.gpu_memory_bytes


@pytest.mark.parametrize(
    "name", ["llama2-70b-a100-tp4", "llama2-70b-h100-tp8", "llama-65b-pang2025"]
)
def test_derived_kv_capacity_follows_the_formula(name: str) -> None:
    """Recompute the documented formula from the raw TOML, without the loader."""
    raw = tomllib.loads((models_dir() / f"{name}.toml").read_text())
    m, kv, hw = raw["model"], raw["kv"], raw["hardware"]
    per_token = (
        2 * m["num_layers"] * m["num_kv_heads"] * m["head_dim"] * m["dtype_bytes"]
    )
    free = (
        hw["num_gpus"] * hw["gpu_memory_bytes"] * kv["memory_utilization"]
        - kv["weight_bytes"]
        - kv["activation_reserve_bytes"]
    )
    profile = load_profile(name)
    assert profile.kv_bytes_per_token == per_token
    assert profile.kv_capacity_tokens == math.floor(free / per_token)
    assert kv["weight_bytes"] == m["num_params"] * m["dtype_bytes"]


def test_llama2_70b_kv_bytes_by_hand() -> None:
    # 2 (K, V) * 80 layers * 8 KV heads * 128 dims * 2 bytes
    assert load_profile("llama2-70b-a100-tp8").kv_bytes_per_token == 327_680


def test_pang_roofline_pieces_cross() -> None:
    """Long prefills are compute-bound, small decode batches memory-bound."""
    it = load_profile("llama-65b-pang2025").iteration_time
    weights = it.regimes[0]
    assert weights.shape == (2, 6)
    prefill = batch_features(1, prefill_batch=[0], prefill_tokens=[2048])[0]
    decode = batch_features(1, decode_batch=[0] * 8, decode_kv_tokens=[300] * 8)[0]
    assert np.argmax(weights @ prefill) == 0
    assert np.argmax(weights @ decode) == 1


def test_toml_round_trip(tmp_path: Path) -> None:
    for name in list_profiles():
        profile = load_profile(name)
        path = tmp_path / f"{name}.toml"
        path.write_text(profile_to_toml(profile, header="round trip"))
        again = load_profile(path)
        assert again == profile
        np.testing.assert_array_equal(
            again.iteration_time.regimes[-1], profile.iteration_time.regimes[-1]
        )


def test_unknown_profile_lists_known_names() -> None:
    with pytest.raises(InputError) as info:
        load_profile("no-such-model")
    message = str(info.value)
    assert "no-such-model" in message
    for name in list_profiles():
        assert name in message


@pytest.mark.parametrize(
    ("file", "field", "line", "words"),
    [
        ("missing_field.toml", "max_num_seqs", None, "missing required field"),
        ("negative_capacity.toml", "kv.capacity_tokens", 14, "got -5"),
        (
            "unknown_feature.toml",
            "iteration_time.pieces[0].prefill_tokns",
            17,
            "unknown feature 'prefill_tokns'",
        ),
        ("wrong_type.toml", "block_tokens", 2, "got str '16'; expected an integer"),
        ("bad_syntax.toml", None, 6, "not valid TOML"),
        ("bad_thresholds.toml", "iteration_time.thresholds", 17, "strictly increasing"),
    ],
)
def test_broken_profiles_name_file_field_and_line(
    file: str, field: str | None, line: int | None, words: str
) -> None:
    path = BROKEN / file
    with pytest.raises(InputError) as info:
        load_profile(path)
    error = info.value
    assert error.file == str(path)
    assert error.field == field
    assert error.line == line
    assert words in error.message
    assert str(path) in str(error)


def test_profile_validation_names_the_field() -> None:
    profile = load_profile("unit-slot")
    for name, value in [
        ("block_tokens", 0),
        ("max_num_seqs", -1),
        ("replicas", 1.5),
        ("fit_mape", float("nan")),
    ]:
        with pytest.raises(InputError) as info:
            profile.replace(**{name: value})
        assert info.value.field == name
    assert isinstance(profile.replace(max_model_len=5), DeploymentProfile)


def test_a_profile_pickles_with_its_sources() -> None:
    import pickle

    profile = load_profile("opt-13b-a100-tp1-distserve")
    back = pickle.loads(pickle.dumps(profile))
    assert back == profile and dict(back.sources) == dict(profile.sources)
