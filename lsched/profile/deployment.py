"""Deployment profiles: a served LLM on given hardware, as one validated record.

:class:`DeploymentProfile` holds the iteration-time cost model
(:mod:`lsched.profile.cost`), the KV-cache size (:mod:`lsched.profile.hardware`)
and the engine's limits.

KV is allocated in blocks of ``block_tokens``; a request holding x tokens uses
``ceil(x / block_tokens)`` blocks and the replica has
``floor(kv_capacity_tokens / block_tokens)`` blocks.

A capacity below ``max_model_len`` tokens is *allowed*: OR instances (Jaillet et
al. 2025) set the memory M per instance, far below any engine's context limit, via
``profile.replace(kv_capacity_tokens=M)``. Whether a request can ever fit is the
instance's and evaluator's business, not the profile's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from lsched._pickle import reduce_record
from lsched.checks import check_int, check_number
from lsched.errors import InputError
from lsched.profile.cost import FloatArray, IntArray, IterationTime
from lsched.profile.hardware import Hardware
from lsched.tiers import HostTier


@dataclass(frozen=True)
class DeploymentProfile:
    """A served LLM on given hardware: cost model, KV memory and engine limits.

    Parameters
    ----------
    name, description
        Short name (the TOML file's stem) and one line for humans.
    iteration_time
        The cost model.
    kv_bytes_per_token
        KV-cache bytes per token (all layers, K and V).
    kv_capacity_tokens
        KV tokens one replica can hold (>= 1).
    block_tokens
        KV block size in tokens (1 for OR instances, 16 for vLLM).
    max_num_seqs
        Most requests in one batch.
    max_num_batched_tokens
        Most prefill tokens + decode steps in one batch.
    max_model_len
        Longest request (prompt + output tokens) the engine accepts.
    replicas
        Identical replicas C >= 1.
    hardware
        What one replica runs on.
    sources
        Where each figure comes from: key (a field name or topic) -> citation.
    fit_mape
        Mean absolute percentage error of the fitted cost model on its
        measurements, as a fraction (0.05 = 5 %), or ``None`` when not fitted.
    host
        The replica's host-memory tier (:class:`lsched.tiers.HostTier`: swap
        space and PCIe bandwidths); ``None`` gives :meth:`HostTier.default`
        (vLLM's 4 GiB per GPU, 25 GB/s each way).
    path
        The TOML file the profile was read from, if any (not compared).

    Raises
    ------
    InputError
        On any value outside its domain, naming the field.
    """

    name: str
    description: str
    iteration_time: IterationTime
    kv_bytes_per_token: int
    kv_capacity_tokens: int
    block_tokens: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    replicas: int
    hardware: Hardware
    sources: Mapping[str, str] = field(default_factory=dict)
    fit_mape: float | None = None
    host: HostTier | None = None
    path: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"got {self.name!r}; expected a non-empty name",
                             field="name")  # fmt: skip
        if not isinstance(self.description, str):
            raise InputError(
                f"got {type(self.description).__name__}; expected a string",
                field="description",
            )
        if not isinstance(self.iteration_time, IterationTime):
            raise InputError(
                f"got {type(self.iteration_time).__name__}; expected IterationTime",
                field="iteration_time",
            )
        if not isinstance(self.hardware, Hardware):
            raise InputError(
                f"got {type(self.hardware).__name__}; expected Hardware",
                field="hardware",
            )
        for name in (
            "kv_bytes_per_token",
            "kv_capacity_tokens",
            "block_tokens",
            "max_num_seqs",
            "max_num_batched_tokens",
            "max_model_len",
            "replicas",
        ):
            object.__setattr__(self, name, check_int(getattr(self, name), name, 1))
        if self.host is None:
            object.__setattr__(self, "host", HostTier.default(self.hardware.num_gpus))
        elif not isinstance(self.host, HostTier):
            raise InputError(
                f"got {type(self.host).__name__}; expected HostTier", field="host"
            )
        self.iteration_time.check_positive(self.max_model_len)
        if self.kv_capacity_tokens < self.block_tokens:
            raise InputError(
                f"got {self.kv_capacity_tokens}; expected at least one block "
                f"({self.block_tokens} tokens)",
                field="kv_capacity_tokens",
            )
        if self.fit_mape is not None:
            mape = check_number(self.fit_mape, "fit_mape")
            if mape < 0:
                raise InputError(f"got {mape}; expected >= 0", field="fit_mape")
            object.__setattr__(self, "fit_mape", mape)
        sources = dict(self.sources)
        for key, value in sources.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise InputError(
                    f"got {key!r} = {value!r}; expected text keys and values",
                    field="sources",
                )
        object.__setattr__(self, "sources", MappingProxyType(sources))

    def __reduce__(self) -> Any:
        """Pickle (process pools, Dask) as the fields (:mod:`lsched._pickle`)."""
        return reduce_record(self)

    def iteration_time_s(self, phi: npt.ArrayLike) -> FloatArray:
        """Seconds per batch for phi of shape ``(..., 6)``."""
        return self.iteration_time(phi)

    def kv_blocks(self, tokens: npt.ArrayLike) -> IntArray:
        """Blocks needed to hold ``tokens`` KV tokens: ``ceil(tokens / block)``."""
        array = np.asarray(tokens, dtype=np.int64)
        return -(-array // self.block_tokens)

    @property
    def kv_capacity_blocks(self) -> int:
        """Whole blocks that fit in the capacity: ``floor(capacity / block)``."""
        return self.kv_capacity_tokens // self.block_tokens

    @property
    def host_capacity_blocks(self) -> int:
        """Whole KV blocks that fit in the host tier's memory."""
        assert self.host is not None  # set in __post_init__
        return self.host.capacity_blocks(self.block_tokens, self.kv_bytes_per_token)

    def replace(self, **changes: Any) -> DeploymentProfile:
        """Return a re-validated copy with some fields changed.

        Examples
        --------
        >>> from lsched.profile import load_profile
        >>> unit = load_profile("unit-slot").replace(kv_capacity_tokens=40)
        >>> unit.kv_capacity_blocks
        40
        """
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise InputError(
                f"unknown profile field(s) {sorted(unknown)}; expected some of "
                f"{[f.name for f in dataclasses.fields(self)]}"
            )
        return dataclasses.replace(self, **changes)

    def summary(self) -> dict[str, Any]:
        """The key figures as one JSON-like dict."""
        return {
            "name": self.name,
            "description": self.description,
            "hardware": dataclasses.asdict(self.hardware),
            "replicas": self.replicas,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "kv_capacity_tokens": self.kv_capacity_tokens,
            "kv_capacity_blocks": self.kv_capacity_blocks,
            "block_tokens": self.block_tokens,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "max_model_len": self.max_model_len,
            "fit_mape": self.fit_mape,
            "host": self.host.to_dict() if self.host is not None else None,
            "iteration_time": self.iteration_time.to_dict(),
            "sources": dict(self.sources),
            "path": self.path,
        }
