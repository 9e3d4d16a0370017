"""Tests of `lsched models` and `lsched profile fit`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cli_helpers import assert_refused, must_not_run

from lsched.cli import main
from lsched.profile import list_profiles, load_profile, models_dir

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SPLITWISE = SHARED / "calibration" / "splitwise_perf_model.csv"
SELECT = ["--format", "splitwise", "--model", "llama2-70b", "--hardware", "h100-80gb"]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def _need_splitwise() -> None:
    if not SPLITWISE.is_file():
        pytest.skip(f"{SPLITWISE} is absent: Splitwise measurements not available")


def test_models_list_names_every_profile(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["models", "list"], capsys)
    assert code == 0
    files = sorted(p.stem for p in models_dir().glob("*.toml"))
    assert files == list_profiles()
    for name in files:
        assert name in out
    code, out, _ = _run(["models", "list", "--json"], capsys)
    assert code == 0
    assert [p["name"] for p in json.loads(out)["profiles"]] == files


@pytest.mark.parametrize("name", list_profiles())
def test_models_show_json_round_trips(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(["models", "show", name, "--json"], capsys)
    assert code == 0
    shown = json.loads(out)
    profile = load_profile(name)
    raw = tomllib.loads((models_dir() / f"{name}.toml").read_text())
    assert shown["name"] == name
    for key in (
        "block_tokens",
        "max_num_seqs",
        "max_num_batched_tokens",
        "max_model_len",
    ):
        assert shown[key] == raw[key]
    assert shown["replicas"] == raw.get("replicas", 1)
    assert shown["fit_mape"] == raw.get("fit_mape")
    hardware = raw["hardware"]
    assert shown["hardware"]["tensor_parallel"] == hardware.get("tensor_parallel", 1)
    assert shown["hardware"]["num_gpus"] == hardware["num_gpus"]
    assert shown["kv_capacity_tokens"] == profile.kv_capacity_tokens
    if "capacity_tokens" in raw["kv"]:
        assert shown["kv_capacity_tokens"] == raw["kv"]["capacity_tokens"]
    # the weights survive JSON exactly
    for r, weights in enumerate(profile.iteration_time.regimes):
        for p, piece in enumerate(weights):
            assert list(shown["iteration_time"]["regimes"][r][p].values()) == list(
                piece
            )


def test_models_show_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["models", "show", "opt-66b-a100-tp4-vllm"], capsys)
    assert code == 0
    assert "78,496" in out and "decode_steps" in out


def test_unknown_profile_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(["models", "show", "gpt-5-on-a-toaster"], capsys)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "gpt-5-on-a-toaster" in lines[0]
    for name in list_profiles():
        assert name in lines[0]


def test_broken_profile_path_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(__file__).resolve().parent / "data" / "profiles" / "wrong_type.toml"
    code, _, err = _run(["models", "show", str(path)], capsys)
    assert code == 2
    assert "block_tokens" in err and "Traceback" not in err


def test_profile_fit_splitwise(capsys: pytest.CaptureFixture[str]) -> None:
    _need_splitwise()
    code, out, _ = _run(
        ["profile", "fit", str(SPLITWISE), *SELECT, "--tp", "4"], capsys
    )
    assert code == 0
    mape = load_profile("llama2-70b-h100-tp4").fit_mape
    assert mape is not None
    assert f"MAPE {100 * mape:.2f} %" in out

    code, out, _ = _run(
        ["profile", "fit", str(SPLITWISE), *SELECT, "--tp", "4", "--json"], capsys
    )
    assert code == 0
    result = json.loads(out)
    assert result["mape"] == pytest.approx(mape, rel=1e-12)
    stored = load_profile("llama2-70b-h100-tp4").iteration_time.regimes[0][0]
    assert list(result["weights"].values()) == pytest.approx(list(stored), rel=1e-9)


def test_profile_fit_writes_profiles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _need_splitwise()
    full = tmp_path / "fitted.toml"
    argv = ["profile", "fit", str(SPLITWISE), *SELECT, "--tp", "8"]
    code, _, _ = _run(
        [*argv, "--base", "llama2-70b-h100-tp8", "--out", str(full)], capsys
    )
    assert code == 0
    fitted, original = load_profile(full), load_profile("llama2-70b-h100-tp8")
    assert fitted.kv_capacity_tokens == original.kv_capacity_tokens
    assert fitted.fit_mape == pytest.approx(original.fit_mape, rel=1e-12)

    fragment = tmp_path / "fragment.toml"
    code, _, _ = _run([*argv, "--out", str(fragment)], capsys)
    assert code == 0
    table = tomllib.loads(fragment.read_text())["iteration_time"]
    assert table["pieces"][0]["const"] == pytest.approx(
        original.iteration_time.regimes[0][0, 0], rel=1e-9
    )
    assert [p.name for p in tmp_path.iterdir()] != []  # no temp files left behind
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_profile_fit_ambiguous_selection(capsys: pytest.CaptureFixture[str]) -> None:
    _need_splitwise()
    code, _, err = _run(
        ["profile", "fit", str(SPLITWISE), "--format", "splitwise", "--tp", "4"],
        capsys,
    )
    assert code == 2
    assert "model" in err and "llama2-70b" in err


def test_profile_fit_features_csv_subprocess(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    # t = 0.01 + 0.001 * P exactly
    path.write_text("prefill_tokens,time_s\n0,0.01\n10,0.02\n20,0.03\n40,0.05\n")
    # lsched.cli has no __main__ module, so run main() through -c
    command = [sys.executable, "-c", "from lsched.cli import main; main()"]
    done = subprocess.run(
        [*command, "profile", "fit", str(path), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["weights"]["const"] == pytest.approx(0.01, rel=1e-9)
    assert result["weights"]["prefill_tokens"] == pytest.approx(0.001, rel=1e-9)
    assert result["mape"] < 1e-9


def test_user_profile_folders_come_first_and_names_are_listed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    text = (models_dir() / "unit-slot.toml").read_text(encoding="utf-8")
    (first / "unit-slot.toml").write_text(text, encoding="utf-8")
    (second / "unit-slot.toml").write_text(text, encoding="utf-8")
    (second / "extra-slot.toml").write_text(text, encoding="utf-8")
    monkeypatch.setenv("LSCHED_MODELS", os.pathsep.join([str(first), "", str(second)]))
    code, out, _ = _run(["models", "list", "--json"], capsys)
    assert code == 0
    listed = [(p["name"], p["path"]) for p in json.loads(out)["profiles"]]
    names = [name for name, _ in listed]
    assert names == sorted(set(names)) == list_profiles()
    paths = dict(listed)
    assert paths["unit-slot"] == str(first / "unit-slot.toml")
    assert paths["extra-slot"] == str(second / "extra-slot.toml")
    assert load_profile("extra-slot").path == str(second / "extra-slot.toml")


def test_missing_user_profile_folder_is_one_line_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LSCHED_MODELS", str(tmp_path / "nowhere"))
    code, _, err = _run(["models", "list"], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "LSCHED_MODELS" in err and "nowhere" in err


def test_fitted_profile_in_a_profile_folder_is_listed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    measurements = tmp_path / "m.csv"
    measurements.write_text("prefill_tokens,time_s\n0,0.01\n10,0.02\n20,0.03\n")
    folder = tmp_path / "profiles"
    folder.mkdir()
    out = folder / "my-gpu.toml"
    argv = ["profile", "fit", str(measurements), "--base", "llama2-70b-a100-tp4"]
    code, _, _ = _run([*argv, "--out", str(out)], capsys)
    assert code == 0
    assert load_profile(out).name == "my-gpu"
    monkeypatch.setenv("LSCHED_MODELS", str(folder))
    code, out_text, _ = _run(["models", "list", "--json"], capsys)
    assert code == 0
    names = [p["name"] for p in json.loads(out_text)["profiles"]]
    assert names.count("llama2-70b-a100-tp4") == 1
    assert names.count("my-gpu") == 1


# -- profile fit --out: never an input, its folder checked first --------------------

MEASUREMENTS = "prefill_tokens,time_s\n0,0.01\n10,0.02\n20,0.03\n"


def test_fit_out_onto_its_inputs_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    measurements = tmp_path / "m.csv"
    measurements.write_text(MEASUREMENTS)
    base = tmp_path / "base.toml"
    base.write_bytes((models_dir() / "unit-slot.toml").read_bytes())
    before = {p: p.read_bytes() for p in (measurements, base)}
    fit = ["profile", "fit", str(measurements)]
    code, out, err = _run([*fit, "--base", str(base), "--out", str(base)], capsys)
    assert_refused(code, out, err, "also an input", str(base), "'--out'")
    code, out, err = _run([*fit, "--out", str(measurements)], capsys)
    assert_refused(code, out, err, "'--out'", "expected .toml")
    assert {p: p.read_bytes() for p in before} == before


def test_fit_missing_out_folder_is_refused_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("lsched.cli.profile.read_measurements", must_not_run)
    measurements = tmp_path / "m.csv"
    measurements.write_text(MEASUREMENTS)
    target = tmp_path / "nowhere" / "fit.toml"
    code, out, err = _run(
        ["profile", "fit", str(measurements), "--out", str(target)], capsys
    )
    assert_refused(code, out, err, str(target), "no such folder")
