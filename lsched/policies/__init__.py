"""Online policies, registered by name with a parameter dataclass.

A policy is named on the command line and in notebooks as ``NAME`` or
``NAME:key=value,key=value`` (e.g. ``fcfs:chunked=false``); :func:`parse_policy`
turns that into a :class:`PolicySpec`, which builds a fresh policy object per
replica and run (policies may keep state).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lsched.errors import InputError
from lsched.policies.base import (
    ARRIVAL_TOLERANCE_S,
    Batch,
    Policy,
    PolicyError,
    ReplicaLimits,
    ReplicaView,
)
from lsched.policies.fastserve import FastServe, FastServeParams
from lsched.policies.fcfs import Fcfs, FcfsParams
from lsched.policies.hybrid import Hybrid, HybridParams
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

__all__ = [
    "ARRIVAL_TOLERANCE_S",
    "REGISTRY",
    "Batch",
    "Policy",
    "PolicyError",
    "PolicySpec",
    "ReplicaLimits",
    "ReplicaView",
    "parse_policy",
]


@dataclass(frozen=True)
class Registered:
    """A policy family: its parameter dataclass and how to build one."""

    params: type
    build: Callable[[Any], Policy]
    summary: str


#: Policy name -> parameters and constructor.
REGISTRY: dict[str, Registered] = {
    "fcfs": Registered(FcfsParams, Fcfs, "FCFS continuous batching (vLLM-like)"),
    "static": Registered(
        StaticParams, Static, "static (request-level) batching, FasterTransformer-like"
    ),
    "orca": Registered(
        OrcaParams, Orca, "Orca iteration-level batching, KV reserved at admission"
    ),
    "vllm-v0": Registered(
        VllmV0Params, VllmV0, "vLLM V0 prefill-first (or DistServe colocated)"
    ),
    "vllm": Registered(
        VllmParams, Vllm, "vLLM V1: running first, one token budget, recompute"
    ),
    "sarathi": Registered(
        SarathiParams, Sarathi, "Sarathi-Serve stall-free batching, chunk budget"
    ),
    "sjf": Registered(
        SjfParams, Sjf, "shortest predicted output first, non-preemptive admission"
    ),
    "srpt": Registered(
        SrptParams, Srpt, "shortest predicted remaining output, preempts longer ones"
    ),
    "priority": Registered(
        PriorityParams, Priority, "ascending per-request key (estimated work, ...)"
    ),
    "mc-sf": Registered(
        McSfParams, McSf, "memory-constrained shortest first (Jaillet et al. 2025)"
    ),
    "sorted-f": Registered(
        SortedFParams, SortedF, "batches minimising sum(pred)/|X|^2 (Wang et al. 2025)"
    ),
    "sglang": Registered(
        SglangParams, Sglang, "SGLang: new_token_ratio reservation, retraction"
    ),
    "fastserve": Registered(
        FastServeParams, FastServe, "FastServe skip-join MLFQ, pause or recompute"
    ),
    "vtc": Registered(
        VtcParams, Vtc, "Virtual Token Counter fair sharing across tenants"
    ),
    "wait": Registered(
        WaitParams, Wait, "WAIT threshold batching, known lengths (Ao et al. 2025)"
    ),
    "nested-wait": Registered(
        NestedWaitParams,
        NestedWait,
        "Nested WAIT: segment guesses, unknown lengths (Ao et al. 2025)",
    ),
    "hybrid": Registered(
        HybridParams,
        Hybrid,
        "offline sort + Lagrangian prefill insertion (Pang et al. 2025)",
    ),
}


@dataclass(frozen=True)
class PolicySpec:
    """A named policy with its parameters; ``make()`` gives a fresh policy."""

    name: str
    params: Any

    def make(self) -> Policy:
        return REGISTRY[self.name].build(self.params)

    @property
    def label(self) -> str:
        """``name`` or ``name:key=value,...`` listing the non-default parameters."""
        default = REGISTRY[self.name].params()
        changed = [
            f"{f.name}={_show(getattr(self.params, f.name))}"
            for f in dataclasses.fields(self.params)
            if getattr(self.params, f.name) != getattr(default, f.name)
        ]
        return self.name + (":" + ",".join(changed) if changed else "")


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _convert(text: str, kind: Any, option: str) -> Any:
    # field types are strings under `from __future__ import annotations`:
    # "int", "float | None", ...; "none" gives None where None is allowed
    parts = [p.strip() for p in str(kind).split("|")]
    if "None" in parts and text.lower() == "none":
        return None
    kind = next((p for p in parts if p != "None"), "str")
    kind = {"bool": bool, "int": int, "float": float, "str": str}.get(kind, kind)
    if kind is bool:
        lowered = text.lower()
        if lowered in {"true", "1", "yes"}:
            return True
        if lowered in {"false", "0", "no"}:
            return False
        raise InputError(f"got {text!r}; expected true or false", field=option)
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise InputError(
                f"got {text!r}; expected {'an integer' if kind is int else 'a number'}",
                field=option,
            ) from None
    return text


def parse_policy(spec: str) -> PolicySpec:
    """Parse ``NAME[:key=value,...]`` into a :class:`PolicySpec`.

    Raises
    ------
    InputError
        For an unknown policy or parameter, or a value of the wrong type; the
        message lists what is known.
    """
    name, _, rest = spec.strip().partition(":")
    if name not in REGISTRY:
        raise InputError(
            f"unknown policy {name!r}; expected one of {', '.join(sorted(REGISTRY))}",
            field="policy",
        )
    params_type = REGISTRY[name].params
    fields = {f.name: f for f in dataclasses.fields(params_type)}
    values: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, text = item.partition("=")
        if not eq or key not in fields:
            known = ", ".join(fields) or "none"
            raise InputError(
                f"got {item!r}; expected key=value with key one of: {known}",
                field=f"policy {name}",
            )
        values[key] = _convert(text, fields[key].type, f"{name}.{key}")
    try:
        return PolicySpec(name, params_type(**values))
    except ValueError as exc:
        raise InputError(str(exc), field=f"policy {name}") from None
