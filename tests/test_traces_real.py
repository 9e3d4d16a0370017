"""The real traces in ../shared/traces, checked against stdlib recomputations.

Counts, token sums and arrival times are recomputed independently with the csv and
json modules (and datetime + Decimal for Azure's 7-digit fractional seconds), not
taken from lsched's own output. Skipped, saying why, where ../shared is absent.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from lsched.traces import read_trace, trace_summary, write_trace

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
AZURE = SHARED / "traces" / "azure_code_2023.csv"
MOONCAKE = SHARED / "traces" / "mooncake_synthetic.jsonl"


def _need(path: Path) -> None:
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared data folder ../shared is not here)")


def _azure_seconds(stamp: str) -> Decimal:
    """Seconds since the epoch of an Azure TIMESTAMP, exact to its 100 ns digit."""
    whole, _, fraction = stamp.partition(".")
    base = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S")
    # naive timestamps: treat as UTC, as the reader does
    days = (base - datetime(1970, 1, 1)).total_seconds()
    return Decimal(int(days)) + Decimal(f"0.{fraction or '0'}")


def test_azure_code_2023_counts_sums_and_times() -> None:
    _need(AZURE)
    with open(AZURE, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    instance, report = read_trace(AZURE)
    assert report.format == "azure"
    assert len(rows) == 8819
    assert report.rows_read == len(instance) == 8819
    assert int(instance.prompt_tokens.sum()) == sum(
        int(r["ContextTokens"]) for r in rows
    )
    assert int(instance.output_tokens.sum()) == sum(
        int(r["GeneratedTokens"]) for r in rows
    )
    seconds = [_azure_seconds(r["TIMESTAMP"]) for r in rows]
    expected = np.array([float(s - seconds[0]) for s in seconds])
    np.testing.assert_allclose(instance.arrival_s, expected, rtol=0, atol=1e-9)
    summary = trace_summary(instance)
    assert summary["span_s"] == pytest.approx(float(seconds[-1] - seconds[0]), abs=1e-9)
    assert summary["num_requests"] == 8819


def test_mooncake_synthetic_counts_sums_hashes() -> None:
    _need(MOONCAKE)
    with open(MOONCAKE, encoding="utf-8") as stream:
        records = [json.loads(line) for line in stream if line.strip()]
    instance, report = read_trace(MOONCAKE)
    assert report.format == "mooncake"
    assert len(records) == len(instance) == 3993
    assert instance.prompt_tokens.tolist() == [r["input_length"] for r in records]
    assert instance.output_tokens.tolist() == [r["output_length"] for r in records]
    first = records[0]["timestamp"]
    expected = [(r["timestamp"] - first) / 1000 for r in records]
    assert instance.arrival_s.tolist() == expected
    assert (
        trace_summary(instance)["span_s"]
        == (records[-1]["timestamp"] - records[0]["timestamp"]) / 1000
    )
    assert instance.prefix_hash_values is not None
    assert len(instance.prefix_hash_values) == sum(len(r["hash_ids"]) for r in records)
    for i in (0, 1, 1234, 3992):
        assert instance.prefix_hashes(i).tolist() == records[i]["hash_ids"]
    # 512-token blocks: each prompt has ceil(input_length / 512) hashes
    blocks = [-(-r["input_length"] // 512) for r in records]
    assert [len(r["hash_ids"]) for r in records] == blocks
    assert instance.params["prefix_block_tokens"] == 512


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_real_traces_round_trip_through_native(tmp_path: Path, suffix: str) -> None:
    _need(MOONCAKE)
    _need(AZURE)
    for source in (AZURE, MOONCAKE):
        instance, _ = read_trace(source)
        path = tmp_path / f"{source.stem}{suffix}"
        write_trace(instance, path)
        assert read_trace(path)[0] == instance


def test_azure_window_limit_rate_on_real_data() -> None:
    _need(AZURE)
    full, _ = read_trace(AZURE)
    a = full.arrival_s
    part, report = read_trace(AZURE, start_s=600.0, end_s=1200.0, rate_scale=2.0)
    inside = (a >= 600.0) & (a < 1200.0)
    assert report.num_requests == int(inside.sum())
    assert report.dropped_window == len(full) - int(inside.sum())
    np.testing.assert_array_equal(part.arrival_s, (a[inside] - 600.0) / 2.0)
    clipped, report = read_trace(AZURE, max_model_len=2048)
    total = full.prompt_tokens + full.output_tokens
    assert report.clipped == int((total > 2048).sum())
    assert int((clipped.prompt_tokens + clipped.output_tokens).max()) <= 2048
