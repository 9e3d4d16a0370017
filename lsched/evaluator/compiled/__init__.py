"""The compiled path: the standard policies replayed by numba, iteration by iteration.

The Python engine (:mod:`lsched.evaluator.engine`) runs any policy, calling it at
event boundaries and advancing held decode stretches in closed form; its cost is
Python's per event. Here a replica is replayed in one compiled call: the engine's
moves (:mod:`~lsched.evaluator.compiled.core`) and each standard policy's
decision, ported step for step from its Python module (``fcfs``, ``orca``, ...),
run at every iteration. No closed form is needed: an iteration costs about its
batch (the running list is linked, KV and token counts are kept as they change).

Which path runs
---------------
:func:`kernel_for` says whether a replica can take this path: its policy must be
one with a port (:data:`KERNELS`, the registered class itself, not a subclass or a
re-registered name; ``vllm:priority=true`` is not ported) and the run must not
keep an iteration log or be paused (snapshots, ``run(until_s)``). Everything
else, user policies included, runs on the Python path;
:class:`~lsched.evaluator.result.SimulationResult` says which (``engine``). Both
paths give the same records (``tests/test_compiled.py``).

Each policy module has its own five-line ``run`` loop (``core.boundary``, its
``decide``, ``core.apply``): numba caches a function that calls another named
at module level, not one handed a function as an argument.

numba compiles each kernel on first use and caches it on disk (``cache=True``): the
first run in a fresh environment takes seconds, each later process loads it in
about a second (:func:`load`). That time is the result's ``compile_s``, apart from
its ``runtime_s``.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lsched.policies.base import PolicyError, ReplicaLimits
from lsched.profile import FEATURES, DeploymentProfile

#: Policies with a compiled port: registered name -> module, the same in
#: lsched.policies (the rule) and here (its port).
KERNELS: dict[str, str] = {
    "fcfs": "fcfs",
    "orca": "orca",
    "vllm": "vllm",
    "sarathi": "sarathi",
    "vllm-v0": "vllm_v0",
}

#: The error codes' messages (4, a stall, is worded by :func:`_stall`).
_ERRORS = {
    1: "{n} requests in the batch > max_num_seqs",
    2: "prefill tokens + decode steps > max_num_batched_tokens",
    3: "KV after the iteration exceeds the capacity",
    5: "iteration time is not positive",
    6: "the batch names a request it cannot run",
}


def kernel_for(spec: Any) -> str | None:
    """The compiled module of ``spec``'s policy, or None when it has none: the
    name must still be registered to lsched's own class, with its own params
    class (a re-registered name or a subclass is another rule), and the rule's
    parameters must not need what the kernels are not given (``vllm`` with
    ``priority=true`` reads per-request priorities: it runs in Python)."""
    from lsched.policies import REGISTRY

    module = KERNELS.get(getattr(spec, "name", ""))
    if module is None:
        return None
    entry = REGISTRY[spec.name]
    if (
        getattr(entry.build, "__module__", None) != f"lsched.policies.{module}"
        or type(spec.params) is not entry.params
    ):
        return None
    if module == "vllm" and spec.params.priority:
        # its queues follow the instance's priority column, which no kernel reads
        return None
    if module == "vllm_v0" and spec.params.preemption != "recompute":
        return None  # swapping needs the host tier, which no kernel models
    return module


def _params(name: str, params: Any, limits: ReplicaLimits) -> np.ndarray:
    """The kernel's integer parameters (see each module's docstring)."""
    if name == "fcfs":
        return np.array([int(params.chunked)], dtype=np.int64)
    if name == "orca":
        seq_cap = limits.max_num_seqs
        if params.max_batch is not None:
            seq_cap = min(seq_cap, params.max_batch)
        capacity = limits.kv.capacity_tokens
        length = params.max_model_len or limits.max_model_len
        ceiling = capacity if length is None else min(length, capacity)
        predicted = int(params.reserve == "predicted")
        return np.array([seq_cap, predicted, ceiling], dtype=np.int64)
    if name == "vllm":
        return np.array([params.long_prefill_token_threshold], dtype=np.int64)
    if name == "sarathi":
        budget = min(params.chunk, limits.max_num_batched_tokens)
        mark = limits.kv.watermark_blocks(params.watermark)
        return np.array([budget, mark], dtype=np.int64)
    if name == "vllm-v0":
        budget = limits.max_num_batched_tokens
        if params.prefill_token_budget is not None:
            budget = min(budget, params.prefill_token_budget)
        return np.array(
            [
                int(params.kv_limit),
                limits.kv.watermark_blocks(params.watermark),
                budget,
                _or_none(params.decode_context_cap),
                _or_none(params.back_pressure_tokens),
            ],
            dtype=np.int64,
        )
    raise KeyError(name)


def _or_none(value: int | None) -> int:
    """An optional limit as an int: ``-1`` for none."""
    return -1 if value is None else value


def _policy_state(name: str, m: int) -> np.ndarray:
    """The kernel's policy state for ``m`` requests, in its starting values (see
    each module's docstring); one unused slot for a stateless policy."""
    if name == "vllm-v0":
        from lsched.evaluator.compiled.vllm_v0 import LIVE, ring_slots

        ps = np.zeros(LIVE + m + ring_slots(m), dtype=np.int64)
        ps[LIVE : LIVE + m] = -1  # no request is in the decode queue
        return ps
    return np.zeros(1, dtype=np.int64)


def _time_model(profile: DeploymentProfile) -> tuple[np.ndarray, np.ndarray, int]:
    """The iteration time as arrays: pieces ``[regime, piece, feature]`` (a regime
    with fewer pieces repeats its first), thresholds and the switch feature."""
    time = profile.iteration_time
    regimes = time.effective_regimes
    width = max(len(r) for r in regimes)
    pieces = np.empty((len(regimes), width, len(FEATURES)))
    for k, r in enumerate(regimes):
        pieces[k] = r[0]
        pieces[k, : len(r)] = r
    switch = 0 if time.switch_feature is None else FEATURES.index(time.switch_feature)
    return pieces, np.asarray(time.thresholds, dtype=np.float64), switch


@dataclass
class CompiledReplica:
    """One replica replayed by a kernel: the fields the records read from an
    engine (:func:`lsched.evaluator.records.collect`)."""

    m: int
    admitted_s: np.ndarray
    first_token_s: np.ndarray
    completion_s: np.ndarray
    preemptions: np.ndarray
    recomputed: np.ndarray
    iterations: int
    busy_s: float
    kv_token_seconds: float
    log: None = None

    @property
    def done(self) -> int:
        return self.m


def run_replica(
    spec: Any,
    arrival_s: np.ndarray,
    prompt_tokens: np.ndarray,
    output_tokens: np.ndarray,
    predicted_output_tokens: np.ndarray | None,
    profile: DeploymentProfile,
    on_finished: Callable[[int], None] | None = None,
    ids: np.ndarray | None = None,
) -> CompiledReplica:
    """Replay one replica's requests (arrival order) under ``spec`` compiled
    (``ids``: their instance positions, which a stall's message names).

    Raises
    ------
    PolicyError
        Where the Python path raises it: a batch that breaks a rule, or a stall.
    """
    from lsched.evaluator.compiled import core

    name = kernel_for(spec)
    if name is None:
        raise ValueError(f"policy {spec.name!r} has no compiled kernel")
    kernel = importlib.import_module(f"lsched.evaluator.compiled.{name}")
    limits = ReplicaLimits.from_profile(profile)
    m = len(arrival_s)
    predicted = (
        np.zeros(m, dtype=np.int64)
        if predicted_output_tokens is None
        else np.asarray(predicted_output_tokens, dtype=np.int64)
    )
    st = core.new_state(
        np.ascontiguousarray(arrival_s, dtype=np.float64),
        np.asarray(prompt_tokens, dtype=np.int64),
        np.asarray(output_tokens, dtype=np.int64),
        predicted,
        np.array(
            [
                limits.kv_capacity_blocks,
                limits.block_tokens,
                limits.max_num_seqs,
                limits.max_num_batched_tokens,
            ],
            dtype=np.int64,
        ),
    )
    pieces, thresholds, switch = _time_model(profile)
    pp = _params(spec.name, spec.params, limits)
    ps = _policy_state(spec.name, m)
    err = kernel.run(st, pieces, thresholds, switch, pp, ps)
    req, tim, s, f, _ = st
    if err == core.E_STALL:
        message = _stall(req, s, float(f[core.NOW]), limits, ids)
        raise PolicyError(f"{spec.name} (compiled): {message}")
    if err:
        message = _ERRORS[int(err)].format(
            n=int(s[core.NUM_PREFILL] + s[core.NUM_DECODE]), t=float(f[core.NOW])
        )
        raise PolicyError(f"{spec.name} (compiled): {message}")
    if on_finished is not None and m:
        on_finished(m)
    return CompiledReplica(
        m=m,
        admitted_s=tim[core.ADMITTED],
        first_token_s=tim[core.FIRST],
        completion_s=tim[core.COMPLETION],
        preemptions=req[core.PREEMPTIONS],
        recomputed=req[core.RECOMPUTED],
        iterations=int(s[core.ITERATIONS]),
        busy_s=float(f[core.BUSY]),
        kv_token_seconds=float(f[core.KV_TOKEN_SECONDS]),
    )


def _stall(
    req: np.ndarray,
    s: np.ndarray,
    now_s: float,
    limits: ReplicaLimits,
    ids: np.ndarray | None,
) -> str:
    """Error 4's message, as the Python engine words it
    (:func:`lsched.evaluator.engine.stall_message`): the oldest waiting request
    (the arrived one of lowest local id still waiting) and the limit it breaks."""
    from lsched.evaluator.compiled import core
    from lsched.evaluator.engine import stall_message

    arrived = int(s[core.NUM_ARRIVED])
    waiting = np.flatnonzero(req[core.STATUS, :arrived] == core.WAITING)
    running = int(s[core.NUM_RUNNING])
    if not len(waiting):
        return stall_message(now_s, running, 0, limits=limits)
    r = int(waiting[0])
    return stall_message(
        now_s,
        running,
        len(waiting),
        r if ids is None else int(ids[r]),
        int(req[core.PROMPT, r]),
        int(req[core.EMITTED, r]),
        int(req[core.OUTPUT, r]),
        limits=limits,
    )


def load(spec: Any, profile: DeploymentProfile) -> float:
    """Compile ``spec``'s kernel for ``profile`` (or load it from numba's cache on
    disk) by replaying one request; the seconds it took: about a second the first
    time in a process, microseconds after."""
    started = time.perf_counter()
    one = np.ones(1, dtype=np.int64)
    with contextlib.suppress(PolicyError):  # a policy that cannot run it compiled
        run_replica(spec, np.zeros(1), one, one, one, profile)
    return time.perf_counter() - started
