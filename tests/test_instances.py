"""The shipped instances/ folder: its manifest must be truthful.

For every manifest entry: the file exists, its SHA-256 matches, its rows (read
with the csv module, independently of lsched's reader) number ``n``, and
regenerating it from the recorded family, size, seed and params gives an
instance equal to the one the file holds.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from lsched.generators import regenerate
from lsched.traces import read_trace

INSTANCES = Path(__file__).resolve().parents[1] / "instances"
MANIFEST = INSTANCES / "manifest.json"


def _entries() -> list[dict]:
    return json.loads(MANIFEST.read_text(encoding="utf-8"))["instances"]


def _data_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    assert lines[0].startswith("# lsched ")  # native CSV: metadata line first
    return list(csv.DictReader(lines[1:]))


ENTRIES = _entries()


def test_manifest_lists_every_instance_file_once() -> None:
    files = [e["file"] for e in ENTRIES]
    assert len(files) == len(set(files))
    on_disk = {p.name for p in INSTANCES.glob("*.csv")}
    assert set(files) == on_disk


def test_manifest_covers_the_promised_set() -> None:
    sizes = {(e["family"], e["n"]) for e in ENTRIES}
    for n in (10, 20, 40, 60):
        assert ("jaillet", n) in sizes
    assert {("gsm8k", 100), ("gsm8k", 1000)} <= sizes
    lognormal = [
        e
        for e in ENTRIES
        if e["family"] == "synthetic"
        and e["params"]["arrivals"]["kind"] == "poisson"
        and e["params"]["prompt"]["kind"] == "lognormal"
    ]
    assert lognormal


def test_default_instance_is_small_but_kv_bound() -> None:
    (entry,) = [e for e in ENTRIES if e["file"] == "default.csv"]
    assert entry["family"] == "jaillet" and entry["n"] <= 12
    rows = _data_rows(INSTANCES / "default.csv")
    capacity = entry["params"]["kv_capacity_tokens"]
    peaks = [int(r["prompt_tokens"]) + int(r["output_tokens"]) - 1 for r in rows]
    # non-trivial: not everything fits in the KV cache at once (DESIGN.md peak
    # s + o - 1), yet each request fits alone
    assert sum(peaks) > 2 * capacity
    assert max(peaks) <= capacity


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["file"] for e in ENTRIES])
def test_entry_is_truthful(entry: dict) -> None:
    path = INSTANCES / entry["file"]
    assert path.is_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    for key in ("best_objective", "best_bound"):
        value = entry[key]
        assert value is None or isinstance(value, int | float)
    rows = _data_rows(path)
    assert len(rows) == entry["n"]

    stored, _report = read_trace(path)
    rebuilt = regenerate(
        entry["family"],
        n=entry["n"],
        seed=entry["seed"],
        params=entry["params"],
        name=entry["name"],
    )
    assert stored == rebuilt
    assert stored.family == entry["family"] and stored.seed == entry["seed"]
    assert dict(stored.params) == entry["params"]
    # and the csv-module view agrees with the regenerated columns
    assert np.array_equal(
        [int(r["prompt_tokens"]) for r in rows], rebuilt.prompt_tokens
    )
    assert np.array_equal(
        [int(r["output_tokens"]) for r in rows], rebuilt.output_tokens
    )
    assert np.array_equal([float(r["arrival_s"]) for r in rows], rebuilt.arrival_s)
