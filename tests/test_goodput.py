"""Goodput: the answer passes and the next rate above fails, rechecked by simulating
at those rates independently of the search; sanity of the search's results.

The trace is 24 seeded requests (Poisson arrivals, prompts around 256 tokens,
outputs around 24) on DistServe's OPT-13B A100 profile; each simulation takes a few
milliseconds, a search a few tenths of a second.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from lsched import plots
from lsched.cluster import Cluster, Pool
from lsched.errors import InputError
from lsched.evaluator import simulate_cluster
from lsched.generators import LogNormal, Poisson, generate
from lsched.goodput import cluster_gpus, goodput, poisson_arrivals, scale_to_rate
from lsched.instance import Instance
from lsched.policies import parse_policy
from lsched.profile import load_profile
from lsched.slo import SLO

OPT = load_profile("opt-13b-a100-tp1-distserve")
CHAT = SLO(ttft_s=0.5, tpot_s=0.1)


@pytest.fixture(scope="module")
def trace() -> Instance:
    return generate(
        24,
        arrivals=Poisson(rate_per_s=2.0),
        prompt=LogNormal(median=256, sigma=0.6, max_tokens=1024),
        output=LogNormal(median=24, sigma=0.6, max_tokens=128),
        seed=3,
    )


def _attained(instance: Instance, cluster: Cluster, rate_per_gpu: float, slo: SLO):
    """Share meeting both deadlines at ``rate_per_gpu``, from the records alone."""
    a = instance.arrival_s
    gpus = sum(p.replicas * p.profile.hardware.num_gpus for p in cluster.pools)
    trace_rate = (len(a) - 1) / (a[-1] - a[0])
    scaled = instance.replace(arrival_s=(a - a[0]) * trace_rate / (rate_per_gpu * gpus))
    records = simulate_cluster(scaled, cluster).requests
    first = records["first_token_s"].to_numpy(dtype=float)
    done = records["completion_s"].to_numpy(dtype=float)
    o = instance.output_tokens
    met = np.isfinite(done)
    met &= first - scaled.arrival_s <= slo.ttft_s
    with np.errstate(divide="ignore", invalid="ignore"):
        met &= (o == 1) | ((done - first) / (o - 1) <= slo.tpot_s)
    return float(met.mean())


@pytest.mark.parametrize(
    ("policy", "replicas"), [("fcfs", 1), ("vllm", 2), ("sarathi:chunk=256", 1)]
)
def test_the_answer_passes_and_the_next_rate_above_fails(
    trace: Instance, policy: str, replicas: int
) -> None:
    cluster = Cluster.colocated(OPT, policy, replicas)
    slo = SLO(ttft_s=0.25, tpot_s=0.1)
    result = goodput(trace, cluster, slo, target=0.9, rtol=0.02)
    assert result.status == "found"
    best, worst = result.bracket
    assert best == result.goodput_per_gpu > 0
    assert best < worst <= best * 1.02
    # the bracket is the highest rate that passed and the lowest that failed above
    tried = {t.rate_per_gpu: t for t in result.trials}
    assert best == max(t.rate_per_gpu for t in result.trials if t.passed)
    assert worst == min(
        t.rate_per_gpu for t in result.trials if not t.passed and t.rate_per_gpu > best
    )
    # an independent recheck: simulate at both rates and count by hand
    assert _attained(trace, cluster, best, slo) >= 0.9
    assert _attained(trace, cluster, worst, slo) < 0.9
    assert tried[best].attainment == _attained(trace, cluster, best, slo)


def test_the_trials_report_every_rate_tried(trace: Instance) -> None:
    cluster = Cluster.colocated(OPT, "fcfs", 2)
    result = goodput(trace, cluster, CHAT)
    assert [t.step for t in result.trials] == list(range(len(result.trials)))
    assert result.gpus == 2
    for t in result.trials:
        assert t.rate_per_s == pytest.approx(2 * t.rate_per_gpu)
        assert t.passed == (t.attainment >= 0.9)
        assert t.attainment <= min(t.attainment_ttft, t.attainment_tpot)
        assert t.num_rejected == 0 and t.runtime_s >= 0
    # the first rate tried is the trace's own, per GPU
    assert result.trials[0].rate_per_gpu == pytest.approx(result.trace_rate_per_s / 2)
    assert result.runtime_s >= sum(t.runtime_s for t in result.trials)
    summary = result.to_dict()
    assert summary["goodput_per_gpu"] == result.goodput_per_gpu
    assert summary["slo"] == {"ttft_s": 0.5, "tpot_s": 0.1}
    assert len(summary["trials"]) == len(result.trials)


def test_the_search_is_deterministic(trace: Instance) -> None:
    cluster = Cluster.colocated(OPT, "vllm", 1)
    one = goodput(trace, cluster, CHAT, definitions="simdistserve")
    two = goodput(trace, cluster, CHAT, definitions="simdistserve")
    strip = [{**vars(t), "runtime_s": 0} for t in one.trials]
    assert strip == [{**vars(t), "runtime_s": 0} for t in two.trials]
    assert one.goodput_per_gpu == two.goodput_per_gpu


def test_tighter_slos_and_higher_targets_do_not_raise_goodput(trace: Instance) -> None:
    cluster = Cluster.colocated(OPT, "fcfs", 1)
    loose = goodput(trace, cluster, CHAT)
    # attainment falls as the rate grows on this trace
    ordered = sorted(loose.trials, key=lambda t: t.rate_per_gpu)
    shares = [t.attainment for t in ordered]
    assert shares == sorted(shares, reverse=True)
    assert shares[0] == 1.0 and shares[-1] < 0.9
    tight_ttft = goodput(trace, cluster, SLO(ttft_s=0.25, tpot_s=0.1))
    tight_tpot = goodput(trace, cluster, SLO(ttft_s=0.5, tpot_s=0.05))
    lenient = goodput(trace, cluster, CHAT, target=0.75)
    assert 0 < tight_ttft.goodput_per_gpu < loose.goodput_per_gpu
    assert 0 < tight_tpot.goodput_per_gpu < loose.goodput_per_gpu
    assert lenient.goodput_per_gpu > loose.goodput_per_gpu


def test_an_slo_no_rate_meets_gives_zero_without_looping(trace: Instance) -> None:
    cluster = Cluster.colocated(OPT, "fcfs", 1)
    # no prefill takes under 10 ms on this profile: nothing meets TTFT 0.01 s
    result = goodput(trace, cluster, SLO(ttft_s=0.01), max_expansions=5)
    assert result.status == "none" and result.goodput_per_gpu == 0.0
    assert len(result.trials) == 6  # the start and five halvings
    assert result.bracket[0] == 0.0
    assert result.bracket[1] == min(t.rate_per_gpu for t in result.trials)
    assert "goodput 0" in result.message
    # a lowest rate that fails ends the search at once
    once = goodput(trace, cluster, SLO(ttft_s=0.01), low=0.001, high=100.0)
    assert once.status == "none" and len(once.trials) == 1


def test_a_bracket_whose_top_passes_says_so(trace: Instance) -> None:
    cluster = Cluster.colocated(OPT, "fcfs", 1)
    result = goodput(trace, cluster, SLO(ttft_s=100.0), low=0.5, high=2.0)
    assert result.status == "above" and result.goodput_per_gpu == 2.0
    assert result.bracket == (2.0, math.inf)
    assert [t.rate_per_gpu for t in result.trials] == [0.5, 2.0]
    assert result.to_dict()["bracket"] == [2.0, None]


def test_a_given_bracket_is_bisected_geometrically(trace: Instance) -> None:
    cluster = Cluster.colocated(OPT, "fcfs", 1)
    result = goodput(trace, cluster, CHAT, low=1.0, high=1000.0, rtol=0.05)
    rates = [t.rate_per_gpu for t in result.trials]
    assert rates[:3] == [1.0, 1000.0, pytest.approx(math.sqrt(1000.0))]
    best, worst = result.bracket
    assert result.status == "found" and worst <= best * 1.05
    free = goodput(trace, cluster, CHAT, rtol=0.05)
    # the same boundary, found from another start (within both tolerances)
    assert free.goodput_per_gpu == pytest.approx(best, rel=0.11)


def test_the_trace_s_own_deadlines_are_kept_unless_overridden(trace: Instance) -> None:
    cluster = Cluster.colocated(OPT, "fcfs", 1)
    own = CHAT.apply(trace)
    by_trace = goodput(own, cluster, None)
    by_slo = goodput(trace, cluster, CHAT)
    assert by_trace.goodput_per_gpu == by_slo.goodput_per_gpu
    assert by_trace.deadlines == ("ttft_deadline_s", "tpot_deadline_s")
    # the trace's TTFT deadline of 0.5 wins over the SLO's 0.01 ...
    kept = goodput(own, cluster, SLO(ttft_s=0.01))
    assert kept.goodput_per_gpu == by_slo.goodput_per_gpu
    # ... unless the SLO overrides it
    replaced = goodput(own, cluster, SLO(ttft_s=0.01), override=True, max_expansions=2)
    assert replaced.status == "none"


def test_gpus_count_every_pool_s_replicas_and_tensor_parallel_gpus() -> None:
    tp4 = load_profile("llama2-70b-a100-tp4")
    fcfs = parse_policy("fcfs")
    cluster = Cluster(
        (Pool(tp4, fcfs, 2, name="big"), Pool(OPT, fcfs, 3, name="small"))
    )
    assert cluster_gpus(cluster) == 2 * 4 + 3 * 1


def test_scaling_keeps_order_ties_and_relative_gaps() -> None:
    instance = Instance([2.0, 3.0, 3.0, 7.0, 10.0], [1] * 5, [1] * 5)
    scaled = scale_to_rate(instance, 2.0)  # 4 gaps over 8 s: 0.5/s -> 2/s
    np.testing.assert_allclose(scaled.arrival_s, [0.0, 0.25, 0.25, 1.25, 2.0])
    assert (len(scaled) - 1) / scaled.arrival_s[-1] == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"target": 0.0}, "target"),
        ({"target": 1.5}, "target"),
        ({"target": math.nan}, "target"),
        ({"rtol": 0.0}, "rtol"),
        ({"growth": 1.0}, "growth"),
        ({"max_expansions": -1}, "max_expansions"),
        ({"low": -1.0}, "low"),
        ({"low": 2.0, "high": 1.0}, "high"),
        ({"definitions": "vidur"}, "definitions"),
    ],
)
def test_bad_options_are_refused_before_any_simulation(
    trace: Instance, kwargs: dict[str, object], field: str
) -> None:
    cluster = Cluster.colocated(OPT, "fcfs", 1)
    with pytest.raises(InputError) as info:
        goodput(trace, cluster, CHAT, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_a_trace_without_a_rate_or_without_deadlines_is_refused(
    trace: Instance,
) -> None:
    cluster = Cluster.colocated(OPT, "fcfs", 1)
    at_once = Instance([1.0, 1.0, 1.0], [8, 8, 8], [2, 2, 2])
    with pytest.raises(InputError, match="no rate to scale") as info:
        goodput(at_once, cluster, CHAT)
    assert info.value.field == "arrival_s"
    with pytest.raises(InputError, match="carries no TTFT or TPOT deadline"):
        goodput(trace, cluster, None)


def test_the_curve_plots_every_rate_tried(trace: Instance, tmp_path) -> None:
    result = goodput(trace, Cluster.colocated(OPT, "fcfs", 1), CHAT)
    target = tmp_path / "goodput.png"
    figure = plots.goodput_curve(result, path=target)
    assert isinstance(figure, Figure)
    assert target.read_bytes().startswith(b"\x89PNG") and target.stat().st_size > 1000
    assert not list(tmp_path.glob(".*.tmp"))
    lines = {line.get_label(): line for line in figure.axes[0].lines}
    assert set(lines) == {"TTFT", "TPOT", "both", "target", "goodput"}
    ordered = sorted(result.trials, key=lambda t: t.rate_per_gpu)
    np.testing.assert_allclose(
        lines["both"].get_xdata(), [t.rate_per_gpu for t in ordered]
    )
    np.testing.assert_allclose(
        lines["both"].get_ydata(), [100 * t.attainment for t in ordered]
    )
    assert list(lines["target"].get_ydata()) == [90.0, 90.0]
    assert list(lines["goodput"].get_xdata()) == [result.goodput_per_gpu] * 2
    # only the deadlines judged get a line
    ttft_only = goodput(trace, Cluster.colocated(OPT, "fcfs", 1), SLO(ttft_s=0.5))
    labels = {line.get_label() for line in plots.goodput_curve(ttft_only).axes[0].lines}
    assert labels == {"TTFT", "both", "target", "goodput"}


def test_the_readme_example_finds_the_goodput_it_quotes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the example reads instances/ from the checkout
    readme = (root / "README.md").read_text(encoding="utf-8")
    section = readme.index("### SLOs and goodput")
    start = readme.index("```python", section)
    code = readme[start + len("```python") : readme.index("```", start + 9)]
    namespace: dict[str, object] = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, "README.md", "exec"), namespace)
    found = namespace["found"]
    quoted = f"goodput {found.goodput_per_gpu:.6g} req/s per GPU"  # type: ignore[attr-defined]
    assert quoted in " ".join(readme[section:start].split())
    assert found.message.startswith(quoted)  # type: ignore[attr-defined]


def test_poisson_arrivals_keep_the_requests_and_replace_the_bursts() -> None:
    """Every request of a burst at 0 keeps its lengths; the arrivals become a
    seeded unit-rate Poisson process (gaps of mean 1: 0.998 here, n = 2000), the
    same for the same seed, and scale to any rate like a trace."""
    n = 2000
    burst = Instance(np.zeros(n), np.arange(1, n + 1), np.full(n, 3))
    drawn = poisson_arrivals(burst, seed=7)
    np.testing.assert_array_equal(drawn.prompt_tokens, burst.prompt_tokens)
    np.testing.assert_array_equal(drawn.output_tokens, burst.output_tokens)
    gaps = np.diff(drawn.arrival_s)
    assert drawn.arrival_s[0] == 0.0 and (gaps >= 0).all()
    assert abs(gaps.mean() - 1.0) < 0.1
    again = poisson_arrivals(burst, seed=7)
    np.testing.assert_array_equal(drawn.arrival_s, again.arrival_s)
    assert not np.array_equal(poisson_arrivals(burst, 8).arrival_s, drawn.arrival_s)
    fast = scale_to_rate(drawn, 4.0)
    assert (n - 1) / fast.arrival_s[-1] == pytest.approx(4.0)
