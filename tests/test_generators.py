"""Tests of lsched.generators and `lsched trace gen`.

Statistical checks use fixed seeds (so they are deterministic) and tolerances of
about five standard errors of the statistic at the sample size used, so that a
correct generator passes for essentially any seed while a wrong parameter (a
rate off by 10 %, a mean used as a median, ...) fails.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from lsched.errors import InputError
from lsched.generators import (
    AllAtZero,
    Fixed,
    Gamma,
    LogNormal,
    Poisson,
    UniformInt,
    arrivals_from_params,
    generate,
    gsm8k,
    jaillet,
    length_from_params,
    lengths_digest,
    parse_length_spec,
    regenerate,
    resample,
)
from lsched.instance import Instance

# -- arrivals ---------------------------------------------------------------------


def _gaps(process, n: int, seed: int) -> np.ndarray:
    times = process.sample(n, np.random.default_rng(seed))
    assert times[0] == 0.0
    assert np.all(np.diff(times) >= 0)
    return np.diff(times)


def test_all_at_zero() -> None:
    assert np.array_equal(AllAtZero().sample(5, np.random.default_rng(0)), np.zeros(5))


def test_poisson_gap_mean_and_cv() -> None:
    rate, gaps = 4.0, _gaps(Poisson(rate_per_s=4.0), 20_001, seed=11)
    assert len(gaps) == 20_000
    # exponential gaps: sd = mean, so the sample mean has relative standard error
    # 1/sqrt(20000) = 0.71 %; 4 % is ~5.7 standard errors
    assert abs(gaps.mean() * rate - 1) < 0.04
    # the sample CV of exponential gaps has standard error ~ sqrt(2 / n) = 0.01
    assert abs(gaps.std() / gaps.mean() - 1) < 0.05


def test_gamma_gap_mean_and_cv() -> None:
    rate, cv = 2.0, 2.0
    gaps = _gaps(Gamma(rate_per_s=rate, cv=cv), 50_001, seed=12)
    # CV 2: the mean's relative standard error is 2 / sqrt(50000) = 0.9 %
    assert abs(gaps.mean() * rate - 1) < 0.05
    # shape 1/4 has kurtosis 3 + 6 * 4 = 27, so sd/sigma has standard error
    # ~ sqrt(26 / n) / 2 = 1.1 %; 8 % relative on the CV leaves ~5 standard errors
    # for it and the mean's error together
    assert abs(gaps.std() / gaps.mean() / cv - 1) < 0.08


def test_gamma_is_burstier_than_poisson_at_equal_rate() -> None:
    poisson = _gaps(Poisson(rate_per_s=1.0), 5_001, seed=1)
    bursty = _gaps(Gamma(rate_per_s=1.0, cv=3.0), 5_001, seed=1)
    assert bursty.std() > 2 * poisson.std()


def test_arrivals_are_rounded_to_microseconds() -> None:
    times = Poisson(rate_per_s=3.0).sample(100, np.random.default_rng(5))
    assert np.array_equal(times, np.round(times, 6))


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: Poisson(rate_per_s=0.0), "rate_per_s"),
        (lambda: Poisson(rate_per_s=float("inf")), "rate_per_s"),
        (lambda: Poisson(rate_per_s="2"), "rate_per_s"),
        (lambda: Gamma(rate_per_s=1.0, cv=0.0), "cv"),
        (lambda: Gamma(rate_per_s=-1.0, cv=1.0), "rate_per_s"),
    ],
)
def test_arrival_parameters_are_validated(make, field: str) -> None:
    with pytest.raises(InputError) as info:
        make()
    assert info.value.field == field


def test_arrivals_params_round_trip() -> None:
    for process in (AllAtZero(), Poisson(rate_per_s=2.5), Gamma(rate_per_s=1, cv=2)):
        params = json.loads(json.dumps(process.to_params()))
        assert arrivals_from_params(params) == process
    with pytest.raises(InputError) as info:
        arrivals_from_params({"kind": "poisson", "rate": 2.0})
    assert info.value.field == "arrivals.rate_per_s"  # the missing key is named


# -- lengths ----------------------------------------------------------------------


def test_fixed_and_uniform_bounds() -> None:
    rng = np.random.default_rng(3)
    assert set(Fixed(7).sample(50, rng).tolist()) == {7}
    draws = UniformInt(3, 9).sample(20_000, rng)
    # both bounds inclusive: every value 3..9 occurs (each has ~2,857 expected)
    assert set(draws.tolist()) == set(range(3, 10))
    # mean 6, sd 2 -> standard error 2 / sqrt(20000) = 0.014
    assert abs(draws.mean() - 6.0) < 0.07


def test_lognormal_median_and_log_sd() -> None:
    median, sigma = 512.0, 1.0
    draws = LogNormal(median=median, sigma=sigma).sample(
        20_000, np.random.default_rng(4)
    )
    # the sample median of log L has standard error sigma * sqrt(pi / 2) / sqrt(n)
    # = 0.0089, i.e. 0.9 % on the median; 5 % is > 5 standard errors
    assert abs(np.median(draws) / median - 1) < 0.05
    # sd of log L: standard error sigma / sqrt(2 n) = 0.005
    assert abs(np.log(draws).std() - sigma) < 0.03
    assert draws.min() >= 1


def test_lognormal_clips_to_bounds() -> None:
    dist = LogNormal(median=3.0, sigma=3.0, max_tokens=50)
    draws = dist.sample(5_000, np.random.default_rng(6))
    assert draws.min() == 1 and draws.max() == 50  # both clips are reached


def test_lognormal_from_mean_cv() -> None:
    dist = LogNormal.from_mean_cv(mean=200.0, cv=0.5)
    # hand-derived: sigma^2 = ln(1.25), median = 200 / sqrt(1.25)
    assert dist.sigma == pytest.approx(math.sqrt(math.log(1.25)))
    assert dist.median == pytest.approx(178.885438)
    draws = dist.sample(20_000, np.random.default_rng(7))
    # sd 100 -> standard error of the mean 0.71 = 0.35 %; rounding to integers
    # moves the mean by far less than 2 %
    assert abs(draws.mean() / 200.0 - 1) < 0.02
    assert abs(draws.std() / draws.mean() - 0.5) < 0.03


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: Fixed(0), "tokens"),
        (lambda: Fixed(True), "tokens"),
        (lambda: Fixed(2.5), "tokens"),
        (lambda: UniformInt(0, 3), "low"),
        (lambda: UniformInt(5, 3), "high"),
        (lambda: LogNormal(median=0.0, sigma=1.0), "median"),
        (lambda: LogNormal(median=10.0, sigma=-0.1), "sigma"),
        (lambda: LogNormal(median=10.0, sigma=1.0, max_tokens=0), "max_tokens"),
        (lambda: LogNormal.from_mean_cv(mean=-1.0, cv=1.0), "mean"),
    ],
)
def test_length_parameters_are_validated(make, field: str) -> None:
    with pytest.raises(InputError) as info:
        make()
    assert info.value.field == field


@pytest.mark.parametrize(
    "dist",
    [Fixed(12), UniformInt(1, 5), LogNormal(512.0, 1.0), LogNormal(3.5, 0.25, 99)],
)
def test_spec_and_params_round_trip(dist) -> None:
    assert parse_length_spec(dist.spec) == dist
    assert length_from_params(json.loads(json.dumps(dist.to_params()))) == dist


def test_spec_parsing_mean_cv_form() -> None:
    dist = parse_length_spec("lognormal:mean=200,cv=0.5,max=1000")
    assert dist == LogNormal.from_mean_cv(200.0, 0.5, 1000)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("lognormal:median=abc,sigma=1", "median='abc'; expected a number"),
        ("lognormal:median=512", "missing key 'sigma'"),
        ("lognormal:median=512,sigma=1,mean=3", "unknown key"),
        ("gaussian:mean=3", "expected one of"),
        ("uniform:low=1,high", "expected key=value"),
        ("uniform:low=1,high=2.5", "high='2.5'; expected an integer"),
        ("uniform:low=4,high=2", "expected high >= low"),
        ("fixed:tokens=1,tokens=2", "given twice"),
        ("lognormal:median=-5,sigma=1", "median"),
    ],
)
def test_bad_specs_name_the_option(spec: str, fragment: str) -> None:
    with pytest.raises(InputError) as info:
        parse_length_spec(spec, option="--prompt")
    assert info.value.field == "--prompt"
    assert fragment in info.value.message
    assert "\n" not in str(info.value)


# -- families ---------------------------------------------------------------------


def _same(a: Instance, b: Instance) -> bool:
    return a == b and a is not b


def test_same_seed_same_instance_different_seed_different() -> None:
    makers = [
        lambda seed: jaillet(30, seed=seed),
        lambda seed: jaillet(30, seed=seed, arrivals=Poisson(1.0)),
        lambda seed: gsm8k(30, seed=seed),
        lambda seed: generate(
            30,
            arrivals=Gamma(2.0, 3.0),
            prompt=UniformInt(1, 100),
            output=LogNormal(50.0, 1.0),
            seed=seed,
        ),
    ]
    for make in makers:
        assert _same(make(3), make(3))
        a, b = make(3), make(4)
        assert not np.array_equal(
            np.stack([a.prompt_tokens, a.output_tokens]),
            np.stack([b.prompt_tokens, b.output_tokens]),
        )


def test_jaillet_bounds_on_many_seeds() -> None:
    capacities = set()
    for seed in range(300):
        inst = jaillet(40, seed=seed)
        m = inst.params["kv_capacity_tokens"]
        capacities.add(m)
        s, o = inst.prompt_tokens, inst.output_tokens
        assert 30 <= m <= 50
        assert s.min() >= 1 and s.max() <= 5
        assert o.min() >= 1 and np.all(o <= m - s)
        assert np.all(inst.arrival_s == 0.0)
        assert inst.family == "jaillet" and inst.seed == seed
    # M ~ U{30..50}: with 300 draws every value occurs unless P ~ 21 (20/21)^300
    assert capacities == set(range(30, 51))


def test_jaillet_output_is_uniform_up_to_m_minus_s() -> None:
    inst = jaillet(40_000, seed=1, kv_capacity_tokens=40)
    s, o = inst.prompt_tokens, inst.output_tokens
    assert set(s.tolist()) == {1, 2, 3, 4, 5}
    for size in (1, 5):
        outs = o[s == size]
        # o ~ U{1..40 - s}: both ends reached, mean (41 - s) / 2; sd ~ 11 over
        # ~8,000 draws gives a standard error of 0.13
        assert outs.min() == 1 and outs.max() == 40 - size
        assert abs(outs.mean() - (41 - size) / 2) < 0.7


def test_jaillet_fixed_capacity_keeps_other_draws() -> None:
    free = jaillet(20, seed=9)
    fixed = jaillet(20, seed=9, kv_capacity_tokens=free.params["kv_capacity_tokens"])
    assert fixed == free
    with pytest.raises(InputError) as info:
        jaillet(5, seed=0, kv_capacity_tokens=5)  # M - 5 = 0 leaves no output room
    assert info.value.field == "kv_capacity_tokens"


def test_gsm8k_lengths() -> None:
    inst = gsm8k(20_000, seed=2)
    question = inst.prompt_tokens - 680
    assert question.min() >= 1
    # log-normal medians: standard error ~ 0.35 * 1.25 / sqrt(20000) = 0.3 %
    assert abs(np.median(question) / 80 - 1) < 0.03
    assert abs(np.median(inst.output_tokens) / 75 - 1) < 0.03
    assert inst.output_tokens.max() <= 256
    assert np.all(inst.arrival_s == 0.0)


def test_streams_are_independent_across_ingredients() -> None:
    kwargs = {"prompt": UniformInt(1, 1000), "output": UniformInt(1, 1000), "seed": 5}
    offline = generate(50, **kwargs)
    online = generate(50, arrivals=Poisson(rate_per_s=3.0), **kwargs)
    assert np.array_equal(offline.prompt_tokens, online.prompt_tokens)
    assert np.array_equal(offline.output_tokens, online.output_tokens)
    assert np.all(offline.arrival_s == 0) and online.arrival_s[-1] > 0


def test_resample_keeps_source_pairs() -> None:
    rng = np.random.default_rng(0)
    prompts = rng.integers(1, 10_000, size=200)
    source = Instance(
        arrival_s=np.arange(200) * 0.5,
        prompt_tokens=prompts,
        output_tokens=2 * prompts + 1,  # a deterministic pairing to preserve
        name="src",
    )
    inst = resample(source, 1_000, seed=4)
    pairs = set(
        zip(source.prompt_tokens.tolist(), source.output_tokens.tolist(), strict=True)
    )
    drawn = set(
        zip(inst.prompt_tokens.tolist(), inst.output_tokens.tolist(), strict=True)
    )
    assert drawn <= pairs
    assert np.array_equal(inst.output_tokens, 2 * inst.prompt_tokens + 1)
    assert len(drawn) > 150  # a bootstrap, not one row repeated
    # default arrivals: Poisson at the source's mean rate (199 gaps over 99.5 s)
    assert inst.params["arrivals"] == {"kind": "poisson", "rate_per_s": 2.0}
    assert inst.params["source_digest"] == lengths_digest(source)


def test_params_are_json_and_regenerate_every_family() -> None:
    source = generate(40, prompt=UniformInt(1, 9), output=Fixed(3), seed=0)
    made = [
        jaillet(12, seed=1, arrivals=Poisson(0.5)),
        gsm8k(12, seed=2, output=UniformInt(5, 10)),
        generate(
            12,
            arrivals=Gamma(1.0, 2.0),
            prompt=LogNormal.from_mean_cv(50, 1),
            output=Fixed(4),
            seed=3,
            name="custom",
        ),
        resample(source, 12, seed=4),
    ]
    for inst in made:
        params = json.loads(json.dumps(dict(inst.params)))  # JSON-like: lossless
        assert params == dict(inst.params)
        again = regenerate(
            inst.family,
            n=len(inst),
            seed=inst.seed,
            params=params,
            name=inst.name,
            source=source,
        )
        assert _same(again, inst)


def test_regenerate_rejects_unknown_family_and_wrong_source() -> None:
    with pytest.raises(InputError) as info:
        regenerate("nope", n=1, seed=0, params={})
    assert info.value.field == "family"
    source = generate(10, prompt=Fixed(1), output=Fixed(2), seed=0)
    other = generate(10, prompt=Fixed(1), output=Fixed(3), seed=0)
    inst = resample(source, 5, seed=0)
    with pytest.raises(InputError) as info:
        regenerate("resample", n=5, seed=0, params=inst.params, source=other)
    assert info.value.field == "params.source_digest"


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: jaillet(0, seed=0), "n"),
        (lambda: jaillet(3, seed=-1), "seed"),
        (lambda: gsm8k(3, seed=0, few_shot_tokens=-1), "few_shot_tokens"),
        (
            lambda: generate(3, prompt={"kind": "fixed"}, output=Fixed(1), seed=0),
            "prompt.tokens",
        ),
        (
            lambda: generate(
                3,
                prompt=Fixed(1),
                output=Fixed(1),
                seed=0,
                arrivals={"kind": "poisson", "rate_per_s": -2},
            ),
            "arrivals.rate_per_s",
        ),
    ],
)
def test_family_arguments_are_validated(call, field: str) -> None:
    with pytest.raises(InputError) as info:
        call()
    assert info.value.field == field


# -- CLI --------------------------------------------------------------------------


@pytest.fixture
def traces():
    """The trace reader/writer module (written by another task)."""
    module = pytest.importorskip("lsched.traces", reason="lsched.traces is absent")
    if not all(hasattr(module, f) for f in ("read_trace", "write_trace")):
        pytest.skip("lsched.traces has no read_trace/write_trace yet")
    return module


def _app() -> typer.Typer:
    """A throwaway `trace` app with `gen` registered (no shared CLI state)."""
    from lsched.cli.trace_gen import register

    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:  # a callback keeps `gen` a named subcommand
        pass

    return app


def _gen(args: list[str]):
    return CliRunner().invoke(_app(), ["gen", *args])


def test_cli_writes_what_the_generator_makes(tmp_path, traces) -> None:
    out = tmp_path / "j.csv"
    result = _gen(["jaillet", "--n", "10", "--seed", "3", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    expected = jaillet(10, seed=3)
    instance, _report = traces.read_trace(out)
    assert instance == expected
    summary = json.loads(result.stdout)
    assert summary["n"] == 10 and summary["family"] == "jaillet"
    assert summary["params"] == dict(expected.params)
    # independent look at the file: metadata line, header, one row per request
    with out.open(newline="") as handle:
        lines = handle.read().splitlines()
    assert lines[0].startswith("# lsched")
    rows = list(csv.DictReader(lines[1:]))
    assert [int(r["prompt_tokens"]) for r in rows] == expected.prompt_tokens.tolist()
    assert [int(r["output_tokens"]) for r in rows] == expected.output_tokens.tolist()


def test_cli_poisson_parquet_round_trip(tmp_path, traces) -> None:
    out = tmp_path / "p.parquet"
    args = [
        "poisson",
        "--n",
        "50",
        "--seed",
        "1",
        "--rate",
        "2",
        "--cv",
        "3",
        "--prompt",
        "lognormal:median=512,sigma=1.0,max=4096",
        "--output",
        "uniform:low=1,high=64",
        "--out",
        str(out),
    ]
    result = _gen(args)
    assert result.exit_code == 0, result.output
    expected = generate(
        50,
        arrivals=Gamma(2.0, 3.0),
        prompt=LogNormal(512.0, 1.0, 4096),
        output=UniformInt(1, 64),
        seed=1,
    )
    assert traces.read_trace(out)[0] == expected


def test_cli_resample_from_a_trace_file(tmp_path, traces) -> None:
    source = generate(
        30,
        arrivals=Poisson(1.0),
        prompt=UniformInt(1, 50),
        output=UniformInt(1, 50),
        seed=0,
    )
    src = tmp_path / "src.csv"
    traces.write_trace(source, src)
    out = tmp_path / "r.csv"
    result = _gen(["resample", "--source", str(src), "--n", "20", "--out", str(out)])
    assert result.exit_code == 0, result.output
    made = traces.read_trace(out)[0]
    pairs = set(
        zip(source.prompt_tokens.tolist(), source.output_tokens.tolist(), strict=True)
    )
    assert (
        set(zip(made.prompt_tokens.tolist(), made.output_tokens.tolist(), strict=True))
        <= pairs
    )
    # the manifest-style check: the recorded params rebuild it from the file
    again = regenerate("resample", n=20, seed=0, params=made.params, name=made.name)
    assert again == made


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (
            [
                "poisson",
                "--rate",
                "2",
                "--prompt",
                "lognormal:median=abc,sigma=1",
                "--output",
                "fixed:tokens=3",
            ],
            "--prompt",
        ),
        (
            ["poisson", "--prompt", "fixed:tokens=3", "--output", "fixed:tokens=3"],
            "--rate",
        ),
        (["jaillet", "--prompt", "fixed:tokens=3"], "--prompt"),
        (["jaillet", "--cv", "2"], "--cv"),
        (["jaillet", "--n", "0"], "--n"),
        (["gsm8k", "--rate", "-1"], "--rate"),
        (["resample"], "--source"),
        (["nosuch"], "FAMILY"),
    ],
)
def test_cli_bad_input_is_an_input_error(tmp_path, traces, args, field) -> None:
    out = tmp_path / "x.csv"
    result = _gen([*args, "--out", str(out)])
    assert isinstance(result.exception, InputError), result.output
    assert result.exception.field == field
    assert "\n" not in str(result.exception)
    assert not out.exists()


# Through lsched.cli.main in a child process: until the lead wires `gen` into
# lsched/cli/trace.py the child registers it itself, so no test mutates the CLI
# objects of this process.
_MAIN = """
import sys
from lsched.cli import main, trace
from lsched.cli.trace_gen import register
if not any(c.name == "gen" for c in trace.app.registered_commands):
    register(trace.app)
main(sys.argv[1:])
"""


def _main(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _MAIN, "trace", "gen", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_main_bad_spec_exits_2_with_one_line(tmp_path) -> None:
    out = tmp_path / "x.csv"
    done = _main(["poisson", "--rate", "2", "--prompt", "lognormal:median=abc,sigma=1",
                  "--output", "fixed:tokens=3", "--out", str(out)])  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "--prompt" in lines[0] and "median='abc'" in lines[0]
    assert not out.exists()


def test_main_writes_a_file(tmp_path, traces) -> None:
    out = tmp_path / "g.csv"
    done = _main(["gsm8k", "--n", "20", "--seed", "7", "--out", str(out), "--json"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["n"] == 20
    assert traces.read_trace(out)[0] == gsm8k(20, seed=7)
