"""Instances whose requests carry prefix block hashes, for the cache tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from lsched.instance import Instance


def hashed_instance(
    arrival_s: npt.ArrayLike,
    prompts: npt.ArrayLike,
    outputs: npt.ArrayLike,
    hashes: Sequence[Sequence[int]],
    block: int,
) -> Instance:
    """Request ``i``: arrival ``arrival_s[i]``, ``prompts[i]`` prompt tokens,
    ``outputs[i]`` output tokens and the leading hash blocks ``hashes[i]``, of
    ``block`` tokens each (``params["prefix_block_tokens"]``)."""
    return Instance(
        arrival_s=np.asarray(arrival_s, dtype=np.float64),
        prompt_tokens=np.asarray(prompts),
        output_tokens=np.asarray(outputs),
        prefix_hash_offsets=np.cumsum([0] + [len(h) for h in hashes]),
        prefix_hash_values=np.array([h for own in hashes for h in own]),
        params={"prefix_block_tokens": block},
    )
