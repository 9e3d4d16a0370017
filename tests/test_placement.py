"""Placement search (lsched.placement, lsched placement)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lsched.cli import main
from lsched.errors import InputError
from lsched.goodput import goodput
from lsched.instance import Instance
from lsched.placement import placements, search
from lsched.profile import load_profile
from lsched.slo import parse_slo
from lsched.traces import write_trace

TP1 = load_profile("opt-13b-a100-tp1-distserve")
TP2 = load_profile("opt-13b-a100-tp2-distserve")
UNIT = load_profile("unit-slot")


def test_every_split_of_four_gpus() -> None:
    """Colocated: 4 x TP1, 2 x TP2. Disaggregated (p prefill, d decode replicas):
    TP1/TP1 with p + d <= 4: (1,1) (1,2) (1,3) (2,1) (2,2) (3,1); TP1/TP2 with
    p + 2d <= 4: (1,1) (2,1); TP2/TP1 with 2p + d <= 4: (1,1) (1,2); TP2/TP2 with
    2p + 2d <= 4: (1,1). 13 in all."""
    found = placements(4, [TP1, TP2])
    assert len(found) == 13
    colocated = [p for p in found if p.kind == "colocated"]
    assert [(p.cluster.num_replicas, p.gpus) for p in colocated] == [(4, 4), (2, 4)]
    split = {
        (p.prefill, p.decode, p.cluster.pools[0].replicas, p.cluster.pools[1].replicas)
        for p in found
        if p.kind == "disaggregated"
    }
    assert (TP2.name, TP1.name, 1, 2) in split
    assert (TP1.name, TP2.name, 2, 1) in split
    assert all(p.gpus <= 4 for p in found)


def test_models_are_not_mixed_and_bad_sizes_are_refused() -> None:
    opt66 = load_profile("opt-66b-a100-tp2-distserve")
    found = placements(4, [TP1, opt66])
    assert all({p.prefill, p.decode} != {TP1.name, opt66.name} for p in found)
    with pytest.raises(InputError, match="gpus"):
        placements(0, [TP1])
    with pytest.raises(InputError, match="fits"):
        placements(1, [TP2])


INSTANCE = Instance(
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], [3, 2, 4, 2, 3, 2], [4, 3, 2, 5, 3, 2]
)


def test_search_rates_every_candidate_best_first() -> None:
    slo = parse_slo("ttft=2,tpot=1.5")
    candidates = placements(2, [UNIT])
    table = search(INSTANCE, candidates, slo, workers=1)
    assert len(table) == len(candidates) == 2  # colocated 2 x unit, 1P + 1D
    assert table["goodput_per_gpu"].is_monotonic_decreasing
    # an independent recheck of each row
    for candidate in candidates:
        row = table[table["placement"] == candidate.label].iloc[0]
        again = goodput(INSTANCE, candidate.cluster, slo)
        assert row["goodput_per_gpu"] == again.goodput_per_gpu
        assert row["gpus"] == candidate.gpus


def test_processes_rate_the_candidates_as_this_one_does() -> None:
    """The candidates (profiles, clusters) travel to worker processes intact."""
    slo = parse_slo("ttft=2,tpot=1.5")
    candidates = placements(2, [UNIT])
    here = search(INSTANCE, candidates, slo, workers=1)
    there = search(INSTANCE, candidates, slo, workers=2)
    columns = ["placement", "gpus", "goodput_per_gpu", "status", "rates_tried"]
    assert here[columns].equals(there[columns])


def test_placement_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    trace = tmp_path / "six.csv"
    write_trace(INSTANCE, trace)
    out = tmp_path / "placements.json"
    args = ["placement", str(trace), "--gpus", "2", "--profiles", "unit-slot"]
    args += ["--slo", "ttft=2,tpot=1.5", "--workers", "1", "--out", str(out), "--json"]
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 0
    rows = json.loads(out.read_text())["placements"]
    assert {r["kind"] for r in rows} == {"colocated", "disaggregated"}
    rates = [r["goodput_per_gpu"] for r in rows]
    assert rates == sorted(rates, reverse=True)
    assert json.loads(capsys.readouterr().out)["placements"] == rows
    for bad in (["--profiles", "nope"], ["--gpus", "0"], ["--slo", "ttft=-1"]):
        with pytest.raises(SystemExit) as exited:
            main(args[:-3] + bad)
        assert exited.value.code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
