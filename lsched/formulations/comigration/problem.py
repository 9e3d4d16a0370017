"""The co-migration problem's data (:class:`CoMigrationProblem`), validated once.

The model, its constants and their sources are in
:mod:`lsched.formulations.comigration`; this module holds the data, the exact
cost of an assignment of requests to replicas
(:meth:`CoMigrationProblem.replica_times_s`) and the adapters it needs
(:meth:`CoMigrationProblem.needed`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from lsched.checks import check_number
from lsched.errors import InputError

__all__ = [
    "MOVE_S",
    "PCIE_BYTES_PER_S",
    "CoMigrationProblem",
    "read_only",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: dLoRA's price of one moved request, seconds (``migration_ilp.py`` line 57:
#: ``0.05 * x[i, j]`` for every request ``i`` not on engine ``j`` now).
MOVE_S = 0.05
#: dLoRA's host-to-device bandwidth, bytes per second (``engine_manager.py`` line
#: 21: ``PCIE_BANDWIDTH = 32 * _GB``, ``_GB = 1 << 30``).
PCIE_BYTES_PER_S = 32.0 * 2**30


def read_only(array: npt.ArrayLike) -> np.ndarray:
    """A read-only copy of ``array`` (here rather than
    :func:`lsched.formulations.replicas.results.read_only`, whose package imports
    the solvers)."""
    copy = np.array(array)
    copy.flags.writeable = False
    return copy


def _integers(value: npt.ArrayLike, name: str, size: int | None) -> IntArray:
    """``value`` as a 1-D int64 array of ``size`` entries (any if ``None``), each
    ``>= 0``."""
    array = np.asarray(value)
    if array.ndim != 1 or (size is not None and len(array) != size):
        many = "entries" if size is None else f"{size} entries"
        raise InputError(f"expected a 1-D array of {many}", field=name)
    integral = array.dtype.kind in "iu" or (
        array.dtype.kind == "f"
        and bool(np.all(np.isfinite(array) & (array == np.round(array))))
    )
    if not integral:
        raise InputError(f"got {array.dtype} values; expected integers", field=name)
    numbers = array.astype(np.int64)
    bad = np.flatnonzero(numbers < 0)
    if len(bad):
        i = int(bad[0])
        raise InputError(f"entry {i}: got {numbers[i]}; expected >= 0", field=name)
    return numbers


def _seconds(value: npt.ArrayLike, name: str, size: int) -> FloatArray:
    """``value`` as a 1-D float64 array of ``size`` finite entries ``>= 0``."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("expected numbers (seconds)", field=name) from None
    if array.ndim != 1 or len(array) != size:
        raise InputError(f"expected a 1-D array of {size} entries", field=name)
    bad = np.flatnonzero(~np.isfinite(array) | (array < 0))
    if len(bad):
        i = int(bad[0])
        raise InputError(
            f"entry {i}: got {array[i]}; expected finite seconds >= 0", field=name
        )
    return array


def _below(value: IntArray, name: str, limit: int, what: str) -> None:
    """Every entry of ``value`` below ``limit``, else naming the first."""
    bad = np.flatnonzero(value >= limit)
    if len(bad):
        i = int(bad[0])
        raise InputError(
            f"request {i}: got {value[i]}; expected {what} from 0 to {limit - 1}",
            field=name,
        )


def _mask(value: npt.ArrayLike | None, name: str, size: int) -> BoolArray:
    """``value`` as a 1-D boolean array of ``size`` entries (all ``True`` if
    ``None``)."""
    if value is None:
        return np.ones(size, dtype=np.bool_)
    array = np.asarray(value)
    if array.ndim != 1 or len(array) != size:
        raise InputError(f"expected a 1-D array of {size} entries", field=name)
    if array.dtype.kind != "b":
        raise InputError(f"got {array.dtype} values; expected booleans", field=name)
    return array.astype(np.bool_)


def _residency(value: npt.ArrayLike, replicas: int) -> BoolArray:
    """``resident`` as a ``(K, C)`` boolean array, ``K >= 1``."""
    array = np.asarray(value)
    if array.ndim != 2 or array.shape[1] != replicas or array.shape[0] == 0:
        raise InputError(
            f"got shape {array.shape}; expected (adapters >= 1, {replicas})",
            field="resident",
        )
    if array.dtype.kind != "b":
        raise InputError(f"got {array.dtype} values; expected booleans",
                         field="resident")  # fmt: skip
    return array.astype(np.bool_)


@dataclass(frozen=True, eq=False)
class CoMigrationProblem:
    """Requests on replicas, each of one adapter: where should each run?

    Notation of :mod:`lsched.formulations.comigration`: requests ``i``, replicas
    ``j``, adapters ``k``.

    Attributes
    ----------
    replica
        ``r_i``: the replica each request is on now (int64, read-only).
    adapter
        ``k(i)``: each request's adapter, ``0 .. K-1`` (int64, read-only).
    blocks
        ``b_i >= 0``: KV blocks each request holds (int64, read-only).
    exec_s
        ``e_i >= 0``: each request's expected execution time, seconds (dLoRA:
        its adapter's mean over finished requests, 5 s before any).
    capacity_blocks
        ``G_j >= 0``: each replica's KV capacity, blocks.
    adapter_slots
        ``L_j >= 0``: adapters each replica may hold.
    resident
        ``R_kj``: whether adapter ``k`` is in replica ``j``'s memory now
        (boolean ``(K, C)``; ``K`` is its number of rows).
    block_bytes
        Bytes of one KV block (> 0).
    adapter_load_s
        ``l_k >= 0``: seconds to load adapter ``k`` where it is not resident
        (its size / host-to-device bandwidth); zeros by default, as in dLoRA's
        ILP, which has no such term.
    movable
        Whether each request may move (boolean, read-only; all ``True`` by
        default). An immovable request (one a live migration cannot take now:
        prefilling, waiting, or already on its way) is priced where it is and
        stays there: ``x_i r_i = 1``.
    move_s
        ``m``: seconds charged to the destination per moved request
        (:data:`MOVE_S`).
    pcie_bytes_per_s
        Host-to-device bandwidth of an overflow block (:data:`PCIE_BYTES_PER_S`).
    block_s
        ``beta = block_bytes / pcie_bytes_per_s``: seconds per overflow block
        (derived).

    Raises
    ------
    InputError
        Naming the field: arrays of the wrong length or shape, negative sizes
        or times, a request whose adapter or replica does not exist, a replica
        whose requests already need more adapters than it has slots.
    """

    replica: IntArray
    adapter: IntArray
    blocks: IntArray
    exec_s: FloatArray
    capacity_blocks: IntArray
    adapter_slots: IntArray
    resident: BoolArray
    block_bytes: float
    adapter_load_s: FloatArray | None = None
    movable: BoolArray | None = None
    move_s: float = MOVE_S
    pcie_bytes_per_s: float = PCIE_BYTES_PER_S
    block_s: float = field(init=False)

    def __post_init__(self) -> None:
        capacity = _integers(self.capacity_blocks, "capacity_blocks", None)
        replicas = len(capacity)
        if replicas == 0:
            raise InputError("expected at least one replica", field="capacity_blocks")
        replica = _integers(self.replica, "replica", None)
        n = len(replica)
        if n == 0:
            raise InputError("expected at least one request", field="replica")
        _below(replica, "replica", replicas, "a replica")
        resident = _residency(self.resident, replicas)
        adapters = resident.shape[0]
        adapter = _integers(self.adapter, "adapter", n)
        _below(adapter, "adapter", adapters, "an adapter")
        load = (
            np.zeros(adapters) if self.adapter_load_s is None else self.adapter_load_s
        )
        block_bytes = check_number(self.block_bytes, "block_bytes", 0.0, strict=True)
        pcie = check_number(self.pcie_bytes_per_s, "pcie_bytes_per_s", 0.0, strict=True)
        derived = {
            "replica": replica,
            "adapter": adapter,
            "blocks": _integers(self.blocks, "blocks", n),
            "exec_s": _seconds(self.exec_s, "exec_s", n),
            "capacity_blocks": capacity,
            "adapter_slots": _integers(self.adapter_slots, "adapter_slots", replicas),
            "resident": resident,
            "adapter_load_s": _seconds(load, "adapter_load_s", adapters),
            "movable": _mask(self.movable, "movable", n),
            "move_s": check_number(self.move_s, "move_s", 0.0, what="seconds"),
        }
        for name, value in derived.items():
            if isinstance(value, np.ndarray):
                value = read_only(value)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "block_bytes", block_bytes)
        object.__setattr__(self, "pcie_bytes_per_s", pcie)
        object.__setattr__(self, "block_s", block_bytes / pcie)
        self._check_slots()

    def _check_slots(self) -> None:
        """Staying put must be feasible: no replica's requests need more adapters
        than its slots."""
        needed = self.needed(self.replica).sum(axis=0)
        over = np.flatnonzero(needed > self.adapter_slots)
        if len(over):
            j = int(over[0])
            raise InputError(
                f"replica {j}: got {self.adapter_slots[j]}; expected at least the "
                f"{needed[j]} adapters of its requests",
                field="adapter_slots",
            )

    def __len__(self) -> int:
        """Number of requests."""
        return len(self.replica)

    @property
    def replicas(self) -> int:
        """``C``: number of replicas."""
        return len(self.capacity_blocks)

    @property
    def adapters(self) -> int:
        """``K``: number of adapters."""
        return self.resident.shape[0]

    def needed(self, where: IntArray) -> BoolArray:
        """``(K, C)``: whether some request of adapter ``k`` is on replica ``j``
        under the assignment ``where`` (the least placement it needs)."""
        placed = np.zeros((self.adapters, self.replicas), dtype=np.bool_)
        placed[self.adapter, where] = True
        return placed

    def overflow_blocks(self, where: IntArray) -> IntArray:
        """``o_j = max(0, sum_{i on j} b_i - G_j)`` under ``where``."""
        held = np.bincount(where, weights=self.blocks, minlength=self.replicas)
        return np.maximum(held.astype(np.int64) - self.capacity_blocks, 0)

    def replica_times_s(self, where: IntArray) -> FloatArray:
        """``T_j`` of every replica under the assignment ``where``
        (:mod:`lsched.formulations.comigration`, the cost of a replica)."""
        c = self.replicas
        work = np.bincount(where, weights=self.exec_s, minlength=c)
        moved = np.bincount(where[where != self.replica], minlength=c)
        loads = (self.needed(where) & ~self.resident).T @ self.adapter_load_s
        overflow = self.overflow_blocks(where) * self.block_s
        return work + self.move_s * moved + overflow + loads
