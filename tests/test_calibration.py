"""Tests of lsched.calibration and of the Splitwise-fitted profiles in models/."""

from __future__ import annotations

import csv
import importlib.util
import tomllib
from pathlib import Path

import numpy as np
import pytest

from lsched.calibration import (
    fit_iteration_time,
    read_measurements,
    splitwise_groups,
)
from lsched.errors import InputError
from lsched.profile import FEATURES, load_profile, models_dir

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SPLITWISE = SHARED / "calibration" / "splitwise_perf_model.csv"

SPLITWISE_PROFILES = [
    ("llama2-70b-a100-tp4", "a100-80gb", 4),
    ("llama2-70b-a100-tp8", "a100-80gb", 8),
    ("llama2-70b-h100-tp4", "h100-80gb", 4),
    ("llama2-70b-h100-tp8", "h100-80gb", 8),
]

#: MAPE bound for the stored fits. One affine piece spans prefills of 128 to 32768
#: tokens and decode batches of 1 to 64; errors above 15 % would make the cost model
#: misrank schedules whose iteration mixes differ (the fits reach 7.9-9.9 %).
MAPE_BOUND = 0.15


def _need_splitwise() -> None:
    if not SPLITWISE.is_file():
        pytest.skip(f"{SPLITWISE} is absent: Splitwise measurements not available")


@pytest.mark.parametrize(("name", "hardware", "tp"), SPLITWISE_PROFILES)
def test_recorded_mape_is_recomputed_independently(
    name: str, hardware: str, tp: int
) -> None:
    """Re-read the CSV with csv, the TOML with tomllib, and recompute the MAPE."""
    _need_splitwise()
    raw = tomllib.loads((models_dir() / f"{name}.toml").read_text())
    (piece,) = raw["iteration_time"]["pieces"]
    w = {feature: piece.get(feature, 0.0) for feature in FEATURES}
    errors = []
    with SPLITWISE.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if (row["model"], row["hardware"], row["tensor_parallel"]) != (
                "llama2-70b",
                hardware,
                str(tp),
            ):
                continue
            s, b, t = (int(row[k]) for k in ("prompt_size", "batch_size", "token_size"))
            prefill_s = (
                w["const"]
                + w["has_prefill"]
                + w["prefill_tokens"] * b * s
                + w["prefill_attention"] * b * s * s
            )
            decode_s = (
                w["const"]
                + w["decode_steps"] * b
                + w["kv_read_tokens"] * b * (s + t / 2)
            )
            for predicted, measured_ms in (
                (prefill_s, float(row["prompt_time"])),
                (decode_s, float(row["token_time"])),
            ):
                errors.append(
                    abs(predicted - measured_ms / 1000) / (measured_ms / 1000)
                )
    assert len(errors) == 210
    mape = sum(errors) / len(errors)
    assert raw["fit_mape"] == pytest.approx(mape, rel=1e-9)
    assert mape < MAPE_BOUND
    assert load_profile(name).fit_mape == raw["fit_mape"]


def test_fit_script_regenerates_the_committed_files() -> None:
    """models/*.toml stay in sync with models/fit_splitwise.py."""
    _need_splitwise()
    spec = importlib.util.spec_from_file_location(
        "fit_splitwise", models_dir() / "fit_splitwise.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, hardware, tp in SPLITWISE_PROFILES:
        file_name, text = module.render(hardware, tp, SPLITWISE)
        assert file_name == f"{name}.toml"
        assert text == (models_dir() / file_name).read_text()


def test_fit_recovers_known_weights() -> None:
    rng = np.random.default_rng(3)
    truth = np.array([0.02, 1e-4, 5e-9, 3e-5, 4e-7, 0.01])
    m = 60
    features = np.column_stack(
        [
            np.ones(m),
            rng.integers(0, 5000, m),
            rng.integers(0, 5000, m) ** 2,
            rng.integers(0, 100, m),
            rng.integers(0, 100_000, m),
            rng.integers(0, 2, m),
        ]
    ).astype(float)
    time_s = features @ truth
    for relative in (True, False):
        fit = fit_iteration_time(features, time_s, relative=relative)
        np.testing.assert_allclose(fit.weights, truth, rtol=1e-6)
        assert fit.mape < 1e-8 and fit.n == m
        assert fit.columns == FEATURES


def test_fit_weights_are_non_negative_and_errors_consistent() -> None:
    # y = 1 - 0.001 * x: the best non-negative fit drops the negative slope
    x = np.arange(1.0, 11.0)
    features = np.zeros((10, 6))
    features[:, 0] = 1.0
    features[:, 1] = x
    time_s = 1.0 - 0.001 * x
    fit = fit_iteration_time(features, time_s, columns=["const", "prefill_tokens"])
    assert np.all(fit.weights >= 0)
    assert fit.weights[1] == 0.0
    residual = features @ fit.weights - time_s
    assert fit.max_ape == pytest.approx(np.max(np.abs(residual) / time_s))
    assert fit.rmse_s == pytest.approx(np.sqrt(np.mean(residual**2)))


def test_fit_rejects_bad_input() -> None:
    features = np.ones((3, 6))
    with pytest.raises(InputError) as info:
        fit_iteration_time(features, [1.0, 0.0, 1.0])
    assert info.value.field == "time_s"
    with pytest.raises(InputError) as info:
        fit_iteration_time(features, [1.0, 1.0, 1.0], columns=["batch"])
    assert info.value.field == "columns"
    with pytest.raises(InputError, match="at least as many"):
        fit_iteration_time(features[:2], [1.0, 1.0])


def test_features_csv(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("prefill_tokens,decode_steps,time_s\n100,0,0.5\n0,4,0.25\n")
    features, time_s = read_measurements(path)
    assert features.tolist() == [[1, 100, 0, 0, 0, 0], [1, 0, 0, 4, 0, 0]]
    assert time_s.tolist() == [0.5, 0.25]

    path.write_text("prefill_tokens,time_s\n100,0.5\n7,abc\n")
    with pytest.raises(InputError) as info:
        read_measurements(path)
    assert (info.value.line, info.value.field) == (3, "time_s")

    path.write_text("prefill_tokens,batch,time_s\n1,2,3\n")
    with pytest.raises(InputError) as info:
        read_measurements(path)
    assert (info.value.line, info.value.field) == (1, "batch")


def test_splitwise_reader_mapping(tmp_path: Path) -> None:
    path = tmp_path / "perf.csv"
    path.write_text(
        "model,hardware,prompt_size,batch_size,token_size,prompt_time,token_time,"
        "tensor_parallel\n"
        "m,h,512,2,128,100.0,30.0,4\n"
    )
    features, time_s = read_measurements(path, "splitwise")
    # prefill: P = 2*512, Q = 2*512^2, H = 1; decode: D = 2, K = 2*(512 + 64)
    assert features.tolist() == [
        [1, 1024, 524288, 0, 0, 1],
        [1, 0, 0, 2, 1152, 0],
    ]
    assert time_s.tolist() == [0.1, 0.03]


def test_splitwise_selection_must_be_unambiguous() -> None:
    _need_splitwise()
    with pytest.raises(InputError) as info:
        read_measurements(SPLITWISE, "splitwise", model="llama2-70b", tp=4)
    assert info.value.field == "hardware" and "a100-80gb" in info.value.message
    with pytest.raises(InputError, match="no rows with tensor_parallel"):
        read_measurements(
            SPLITWISE, "splitwise", model="llama2-70b", hardware="a100-80gb", tp=3
        )
    assert ("llama2-70b", "h100-80gb", 8) in splitwise_groups(SPLITWISE)
