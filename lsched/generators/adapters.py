"""Adapter names with a skewed popularity, assigned to an instance's requests.

Rule (S-LoRA, Sheng et al., MLSys 2024, section 7, synthetic workloads: the
adapter of each request follows a power law with exponent ``alpha`` over ``n``
adapters, the ``alpha`` of the suites in S-LoRA/S-LoRA
``benchmarks/paper/synthetic``): request ``i`` independently takes adapter
``k`` in ``0..n-1`` with probability

    P(k) = (k + 1)^(-alpha) / sum_{j=1..n} j^(-alpha),

so ``lora0`` is the most popular; ``alpha = 0`` is uniform, larger ``alpha``
is more skewed. Names are ``lora0`` .. ``lora{n-1}``. The draw uses NumPy's
``default_rng(seed)``: same instance, count, ``alpha`` and seed, same names.
"""

from __future__ import annotations

import numpy as np

from lsched.checks import check_int, parse_spec
from lsched.errors import InputError
from lsched.instance import Instance


def adapter_names(count: int) -> list[str]:
    """The names of ``count`` adapters, most popular first."""
    return [f"lora{k}" for k in range(count)]


def assign_adapters(
    instance: Instance, count: int, *, alpha: float = 1.0, seed: int = 0
) -> Instance:
    """``instance`` with an ``adapter`` column drawn from the power law of the
    module docstring over ``count`` adapters.

    Raises
    ------
    InputError
        ``count < 1``, ``alpha`` negative or not finite, a negative ``seed``.
    """
    count = check_int(count, "adapters", 1)
    seed = check_int(seed, "seed", 0)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        raise InputError(f"got {alpha!r}; expected a number >= 0", field="alpha")
    if not (np.isfinite(alpha) and alpha >= 0):
        raise InputError(f"got {alpha!r}; expected a finite number >= 0", field="alpha")
    weights = np.arange(1, count + 1, dtype=np.float64) ** -float(alpha)
    rng = np.random.default_rng(seed)
    picks = rng.choice(count, size=len(instance), p=weights / weights.sum())
    names = np.array(adapter_names(count), dtype=str)
    return instance.replace(adapter=names[picks])


def parse_adapter_popularity(text: str) -> tuple[int, float]:
    """``N[:alpha=A]`` (``lsched trace gen --adapters``) as ``(N, A)``; ``A``
    defaults to 1 (S-LoRA's default exponent)."""
    name, values = parse_spec(text, "--adapters")
    try:
        count = int(name)
    except ValueError:
        raise InputError(
            f"got {name!r}; expected N[:alpha=A] with N an integer >= 1",
            field="--adapters",
        ) from None
    unknown = set(values) - {"alpha"}
    if unknown:
        raise InputError(
            f"unknown key(s) {sorted(unknown)}; expected alpha", field="--adapters"
        )
    try:
        alpha = float(values.get("alpha", "1"))
    except ValueError:
        raise InputError(
            f"got alpha={values['alpha']!r}; expected a number >= 0",
            field="--adapters",
        ) from None
    if not (np.isfinite(alpha) and alpha >= 0):
        raise InputError(f"got alpha={alpha}; expected >= 0", field="--adapters")
    return check_int(count, "--adapters", 1), alpha
