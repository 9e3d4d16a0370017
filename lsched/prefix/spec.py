"""The prefix cache a pool's replicas run with: :class:`PrefixCacheSpec`.

A spec names a per-replica cache on the GPU, sharing the replica's KV capacity
with its running requests (vLLM's prefix caching; the engine's rules are in
:mod:`lsched.evaluator.prefix`). Its text form, as ``lsched simulate
--prefix-cache`` and a cluster file's ``prefix_cache`` key take it::

    RULE[:capacity_tokens=N]

``RULE`` is an eviction rule of :data:`~lsched.prefix.cache.EVICTION_RULES`
(``lru``, ``lru_tail_first``) or ``gpu``, the default rule (``lru``).
``capacity_tokens`` caps the tokens the cache holds (its blocks, pinned or not,
at ``capacity_tokens // B``, ``B`` the hash block size) below the replica's KV;
by default the replica's KV capacity alone bounds it. A capacity over the
replica's KV (:meth:`PrefixCacheSpec.check_fits`) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from lsched.checks import check_choice, check_int, check_optional_int, parse_spec
from lsched.errors import InputError
from lsched.prefix.cache import EVICTION_RULES

#: The names :func:`parse_prefix_cache` takes: the eviction rules and ``gpu``.
CACHE_NAMES: tuple[str, ...] = ("gpu", *EVICTION_RULES)


@dataclass(frozen=True)
class PrefixCacheSpec:
    """A per-replica prefix cache on the GPU (module docstring).

    Attributes
    ----------
    eviction
        The order unreferenced blocks are evicted in
        (:data:`~lsched.prefix.cache.EVICTION_RULES`).
    capacity_tokens
        Tokens the cache may hold, or ``None``: bounded by the replica's KV
        capacity only.
    """

    eviction: str = EVICTION_RULES[0]
    capacity_tokens: int | None = None

    def __post_init__(self) -> None:
        check_choice(self.eviction, "prefix_cache", EVICTION_RULES)
        check_optional_int(self.capacity_tokens, "prefix_cache.capacity_tokens", 1)

    @property
    def label(self) -> str:
        """The text form (:func:`parse_prefix_cache` reads it back)."""
        if self.capacity_tokens is None:
            return self.eviction
        return f"{self.eviction}:capacity_tokens={self.capacity_tokens}"

    def check_fits(self, kv_capacity_tokens: int, where: str) -> None:
        """Raise :class:`InputError` if the cache's own capacity exceeds a
        replica's ``kv_capacity_tokens`` (``where``: the replica's pool, for the
        message)."""
        capacity = self.capacity_tokens
        if capacity is not None and capacity > kv_capacity_tokens:
            raise InputError(
                f"got {capacity} tokens; expected at most the "
                f"{kv_capacity_tokens} tokens of KV of a replica of {where}",
                field="prefix_cache.capacity_tokens",
            )


def parse_prefix_cache(text: object) -> PrefixCacheSpec:
    """A spec from its text form ``RULE[:capacity_tokens=N]`` (module docstring).

    Raises
    ------
    InputError
        An unknown rule or key, or a capacity that is no integer >= 1.
    """
    if isinstance(text, PrefixCacheSpec):
        return text
    name, values = parse_spec(text, "prefix_cache")
    check_choice(name, "prefix_cache", CACHE_NAMES)
    unknown = sorted(set(values) - {"capacity_tokens"})
    if unknown:
        raise InputError(
            f"unknown key(s) {unknown} in {text!r}; expected capacity_tokens",
            field="prefix_cache",
        )
    capacity = None
    if "capacity_tokens" in values:
        raw = values["capacity_tokens"]
        try:
            number = int(raw)
        except ValueError:
            raise InputError(
                f"got {raw!r}; expected an integer >= 1",
                field="prefix_cache.capacity_tokens",
            ) from None
        capacity = check_int(number, "prefix_cache.capacity_tokens", 1)
    eviction = EVICTION_RULES[0] if name == "gpu" else name
    return PrefixCacheSpec(eviction, capacity)


__all__ = ["CACHE_NAMES", "PrefixCacheSpec", "parse_prefix_cache"]
