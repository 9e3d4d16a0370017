"""LoRA adapters a pool's replicas serve: :class:`AdapterSpec`.

A request with a non-empty ``adapter`` (:mod:`lsched.instance`) runs with that
LoRA adapter on top of the base model; ``""`` is the base model alone. A spec
gives, per pool:

- ``size_bytes``: every adapter's size, with per-name overrides in ``sizes``.
  Default 16,777,216 bytes: a rank-8 adapter (PEFT's ``LoraConfig`` default
  ``r = 8``) on the q, k, v and o projections of a Llama-7B (32 layers, hidden
  size 4096, fp16): 32 x 4 x 8 x (4096 + 4096) x 2 bytes. When ``sizes`` is
  given it lists every adapter the workload may name; a request naming another
  is an error.
- ``max_loras``: at most this many distinct adapters among a replica's running
  requests, hence in any batch (vLLM's ``--max-loras``, default 1,
  ``vllm/config.py`` ``LoRAConfig.max_loras``; the V0 scheduler skips a
  waiting request whose adapter would make the running batch's adapters more
  than ``max_loras``, ``vllm/core/scheduler.py`` ``curr_loras``).
- ``slots`` (default ``max_loras``) GPU adapter slots of ``slot_bytes``
  (default the largest adapter) each: vLLM has ``max_loras`` GPU slots
  (``vllm/lora/models.py``, ``LoRAModelManager.lora_slots``), each layer's
  LoRA weights stacked for all of them at ``max_lora_rank``
  (``vllm/lora/layers.py``, ``create_lora_weights``), and its profiling run,
  which sizes the KV cache, loads ``max_loras`` dummy adapters
  (``ModelRunner.profile_run``), so **the slots' bytes come out of the KV
  capacity**:
  a replica keeps ``kv_capacity_tokens - ceil(slots * slot_bytes /
  kv_bytes_per_token)`` tokens of KV (:meth:`AdapterSpec.serving_profile`).
  ``slots >= max_loras``, so the adapters of a running set within
  ``max_loras`` always fit.

Residency and loading (the engine's rules, :mod:`lsched.evaluator.adapters`):
an adapter is loaded from host memory into a free slot, or into the slot of
the least recently used resident adapter no running request uses, the first
time a batch needs it; the copy takes ``size / h2d`` seconds, ``h2d`` the
pool's host tier's host-to-device bandwidth (:mod:`lsched.tiers`; dLoRA prices
an adapter load as size / PCIe, ``lora_load_cost = lora_weight_size /
PCIE_BANDWIDTH`` with 32 GiB/s in ``vllm/engine/engine_manager.py`` of
LLMServe/dLoRA-artifact, which also takes each placed adapter's weights out
of the memory left for KV), and lengthens that batch's iteration before its
forward pass, as a blocking copy does.

Text form (``lsched simulate --adapters``)::

    size_bytes=N,max_loras=K,slots=S,slot_bytes=B,size.NAME=N,...

every key optional (``default`` alone: all defaults).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from lsched.checks import check_int, check_optional_int
from lsched.errors import InputError

#: A rank-8 adapter on q/k/v/o of Llama-7B in fp16 (module docstring).
DEFAULT_ADAPTER_BYTES = 32 * 4 * 8 * (4096 + 4096) * 2
#: vLLM's default ``max_loras``.
DEFAULT_MAX_LORAS = 1


@dataclass(frozen=True)
class AdapterSpec:
    """The adapters of a pool (module docstring).

    Attributes
    ----------
    size_bytes
        Size of every adapter not in ``sizes``, bytes (>= 1).
    max_loras
        Distinct adapters among the running requests, at most (>= 1).
    slots
        GPU adapter slots per replica (>= ``max_loras``); ``None``:
        ``max_loras``.
    slot_bytes
        Bytes of one slot; ``None``: the largest adapter.
    sizes
        Per adapter name, its size in bytes; when given, the only names a
        request may use (``size_bytes`` is then unused).
    """

    size_bytes: int = DEFAULT_ADAPTER_BYTES
    max_loras: int = DEFAULT_MAX_LORAS
    slots: int | None = None
    slot_bytes: int | None = None
    sizes: Mapping[str, int] | None = field(default=None)

    def __post_init__(self) -> None:
        check_int(self.size_bytes, "adapters.size_bytes", 1)
        check_int(self.max_loras, "adapters.max_loras", 1)
        check_optional_int(self.slots, "adapters.slots", self.max_loras)
        check_optional_int(self.slot_bytes, "adapters.slot_bytes", 1)
        if self.sizes is not None:
            if not isinstance(self.sizes, Mapping) or not self.sizes:
                raise InputError(
                    f"got {self.sizes!r}; expected a non-empty table name = bytes",
                    field="adapters.sizes",
                )
            for name, size in self.sizes.items():
                if not isinstance(name, str) or not name:
                    raise InputError(
                        f"got {name!r}; expected a non-empty adapter name",
                        field="adapters.sizes",
                    )
                check_int(size, f"adapters.size.{name}", 1)
            object.__setattr__(self, "sizes", MappingProxyType(dict(self.sizes)))
        if self.slot_bytes is not None:
            sizes = {"size_bytes": self.size_bytes}
            if self.sizes is not None:  # then the only adapters there are
                sizes = {f"size.{k}": v for k, v in self.sizes.items()}
            for what, size in sizes.items():
                if size > self.slot_bytes:
                    raise InputError(
                        f"got {size} bytes; expected an adapter no larger than "
                        f"the replica's adapter slot of {self.slot_bytes} bytes",
                        field=f"adapters.{what}",
                    )

    @property
    def num_slots(self) -> int:
        """GPU adapter slots per replica."""
        return self.max_loras if self.slots is None else self.slots

    @property
    def slot_size(self) -> int:
        """Bytes of one slot."""
        if self.slot_bytes is not None:
            return self.slot_bytes
        return max(self.sizes.values()) if self.sizes else self.size_bytes

    @property
    def memory_bytes(self) -> int:
        """The adapter memory of a replica: ``slots * slot_bytes``."""
        return self.num_slots * self.slot_size

    def size_of(self, name: str) -> int:
        """Bytes of adapter ``name``."""
        return (self.sizes or {}).get(name, self.size_bytes)

    def serving_profile(self, profile: Any, where: str) -> Any:
        """``profile`` with the adapter memory taken out of its KV capacity
        (module docstring); :class:`InputError` if nothing would be left."""
        taken = math.ceil(self.memory_bytes / profile.kv_bytes_per_token)
        left = profile.kv_capacity_tokens - taken
        if left < profile.block_tokens:
            raise InputError(
                f"{self.memory_bytes} bytes of adapter slots take {taken} tokens of "
                f"KV; expected less than the {profile.kv_capacity_tokens} tokens of "
                f"a replica of {where} less one block",
                field="adapters.slots",
            )
        return profile.replace(kv_capacity_tokens=left)

    def codes(self, adapter: np.ndarray | None, n: int) -> tuple[np.ndarray, list[str]]:
        """Per request its adapter's code (``-1``: the base model) and the names
        by code (sorted); :class:`InputError` for a name ``sizes`` lacks."""
        if adapter is None:
            return np.full(n, -1, dtype=np.int64), []
        names, inverse = np.unique(adapter, return_inverse=True)
        names = names.tolist()
        base = names.index("") if "" in names else -1
        if self.sizes is not None:
            unknown = [k for k in names if k and k not in self.sizes]
            if unknown:
                i = int(np.flatnonzero(adapter == unknown[0])[0])
                raise InputError(
                    f"request {i} names adapter {unknown[0]!r}; expected one of "
                    f"{sorted(self.sizes)}",
                    field="adapter",
                )
        codes = inverse.astype(np.int64)
        if base >= 0:
            codes = np.where(codes == base, -1, codes - (codes > base))
            names.pop(base)
        return codes, names

    @property
    def label(self) -> str:
        """The text form (:func:`parse_adapters` reads it back)."""
        keys = [f"size_bytes={self.size_bytes}", f"max_loras={self.max_loras}"]
        if self.slots is not None:
            keys.append(f"slots={self.slots}")
        if self.slot_bytes is not None:
            keys.append(f"slot_bytes={self.slot_bytes}")
        keys += [f"size.{k}={v}" for k, v in (self.sizes or {}).items()]
        return ",".join(keys)


_INT_KEYS = ("size_bytes", "max_loras", "slots", "slot_bytes")


def parse_adapters(text: object) -> AdapterSpec:
    """A spec, from itself, its text form (module docstring) or a cluster
    file's ``adapters`` table (the same keys, ``sizes`` as a table).

    Raises
    ------
    InputError
        An unknown key, a value that is not an integer >= 1, ``max_loras < 1``,
        an adapter larger than a slot.
    """
    if isinstance(text, AdapterSpec):
        return text
    if isinstance(text, Mapping):
        return _from_table(text)
    if not isinstance(text, str) or not text.strip():
        raise InputError(
            f"got {text!r}; expected default or key=value[,...]", field="adapters"
        )
    if text.strip() == "default":
        return AdapterSpec()
    values: dict[str, Any] = {}
    sizes: dict[str, int] = {}
    for item in text.split(","):
        key, eq, raw = (part.strip() for part in item.partition("="))
        if not eq or not key or not raw:
            raise InputError(
                f"got {item.strip()!r}; expected key=value", field="adapters"
            )
        number = _integer(raw, key)
        if key.startswith("size."):
            sizes[key[5:]] = number
        elif key in _INT_KEYS:
            values[key] = number
        else:
            raise InputError(
                f"unknown key {key!r}; expected {', '.join(_INT_KEYS)} or size.NAME",
                field="adapters",
            )
    return AdapterSpec(**values, sizes=sizes or None)


def _from_table(table: Mapping[str, Any]) -> AdapterSpec:
    unknown = set(table) - {*_INT_KEYS, "sizes"}
    if unknown:
        raise InputError(
            f"unknown key(s) {sorted(unknown)}; expected {', '.join(_INT_KEYS)}, sizes",
            field="adapters",
        )
    return AdapterSpec(**table)


def _integer(raw: str, key: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise InputError(
            f"got {raw!r}; expected an integer >= 1", field=f"adapters.{key}"
        ) from None
