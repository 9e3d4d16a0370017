"""``infinigen``: FCFS continuous batching with every KV in host memory, each decode
step fetching a share of its context over PCIe (InfiniGen).

Source: Lee et al., "InfiniGen: Efficient Generative Inference of Large Language
Models with Dynamic KV Cache Management", OSDI 2024; code
``snu-comparch/InfiniGen``, ``speedup/infinigen/infinigen/kv_selection_controller.py``
(``../shared/reference/serving-systems.md``, "Swap and offload"): all KV is kept in
host memory; per decode step a speculation selects the tokens whose attention
score is within a margin of the maximum, capped at about 20 % of the sequence,
and only those are fetched to the GPU.

Model (:func:`offloaded_profile`, applied to the pool's profile when the pool is
built, :class:`lsched.cluster.Pool`):

- KV capacity = the host tier's memory in tokens, ``memory_bytes //
  kv_bytes_per_token`` (the GPU holds only the fetched share of a step);
- every regime of the cost model gains one affine piece, the fetch
  ``fetch_fraction * K * kv_bytes_per_token / h2d_bytes_per_s`` (``K``: KV tokens
  the step's decodes read), so an iteration takes ``max(compute, fetch)`` (plus
  the profile's overheads): the copy overlaps the compute, as InfiniGen's
  prefetching does;
- the batching rule is :class:`~lsched.policies.fcfs.Fcfs` with whole prompts
  (``chunked=false``); InfiniGen's own runs batch statically (FlexGen-style), so
  the rule is lsched's choice, stated as such.

Prefill writes KV to host memory at device-to-host bandwidth; that copy overlaps
the next layers' compute and is not charged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from lsched.errors import InputError
from lsched.policies.fcfs import Fcfs, FcfsParams

#: InfiniGen's cap on the share of a sequence's KV one decode step fetches.
DEFAULT_FETCH_FRACTION = 0.2
#: The ``sources`` key an offloaded profile carries (and is recognised by).
OFFLOAD_SOURCE = "kv_offload"


@dataclass(frozen=True)
class InfiniGenParams:
    """Parameters of :class:`InfiniGen`.

    Attributes
    ----------
    fetch_fraction
        Share of its context a decode step fetches from host memory, in (0, 1]
        (InfiniGen's cap, about 0.2).
    """

    fetch_fraction: float = DEFAULT_FETCH_FRACTION

    def __post_init__(self) -> None:
        f = self.fetch_fraction
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0 < f <= 1:
            raise InputError(
                f"got {f!r}; expected a share in (0, 1]", field="fetch_fraction"
            )

    def serving_profile(self, profile: Any) -> Any:
        """The profile a pool of this policy serves with: :func:`offloaded_profile`."""
        return offloaded_profile(profile, self.fetch_fraction)


def offloaded_profile(profile: Any, fetch_fraction: float) -> Any:
    """``profile`` with its KV in its host tier (module docstring); a profile
    already offloaded is returned as it is."""
    if OFFLOAD_SOURCE in profile.sources:
        return profile
    from lsched.profile import FEATURES

    host = profile.host
    per_token = profile.kv_bytes_per_token
    fetch = np.zeros(len(FEATURES))
    fetch[FEATURES.index("kv_read_tokens")] = (
        fetch_fraction * per_token / host.h2d_bytes_per_s
    )
    timing = profile.iteration_time
    regimes = tuple(np.vstack([r, fetch]) for r in timing.regimes)
    sources = dict(profile.sources) | {
        OFFLOAD_SOURCE: (
            f"InfiniGen (Lee et al., OSDI 2024): KV in host memory "
            f"({host.memory_bytes} bytes), each decode step fetches "
            f"{fetch_fraction:g} of its context at {host.h2d_bytes_per_s:g} B/s"
        )
    }
    return profile.replace(
        name=f"{profile.name}+offload",
        kv_capacity_tokens=max(host.memory_bytes // per_token, profile.block_tokens),
        iteration_time=dataclasses.replace(timing, regimes=regimes),
        sources=sources,
    )


class InfiniGen(Fcfs):
    """FCFS with whole prompts on an offloaded profile (module docstring)."""

    def __init__(self, params: InfiniGenParams | None = None) -> None:
        super().__init__(FcfsParams(chunked=False))
        self.infinigen = params or InfiniGenParams()
