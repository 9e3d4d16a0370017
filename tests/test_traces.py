"""Trace readers, writers, detection and transformations on tiny hand-made files.

Expected values are derived by hand from the files under tests/data/traces (their
contents are quoted in the comments) or recomputed with the stdlib.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lsched.errors import InputError
from lsched.instance import Instance
from lsched.traces import (
    FORMATS,
    apply_transforms,
    clip_lengths,
    detect_format,
    limit,
    read_trace,
    scale_rate,
    trace_summary,
    window,
    write_trace,
)

DATA = Path(__file__).resolve().parent / "data" / "traces"


# -- foreign formats, hand-checked ------------------------------------------------


def test_azure_sample_seconds_since_first_request() -> None:
    instance, report = read_trace(DATA / "azure_sample.csv")
    assert report.format == "azure" and report.rows_read == 5
    # 18:17:03.9799600 -> 18:17:04.0319600 is 0.052 s; the last row is one minute
    # and one 100 ns tick after the first (7th fractional digit kept)
    assert instance.arrival_s[1] == pytest.approx(0.052, abs=1e-12)
    assert instance.arrival_s[2] == pytest.approx(0.098189, abs=1e-12)
    assert instance.arrival_s[4] == pytest.approx(60.0000001, abs=1e-12)
    assert instance.arrival_s[4] > 60.0
    assert instance.prompt_tokens.tolist() == [4808, 3180, 110, 7433, 50]
    assert instance.output_tokens.tolist() == [10, 8, 27, 14, 1]
    assert instance.params["time_origin"] == "2023-11-16 18:17:03.9799600"
    assert instance.name == "azure_sample"


def test_burstgpt_failed_rows_are_an_error_or_dropped_and_counted() -> None:
    # rows: t=46 has Response tokens 0 (failed), t=120 has 0 and 0
    with pytest.raises(InputError) as info:
        read_trace(DATA / "burstgpt_sample.csv")
    assert info.value.line == 4 and info.value.field == "Response tokens"
    assert "drop-failed" in str(info.value)
    instance, report = read_trace(DATA / "burstgpt_sample.csv", drop_failed=True)
    assert (report.rows_read, report.dropped_failed, report.num_requests) == (6, 2, 4)
    assert instance.arrival_s.tolist() == [0.0, 40.0, 113.0, 116.5]
    assert instance.prompt_tokens.tolist() == [472, 1087, 417, 30]
    assert instance.output_tokens.tolist() == [18, 230, 276, 2]
    assert instance.params["dropped_failed"] == 2
    assert instance.params["time_origin"] == 5.0


def test_mooncake_sample_ms_hashes_and_block_size() -> None:
    instance, report = read_trace(DATA / "mooncake_sample.jsonl")
    assert report.format == "mooncake" and report.rows_read == 4  # blank line skipped
    assert instance.arrival_s.tolist() == [0.0, 0.0, 1.5, 3.017]
    assert instance.prompt_tokens.tolist() == [1030, 600, 10, 512]
    assert instance.params["prefix_block_tokens"] == 512
    assert [instance.prefix_hashes(i).tolist() for i in range(4)] == [
        [0, 1, 2],
        [0, 3],
        [4],
        [5],
    ]


def test_vidur_and_splitwise_samples() -> None:
    vidur, _ = read_trace(DATA / "vidur_sample.csv")
    assert vidur.arrival_s.tolist() == [0.0, 0.25, 0.75]
    assert vidur.output_tokens.tolist() == [10, 20, 30]
    split, report = read_trace(DATA / "splitwise_sample.csv")
    assert report.format == "splitwise"
    # arrival_timestamp 10.5, 10.75, 12.0 rebased to the first request
    assert split.arrival_s.tolist() == [0.0, 0.25, 1.5]
    assert split.prompt_tokens.tolist() == [1024, 77, 5]
    assert split.output_tokens.tolist() == [64, 3, 900]
    assert split.params["time_origin"] == 10.5


def test_native_sample_hand_written() -> None:
    instance, report = read_trace(DATA / "native_sample.csv")
    assert report.format == "csv"
    assert instance.name == "hand" and instance.family == "handmade"
    assert instance.seed == 7 and dict(instance.params) == {"note": "two requests"}
    assert instance.arrival_s.tolist() == [0.5, 1.25]  # native: no rebasing
    assert instance.tenant is not None and instance.tenant.tolist() == [
        "alice, inc",
        "bob",
    ]
    assert instance.ttft_deadline_s is not None
    assert instance.ttft_deadline_s.tolist() == [1.5, 0.25]
    assert instance.prefix_hashes(0).tolist() == [1, 2]
    assert instance.prefix_hashes(1).tolist() == []


# -- detection and forcing --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("azure_sample.csv", "azure"),
        ("burstgpt_sample.csv", "burstgpt"),
        ("mooncake_sample.jsonl", "mooncake"),
        ("vidur_sample.csv", "vidur"),
        ("splitwise_sample.csv", "splitwise"),
        ("native_sample.csv", "csv"),
        ("missing_column.csv", "azure"),  # by its time column, to name what is missing
    ],
)
def test_detect_format(name: str, expected: str) -> None:
    assert detect_format(DATA / name) == expected


def test_detect_parquet_and_headerless_native(tmp_path: Path) -> None:
    instance = Instance([0.0, 1.0], [3, 4], [5, 6])
    write_trace(instance, tmp_path / "t.parquet")
    assert detect_format(tmp_path / "t.parquet") == "parquet"
    plain = tmp_path / "plain.txt"
    plain.write_text("arrival_s,prompt_tokens,output_tokens\n0,3,5\n2.5,4,6\n")
    assert detect_format(plain) == "csv"
    read, _ = read_trace(plain)
    assert read.arrival_s.tolist() == [0.0, 2.5] and read.name == "plain"


def test_forced_format_overrides_detection_and_reports_missing_columns() -> None:
    # a Vidur file read as splitwise: the splitwise columns are missing
    with pytest.raises(InputError) as info:
        read_trace(DATA / "vidur_sample.csv", format="splitwise")
    assert info.value.field == "arrival_timestamp" and info.value.line == 1
    # forcing the right format works, case-insensitively
    instance, report = read_trace(DATA / "vidur_sample.csv", format="VIDUR")
    assert report.format == "vidur" and len(instance) == 3


def test_unknown_format_name_lists_known_formats() -> None:
    with pytest.raises(InputError) as info:
        read_trace(DATA / "vidur_sample.csv", format="sharegpt")
    assert info.value.field == "format"
    assert all(name in str(info.value) for name in FORMATS)


def test_formats_tuple() -> None:
    assert set(FORMATS) == {
        "azure",
        "burstgpt",
        "mooncake",
        "vidur",
        "splitwise",
        "csv",
        "parquet",
    }


# -- one broken file per error class ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "line", "field", "words"),
    [
        ("missing_column.csv", 1, "GeneratedTokens", ["missing column"]),
        ("bad_timestamp.csv", 3, "TIMESTAMP", ["25:61:04", "date-time"]),
        ("decreasing_timestamp.csv", 4, "arrived_at", ["1.5", "non-decreasing"]),
        ("zero_length.csv", 3, "num_decode_tokens", ["got 0", ">= 1"]),
        ("negative_length.csv", 4, "prompt_size", ["got -3", ">= 1"]),
        ("non_integer_length.csv", 2, "Request tokens", ["12.5", "integer"]),
        ("empty.csv", 1, None, ["empty", "azure", "parquet"]),
        ("header_only.csv", 2, None, ["no requests"]),
        ("unknown_format.csv", 1, None, ["cannot tell", "mooncake", "--format"]),
        ("not_json.jsonl", 2, None, ["not JSON"]),
        ("corrupt.parquet", None, None, ["Parquet"]),
    ],
)
def test_broken_file_message(
    name: str, line: int | None, field: str | None, words: list[str]
) -> None:
    with pytest.raises(InputError) as info:
        read_trace(DATA / name)
    error = info.value
    assert error.file is not None and error.file.endswith(name)
    assert error.line == line
    assert error.field == field
    message = str(error)
    assert name in message
    if line is not None:
        assert f"{name}:{line}:" in message
    for word in words:
        assert word in message


def test_missing_file_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_trace(tmp_path / "absent.csv")


def test_interior_blank_line_is_located_and_trailing_ones_ignored(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v.csv"
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n\n1,1,1\n")
    with pytest.raises(InputError) as info:
        read_trace(path)
    assert info.value.line == 3
    path.write_text(
        "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n1,1,1\n\n\n"
    )
    assert len(read_trace(path)[0]) == 2


def test_jsonl_missing_key_and_non_object(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    good = '{"timestamp": 0, "input_length": 1, "output_length": 1}\n'
    path.write_text(good + '{"timestamp": 3, "input_length": 1}\n')
    with pytest.raises(InputError) as info:
        read_trace(path)
    assert (info.value.line, info.value.field) == (2, "output_length")
    path.write_text(good + "[1, 2]\n")
    with pytest.raises(InputError, match="JSON list") as info:
        read_trace(path, format="mooncake")
    assert info.value.line == 2
    path.write_text(
        good + '{"timestamp": 3, "input_length": true, "output_length": 1}\n'
    )
    with pytest.raises(InputError, match="expected an integer") as info:
        read_trace(path)
    assert (info.value.line, info.value.field) == (2, "input_length")


def test_native_csv_bad_value_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "n.csv"
    path.write_text("arrival_s,prompt_tokens,output_tokens\n0,1,1\n1,x,1\n")
    with pytest.raises(InputError) as info:
        read_trace(path)
    assert (info.value.line, info.value.field) == (3, "prompt_tokens")
    path.write_text(
        '# lsched {"lsched_trace": 1, "name": 3}\narrival_s,prompt_tokens,'
        "output_tokens\n0,1,1\n"
    )
    with pytest.raises(InputError) as info:
        read_trace(path)
    assert info.value.line == 1
    path.write_text("arrival_s,prompt_tokens,output_tokens,colour\n0,1,1,red\n")
    with pytest.raises(InputError, match="unknown column") as info:
        read_trace(path)
    assert info.value.field == "colour"


# -- transformations, hand-derived ------------------------------------------------

ARRIVALS = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def _six() -> Instance:
    return Instance(ARRIVALS, [10, 20, 30, 40, 50, 60], [1, 2, 3, 4, 5, 6])


def test_window_is_relative_to_first_arrival_and_rebased() -> None:
    shifted = Instance([10.0 + a for a in ARRIVALS], [1] * 6, [1] * 6)
    # arrivals 10..15; [1.5, 4.0) keeps 11.5 <= a < 14, i.e. 12 and 13, rebased
    # to the window start 11.5
    result, dropped = window(shifted, 1.5, 4.0)
    assert result.arrival_s.tolist() == [0.5, 1.5]
    assert dropped == 4
    only_end, dropped = window(shifted, end_s=2.0)
    assert only_end.arrival_s.tolist() == [10.0, 11.0] and dropped == 4


def test_apply_transforms_order_exact() -> None:
    result, counts = apply_transforms(
        _six(), start_s=1.0, end_s=5.0, limit=3, rate_scale=2.0, max_model_len=32
    )
    # kept prompts 20, 30, 40 with outputs 2, 3, 4; max_model_len 32:
    # 20+2=22 fits; 30+3 -> output 32-30=2; 40 >= 32 -> prompt 31, output 1
    assert result.arrival_s.tolist() == [0.0, 0.5, 1.0]
    assert result.prompt_tokens.tolist() == [20, 30, 31]
    assert result.output_tokens.tolist() == [2, 2, 1]
    assert (counts.dropped_window, counts.dropped_limit, counts.clipped) == (2, 1, 2)
    ops = [step["op"] for step in result.params["transforms"]]
    assert ops == ["window", "limit", "rate_scale", "clip"]


def test_limit_and_rate_scale() -> None:
    result, dropped = limit(_six(), 2)
    assert result.prompt_tokens.tolist() == [10, 20] and dropped == 4
    assert limit(_six(), 100)[1] == 0
    slower = scale_rate(_six(), 0.5)
    assert slower.arrival_s.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert scale_rate(_six(), 1.0) is not None


def test_clip_rule_boundaries() -> None:
    # L = 10: (9, 5) prompt = L - 1 -> output 1; (10, 3) prompt >= L -> (9, 1);
    # (4, 6) fits exactly; (4, 7) -> output 6
    instance = Instance(
        [0, 1, 2, 3], [9, 10, 4, 4], [5, 3, 6, 7], predicted_output_tokens=[8, 8, 8, 2]
    )
    clipped, count = clip_lengths(instance, 10)
    assert clipped.prompt_tokens.tolist() == [9, 9, 4, 4]
    assert clipped.output_tokens.tolist() == [1, 1, 6, 6]
    assert clipped.predicted_output_tokens is not None
    assert clipped.predicted_output_tokens.tolist() == [1, 1, 6, 2]
    assert count == 3
    assert np.all(clipped.prompt_tokens + clipped.output_tokens <= 10)


def test_clip_truncates_prefix_hashes_to_prompt_blocks() -> None:
    # 512-token blocks: a 1030-token prompt has ceil(1030/512) = 3 blocks;
    # clipped to L = 600 -> prompt 599 -> 2 blocks
    instance, _ = read_trace(DATA / "mooncake_sample.jsonl", max_model_len=600)
    assert instance.prompt_tokens.tolist() == [599, 599, 10, 512]
    assert instance.output_tokens.tolist() == [1, 1, 1, 88]
    assert [instance.prefix_hashes(i).tolist() for i in range(4)] == [
        [0, 1],
        [0, 3],
        [4],
        [5],
    ]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("limit", 0),
        ("start_s", -1.0),
        ("rate_scale", 0.0),
        ("rate_scale", math.inf),
        ("max_model_len", 1),
        ("end_s", math.nan),
    ],
)
def test_bad_transform_options(option: str, value: float) -> None:
    with pytest.raises(InputError) as info:
        read_trace(DATA / "vidur_sample.csv", **{option: value})
    assert info.value.field == option


def test_empty_window_is_an_error() -> None:
    with pytest.raises(InputError, match="no request in the window"):
        read_trace(DATA / "vidur_sample.csv", start_s=100.0)


# -- summary --------------------------------------------------------------------


def test_trace_summary_hand_values() -> None:
    summary = trace_summary(_six())
    assert summary["num_requests"] == 6
    assert summary["prompt_tokens_sum"] == 210 and summary["output_tokens_sum"] == 21
    assert summary["prompt_tokens_p50"] == 35.0  # median of 10..60
    assert summary["span_s"] == 5.0 and summary["rate_per_s"] == 1.0
    assert summary["interarrival_cv"] == 0.0
    assert summary["max_total_tokens"] == 66
    single = trace_summary(Instance([3.0], [1], [1]))
    assert single["span_s"] == 0.0 and single["rate_per_s"] is None


# -- native formats: lossless round trip ------------------------------------------

_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=12,
)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | _TEXT,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3)
    ),
    max_leaves=8,
)
_INT64 = st.integers(-(2**63), 2**63 - 1)


@st.composite
def instances(draw: st.DrawFn) -> Instance:
    n = draw(st.integers(1, 12))
    arrivals = sorted(
        draw(
            st.lists(
                st.floats(0.0, 1e308, allow_subnormal=True), min_size=n, max_size=n
            )
        )
    )
    lengths = st.lists(st.integers(1, 2**62), min_size=n, max_size=n)
    deadline = st.floats(0.0, exclude_min=True, allow_nan=False, allow_infinity=True)
    optional = {
        "predicted_output_tokens": lengths,
        "tenant": st.lists(_TEXT, min_size=n, max_size=n),
        "priority": st.lists(_INT64, min_size=n, max_size=n),
        "ttft_deadline_s": st.lists(deadline, min_size=n, max_size=n),
        "tpot_deadline_s": st.lists(deadline, min_size=n, max_size=n),
    }
    columns = {name: draw(st.none() | strategy) for name, strategy in optional.items()}
    hashes = draw(
        st.none() | st.lists(st.lists(_INT64, max_size=4), min_size=n, max_size=n)
    )
    if hashes is not None:
        columns["prefix_hash_offsets"] = np.cumsum([0, *map(len, hashes)])
        columns["prefix_hash_values"] = np.array(
            [h for row in hashes for h in row], dtype=np.int64
        )
    return Instance(
        arrivals,
        draw(lengths),
        draw(lengths),
        name=draw(_TEXT),
        source=draw(st.none() | _TEXT),
        family=draw(st.none() | _TEXT),
        seed=draw(st.none() | st.integers(-(2**70), 2**70)),
        params=draw(st.dictionaries(_TEXT, _JSON, max_size=4)),
        **columns,
    )


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(instance=instances(), fmt=st.sampled_from(["csv", "parquet"]))
def test_native_round_trip_is_lossless(
    tmp_path: Path, instance: Instance, fmt: str
) -> None:
    path = tmp_path / f"trace.{fmt}"
    write_trace(instance, path)
    again, report = read_trace(path)
    assert report.format == fmt
    assert again == instance
    for name, column in instance.columns().items():  # bit-identical floats
        if column.dtype.kind == "f":
            assert getattr(again, name).tobytes() == column.tobytes()


def test_csv_layout_parses_with_stdlib(tmp_path: Path) -> None:
    instance = Instance(
        [0.1, 1 / 3],
        [5, 6],
        [7, 8],
        tenant=["a,b", 'q"uote'],
        prefix_hash_offsets=[0, 2, 2],
        prefix_hash_values=[11, -12],
        name="x",
        seed=4,
    )
    path = tmp_path / "x.csv"
    write_trace(instance, path)
    with open(path, encoding="utf-8", newline="") as stream:
        first = stream.readline()
        rows = list(csv.DictReader(stream))
    assert first.startswith("# lsched ")
    meta = json.loads(first[len("# lsched ") :])
    assert meta["name"] == "x" and meta["seed"] == 4 and meta["lsched_trace"] == 1
    assert [float(r["arrival_s"]) for r in rows] == [0.1, 1 / 3]
    assert [r["tenant"] for r in rows] == ["a,b", 'q"uote']
    assert [r["prefix_hashes"] for r in rows] == ["11 -12", ""]


def test_parquet_layout_and_metadata(tmp_path: Path) -> None:
    instance = Instance(
        [0.0, 2.0],
        [5, 6],
        [7, 8],
        prefix_hash_offsets=[0, 1, 3],
        prefix_hash_values=[1, 2, 3],
        params={"k": [1, "v"]},
    )
    path = tmp_path / "x.parquet"
    write_trace(instance, path)
    table = pq.read_table(path)
    assert table.column("prefix_hashes").to_pylist() == [[1], [2, 3]]
    meta = json.loads(table.schema.metadata[b"lsched"])
    assert meta["params"] == {"k": [1, "v"]}


def test_write_is_atomic_and_format_from_suffix(tmp_path: Path) -> None:
    instance = Instance([0.0], [1], [1])
    with pytest.raises(InputError, match="suffix"):
        write_trace(instance, tmp_path / "x.txt")
    with pytest.raises(InputError, match="format"):
        write_trace(instance, tmp_path / "x.csv", format="azure")
    write_trace(instance, tmp_path / "x.dat", format="parquet")
    assert detect_format(tmp_path / "x.dat") == "parquet"
    # nothing but the outputs is left behind (the temporary file was renamed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.dat"]


def test_read_with_drop_failed_on_native(tmp_path: Path) -> None:
    path = tmp_path / "n.csv"
    path.write_text("arrival_s,prompt_tokens,output_tokens,tenant\n0,1,0,a\n1,2,3,b\n")
    instance, report = read_trace(path, drop_failed=True)
    assert report.dropped_failed == 1
    assert instance.tenant is not None and instance.tenant.tolist() == ["b"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_negative_zero_and_integral_floats_keep_their_bits(
    tmp_path: Path, suffix: str
) -> None:
    # Arrow writes -0.0 as "-0" and 2.0 as "2": they must come back as float64
    # with the same bits, not as the integers 0 and 2
    instance = Instance(
        [-0.0, 0.0, 2.0], [1, 1, 1], [1, 1, 1], ttft_deadline_s=[1.0, 2.0, 1e300]
    )
    path = tmp_path / f"z{suffix}"
    write_trace(instance, path)
    again, _ = read_trace(path)
    assert again.arrival_s.tobytes() == instance.arrival_s.tobytes()
    assert np.signbit(again.arrival_s[0])
    assert again.ttft_deadline_s is not None
    assert again.ttft_deadline_s.tobytes() == np.array([1.0, 2.0, 1e300]).tobytes()


def test_metadata_with_csv_special_characters_round_trips(tmp_path: Path) -> None:
    # a quoted comma in the JSON line once made pandas swallow the header
    instance = Instance([0.0], [1], [1], name='a,"b"', params={",": '"\n'})
    write_trace(instance, tmp_path / "m.csv")
    assert read_trace(tmp_path / "m.csv")[0] == instance


@pytest.mark.parametrize("fmt", ["csv", "azure", "mooncake", "parquet"])
def test_binary_garbage_is_an_input_error(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "garbage.bin"
    path.write_bytes(b"\xff\xfe\x00\x81 not text\n\x00\xc3\x28\n")
    with pytest.raises(InputError) as info:
        read_trace(path, format=fmt)
    assert info.value.file == str(path)
    with pytest.raises(InputError, match="cannot tell"):
        read_trace(path)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_replaces_keeps_old_file_on_error_and_usual_mode(
    tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"t{suffix}"
    first = Instance([0.0], [1], [1], name="first")
    write_trace(first, path)
    write_trace(Instance([0.0, 1.0], [1, 2], [1, 2], name="second"), path)
    assert read_trace(path)[0].name == "second"
    with pytest.raises(InputError, match="JSON") as info:
        write_trace(Instance([0.0], [1], [1], params={"bad": {1, 2}}), path)
    assert info.value.field == "params"
    assert read_trace(path)[0].name == "second"  # untouched
    plain = tmp_path / "plain"
    plain.write_text("")  # a file created the ordinary way, under the same umask
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", path.name]


def test_mooncake_drop_failed_keeps_hashes_aligned(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    lines = [
        {"timestamp": 10, "input_length": 5, "output_length": 0, "hash_ids": [9]},
        {"timestamp": 20, "input_length": 600, "output_length": 2, "hash_ids": [1, 2]},
        {"timestamp": 35, "input_length": 7, "output_length": 3, "hash_ids": [3]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    instance, report = read_trace(path, drop_failed=True)
    assert report.dropped_failed == 1
    # rebased to the first *kept* request (t = 20 ms)
    assert instance.arrival_s.tolist() == [0.0, 0.015]
    assert instance.prefix_hashes(0).tolist() == [1, 2]
    assert instance.prefix_hashes(1).tolist() == [3]


_GOOD_LINE = {
    "timestamp": 0,
    "input_length": 1030,
    "output_length": 2,
    "hash_ids": [0, 1, 2],
}


@pytest.mark.parametrize(
    ("input_length", "hash_ids", "needles"),
    [
        # ceil(1024 / 512) = 2 blocks, 3 hashes
        (1024, [5, 6, 7], ["got 3 hashes for 1024", "ceil(1024 / 512) = 2"]),
        # ceil(513 / 512) = 2: the partial last block has a hash too
        (513, [5], ["got 1 hashes for 513", "ceil(513 / 512) = 2"]),
        (7, [], ["got 0 hashes for 7", "ceil(7 / 512) = 1"]),
        (7, [1.5], ["got 1.5", "integer hash"]),
        (7, [2.0], ["got 2.0", "integer hash"]),  # a float hash is refused even whole
        (7, ["3"], ["got '3'", "integer hash"]),
        (7, [True], ["got True", "integer hash"]),
        (7, [2**64], [f"got {2**64}", "64 bits"]),
    ],
)
def test_mooncake_bad_hash_ids_are_located(
    tmp_path: Path, input_length: int, hash_ids: list[object], needles: list[str]
) -> None:
    path = tmp_path / "m.jsonl"
    bad = {"timestamp": 5, "input_length": input_length, "output_length": 1}
    lines = [_GOOD_LINE, {**bad, "hash_ids": hash_ids}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(InputError) as info:
        read_trace(path)
    assert (info.value.file, info.value.line, info.value.field) == (
        str(path),
        2,
        "hash_ids",
    )
    message = str(info.value)
    assert len(message.splitlines()) == 1
    for needle in needles:
        assert needle in message


def test_mooncake_hash_count_checked_after_dropping_failed_rows(tmp_path: Path) -> None:
    """A dropped failed row (prompt 0) needs no hash; the kept rows' lines stay."""
    path = tmp_path / "m.jsonl"
    lines = [
        {"timestamp": 0, "input_length": 0, "output_length": 3, "hash_ids": [4]},
        _GOOD_LINE,
        {"timestamp": 9, "input_length": 600, "output_length": 1, "hash_ids": [8]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(InputError) as info:
        read_trace(path, drop_failed=True)
    assert (info.value.line, info.value.field) == (3, "hash_ids")
    assert "ceil(600 / 512) = 2" in str(info.value)
