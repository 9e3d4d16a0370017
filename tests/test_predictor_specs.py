"""Predictors named as on the command line (`lsched simulate --predictor`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lsched import InputError, Instance
from lsched.cli import main
from lsched.predictors import apply_predictor, lognormal_noise

INSTANCE = Instance([0.0, 0.0, 1.0], [2, 3, 4], [5, 50, 500])


def test_specs_match_the_functions() -> None:
    oracle = apply_predictor(INSTANCE, "oracle")
    assert oracle.predicted_output_tokens.tolist() == [5, 50, 500]
    noisy = apply_predictor(INSTANCE, "noise:sigma=0.5,seed=3")
    expected = lognormal_noise(INSTANCE, 0.5, 3).predicted_output_tokens
    assert np.array_equal(noisy.predicted_output_tokens, expected)
    bucketed = apply_predictor(INSTANCE, "buckets:edges=10/100/1000")
    assert bucketed.predicted_output_tokens.tolist() == [10, 100, 1000]
    wide = apply_predictor(INSTANCE, "interval:width=2,seed=1").predicted_output_tokens
    assert np.all(wide >= INSTANCE.output_tokens)
    assert np.all(wide <= np.ceil(2 * INSTANCE.output_tokens))


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("psychic", "unknown predictor 'psychic'"),
        ("noise:sigma=x", "could not convert"),
        ("noise:mu=1", "unknown parameter(s) ['mu']"),
        ("noise:sigma", "expected key=value"),
    ],
)
def test_bad_specs_name_the_problem(spec: str, needle: str) -> None:
    with pytest.raises(InputError, match="predictor") as info:
        apply_predictor(INSTANCE, spec)
    assert needle in str(info.value)


def test_cli_gives_length_aware_policies_their_predictions(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,2,5\n0,3,9\n")
    args = ["simulate", str(trace), "--model", "unit-slot", "--policy", "mc-sf"]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2  # no predictions: a clear error, not a traceback
    assert "predicted_output_tokens" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([*args, "--predictor", "oracle", "--json"])
    assert info.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["policies"][0]["metrics"]["num_completed"] == 2
