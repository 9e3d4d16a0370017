"""The host-memory tier of a replica: KV swapped out of the GPU, and its copies.

A replica may move a request's KV between its GPU and its host memory over PCIe
(DESIGN.md, "Clusters", host tier). :class:`HostTier` is the data: host memory for
KV, and the bandwidth of each direction. A copy of ``x`` tokens moves
``x * kv_bytes_per_token`` bytes and takes

    copy_s(x) = x * kv_bytes_per_token / bandwidth

Copies in one direction on one replica share that direction's link first come,
first served (:class:`CopyLink`); the two directions are independent (PCIe is full
duplex).

Swap modes (:data:`SWAP_MODES`), as the engine applies them
(:mod:`lsched.evaluator.engine`):

- ``blocking`` (vLLM v0: ``cache_engine.swap_in/swap_out`` run on the compute
  stream before the forward pass): the iteration whose batch swaps is longer by
  ``sum copy_s`` over its swaps, both directions added (one stream runs them one
  after the other); a swapped-in request may run in that same iteration.
- ``async`` (FastServe: copies on their own CUDA streams): a copy starts when its
  direction's link is free and overlaps the iterations. A request swapping out
  leaves the running set at once, but its GPU blocks stay taken until its copy
  ends; a request swapping in takes its GPU blocks at once and runs from the first
  iteration boundary at or after its copy's end.

Host blocks use the replica's block size: ``capacity_blocks = memory_bytes //
(block_tokens * kv_bytes_per_token)``; a swapped request holds ``ceil(x / b)`` of
them from its swap-out's decision until its swap-in: the decision with blocking
copies, the end of the copy with asynchronous ones.

Defaults (one for the project, :meth:`HostTier.default`):

- bandwidth 25 GB/s each way: PCIe 4.0 x16 is 31.5 GB/s raw per direction, about
  25 GB/s effective; the figure BLIS (inference-sim ``sim/cluster/pd_events.go``)
  and DistServe's transfer estimate use (``../shared/reference/serving-systems.md``).
- host memory 4 GiB per GPU: vLLM's ``--swap-space`` default (``vllm/config.py``,
  ``CacheConfig.swap_space``, GiB per GPU), ``serving-systems.md`` "Swap and offload".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lsched.checks import check_choice, check_int, check_number
from lsched.errors import InputError

#: Effective PCIe 4.0 x16 bandwidth per direction, bytes per second.
PCIE4_X16_BYTES_PER_S = 25e9
#: vLLM's default swap space per GPU, bytes (``--swap-space 4`` GiB).
VLLM_SWAP_SPACE_BYTES_PER_GPU = 4 * 2**30
#: How swap copies meet the iterations (module docstring).
SWAP_MODES = ("blocking", "async")


def check_swap_mode(value: Any, field: str = "swap_mode") -> str:
    """``value`` if it is a swap mode, else a one-line :class:`InputError`."""
    return check_choice(value, field, SWAP_MODES)


@dataclass(frozen=True, slots=True)
class HostTier:
    """Host memory for KV and the PCIe bandwidths of one replica.

    Parameters
    ----------
    memory_bytes
        Host memory that may hold swapped KV (>= 0; 0: no swap).
    h2d_bytes_per_s, d2h_bytes_per_s
        Host-to-device and device-to-host bandwidths, bytes per second (> 0).
    """

    memory_bytes: int
    h2d_bytes_per_s: float = PCIE4_X16_BYTES_PER_S
    d2h_bytes_per_s: float = PCIE4_X16_BYTES_PER_S

    def __post_init__(self) -> None:
        check_int(self.memory_bytes, "host.memory_bytes", 0)
        for name in ("h2d_bytes_per_s", "d2h_bytes_per_s"):
            value = check_number(
                getattr(self, name), f"host.{name}", 0, strict=True, what="bytes/s"
            )
            object.__setattr__(self, name, value)

    @classmethod
    def default(cls, num_gpus: int) -> HostTier:
        """vLLM's 4 GiB of swap space per GPU, PCIe 4.0 x16 both ways."""
        return cls(memory_bytes=VLLM_SWAP_SPACE_BYTES_PER_GPU * num_gpus)

    def capacity_blocks(self, block_tokens: int, kv_bytes_per_token: int) -> int:
        """Host blocks of ``block_tokens`` tokens that fit in ``memory_bytes``."""
        return self.memory_bytes // (block_tokens * kv_bytes_per_token)

    def to_dict(self) -> dict[str, Any]:
        return {
            "memory_bytes": self.memory_bytes,
            "h2d_bytes_per_s": self.h2d_bytes_per_s,
            "d2h_bytes_per_s": self.d2h_bytes_per_s,
        }


#: The fields of a ``[host]`` table (profile, cluster pool, ``--set host.FIELD``).
HOST_FIELDS = ("memory_bytes", "h2d_bytes_per_s", "d2h_bytes_per_s")


def host_from_table(table: Any, base: HostTier, prefix: str = "host.") -> HostTier:
    """``base`` with the fields of a ``[host]`` table changed; errors name the
    field as ``prefix + key``."""
    if not isinstance(table, dict):
        raise InputError(f"got {table!r}; expected a table", field=prefix.rstrip("."))
    unknown = sorted(set(table) - set(HOST_FIELDS))
    if unknown:
        raise InputError(
            f"unknown key(s) {unknown}; expected some of {list(HOST_FIELDS)}",
            field=prefix.rstrip("."),
        )
    values = base.to_dict() | table
    try:
        return HostTier(**values)
    except InputError as exc:  # name the field as the caller spells it
        key = (exc.field or "").removeprefix("host.")
        raise InputError(exc.message, field=prefix + key) from None


class CopyLink:
    """One direction of a replica's PCIe link: copies queue first come, first
    served. ``free_s`` is when the last queued copy ends."""

    __slots__ = ("bytes_per_s", "free_s")

    def __init__(self, bytes_per_s: float) -> None:
        self.bytes_per_s = bytes_per_s
        self.free_s = -math.inf

    def copy(self, ready_s: float, seconds: float) -> tuple[float, float]:
        """Queue a copy of ``seconds`` ready at ``ready_s``; its (start, end)."""
        begin = max(ready_s, self.free_s)
        self.free_s = begin + seconds
        return begin, self.free_s


class HostLedger:
    """The host tier of one replica engine: host blocks held by swapped requests,
    the two copy links and the swap totals.

    Parameters
    ----------
    tier
        The replica's host tier.
    block_tokens, kv_bytes_per_token
        The replica's block size and KV bytes per token.
    """

    __slots__ = (
        "block_tokens",
        "bytes_per_token",
        "capacity_blocks",
        "d2h",
        "h2d",
        "in_tokens",
        "out_tokens",
        "stall_s",
        "used_blocks",
    )  # fmt: skip

    def __init__(self, tier: HostTier, block_tokens: int, kv_bytes_per_token: int):
        self.block_tokens = block_tokens
        self.bytes_per_token = kv_bytes_per_token
        self.capacity_blocks = tier.capacity_blocks(block_tokens, kv_bytes_per_token)
        self.d2h = CopyLink(tier.d2h_bytes_per_s)
        self.h2d = CopyLink(tier.h2d_bytes_per_s)
        self.used_blocks = 0
        self.out_tokens = 0  # tokens swapped out, in total
        self.in_tokens = 0  # tokens swapped in, in total
        self.stall_s = 0.0  # seconds blocking copies added to iterations

    def blocks(self, tokens: int) -> int:
        """Host blocks that hold ``tokens`` tokens."""
        return -(-tokens // self.block_tokens)

    def take(self, tokens: int) -> bool:
        """Hold the blocks of ``tokens`` swapped-out tokens; False (nothing taken)
        if they do not fit."""
        need = self.blocks(tokens)
        if self.used_blocks + need > self.capacity_blocks:
            return False
        self.used_blocks += need
        self.out_tokens += tokens
        return True

    def give(self, tokens: int) -> None:
        """Free the host blocks of ``tokens`` swapped-in tokens."""
        self.used_blocks -= self.blocks(tokens)
        self.in_tokens += tokens

    def copy_s(self, link: CopyLink, tokens: int) -> float:
        """Seconds a copy of ``tokens`` tokens takes on ``link``."""
        return tokens * self.bytes_per_token / link.bytes_per_s

    def snapshot(self) -> tuple[Any, ...]:
        return (self.used_blocks, self.out_tokens, self.in_tokens, self.stall_s,
                self.d2h.free_s, self.h2d.free_s)  # fmt: skip

    def restore(self, state: tuple[Any, ...]) -> None:
        (self.used_blocks, self.out_tokens, self.in_tokens, self.stall_s,
         self.d2h.free_s, self.h2d.free_s) = state  # fmt: skip
