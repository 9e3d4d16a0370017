"""Online policies, registered by name with a parameter dataclass.

A policy is named on the command line and in notebooks as ``NAME`` or
``NAME:key=value,key=value`` (e.g. ``fcfs:chunked=false``); :func:`parse_policy`
turns that into a :class:`PolicySpec`, which builds a fresh policy object per
replica and run (policies may keep state).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lsched.policies.base import (
    ARRIVAL_TOLERANCE_S,
    Batch,
    Policy,
    PolicyContext,
    PolicyError,
    ReplicaLimits,
    ReplicaView,
)
from lsched.policies.dlora import Dlora, DloraParams
from lsched.policies.fastserve import FastServe, FastServeParams
from lsched.policies.fcfs import Fcfs, FcfsParams
from lsched.policies.hybrid import Hybrid, HybridParams
from lsched.policies.hybrid_lr import HybridLr, HybridLrParams
from lsched.policies.infinigen import InfiniGen, InfiniGenParams
from lsched.policies.mc_sf import McSf, McSfParams
from lsched.policies.nested_wait import NestedWait, NestedWaitParams
from lsched.policies.orca import Orca, OrcaParams
from lsched.policies.priority import Priority, PriorityParams
from lsched.policies.sarathi import Sarathi, SarathiParams
from lsched.policies.sglang import Sglang, SglangParams
from lsched.policies.sjf import Sjf, SjfParams, Srpt, SrptParams
from lsched.policies.sorted_f import SortedF, SortedFParams
from lsched.policies.static import Static, StaticParams
from lsched.policies.vllm import Vllm, VllmParams
from lsched.policies.vllm_v0 import VllmV0, VllmV0Params
from lsched.policies.vtc import Vtc, VtcParams
from lsched.policies.wait import Wait, WaitParams
from lsched.registry import Registry

__all__ = [
    "ARRIVAL_TOLERANCE_S",
    "REGISTRY",
    "Batch",
    "Policy",
    "PolicyContext",
    "PolicyError",
    "PolicySpec",
    "ReplicaLimits",
    "ReplicaView",
    "parse_policy",
    "register_policy",
]


#: Policy name -> parameters and constructor.
REGISTRY = Registry("policy")
REGISTRY.register("fcfs", Fcfs, FcfsParams, "FCFS continuous batching (vLLM-like)")
REGISTRY.register(
    "static",
    Static,
    StaticParams,
    "static (request-level) batching, FasterTransformer-like",
)
REGISTRY.register(
    "orca", Orca, OrcaParams, "Orca iteration-level batching, KV reserved at admission"
)
REGISTRY.register(
    "vllm-v0", VllmV0, VllmV0Params, "vLLM V0 prefill-first (or DistServe colocated)"
)
REGISTRY.register(
    "vllm", Vllm, VllmParams, "vLLM V1: running first, one token budget, recompute"
)
REGISTRY.register(
    "sarathi", Sarathi, SarathiParams, "Sarathi-Serve stall-free batching, chunk budget"
)
REGISTRY.register(
    "sjf", Sjf, SjfParams, "shortest predicted output first, non-preemptive admission"
)
REGISTRY.register(
    "srpt",
    Srpt,
    SrptParams,
    "shortest predicted remaining output, preempts longer ones",
)
REGISTRY.register(
    "priority",
    Priority,
    PriorityParams,
    "ascending per-request key (estimated work, ...)",
)
REGISTRY.register(
    "mc-sf", McSf, McSfParams, "memory-constrained shortest first (Jaillet et al. 2025)"
)
REGISTRY.register(
    "sorted-f",
    SortedF,
    SortedFParams,
    "batches minimising sum(pred)/|X|^2 (Wang et al. 2025)",
)
REGISTRY.register(
    "sglang", Sglang, SglangParams, "SGLang: new_token_ratio reservation, retraction"
)
REGISTRY.register(
    "fastserve",
    FastServe,
    FastServeParams,
    "FastServe skip-join MLFQ, pause, recompute or swap",
)
REGISTRY.register(
    "infinigen",
    InfiniGen,
    InfiniGenParams,
    "InfiniGen: FCFS with KV in host memory, decode fetches a share over PCIe",
)
REGISTRY.register(
    "vtc", Vtc, VtcParams, "Virtual Token Counter fair sharing across tenants"
)
REGISTRY.register(
    "wait", Wait, WaitParams, "WAIT threshold batching, known lengths (Ao et al. 2025)"
)
REGISTRY.register(
    "nested-wait",
    NestedWait,
    NestedWaitParams,
    "Nested WAIT: segment guesses, unknown lengths (Ao et al. 2025)",
)
REGISTRY.register(
    "hybrid",
    Hybrid,
    HybridParams,
    "offline sort + Lagrangian prefill insertion (Pang et al. 2025)",
)
REGISTRY.register(
    "dlora",
    Dlora,
    DloraParams,
    "dLoRA: merged or unmerged LoRA batches, AIMD threshold (Wu et al. 2024)",
)
REGISTRY.register(
    "hybrid-lr",
    HybridLr,
    HybridLrParams,
    "Pang et al. 2025 re-derived: prefill to the roofline balance point, LPT",
)


@dataclass(frozen=True)
class PolicySpec:
    """A named policy with its parameters; ``make()`` gives a fresh policy."""

    name: str
    params: Any

    def make(self, context: PolicyContext | None = None) -> Policy:
        """A fresh policy object for the replica ``context`` describes."""
        return REGISTRY[self.name].make(self.params, context)

    @property
    def label(self) -> str:
        """``name`` or ``name:key=value,...`` listing the non-default parameters."""
        return REGISTRY.label(self.name, self.params)


def parse_policy(spec: str) -> PolicySpec:
    """Parse ``NAME[:key=value,...]`` into a :class:`PolicySpec`.

    Raises
    ------
    InputError
        For an unknown policy or parameter, or a value of the wrong type; the
        message lists what is known.
    """
    return PolicySpec(*REGISTRY.parse(spec))


def register_policy(
    name: str,
    build: Callable[..., Policy],
    params: type | None = None,
    summary: str = "",
    *,
    replace: bool = False,
) -> None:
    """Register a policy under ``name``, for ``--policy NAME`` and
    :func:`parse_policy`.

    ``build(params, context)`` (or ``build(params)``) returns a fresh policy for
    one replica; ``context`` is the :class:`PolicyContext` of that replica.
    ``params`` is a dataclass of its ``key=value`` options, each with a default
    (``None``: no options). See :meth:`lsched.registry.Registry.register`.
    """
    REGISTRY.register(name, build, params, summary, replace=replace)
