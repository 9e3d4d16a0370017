"""simdistserve's disaggregated mode, re-implemented, against lsched's
disaggregated loop (:mod:`lsched.evaluator.disagg`), request by request.

:class:`SimDistServe` is a small, independent re-implementation of DistServe's
simulator (LLMServe/DistServe, ``simdistserve/``, snapshot commit 82831f16) in
its disaggregated mode (``clusters/disagg.py`` ``DisaggCluster``, as
``benchmarks/simulate_dist.py`` builds it with ``--backend distserve``): ``N``
prefill and ``M`` decode instances of one worker each (PP = 1), the global
``Scheduler`` between them, no KV transfer time and no memory limit. It replays
simpy's event order with a heap of ``(time, sequence)``: every arrival is a
timeout created at the start (``scheduler.put_requests_with_interarrivals``), so
it comes before anything scheduled later for the same time; a worker's iteration
end is a timeout created when the iteration starts; a waiting worker resumes on
its ``_wakeup_event``, an event scheduled when ``Worker.wakeup`` succeeds it.
Times are in ms, as in simdistserve; the rules are cited where they are used.
Arrivals are given as absolute times from the first request's (0), as
``workload.convert_absolutearrival_to_interarrival`` and the sum in
``put_requests_with_interarrivals`` make them (up to that sum's rounding).

lsched runs the same requests on a :class:`~lsched.cluster.Cluster` with a
prefill pool of ``N`` and a decode pool of ``M`` replicas of
``opt-13b-a100-tp1-distserve`` (KV capacity raised: nothing is limited), both
under ``vllm-v0:kv_limit=false,prefill_token_budget=PMT,decode_context_cap=50000``
with ``max_num_seqs`` and ``max_num_batched_tokens`` at simdistserve's
``prefill_max_tokens`` = ``decode_max_tokens`` (66,144, ``get_max_num_tokens``),
no link (an ideal one), router ``least-outstanding`` (a prefill replica counts
its iteration in flight: ``_prefill_ips + len(prefill_queue)``) and decode
router ``least-queued`` (``len(decode_queue)``: the requests on the decode
replica that are not in its iteration in flight). With ``least-outstanding`` as
the decode router (it counts the batch in flight too) the M = 1 cases still
match; with M > 1 it sent 24-66 % of the decoded requests of the cases below to
another decode replica than simdistserve and 75 % of the completions differed
(675 of 900 requests, up to 5.3 s; the prefill ends do not depend on it).

Lengths. simdistserve's ``Request(prefill_length=s, output_lens=L)`` is prefilled
(``counter`` -1 -> 0 in ``finish_prefill``) and then decoded ``L`` times
(``finish_decode``: ``counter += 1``; ``should_finish``: ``counter >= L``); a
request with ``L = 0`` exits at the end of its prefill. lsched's prefill emits
token 1 and each decode step one more, so ``o_i = L + 1`` (``L = o_i - 1``).

Metrics (``base/organize_data.py``, ``calculate_per_request_latency``): TTFT is
the first ``wait_decode`` (the end of the prefill) minus ``init`` (the arrival);
TPOT is ``(exit_system - first wait_decode) / output_lens``, which is lsched's
``(c_i - f_i) / (o_i - 1)`` (``lsched.metrics.request_metrics``); simdistserve
gives NaN (0 / 0) where lsched gives NaN (``o_i = 1``).
"""

from __future__ import annotations

import csv
import heapq
import itertools
import json
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_profile import _distserve_decode_ms, _distserve_prefill_ms

from lsched.cluster import Cluster, Pool
from lsched.evaluator import simulate_cluster
from lsched.instance import Instance
from lsched.metrics import request_metrics
from lsched.profile import load_profile
from lsched.traces import read_trace

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CALIBRATION = SHARED / "calibration"
TRACE = SHARED / "traces" / "azure_code_2023.csv"
MODEL, TP, PP = "facebook/opt-13b", 1, 1
#: ``Worker._enter_decodes``: ``decode_max_tokens = 50000``, hard-coded ("Hack")
DECODE_CONTEXT_CAP = 50000
#: ``Worker.__init__`` defaults, which ``simulate_dist.py`` passes as ``10 ** 7``
BIG = 10**7
RTOL = 1e-9


def _need_calibration() -> None:
    if not CALIBRATION.is_dir():
        pytest.skip(f"{CALIBRATION} is absent: DistServe's calibration not available")


def _params() -> dict:
    """``time_estimator``: ``distserve_profile_data[model][str(TP)]``."""
    path = CALIBRATION / "distserve_profiler-a100-80g.distserve.json"
    return json.loads(path.read_text())[MODEL][str(TP)]


def _max_num_tokens() -> int:
    """``memory_estimator.get_max_num_tokens(model, tp, pp)``: what
    ``simulate_dist.main`` passes as ``prefill_max_tokens`` and (distserve
    backend, TP_Decode = TP_Prefill here) ``decode_max_tokens``."""
    with (CALIBRATION / "distserve_max_num_tokens.csv").open() as handle:
        for row in csv.DictReader(handle):
            if (row["model"], int(row["tp"]), int(row["pp"])) == (MODEL, TP, PP):
                return int(row["max_num_tokens"])
    raise AssertionError(f"no max_num_tokens for {MODEL} tp={TP} pp={PP}")


# -- simdistserve, re-implemented --------------------------------------------------


@dataclass
class _Request:
    """``base/request.py`` ``Request``: only what the disaggregated mode reads."""

    req_id: int
    prefill_lens: int
    output_lens: int
    counter: int = -1  # < 0: to prefill; >= 0: decode steps done
    terminated: bool = False
    log: list[tuple[float, str]] = field(default_factory=list)
    decode_wid: int = -1

    @property
    def current_context_len(self) -> int:
        return self.prefill_lens + max(0, self.counter)

    def should_finish(self) -> bool:
        return self.counter >= self.output_lens

    def log_event(self, now: float, event: str) -> None:
        if not self.terminated:  # Request._log_event
            self.log.append((now, event))


@dataclass
class _Worker:
    """``base/worker.py`` ``Worker`` at PP = 1 (first and last in its pipeline,
    its own ``next_worker``: ``DisaggCluster.__init__`` chains each instance
    cyclically)."""

    wid: int
    prefill_queue: deque[_Request] = field(default_factory=deque)
    decode_queue: deque[_Request] = field(default_factory=deque)
    prefill_ips: int = 0  # Worker._prefill_ips
    waiting: bool = False  # Worker.run blocked on ``yield self._wakeup_event``
    woken: bool = False  # its wakeup event is scheduled
    #: per iteration: ("prefill" | "decode", batch lengths, cut by the budget/cap)
    iterations: list[tuple[str, int, bool]] = field(default_factory=list)


class SimDistServe:
    """simdistserve's ``DisaggCluster`` with ``n_prefill`` and ``n_decode``
    one-worker instances (PP = 1), chunked prefill off (``simulate_dist.py``)."""

    _ARRIVE, _WAKE, _PREFILLED, _DECODED = range(4)

    def __init__(self, params: dict, n_prefill: int, n_decode: int,
                 prefill_max_tokens: int, decode_max_tokens: int) -> None:  # fmt: skip
        self.params = params
        self.prefill = [_Worker(w) for w in range(n_prefill)]
        self.decode = [_Worker(n_prefill + w) for w in range(n_decode)]
        self.prefill_max_tokens = prefill_max_tokens
        self.decode_max_tokens = decode_max_tokens
        self.prefill_max_batch_size = BIG
        self.decode_max_batch_size = BIG
        self.decode_back_pressure = 0.9
        self.now = 0.0
        self._heap: list[tuple[float, int, int, object]] = []
        self._seq = itertools.count()

    def _at(self, t: float, kind: int, payload: object) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, payload))

    def run(self, arrival_ms: np.ndarray, prompt: np.ndarray,
            output_lens: np.ndarray) -> list[_Request]:  # fmt: skip
        requests = [
            _Request(i, int(s), int(L))
            for i, (s, L) in enumerate(zip(prompt, output_lens, strict=True))
        ]
        # DisaggCluster.run starts every worker first: each finds its queues
        # empty and waits (Worker.run)
        for w in self.prefill + self.decode:
            w.waiting = True
        # put_requests_with_interarrivals: one timeout per request, all created
        # before the simulation runs, in request order
        for r, t in zip(requests, arrival_ms, strict=True):
            self._at(float(t), self._ARRIVE, r)
        while self._heap:
            self.now, _, kind, payload = heapq.heappop(self._heap)
            if kind == self._ARRIVE:
                self._arrive(payload)  # type: ignore[arg-type]
            elif kind == self._WAKE:
                w: _Worker = payload  # type: ignore[assignment]
                w.waiting = w.woken = False
                self._next(w, after_wait=True)
            elif kind == self._PREFILLED:
                w, batch = payload  # type: ignore[misc]
                self._exit_prefill(w, batch)
                self._next(w)
            else:
                w, batch = payload  # type: ignore[misc]
                self._exit_decode(w, batch)
                self._next(w)
        return requests

    # -- Scheduler (base/scheduler.py) ----------------------------------------------

    @staticmethod
    def _find_best_worker(workers: list[_Worker], queue: str) -> _Worker:
        """``Scheduler._find_best_worker_and_queue``: ``min`` over the workers of
        ``_prefill_ips + len(queue)``, the first on ties (Python's ``min``); for
        the decode heads ``_prefill_ips`` stays 0."""
        return min(workers, key=lambda w: w.prefill_ips + len(getattr(w, queue)))

    def _arrive(self, r: _Request) -> None:
        """``put_request_at_time``: ``request.init()``, then
        ``Scheduler.schedule_new_req`` -> ``schedule_prefill`` (``counter < 0``)."""
        r.log_event(self.now, "init")
        w = self._find_best_worker(self.prefill, "prefill_queue")
        w.prefill_queue.append(r)  # Scheduler._sched_request
        self._wakeup(w)

    def _schedule_decode(self, r: _Request) -> None:
        """``Scheduler.schedule_decode``."""
        assert not r.should_finish()  # _exit_prefill keeps those
        w = self._find_best_worker(self.decode, "decode_queue")
        r.log_event(self.now, "wait_decode")
        r.decode_wid = w.wid
        w.decode_queue.append(r)
        self._wakeup(w)

    # -- Worker (base/worker.py) ----------------------------------------------------

    def _wakeup(self, w: _Worker) -> None:
        """``Worker.wakeup`` succeeds the event the worker waits on (if it waits):
        simpy schedules it now, behind everything already scheduled for now."""
        if w.waiting and not w.woken:
            w.woken = True
            self._at(self.now, self._WAKE, w)

    def _back_pressure(self, w: _Worker) -> bool:
        """``Worker.has_back_pressure``."""
        threshold = int(self.decode_max_batch_size * self.decode_back_pressure)
        return sum(r.current_context_len for r in w.decode_queue) > threshold

    def _next(self, w: _Worker, after_wait: bool = False) -> None:
        """One turn of ``Worker.run``'s loop: wait while both queues are empty,
        else prefill if the prefill queue has requests and no back pressure,
        else decode. (After a wake-up ``run`` goes on without checking again.)"""
        if not after_wait and not (w.prefill_queue or w.decode_queue):
            w.waiting = True
            return
        if w.prefill_queue and not self._back_pressure(w):
            self._do_prefill(w)
        else:
            self._do_decode(w)

    def _enter_prefill(self, w: _Worker) -> list[_Request]:
        """``Worker._enter_prefill``, first in its pipeline, chunked prefill off:
        whole prompts from the head while they fit what is left of
        ``prefill_max_tokens`` (the first that does not stops it), at most
        ``prefill_max_batch_size``."""
        result: list[_Request] = []
        budget = self.prefill_max_tokens
        for _ in range(min(self.prefill_max_batch_size, len(w.prefill_queue))):
            candidate = w.prefill_queue[0]
            if candidate.prefill_lens > budget:  # sched_size > prefill_max_tokens
                break
            budget -= candidate.prefill_lens
            result.append(w.prefill_queue.popleft())
        for r in result:
            r.log_event(self.now, "do_prefill")
        return result

    def _do_prefill(self, w: _Worker) -> None:
        """``Worker.do_prefill``: ``get_prefill_time`` of the prompt lengths plus
        ``add_ray_overhead`` of their ``current_context_len`` (the prompts);
        ``_prefill_ips`` is the batch size until the timeout ends."""
        batch = self._enter_prefill(w)
        # current_prefill_lens = remain_prefill_lens = prefill_lens (unchunked)
        lengths = [r.prefill_lens for r in batch]
        # requests left behind: the budget stopped the batch (10 ** 7 requests
        # never do)
        w.iterations.append(("prefill", len(batch), len(w.prefill_queue) > 0))
        delay = _distserve_prefill_ms(self.params, lengths)
        w.prefill_ips = len(batch)
        self._at(self.now + delay, self._PREFILLED, (w, batch))

    def _exit_prefill(self, w: _Worker, batch: list[_Request]) -> None:
        """``Worker._exit_prefill`` (last in its pipeline, ``should_request_stay``
        false): ``finish_prefill`` sets ``counter = 0`` and logs ``wait_decode``; a
        request with nothing to decode exits, the others go to the global
        scheduler (``forward_decode(to_scheduler=True)``), in batch order."""
        w.prefill_ips = 0
        for r in batch:
            r.counter = 0
            r.log_event(self.now, "wait_decode")
            if r.should_finish():
                r.log_event(self.now, "exit_system")
                r.terminated = True
                continue
            self._schedule_decode(r)

    def _enter_decodes(self, w: _Worker, remaining_tok_in_batch: int) -> list[_Request]:
        """``Worker._enter_decodes``: from the head of the decode queue, at most
        ``remaining_tok_in_batch`` requests (``do_decode`` passes
        ``decode_max_tokens``: a count), while ``current_context_len + 1`` fits
        what is left of the hard-coded 50,000."""
        cap = DECODE_CONTEXT_CAP
        batch: list[_Request] = []
        for _ in range(min(remaining_tok_in_batch, len(w.decode_queue))):
            r = w.decode_queue[0]
            if r.current_context_len + 1 > cap:
                break
            cap -= r.current_context_len + 1
            batch.append(w.decode_queue.popleft())
        for r in batch:
            r.log_event(self.now, "do_decode")
        return batch

    def _do_decode(self, w: _Worker) -> None:
        """``Worker.do_decode``: ``get_decode_time`` with ``token_generated_list``
        = context + 1, plus ``add_ray_overhead`` of the contexts."""
        batch = self._enter_decodes(w, self.decode_max_tokens)
        # the cap never leaves a batch empty here (prompts + outputs <= 2,048)
        assert batch, "an empty decode batch"
        w.iterations.append(("decode", len(batch), len(w.decode_queue) > 0))
        delay = _distserve_decode_ms(
            self.params, [r.current_context_len for r in batch]
        )
        self._at(self.now + delay, self._DECODED, (w, batch))

    def _exit_decode(self, w: _Worker, batch: list[_Request]) -> None:
        """``Worker._exit_decode``: ``finish_decode`` (``counter += 1``, logs
        ``wait_decode``, exits when ``counter >= output_lens``); the others go
        back to the tail of the decode queue, in batch order
        (``forward_decode`` to ``next_worker``, itself)."""
        for r in batch:
            r.counter += 1
            r.log_event(self.now, "wait_decode")
            if r.should_finish():
                r.log_event(self.now, "exit_system")
                r.terminated = True
        back = [r for r in batch if not r.should_finish()]
        if back:
            w.decode_queue.extend(back)
            self._wakeup(w)


def simdistserve_latency(requests: list[_Request]) -> pd.DataFrame:
    """``organize_data.organize_request_event_df`` and
    ``calculate_per_request_latency``, with ``output_lens``, in ms."""
    frames = []
    for r in requests:  # transform_request_log_to_df
        df = pd.DataFrame(r.log, columns=["start_time", "event_type"])
        df["req_id"] = r.req_id
        df["duration"] = (df["start_time"].shift(-1) - df["start_time"]).fillna(0)
        df["end_time"] = df["start_time"] + df["duration"]
        frames.append(df)
    df = pd.concat(frames)
    output_lens = pd.Series([r.output_lens for r in requests])
    first_event = df[df.event_type == "init"].groupby("req_id").start_time.min()
    first_wait_decode = (
        df[df.event_type == "wait_decode"].groupby("req_id").start_time.min()
    )
    last_event = df[df.event_type == "exit_system"].groupby("req_id").end_time.max()
    decoding_latency = last_event - first_wait_decode
    tpot = decoding_latency.div(output_lens).replace([np.inf, -np.inf], 0)
    return pd.DataFrame(
        {
            "first_token_latency": first_wait_decode - first_event,
            "decoding_latency": decoding_latency,
            "total_latency": last_event - first_event,
            "tpot": tpot,
        }
    )


# -- lsched --------------------------------------------------------------------------


def lsched_cluster(n_prefill: int, n_decode: int, prefill_max_tokens: int,
                   decode_router: str = "least-queued") -> Cluster:  # fmt: skip
    """The cluster that matches :class:`SimDistServe` (module docstring)."""
    most = _max_num_tokens()
    profile = load_profile("opt-13b-a100-tp1-distserve").replace(
        kv_capacity_tokens=1_000_000_000,  # DistServe's mode has no KV limit
        max_num_seqs=most,
        max_num_batched_tokens=most,
    )
    policy = (
        f"vllm-v0:kv_limit=false,prefill_token_budget={prefill_max_tokens},"
        f"decode_context_cap={DECODE_CONTEXT_CAP}"
    )
    return Cluster(
        (
            Pool(profile, policy, n_prefill, name="p", role="prefill"),
            Pool(profile, policy, n_decode, name="d", role="decode"),
        ),
        router="least-outstanding",
        decode_router=decode_router,
    )


def _random_instance(seed: int, n: int, rate: float) -> Instance:
    """``n`` requests, Poisson arrivals at ``rate`` per second, prompts 1-2,047
    tokens, outputs 1-300 (one in ten: 1, nothing to decode) with prompt + output
    <= 2,048."""
    rng = np.random.default_rng([20260115, seed])
    arrival = np.cumsum(rng.exponential(1 / rate, n))
    prompt = rng.integers(1, 2048, n)
    output = np.minimum(rng.integers(1, 301, n), 2048 - prompt)
    output[rng.random(n) < 0.1] = 1
    return Instance(arrival - arrival[0], prompt, output)


@dataclass
class Compared:
    """A run of both simulators on one instance, compared request by request."""

    instance: Instance
    requests: list[_Request]
    sim: SimDistServe
    result: object  # lsched's SimulationResult
    max_abs_diff_s: float


def compare(instance: Instance, n_prefill: int, n_decode: int,
            prefill_max_tokens: int | None = None) -> Compared:  # fmt: skip
    """Run both, assert the same prefill end, completion and decode replica for
    every request (``rtol`` 1e-9), and return them."""
    most = _max_num_tokens()
    pmt = most if prefill_max_tokens is None else prefill_max_tokens
    sim = SimDistServe(_params(), n_prefill, n_decode, pmt, most)
    requests = sim.run(
        instance.arrival_s * 1000.0,  # ms
        instance.prompt_tokens,
        instance.output_tokens - 1,  # output_lens: decode steps after the prefill
    )
    result = simulate_cluster(
        instance, lsched_cluster(n_prefill, n_decode, pmt), engine="python"
    )
    got = result.requests  # type: ignore[attr-defined]
    # the end of the prefill: finish_prefill's wait_decode; the end: exit_system
    prefilled_s = np.array([_first(r, "wait_decode") for r in requests]) / 1000.0
    done_s = np.array([_first(r, "exit_system") for r in requests]) / 1000.0
    np.testing.assert_allclose(got["first_token_s"], prefilled_s, rtol=RTOL, atol=0)
    np.testing.assert_allclose(got["completion_s"], done_s, rtol=RTOL, atol=0)
    decoded = instance.output_tokens > 1
    wid = np.array([r.decode_wid for r in requests])
    assert (got["decode_replica"].to_numpy()[decoded] == wid[decoded]).all()
    assert (got["replica"] < n_prefill).all()
    diff = max(
        float(np.abs(got["first_token_s"] - prefilled_s).max()),
        float(np.abs(got["completion_s"] - done_s).max()),
    )
    return Compared(instance, requests, sim, result, diff)


def _first(r: _Request, event: str) -> float:
    return next(t for t, e in r.log if e == event)


def _cut(sim: SimDistServe, kind: str) -> int:
    """Iterations of ``kind`` that the prefill budget or the context cap cut."""
    workers = sim.prefill + sim.decode
    return sum(cut for w in workers for k, _, cut in w.iterations if k == kind)


# -- the two routing rules, by hand (unit-slot: 1 s per iteration) -----------------


def _unit_cluster(n_prefill: int, n_decode: int, decode_router: str) -> Cluster:
    unit = load_profile("unit-slot")
    return Cluster(
        (
            Pool(unit, "vllm-v0:kv_limit=false", n_prefill, name="p", role="prefill"),
            Pool(unit, "vllm-v0:kv_limit=false", n_decode, name="d", role="decode"),
        ),
        router="least-outstanding",
        decode_router=decode_router,
    )


def test_a_prefill_replica_counts_its_iteration_in_flight() -> None:
    """``_prefill_ips + len(prefill_queue)``: R0 at 0 is prefilled on replica 0 in
    [0, 1); at 0.5 replica 0 still has it in flight (1) and replica 1 nothing, so
    R1 goes to replica 1 and is prefilled in [0.5, 1.5). (Counting R0 as done at
    0.5 sends R1 to replica 0, after R0: token 1 at 2.)"""
    instance = Instance([0.0, 0.5], [1, 1], [2, 2])
    got = simulate_cluster(instance, _unit_cluster(2, 1, "least-queued")).requests
    assert got["replica"].tolist() == [0, 1]
    assert got["first_token_s"].tolist() == [1.0, 1.5]


def test_least_queued_routes_decode_as_simdistserve() -> None:
    """R0 (o=10) at 0: prefilled in [0, 1) on replica 0, decoded on replica 1
    (decode replicas 1 and 2 tie) from 1, token 10 at 10. R1 (o=2) at 1.5:
    prefilled in [1.5, 2.5); at 2.5 replica 1 has R0 in flight in [2, 3) and
    nothing queued, replica 2 nothing: a tie, so R1 goes to replica 1 (the
    shortest ``decode_queue``, the first on ties), joins R0's batch at 3 and
    finishes at 4. ``least-outstanding`` counts R0 and sends R1 to replica 2,
    idle: done at 3.5."""
    instance = Instance([0.0, 1.5], [1, 1], [10, 2])
    got = simulate_cluster(instance, _unit_cluster(1, 2, "least-queued")).requests
    assert got["decode_replica"].tolist() == [1, 1]
    assert got["completion_s"].tolist() == [10.0, 4.0]
    other = _unit_cluster(1, 2, "least-outstanding")
    got = simulate_cluster(instance, other).requests
    assert got["decode_replica"].tolist() == [1, 2]
    assert got["completion_s"].tolist() == [10.0, 3.5]


# -- the comparisons -----------------------------------------------------------------

#: (seed, requests, rate per second, prefill workers, decode workers,
#: prefill_max_tokens or None for simdistserve's 66,144)
RANDOM_CASES = [
    (1, 150, 2.0, 1, 1, None),
    (2, 150, 12.0, 1, 1, None),  # the decode context cap binds
    (3, 150, 20.0, 2, 1, 4096),  # both bind
    (4, 150, 6.0, 3, 1, None),
    (5, 150, 15.0, 1, 2, 4096),
    (6, 150, 30.0, 2, 2, None),
    (7, 150, 40.0, 3, 2, 8192),
    (8, 150, 10.0, 2, 3, None),
]


def test_random_traces_match_simdistserve() -> None:
    """Every case exactly (M = 1 and M > 1); the prefill budget and the 50,000
    context cap each cut batches in some of them."""
    _need_calibration()
    cut = {"prefill": 0, "decode": 0}
    compared = 0
    for seed, n, rate, n_prefill, n_decode, pmt in RANDOM_CASES:
        run = compare(_random_instance(seed, n, rate), n_prefill, n_decode, pmt)
        assert run.max_abs_diff_s < 1e-9
        compared += n
        for kind in cut:
            cut[kind] += _cut(run.sim, kind)
    assert compared == 1200
    assert cut["prefill"] > 0 and cut["decode"] > 0, cut


@pytest.mark.parametrize(
    ("rate_scale", "n_prefill", "n_decode"), [(1.0, 1, 1), (4.0, 2, 1), (4.0, 2, 2)]
)
def test_azure_code_trace_matches_simdistserve(
    rate_scale: float, n_prefill: int, n_decode: int
) -> None:
    """The first 300 requests of the Azure code trace, clipped to 2,048 tokens as
    the colocated reproduction clips them (``read_trace(max_model_len=2048)``:
    ``o_i' = min(o_i, 2048 - s_i)``, a prompt of 2,048 or more becomes 2,047
    tokens and one output token), arrivals scaled by ``rate_scale``."""
    _need_calibration()
    if not TRACE.is_file():
        pytest.skip(f"{TRACE} is absent")
    instance, _ = read_trace(
        TRACE, limit=300, rate_scale=rate_scale, max_model_len=2048
    )
    assert ((instance.prompt_tokens + instance.output_tokens) <= 2048).all()
    run = compare(instance, n_prefill, n_decode)
    assert run.max_abs_diff_s < 1e-9


def test_metrics_match_organize_data() -> None:
    """TTFT and TPOT of a compared run both ways: simdistserve's
    ``calculate_per_request_latency`` (ms) and lsched's ``request_metrics`` and
    result metrics (s)."""
    _need_calibration()
    run = compare(_random_instance(3, 150, 20.0), 2, 2, 4096)
    theirs = simdistserve_latency(run.requests) / 1000.0  # s
    got = run.result.requests  # type: ignore[attr-defined]
    ours = request_metrics(run.instance, got["first_token_s"], got["completion_s"])
    np.testing.assert_allclose(
        ours["ttft_s"], theirs["first_token_latency"], rtol=RTOL, atol=1e-12
    )
    one = run.instance.output_tokens == 1
    assert one.any() and np.isnan(theirs["tpot"].to_numpy()[one]).all()
    assert np.isnan(ours["tpot_s"][one]).all()
    np.testing.assert_allclose(
        ours["tpot_s"][~one], theirs["tpot"].to_numpy()[~one], rtol=RTOL, atol=1e-12
    )
    np.testing.assert_allclose(
        ours["e2e_s"], theirs["total_latency"], rtol=RTOL, atol=1e-12
    )
    metrics = run.result.metrics  # type: ignore[attr-defined]
    assert metrics["ttft_mean_s"] == pytest.approx(
        theirs["first_token_latency"].mean(), rel=RTOL
    )
    assert metrics["tpot_mean_s"] == pytest.approx(theirs["tpot"].mean(), rel=RTOL)
