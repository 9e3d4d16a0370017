"""One set of argument checks (:mod:`lsched.checks`) for the CLI and the Python API.

Issue 20, part 6: each case the issue found accepted (or answered with a raw
traceback) is refused with one line naming the field and what was expected, on
the command line (exit 2) and in Python (:class:`InputError` with the field); the
same bad value gets the same message from both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import assert_refused, must_not_run, run

from lsched.checks import (
    check_int,
    check_number,
    check_policies,
    check_seed,
    parse_spec,
    read_text,
)
from lsched.cluster import Cluster, load_cluster
from lsched.comparison import compare, compare_cluster
from lsched.errors import InputError
from lsched.evaluator import simulate, simulate_cluster
from lsched.formulations.backends import solve
from lsched.formulations.bounds.suite import bound_report
from lsched.formulations.slot import SlotProblem, cpsat
from lsched.goodput import goodput
from lsched.instance import Instance
from lsched.policies import parse_policy
from lsched.predictors import apply_predictor
from lsched.profile import (
    IterationTime,
    list_profiles,
    load_profile,
)
from lsched.sweep import load_config
from lsched.traces import read_trace

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "instances" / "default.csv"
UNIT = ROOT / "models" / "unit-slot.toml"


@pytest.fixture(scope="module")
def instance() -> Instance:
    return read_trace(DEFAULT)[0]


@pytest.fixture(scope="module")
def profile() -> Any:
    return load_profile("unit-slot").replace(kv_capacity_tokens=48)


def _not_utf8(path: Path) -> Path:
    path.write_bytes(b'name = "x\xff"\n')
    return path


# -- options accepted without error ----------------------------------------------


@pytest.mark.parametrize(
    ("command", "option", "value", "field", "message"),
    [
        (
            "compare",
            "--time-limit",
            "-1",
            "'--time-limit'",
            "got -1.0; expected seconds > 0",
        ),
        ("compare", "--workers", "0", "'--workers'", "expected an integer >= 1"),
        (
            "bound",
            "--lp-time-limit",
            "-1",
            "'--lp-time-limit'",
            "expected seconds >= 0",
        ),
        ("solve", "--seed", "-1", "'--seed'", "expected an integer from 0 to"),
    ],
)
def test_a_bad_solver_option_is_refused_before_the_trace_is_read(
    command: str,
    option: str,
    value: str,
    field: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = "solve" if command == "solve" else "compare"  # bound lives in compare
    monkeypatch.setattr(f"lsched.cli.{module}.read_trace", must_not_run)
    args = [command, str(DEFAULT), "--model", "unit-slot", option, value]
    code, out, err = run(args, capsys)
    assert_refused(code, out, err, field, message)


def test_policy_spec_with_an_empty_parameter_list_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["simulate", str(DEFAULT), "--model", "unit-slot", "-p", "fcfs:"]
    code, out, err = run(args, capsys)
    assert_refused(code, out, err, "'policy'", "nothing after ':'")
    for spec in ("fcfs:", "sarathi:chunk=4,,", "sarathi:chunk=4,chunk=8", ":a=1"):
        with pytest.raises(InputError) as info:
            parse_policy(spec)
        assert info.value.field == "policy"


def test_the_same_set_field_twice_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    twice = ["--set", "kv_capacity_tokens=100", "--set", "kv_capacity_tokens=200"]
    args = ["simulate", str(DEFAULT), "--model", "unit-slot", *twice]
    code, out, err = run(args, capsys)
    assert_refused(code, out, err, "'--set kv_capacity_tokens'", "given twice")


@pytest.mark.parametrize("row", [b"0,4\x00,29", b"0,4,2\x00", b"0\x00,4,29"])
def test_a_nul_byte_inside_a_number_of_a_trace_is_refused(
    row: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "nul.csv"
    trace.write_bytes(b"arrival_s,prompt_tokens,output_tokens\n0,1,3\n" + row + b"\n")
    with pytest.raises(InputError, match="NUL byte") as info:
        read_trace(trace)
    assert (info.value.file, info.value.line) == (str(trace), 3)
    code, out, err = run(["simulate", str(trace), "--model", "unit-slot"], capsys)
    assert_refused(code, out, err, f"{trace}:3", "NUL byte")


def test_a_nul_byte_in_an_option_is_not_echoed_raw(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["simulate", str(DEFAULT), "--model", "unit-slot",
            "--set", "kv_capacity_tokens=10\x00"]  # fmt: skip
    code, out, err = run(args, capsys)
    assert_refused(code, out, err, "'--set kv_capacity_tokens'", "\\x00")
    assert "\x00" not in err


# -- the Python API ----------------------------------------------------------------


def test_instance_refuses_a_fractional_token_count() -> None:
    with pytest.raises(InputError, match=r"got 2\.7; expected an integer") as info:
        Instance(arrival_s=[0.0], prompt_tokens=[2.7], output_tokens=[3])
    assert info.value.field == "prompt_tokens"
    for bad in (["3"], [True], [np.nan]):
        with pytest.raises(InputError) as info:
            Instance(arrival_s=[0.0], prompt_tokens=[2], output_tokens=bad)
        assert info.value.field == "output_tokens"
    whole = Instance(arrival_s=[0], prompt_tokens=np.array([2.0]), output_tokens=[3])
    assert whole.prompt_tokens.dtype == np.int64 and whole.prompt_tokens[0] == 2


def test_compare_refuses_a_str_for_the_policies(
    instance: Instance, profile: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("lsched.comparison.bound_report", must_not_run)
    with pytest.raises(InputError, match=r"e\.g\. \['fcfs'\]") as info:
        compare(instance, profile, policies="fcfs")
    assert info.value.field == "policies"
    cluster = Cluster.colocated(profile, parse_policy("fcfs"))
    with pytest.raises(InputError) as info:
        compare_cluster(instance, cluster, policies="fcfs")
    assert info.value.field == "policies"
    assert check_policies(("fcfs", parse_policy("vllm")))[0] == "fcfs"


def _problem(instance: Instance, profile: Any) -> SlotProblem:
    return SlotProblem.from_instance(instance, profile)


#: An entry point called with one argument of the wrong type: the field named.
WRONG_TYPES: list[tuple[str, Callable[[Instance, Any], object], str]] = [
    ("simulate instance", lambda i, p: simulate("trace.csv", p, "fcfs"), "instance"),
    ("simulate profile", lambda i, p: simulate(i, "unit-slot", "fcfs"), "profile"),
    ("simulate replicas", lambda i, p: simulate(i, p, "fcfs", replicas="2"),
     "replicas"),
    ("simulate_cluster", lambda i, p: simulate_cluster(i, "cluster.toml"), "cluster"),
    ("compare instance", lambda i, p: compare([1, 2], p), "instance"),
    ("compare profile", lambda i, p: compare(i, None), "profile"),
    ("compare time_limit", lambda i, p: compare(i, p, time_limit="10"),
     "time_limit"),
    ("bound_report", lambda i, p: bound_report(i, "unit-slot"), "profile"),
    ("solve problem", lambda i, p: solve("problem"), "problem"),
    ("cpsat.solve seed", lambda i, p: cpsat.solve(_problem(i, p), seed=1.5), "seed"),
    ("SlotProblem", lambda i, p: SlotProblem.from_instance("trace.csv", p),
     "instance"),
    ("goodput slo", lambda i, p: goodput(i, Cluster.colocated(p, parse_policy("fcfs")),
                                         "ttft=1"), "slo"),
    ("goodput cluster", lambda i, p: goodput(i, p, None), "cluster"),
    ("load_config", lambda i, p: load_config(3), "config"),
    ("load_cluster", lambda i, p: load_cluster(None), "cluster"),
    ("load_profile", lambda i, p: load_profile(3), "profile"),
    ("apply_predictor", lambda i, p: apply_predictor(i, 3), "predictor"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "field"),
    [(c, f) for _, c, f in WRONG_TYPES],
    ids=[n for n, *_ in WRONG_TYPES],
)
def test_a_wrong_argument_type_is_an_input_error_naming_it(
    call: Callable[[Instance, Any], object],
    field: str,
    instance: Instance,
    profile: Any,
) -> None:
    with pytest.raises(InputError) as info:
        call(instance, profile)
    assert info.value.field == field
    assert "\n" not in str(info.value)


# -- files that are not UTF-8 --------------------------------------------------------


def test_a_profile_that_is_not_utf8_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _not_utf8(tmp_path / "bad.toml")
    with pytest.raises(InputError, match="0xff is not UTF-8") as info:
        load_profile(bad)
    assert (info.value.file, info.value.line) == (str(bad), 1)
    code, out, err = run(["simulate", str(DEFAULT), "--model", str(bad)], capsys)
    assert_refused(code, out, err, f"{bad}:1", "not UTF-8")


def test_a_sweep_config_that_is_not_utf8_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _not_utf8(tmp_path / "sweep.toml")
    code, out, err = run(["sweep", str(bad)], capsys)
    assert_refused(code, out, err, f"{bad}:1", "not UTF-8")


def test_a_cluster_file_that_is_not_utf8_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _not_utf8(tmp_path / "cluster.toml")
    code, out, err = run(["simulate", str(DEFAULT), "--cluster", str(bad)], capsys)
    assert_refused(code, out, err, f"{bad}:1", "not UTF-8")


@pytest.mark.parametrize("format_", ["features", "splitwise"])
def test_measurements_that_are_not_utf8_are_refused(
    format_: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "measured.csv"
    bad.write_bytes(b"const,time_s\n1,\xff\n")
    code, out, err = run(["profile", "fit", str(bad), "--format", format_], capsys)
    assert_refused(code, out, err, f"{bad}:2", "not UTF-8")


@pytest.mark.parametrize(
    ("name", "data", "format_"),
    [
        ("trace.csv", b"arrival_s,prompt_tokens,output_tokens\n0,1,\xff\n", None),
        ("azure.csv", b"TIMESTAMP,ContextTokens,GeneratedTokens\n1,\xff,3\n", "azure"),
        ("mooncake.jsonl", b'{"timestamp":1,"input_length":\xff}\n', "mooncake"),
    ],
)
def test_trace_readers_refuse_bytes_that_are_not_utf8(
    name: str, data: bytes, format_: str | None, tmp_path: Path
) -> None:
    bad = tmp_path / name
    bad.write_bytes(data)
    with pytest.raises(InputError, match="UTF-8") as info:
        read_trace(bad, format_)
    assert info.value.file == str(bad)


def test_read_text_names_the_line_of_the_bad_byte(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_bytes(b"one\ntwo\nthr\xe9e\n")
    with pytest.raises(InputError, match="0xe9") as info:
        read_text(bad, "notes")
    assert info.value.line == 3


# -- profiles: every batch takes a positive time -------------------------------------


def test_a_negative_iteration_time_is_refused_at_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    negative = tmp_path / "negative.toml"
    negative.write_text(
        UNIT.read_text(encoding="utf-8").replace("const = 1.0", "const = -1.0"),
        encoding="utf-8",
    )
    with pytest.raises(InputError, match="one decode step can take -1 s") as info:
        load_profile(negative)
    assert info.value.field == "iteration_time.regimes[0]"
    code, out, err = run(["simulate", str(DEFAULT), "--model", str(negative)], capsys)
    assert_refused(code, out, err, str(negative), "iteration_time.regimes[0]")


@pytest.mark.parametrize(
    ("weights", "what"),
    [
        ([0.0, 1.0, 0.0, -2.0, 1.0, 0.0], "one more decode step"),  # D grows: < 0
        ([1.0, -1.0, 0.0, 0.0, 0.0, 0.0], "one more prefill token"),
        ([1.0, 0.0, 0.0, 0.0, 0.0, -1.0], "a batch of one prefill token"),
        ([1.0, 1e-3, -1e-6, 0.0, 0.0, 0.0], "one more prefill token"),  # L = 2048
    ],
)
def test_the_rule_refuses_any_batch_that_takes_no_time(
    weights: list[float], what: str
) -> None:
    unit = load_profile("unit-slot").replace(max_model_len=2048)
    with pytest.raises(InputError, match=what):
        unit.replace(iteration_time=IterationTime((np.array([weights]),)))


def test_shipped_profiles_with_negative_weights_still_load() -> None:
    negative = []
    for name in list_profiles():
        profile = load_profile(name)  # raises if the rule refused it
        if any((w < 0).any() for w in profile.iteration_time.regimes):
            negative.append(name)
    # DistServe's fits: has_prefill < 0 (prefill constant below the decode one)
    # and prefill_attention < 0 (concave up to max_model_len), both sound
    assert "opt-66b-a100-tp2-vllm" in negative
    assert "opt-13b-a100-tp1-distserve" in negative


# -- leftovers of part 7 -------------------------------------------------------------


def test_highs_prints_no_banner() -> None:
    """``lsched bound`` solves LPs with HiGHS: nothing of it on stdout or stderr
    (a fresh process: the banner is printed once per process)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "lsched.cli", "bound", str(DEFAULT),
            "--model", "unit-slot", "--limit", "3", "--json"]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, env=env, check=True)
    assert "HiGHS" not in done.stderr + done.stdout
    # stderr holds only lsched's own "started" line (the progress line for a
    # stderr that is no terminal)
    assert [line for line in done.stderr.splitlines() if "started" not in line] == []


def test_mc_sf_without_predictions_suggests_the_predictor_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["simulate", str(DEFAULT), "--model", "unit-slot", "-p", "mc-sf"]
    code, _, err = run(args, capsys)
    assert code == 2
    assert "--predictor oracle" in err and "Traceback" not in err


# -- the same message from the CLI and the Python API --------------------------------


#: (CLI arguments, their option; the Python call, its field): the same bad value.
SHARED: list[tuple[str, list[str], str, Callable[[Instance, Any], object], str]] = [
    ("time limit", ["compare", "--time-limit", "-1"], "--time-limit",
     lambda i, p: compare(i, p, time_limit=-1), "time_limit"),
    ("lp time limit", ["bound", "--lp-time-limit", "-0.5"], "--lp-time-limit",
     lambda i, p: bound_report(i, p, lp_time_limit=-0.5), "lp_time_limit"),
    ("seed", ["solve", "--seed", "-1"], "--seed",
     lambda i, p: solve(_problem(i, p), seed=-1), "seed"),
    ("seed too large", ["compare", "--seed", str(2**31)], "--seed",
     lambda i, p: compare(i, p, seed=2**31), "seed"),
    ("workers", ["compare", "--workers", "0"], "--workers",
     lambda i, p: compare(i, p, num_workers=0), "num_workers"),
    ("solve workers", ["solve", "--workers", "0"], "--workers",
     lambda i, p: cpsat.solve(_problem(i, p), num_workers=0), "num_workers"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "option", "call", "field"),
    [case[1:] for case in SHARED],
    ids=[case[0] for case in SHARED],
)
def test_the_cli_and_the_api_say_the_same(
    args: list[str],
    option: str,
    call: Callable[[Instance, Any], object],
    field: str,
    instance: Instance,
    profile: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(InputError) as info:
        call(instance, profile)
    assert info.value.field == field
    command, *rest = args
    code, out, err = run([command, str(DEFAULT), "--model", "unit-slot", *rest], capsys)
    assert_refused(code, out, err, f"field '{option}': {info.value.message}")


# -- the checks themselves -----------------------------------------------------------


def test_the_checks_refuse_bools_and_lossy_conversions() -> None:
    assert check_int(np.int32(3), "n", 1) == 3
    for bad in (True, 2.0, "2", None):
        with pytest.raises(InputError, match="expected an integer") as info:
            check_int(bad, "n", 1)
        assert info.value.field == "n"
    assert check_number(np.float32(0.5), "x", 0, strict=True) == 0.5
    for bad, text in ((True, "a number"), (float("inf"), "finite"), (0, "> 0")):
        with pytest.raises(InputError, match=text):
            check_number(bad, "x", 0, strict=True)
    assert check_seed(2**31 - 1) == 2**31 - 1
    assert parse_spec(" noise : sigma = 0.5 , seed=1 ", "predictor") == (
        "noise",
        {"sigma": "0.5", "seed": "1"},
    )
