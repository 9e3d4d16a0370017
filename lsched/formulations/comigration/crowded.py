"""A seeded family of co-migration problems at the sizes dLoRA's trigger
solves (``benchmarks/comigration``; tests).

Two replicas with ``n`` requests, 70 % of them on replica 0 (the trigger's
imbalance); ``K`` adapters of Zipf-like popularity (weight ``1 / (k + 1)``),
each adapter's execution time uniform in 1-10 s (dLoRA's per-adapter mean is 5 s
before any, ``engine_manager.py`` line 56); 1-128 KV blocks per request; each
replica's capacity 55 % of all the blocks; adapter slots = the adapters resident
now (those of its requests, as dLoRA passes them); by default Llama-7B's 16-token
KV block, 8 MiB (16 tokens x 32 layers x K and V x 4,096 x 2 bytes).
"""

from __future__ import annotations

import numpy as np

from lsched.formulations.comigration.problem import CoMigrationProblem

#: Bytes of one 16-token KV block of Llama-7B in fp16 (module docstring).
LLAMA7B_BLOCK_BYTES = 16 * 32 * 2 * 4096 * 2


def crowded_problem(
    n: int, adapters: int, seed: int, block_bytes: float = LLAMA7B_BLOCK_BYTES
) -> CoMigrationProblem:
    """The problem of ``n`` requests and ``adapters`` adapters drawn with
    ``seed`` (module docstring)."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, adapters + 1)
    adapter = rng.choice(adapters, size=n, p=popularity / popularity.sum())
    replica = (rng.random(n) >= 0.7).astype(np.int64)
    blocks = rng.integers(1, 129, n)
    resident = np.zeros((adapters, 2), dtype=bool)
    resident[adapter, replica] = True
    capacity = int(0.55 * blocks.sum())
    return CoMigrationProblem(
        replica=replica,
        adapter=adapter,
        blocks=blocks,
        exec_s=rng.uniform(1.0, 10.0, adapters)[adapter],
        capacity_blocks=[capacity, capacity],
        adapter_slots=resident.sum(axis=0),
        resident=resident,
        block_bytes=block_bytes,
    )


__all__ = ["LLAMA7B_BLOCK_BYTES", "crowded_problem"]
