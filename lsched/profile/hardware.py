"""What a replica runs on (:class:`Hardware`) and the KV-cache sizes it gives.

``kv_bytes_per_token = 2 (K and V) * num_layers * num_kv_heads * head_dim *
dtype_bytes``, and, unless a profile gives ``capacity_tokens`` directly (e.g.
DistServe's measured figures),

    kv_capacity_tokens = floor((num_gpus * gpu_memory_bytes * memory_utilization
                                - weight_bytes - activation_reserve_bytes)
                               / kv_bytes_per_token)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lsched.checks import check_int, check_number
from lsched.errors import InputError


@dataclass(frozen=True)
class Hardware:
    """What one replica runs on.

    Parameters
    ----------
    gpu
        Accelerator name, e.g. ``"A100-SXM4-80GB"`` (``"abstract"`` for unit slots).
    num_gpus
        Accelerators per replica; must equal ``tensor_parallel * pipeline_parallel``.
    tensor_parallel, pipeline_parallel
        Parallelism degrees (>= 1).
    gpu_memory_bytes
        Memory of one accelerator, if known (bytes).
    """

    gpu: str
    num_gpus: int
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    gpu_memory_bytes: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.gpu, str) or not self.gpu:
            raise InputError(
                f"got {self.gpu!r}; expected a non-empty name", field="hardware.gpu"
            )
        for name in ("num_gpus", "tensor_parallel", "pipeline_parallel"):
            check_int(getattr(self, name), f"hardware.{name}", 1)
        if self.num_gpus != self.tensor_parallel * self.pipeline_parallel:
            raise InputError(
                f"got {self.num_gpus}; expected tensor_parallel * pipeline_parallel "
                f"= {self.tensor_parallel * self.pipeline_parallel} accelerators per "
                "replica",
                field="hardware.num_gpus",
            )
        if self.gpu_memory_bytes is not None:
            check_int(self.gpu_memory_bytes, "hardware.gpu_memory_bytes", 1)


def kv_bytes_per_token(
    num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int
) -> int:
    """``2 (K and V) * num_layers * num_kv_heads * head_dim * dtype_bytes``."""
    for name, value in (
        ("model.num_layers", num_layers),
        ("model.num_kv_heads", num_kv_heads),
        ("model.head_dim", head_dim),
        ("model.dtype_bytes", dtype_bytes),
    ):
        check_int(value, name, 1)
    return 2 * num_layers * num_kv_heads * head_dim * dtype_bytes


def kv_capacity_tokens(
    *,
    num_gpus: int,
    gpu_memory_bytes: int,
    memory_utilization: float,
    weight_bytes: int,
    activation_reserve_bytes: int,
    kv_bytes_per_token: int,
) -> int:
    """KV capacity of one replica in tokens (the module docstring).

    ``floor((num_gpus * gpu_memory_bytes * memory_utilization - weight_bytes -
    activation_reserve_bytes) / kv_bytes_per_token)``.

    Raises
    ------
    InputError
        If the utilisation is outside (0, 1] or nothing is left for the KV cache.
    """
    utilisation = check_number(memory_utilization, "kv.memory_utilization")
    if not 0 < utilisation <= 1:
        raise InputError(
            f"got {utilisation}; expected a fraction in (0, 1]",
            field="kv.memory_utilization",
        )
    check_int(weight_bytes, "kv.weight_bytes", 0)
    check_int(activation_reserve_bytes, "kv.activation_reserve_bytes", 0)
    usable = num_gpus * gpu_memory_bytes * utilisation
    free = usable - weight_bytes - activation_reserve_bytes
    tokens = math.floor(free / kv_bytes_per_token)
    if tokens < 1:
        raise InputError(
            f"weights ({weight_bytes} B) and activations ({activation_reserve_bytes} "
            f"B) leave {free:.0f} B of {usable:.0f} B usable; expected room for at "
            "least one KV token",
            field="kv.capacity_tokens",
        )
    return tokens
