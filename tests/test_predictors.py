"""Output-length predictors: exactness, seeding, and noise statistics.

Statistical tolerances are 5 standard errors of the estimate for the sample size
used (a false failure has probability below 1e-6 per check), computed in each test
from the same n.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lsched import predictors
from lsched.errors import InputError
from lsched.instance import Instance

N = 20_000


def _instance(output: list[int] | np.ndarray) -> Instance:
    n = len(output)
    return Instance(np.zeros(n), np.full(n, 3), output, params={"kept": 1})


def test_oracle_is_exact_and_keeps_the_rest() -> None:
    inst = _instance([1, 7, 300])
    got = predictors.oracle(inst)
    assert got.predicted_output_tokens.tolist() == [1, 7, 300]
    assert got.output_tokens.tolist() == [1, 7, 300]
    assert got.params["kept"] == 1
    assert got.params["predictor"] == {"name": "oracle"}
    assert inst.predicted_output_tokens is None  # a new instance, input untouched


def test_lognormal_noise_is_median_unbiased_with_the_asked_spread() -> None:
    # o = 10_000: rounding moves log(pred / o) by at most 5e-5, far below the SEs
    sigma = 0.5
    inst = _instance(np.full(N, 10_000))
    pred = predictors.lognormal_noise(inst, sigma, seed=3).predicted_output_tokens
    log_ratio = np.log(pred / 10_000)
    se_mean = sigma / math.sqrt(N)
    se_std = sigma / math.sqrt(2 * N)
    assert abs(log_ratio.mean()) < 5 * se_mean
    assert abs(log_ratio.std() - sigma) < 5 * se_std
    # median-unbiased: P(pred > o) = 1/2, binomial SE sqrt(1/4 / N)
    above = float(np.mean(pred > 10_000))
    assert abs(above - 0.5) < 5 * math.sqrt(0.25 / N)


def test_lognormal_noise_is_seeded_clipped_and_zero_sigma_is_exact() -> None:
    inst = _instance(np.arange(1, 201))
    a = predictors.lognormal_noise(inst, 1.0, seed=1).predicted_output_tokens
    b = predictors.lognormal_noise(inst, 1.0, seed=1).predicted_output_tokens
    c = predictors.lognormal_noise(inst, 1.0, seed=2).predicted_output_tokens
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()
    huge = predictors.lognormal_noise(inst, 30.0, seed=0).predicted_output_tokens
    assert huge.min() == 1  # exp(-30 z) rounds to 0 for some: clipped to 1
    zero = predictors.lognormal_noise(inst, 0.0, seed=5)
    assert zero.predicted_output_tokens.tolist() == inst.output_tokens.tolist()
    assert zero.params["predictor"] == {
        "name": "lognormal_noise",
        "sigma": 0.0,
        "seed": 5,
    }


def test_buckets_predict_the_upper_edge_of_the_class() -> None:
    inst = _instance([1, 10, 11, 50, 51, 100, 101, 5000])
    got = predictors.buckets(inst, [10, 50, 100])
    # classes [1, 10], [11, 50], [51, 100], open > 100 (predicted 100)
    assert got.predicted_output_tokens.tolist() == [10, 10, 50, 50, 100, 100, 100, 100]
    assert got.params["predictor"] == {"name": "buckets", "edges": [10, 50, 100]}


@pytest.mark.parametrize("edges", [[], [0, 5], [5, 5], [9, 3], [2.5], [True]], ids=repr)
def test_buckets_reject_bad_edges(edges: list) -> None:
    with pytest.raises(InputError) as err:
        predictors.buckets(_instance([4]), edges)
    assert err.value.field == "edges"


def test_interval_contains_the_truth_and_predicts_its_upper_end() -> None:
    width = 2.0
    o = np.random.default_rng(0).integers(1, 2000, size=N)
    inst = _instance(o)
    lo, hi = predictors.interval_bounds(inst, width, seed=4)
    assert np.all((lo >= 1) & (lo <= o) & (o <= hi))
    assert np.all(hi <= np.ceil(width * o))
    got = predictors.interval(inst, width, seed=4)
    assert got.predicted_output_tokens.tolist() == hi.tolist()
    assert got.params["predictor"] == {"name": "interval", "width": 2.0, "seed": 4}
    # o sits at a uniform position on the log scale: log(hi / o) / log(width) is
    # U(0, 1) before rounding (mean 1/2, SE sqrt(1/12 / N)); big o only, where
    # rounding moves it by < 0.002
    big = o >= 1000
    pos = np.log(hi[big] / o[big]) / math.log(width)
    assert abs(pos.mean() - 0.5) < 5 * math.sqrt(1 / 12 / big.sum()) + 0.002


def test_interval_of_width_one_is_the_oracle() -> None:
    inst = _instance([1, 2, 999])
    lo, hi = predictors.interval_bounds(inst, 1.0, seed=0)
    assert lo.tolist() == hi.tolist() == [1, 2, 999]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda i: predictors.lognormal_noise(i, -0.1, 0), "sigma"),
        (lambda i: predictors.lognormal_noise(i, math.inf, 0), "sigma"),
        (lambda i: predictors.lognormal_noise(i, 0.5, -1), "seed"),
        (lambda i: predictors.interval(i, 0.5, 0), "width"),
        (lambda i: predictors.interval(i, 2.0, 1.5), "seed"),
    ],
)
def test_bad_arguments_name_the_parameter(call, field: str) -> None:
    with pytest.raises(InputError) as err:
        call(_instance([4]))
    assert err.value.field == field
