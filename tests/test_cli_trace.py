"""`lsched trace info|convert`: output, exit statuses, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_refused, must_not_run, run

from lsched.cli import main
from lsched.traces import read_trace

DATA = Path(__file__).resolve().parent / "data" / "traces"
BROKEN = [
    "missing_column.csv",
    "bad_timestamp.csv",
    "decreasing_timestamp.csv",
    "zero_length.csv",
    "negative_length.csv",
    "non_integer_length.csv",
    "empty.csv",
    "header_only.csv",
    "unknown_format.csv",
    "not_json.jsonl",
    "corrupt.parquet",
]


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    code = info.value.code
    return 0 if code is None else int(code)


def test_info_json_counts(capsys: pytest.CaptureFixture[str]) -> None:
    code = _run(
        ["trace", "info", str(DATA / "burstgpt_sample.csv"), "--drop-failed", "--json"]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    # 6 rows, 2 failed; prompts 472 + 1087 + 417 + 30, outputs 18 + 230 + 276 + 2
    assert out["num_requests"] == 4 and out["dropped_failed"] == 2
    assert out["rows_read"] == 6
    assert out["prompt_tokens_sum"] == 2006 and out["output_tokens_sum"] == 526
    assert out["span_s"] == 116.5
    assert out["format"] == "burstgpt"


def test_info_table_and_transforms(capsys: pytest.CaptureFixture[str]) -> None:
    code = _run(
        [
            "trace",
            "info",
            str(DATA / "vidur_sample.csv"),
            "--limit",
            "2",
            "--max-model-len",
            "150",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "requests" in out and "token lengths" in out
    # limit 2 keeps (100, 10), (200, 20); 150 clips the second to (149, 1)
    assert "249" in out  # prompt sum 100 + 149


def test_info_forced_format(capsys: pytest.CaptureFixture[str]) -> None:
    code = _run(
        ["trace", "info", str(DATA / "vidur_sample.csv"), "--format", "splitwise"]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "arrival_timestamp" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("name", BROKEN)
def test_broken_file_exits_2_with_one_line(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(["trace", "info", str(DATA / name)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("lsched: error:") and name in err
    assert "Traceback" not in captured.err and captured.out == ""


def test_unknown_format_name_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["trace", "info", str(DATA / "vidur_sample.csv"), "-f", "xyz"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "mooncake" in err


def test_convert_writes_native_and_reads_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.parquet"
    code = _run(
        [
            "trace",
            "convert",
            str(DATA / "mooncake_sample.jsonl"),
            str(out),
            "--end-s",
            "2",
            "--json",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["output_format"] == "parquet" and printed["num_requests"] == 3
    instance, report = read_trace(out)
    assert report.format == "parquet"
    assert instance.arrival_s.tolist() == [0.0, 0.0, 1.5]  # 3.017 s is past end_s
    assert instance.prefix_hashes(1).tolist() == [0, 3]
    csv_out = tmp_path / "m.data"
    assert _run(["trace", "convert", str(out), str(csv_out), "--to", "csv"]) == 0
    assert read_trace(csv_out)[0] == instance
    assert "wrote 3 requests" in capsys.readouterr().out


def test_convert_bad_suffix_exits_2_before_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        _run(["trace", "convert", str(DATA / "empty.csv"), str(tmp_path / "x.txt")])
        == 2
    )
    err = capsys.readouterr().err
    assert "suffix" in err and not (tmp_path / "x.txt").exists()


def test_subprocess_error_has_no_traceback() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lsched.cli",
            "trace",
            "info",
            str(DATA / "decreasing_timestamp.csv"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "decreasing_timestamp.csv:4" in lines[0]


# -- outputs: never an input, their folder checked first ---------------------------


def test_convert_onto_its_source_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "m.csv"
    assert (
        _run(["trace", "convert", str(DATA / "mooncake_sample.jsonl"), str(source)])
        == 0
    )
    capsys.readouterr()
    before = source.read_bytes()
    code, out, err = run(["trace", "convert", str(source), str(source)], capsys)
    assert_refused(code, out, err, "also an input", str(source))
    assert source.read_bytes() == before


def test_convert_missing_folder_is_refused_before_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("lsched.cli.trace.read_trace", must_not_run)
    target = tmp_path / "nowhere" / "m.csv"
    source = str(DATA / "mooncake_sample.jsonl")
    code, out, err = run(["trace", "convert", source, str(target)], capsys)
    assert_refused(code, out, err, str(target), "no such folder")


def test_gen_onto_its_resample_source_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source.csv"
    assert _run(["trace", "gen", "jaillet", "--n", "5", "--out", str(source)]) == 0
    capsys.readouterr()
    before = source.read_bytes()
    args = ["trace", "gen", "resample", "--source", str(source), "--out", str(source)]
    code, out, err = run(args, capsys)
    assert_refused(code, out, err, "also an input", str(source), "'--out'")
    assert source.read_bytes() == before


def test_gen_missing_folder_is_refused_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("lsched.cli.trace_gen.build_family", must_not_run)
    target = tmp_path / "nowhere" / "j.csv"
    code, out, err = run(["trace", "gen", "jaillet", "--out", str(target)], capsys)
    assert_refused(code, out, err, str(target), "no such folder")


def test_mooncake_hash_count_mismatch_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad_hashes.jsonl"
    lines = [
        {"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [0]},
        # 1100 tokens are ceil(1100 / 512) = 3 blocks; two hashes
        {"timestamp": 7, "input_length": 1100, "output_length": 1, "hash_ids": [0, 1]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    code, out, err = run(["trace", "info", str(path)], capsys)
    assert_refused(
        code, out, err, f"{path}:2", "field 'hash_ids'", "ceil(1100 / 512) = 3"
    )
