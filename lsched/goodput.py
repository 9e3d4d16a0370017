"""Goodput: the largest request rate per GPU that still meets an SLO (DistServe).

DistServe (Zhong et al., OSDI 2024) rates a deployment by its *goodput*: the
largest request rate per GPU at which at least 90 % of the requests meet both the
TTFT and the TPOT SLO. :func:`goodput` finds it for any
:class:`~lsched.cluster.Cluster` by simulation
(:func:`lsched.evaluator.simulate_cluster`).

**Rate.** The trace keeps its requests and the shape of its arrivals: to try rate
``r`` per GPU, the arrival times are scaled so that the trace's mean rate,
``(n - 1) / (a_last - a_first)`` (:func:`lsched.generators.families.mean_rate_per_s`),
becomes ``r * gpus``: ``a'_i = (a_i - a_first) * mean_rate / (r * gpus)``. Order,
ties and relative gaps are kept and the first request arrives at 0. (DistServe's
``search_binary.py`` draws fresh Poisson arrivals at each rate instead:
:func:`poisson_arrivals` first, ``--poisson SEED`` on the command line, does the
same with one seeded draw.) ``gpus`` is the sum
over the pools of ``replicas * profile.hardware.num_gpus``.

**Pass.** A rate passes when the share of *all* requests meeting every deadline
(:func:`lsched.slo.attainment`, ``both``; a rejected request is a miss) is
``>= target``. This is the paper's definition; simdistserve's
``search_binary.py`` instead tests the 90th percentiles of TTFT and of TPOT
separately (each strictly below its target), which passes whenever 90 % meet each
deadline on its own, a weaker test.

**Search.** Deterministic, no state kept between calls. The first rate tried is
``low`` if given, else ``high``, else the trace's own rate per GPU. While no
passing rate is known the rate is divided by ``growth``, while no failing rate is
known multiplied by it, at most ``max_expansions`` times; then the bracket
``[highest pass, lowest fail]`` is bisected at its geometric mean until
``fail <= pass * (1 + rtol)``. The answer is the highest rate that passed. If
even the lowest rate tried fails, goodput is 0 (status ``"none"``); if every rate
up to the highest tried passes, goodput is that rate, a lower bound (status
``"above"``). Attainment need not fall monotonically with the rate (a scheduler
can be lucky); where it does not, the answer is *a* rate that passes with a failing
one within ``rtol`` above it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lsched.checks import check_choice, check_int, check_number, check_seed, check_type
from lsched.cluster import Cluster
from lsched.errors import InputError
from lsched.instance import Instance
from lsched.metrics import DEFINITIONS
from lsched.slo import SLO, attainment

__all__ = [
    "GoodputResult",
    "RateTrial",
    "check_options",
    "cluster_gpus",
    "goodput",
    "poisson_arrivals",
    "scale_to_rate",
]

DEFAULT_TARGET = 0.9
DEFAULT_RTOL = 0.01
DEFAULT_GROWTH = 2.0
DEFAULT_MAX_EXPANSIONS = 20
#: Statuses of :class:`GoodputResult`.
STATUSES = ("found", "none", "above")


@dataclass(frozen=True)
class RateTrial:
    """One simulation of the search.

    Attributes
    ----------
    step
        0 for the first rate tried, then 1, 2, ...
    rate_per_gpu
        Requests per second per GPU.
    rate_per_s
        Requests per second, all GPUs (``rate_per_gpu * gpus``).
    attainment_ttft, attainment_tpot, attainment
        Shares of all requests meeting the TTFT deadline, the TPOT deadline and
        every deadline (NaN where the instance has no such deadline).
    passed
        ``attainment >= target``.
    num_rejected
        Requests the cluster rejected (misses).
    runtime_s
        Wall-clock seconds of the simulation.
    """

    step: int
    rate_per_gpu: float
    rate_per_s: float
    attainment_ttft: float
    attainment_tpot: float
    attainment: float
    passed: bool
    num_rejected: int
    runtime_s: float


@dataclass(frozen=True)
class GoodputResult:
    """What :func:`goodput` found.

    Attributes
    ----------
    goodput_per_gpu
        The highest rate per GPU that passed (0 if none did).
    status
        ``"found"``: bracketed within ``rtol``; ``"none"``: even the lowest rate
        tried fails (goodput 0); ``"above"``: every rate tried passes, goodput is
        at least the highest (raise ``high`` or ``max_expansions``).
    bracket
        ``(highest rate that passed, lowest rate that failed)`` per GPU; 0 and
        ``inf`` where there is none.
    trials
        Every simulation, in the order run.
    gpus
        GPUs of the cluster.
    target, rtol
        The share to meet and the relative tolerance of the bracket.
    definitions
        TTFT/TPOT definitions (``"lsched"`` or ``"simdistserve"``).
    slo
        The SLO given (``None``: the trace's own deadlines).
    deadlines
        The deadline columns judged (``ttft_deadline_s``, ``tpot_deadline_s``).
    trace_rate_per_s
        The trace's own mean rate, ``(n - 1) / (a_last - a_first)``.
    num_requests
        Requests in the trace.
    runtime_s
        Wall-clock seconds of the whole search.
    """

    goodput_per_gpu: float
    status: str
    bracket: tuple[float, float]
    trials: tuple[RateTrial, ...]
    gpus: int
    target: float
    rtol: float
    definitions: str
    slo: SLO | None
    deadlines: tuple[str, ...]
    trace_rate_per_s: float
    num_requests: int
    runtime_s: float

    @property
    def goodput_per_s(self) -> float:
        """Goodput of the whole cluster, requests per second."""
        return self.goodput_per_gpu * self.gpus

    @property
    def message(self) -> str:
        """One sentence saying what was found."""
        rate = f"{self.goodput_per_gpu:.6g} req/s per GPU"
        if self.status == "none":
            lowest = min(t.rate_per_gpu for t in self.trials)
            return (
                f"goodput 0: even the lowest rate tried, {lowest:.6g} req/s per "
                f"GPU, has fewer than {self.target:.6g} of the requests within "
                "their SLO"
            )
        if self.status == "above":
            return (
                f"goodput >= {rate}: every rate tried passes; raise the upper "
                "rate to find where it stops"
            )
        return (
            f"goodput {rate} ({self.goodput_per_s:.6g} req/s on {self.gpus} "
            f"GPU{'s' * (self.gpus != 1)}); {self.bracket[1]:.6g} fails"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (``None`` for an infinite bracket end or NaN)."""

        def number(value: float) -> float | None:
            return value if math.isfinite(value) else None

        return {
            "goodput_per_gpu": self.goodput_per_gpu,
            "goodput_per_s": self.goodput_per_s,
            "status": self.status,
            "message": self.message,
            "bracket": [number(v) for v in self.bracket],
            "gpus": self.gpus,
            "target": self.target,
            "rtol": self.rtol,
            "definitions": self.definitions,
            "slo": None if self.slo is None else self.slo.to_dict(),
            "deadlines": list(self.deadlines),
            "trace_rate_per_s": self.trace_rate_per_s,
            "num_requests": self.num_requests,
            "runtime_s": self.runtime_s,
            "trials": [
                {
                    k: number(v) if isinstance(v, float) else v
                    for k, v in vars(t).items()
                }
                for t in self.trials
            ],
        }


def cluster_gpus(cluster: Cluster) -> int:
    """GPUs of ``cluster``: the sum over pools of replicas x the profile's GPUs."""
    return sum(p.replicas * p.profile.hardware.num_gpus for p in cluster.pools)


def scale_to_rate(instance: Instance, rate_per_s: float) -> Instance:
    """``instance`` with arrivals scaled to the mean rate ``rate_per_s`` (module
    docstring): ``a'_i = (a_i - a_0) * mean_rate / rate_per_s``.

    Raises
    ------
    InputError
        If every request arrives at the same time (no rate to scale), or on a
        rate that is not a finite number > 0.
    """
    native = _trace_rate(instance)
    if not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise InputError(
            f"got {rate_per_s!r}; expected a finite number > 0", field="rate_per_s"
        )
    arrival = (instance.arrival_s - instance.arrival_s[0]) * (native / rate_per_s)
    return instance.replace(arrival_s=arrival)


def poisson_arrivals(instance: Instance, seed: int) -> Instance:
    """``instance`` with its requests (in order, lengths kept) arriving as a
    unit-rate Poisson process drawn with ``seed``.

    DistServe's ``search_binary.py`` draws fresh Poisson arrivals at each rate;
    :func:`scale_to_rate` of this one draw gives Poisson arrivals at every rate
    with common random numbers, so that attainments compare across rates. A real
    trace's bursts (requests sent together) otherwise stay bursts at every rate
    and bound the attainment below 1 however low the rate.
    """
    from lsched.generators.arrivals import Poisson

    check_type(instance, "instance", Instance, "an Instance")
    seed = check_seed(seed)
    times = Poisson(1.0).sample(len(instance), np.random.default_rng(seed))
    return instance.replace(arrival_s=times)


def _trace_rate(instance: Instance) -> float:
    from lsched.generators.families import mean_rate_per_s

    rate = mean_rate_per_s(instance)
    if rate is None:
        when = float(instance.arrival_s[0])
        raise InputError(
            f"all {len(instance)} requests arrive at {when!r} s: the trace has no "
            "rate to scale; expected at least two distinct arrival times",
            field="arrival_s",
        )
    return rate


def check_options(
    target: float,
    rtol: float,
    low: float | None,
    high: float | None,
    definitions: str,
    *,
    growth: float = DEFAULT_GROWTH,
    max_expansions: int = DEFAULT_MAX_EXPANSIONS,
) -> None:
    """Check :func:`goodput`'s options; InputError naming the option otherwise."""
    if not 0 < check_number(target, "target") <= 1:
        raise InputError(f"got {target!r}; expected a share in (0, 1]", field="target")
    check_number(rtol, "rtol", 1e-9)
    check_number(growth, "growth", 1, strict=True)
    check_int(max_expansions, "max_expansions", 0)
    for name, value in (("low", low), ("high", high)):
        if value is not None:
            check_number(value, name, 0, strict=True, what="a rate per GPU")
    if low is not None and high is not None and not low < high:
        raise InputError(
            f"got low {low!r} and high {high!r}; expected low < high", field="high"
        )
    check_choice(definitions, "definitions", DEFINITIONS)


def goodput(
    instance: Instance,
    cluster: Cluster,
    slo: SLO | None,
    *,
    target: float = DEFAULT_TARGET,
    definitions: str = "lsched",
    low: float | None = None,
    high: float | None = None,
    rtol: float = DEFAULT_RTOL,
    growth: float = DEFAULT_GROWTH,
    max_expansions: int = DEFAULT_MAX_EXPANSIONS,
    override: bool = False,
    engine: str = "auto",
    on_trial: Callable[[RateTrial], None] | None = None,
) -> GoodputResult:
    """The largest rate per GPU at which ``>= target`` of the requests meet ``slo``.

    Parameters
    ----------
    instance
        The trace; its arrivals are rescaled for each rate (module docstring).
    cluster
        Any cluster; its GPUs are :func:`cluster_gpus`.
    slo
        The deadlines (:meth:`SLO.apply`: a deadline column the trace carries is
        kept unless ``override``); ``None`` judges by the trace's own deadlines.
    target
        Share of all requests that must meet every deadline, in (0, 1].
    definitions
        TTFT/TPOT definitions, ``"lsched"`` or ``"simdistserve"``
        (:mod:`lsched.metrics`).
    low, high
        Rates per GPU (req/s) to start from: ``low`` failing means goodput 0,
        ``high`` passing means goodput ``>= high``; by default the search starts
        at the trace's own rate per GPU and expands.
    rtol
        Relative width at which the bracket stops: ``fail <= pass * (1 + rtol)``.
    growth, max_expansions
        Factor by which the rate moves until a bracket is found, and how many
        such moves at most (20 doublings span a factor of a million).
    override
        Let ``slo`` replace the trace's deadline columns.
    engine
        As :func:`~lsched.evaluator.simulate_cluster`.
    on_trial
        Called with each :class:`RateTrial` as soon as it is run.

    Raises
    ------
    InputError
        On a bad option, an instance without deadlines (no ``slo``), one whose
        requests all arrive at once (no rate to scale), or a request that fits
        no replica.
    PolicyError
        If a policy breaks the model's rules.
    """
    started = time.perf_counter()
    check_type(instance, "instance", Instance, "an Instance")
    check_type(cluster, "cluster", Cluster, "a Cluster")
    check_type(slo, "slo", SLO | type(None), "an SLO or None")
    check_options(
        target,
        rtol,
        low,
        high,
        definitions,
        growth=growth,
        max_expansions=max_expansions,
    )
    low = None if low is None else float(low)
    high = None if high is None else float(high)
    judged, deadlines = _judged(instance, slo, override)
    native = _trace_rate(judged)
    gpus = cluster_gpus(cluster)
    trials: list[RateTrial] = []
    passes = _rate_test(judged, cluster, gpus, target, definitions, engine,
                        on_trial, trials)  # fmt: skip
    search = _Search(passes)
    search.open(low, high, native, gpus)
    search.expand(growth, max_expansions)
    search.bisect(rtol)
    best, worst = search.best, search.worst
    return GoodputResult(
        goodput_per_gpu=0.0 if best is None else best,
        status=search.status,
        bracket=(0.0 if best is None else best, math.inf if worst is None else worst),
        trials=tuple(trials),
        gpus=gpus,
        target=float(target),
        rtol=float(rtol),
        definitions=definitions,
        slo=slo,
        deadlines=deadlines,
        trace_rate_per_s=native,
        num_requests=len(instance),
        runtime_s=time.perf_counter() - started,
    )


def _judged(
    instance: Instance, slo: SLO | None, override: bool
) -> tuple[Instance, tuple[str, ...]]:
    """The trace with the deadlines it is judged by (``slo`` applied, if any),
    and their columns; InputError if it carries none."""
    judged = instance if slo is None else slo.apply(instance, override=override)
    deadlines = tuple(
        c
        for c in ("ttft_deadline_s", "tpot_deadline_s")
        if getattr(judged, c) is not None
    )
    if not deadlines:
        raise InputError(
            "the trace carries no TTFT or TPOT deadline; expected an SLO "
            "(e.g. ttft=0.25,tpot=0.1)",
            field="slo",
        )
    return judged, deadlines


def _rate_test(
    judged: Instance,
    cluster: Cluster,
    gpus: int,
    target: float,
    definitions: str,
    engine: str,
    on_trial: Callable[[RateTrial], None] | None,
    trials: list[RateTrial],
) -> Callable[[float], bool]:
    """Whether a rate per GPU passes: the trace scaled to it, simulated on
    ``cluster`` and judged against ``target``; each trial is appended to
    ``trials`` and passed to ``on_trial``."""
    from lsched.evaluator import simulate_cluster

    def passes(rate_per_gpu: float) -> bool:
        scaled = scale_to_rate(judged, rate_per_gpu * gpus)
        result = simulate_cluster(scaled, cluster, engine=engine)
        shares = attainment(scaled, result, definitions=definitions)
        trial = RateTrial(
            step=len(trials),
            rate_per_gpu=rate_per_gpu,
            rate_per_s=rate_per_gpu * gpus,
            attainment_ttft=shares.ttft,
            attainment_tpot=shares.tpot,
            attainment=shares.both,
            passed=bool(shares.both >= target),
            num_rejected=int((result.requests["rejected"] != "").sum()),
            runtime_s=result.runtime_s,
        )
        trials.append(trial)
        if on_trial is not None:
            on_trial(trial)
        return trial.passed

    return passes


@dataclass
class _Search:
    """The search of the module docstring: the rates tried so far bracket the
    goodput between the highest that passed (``best``) and the lowest that
    failed (``worst``); ``status`` as :attr:`GoodputResult.status`."""

    passes: Callable[[float], bool]
    best: float | None = None
    worst: float | None = None
    status: str = "found"

    def test(self, rate: float) -> bool:
        """Try ``rate`` per GPU: it becomes the best or the worst."""
        if self.passes(rate):
            self.best = rate
            return True
        self.worst = rate
        return False

    def open(
        self, low: float | None, high: float | None, native: float, gpus: int
    ) -> None:
        """The first rates: ``low`` (failing: goodput 0), then ``high`` (passing:
        goodput above it); with neither, the trace's own rate per GPU."""
        if low is not None and not self.test(low):
            self.status = "none"
        if self.status == "found" and high is not None and self.test(high):
            self.status = "above"
        if self.best is None and self.worst is None:
            self.test(native / gpus)

    def expand(self, growth: float, max_expansions: int) -> None:
        """Move the rate by ``growth`` until both ends of the bracket are known,
        at most ``max_expansions`` times."""
        moves = 0
        while self.status == "found" and (self.best is None or self.worst is None):
            if moves == max_expansions:
                self.status = "none" if self.best is None else "above"
                break
            moves += 1
            if self.best is None:
                assert self.worst is not None
                self.test(self.worst / growth)
            else:
                self.test(self.best * growth)

    def bisect(self, rtol: float) -> None:
        """Halve the bracket at its geometric mean until ``worst <= best * (1 +
        rtol)`` (or the floats cannot split it)."""
        while self.status == "found":
            assert self.best is not None and self.worst is not None
            if self.worst <= self.best * (1 + rtol):
                break
            rate = math.sqrt(self.best * self.worst)
            if not self.best < rate < self.worst:  # the floats cannot split it
                break
            self.test(rate)
