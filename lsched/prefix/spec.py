"""The prefix cache a pool's replicas run with: :class:`PrefixCacheSpec`.

A spec names a per-replica cache on the GPU, sharing the replica's KV capacity
with its running requests (vLLM's prefix caching; the engine's rules are in
:mod:`lsched.evaluator.prefix`), and optionally a second one in the replica's
host tier (Mooncake's KV pool in DRAM, :mod:`lsched.tiers`). Its text form, as
``lsched simulate --prefix-cache`` and a cluster file's ``prefix_cache`` key
take it::

    RULE[:capacity_tokens=N]
    RULE[:host_capacity_tokens=M]
    RULE[:pool_capacity_tokens=M]

``RULE`` is an eviction rule of :data:`~lsched.prefix.cache.EVICTION_RULES`
(``lru``, ``lru_tail_first``) or ``gpu``, the default rule (``lru``).
``capacity_tokens`` caps the tokens the cache holds (its blocks, pinned or not,
at ``capacity_tokens // B``, ``B`` the hash block size) below the replica's KV;
by default the replica's KV capacity alone bounds it. A capacity over the
replica's KV (:meth:`PrefixCacheSpec.check_fits`) is refused.
``host_capacity_tokens`` adds a cache of ``M // B`` blocks in the host tier
(only beside a GPU cache bounded by the replica's KV), with the same eviction
rule (e.g. ``lru:host_capacity_tokens=3000000``,
Mooncake's 3M-token figure); ``M`` times the KV bytes per token over the host
tier's ``memory_bytes`` (:meth:`PrefixCacheSpec.check_host_fits`) is refused.
``pool_capacity_tokens`` instead makes the host tiers of a prefill pool's
replicas one cache of ``M // B`` blocks (Mooncake's KV pool, Mooncake Store),
spread over their host memory: ``M`` times the KV bytes per token over the
replicas' ``memory_bytes`` together is refused (rule 6 of
:mod:`lsched.evaluator.prefix`).
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
    host_capacity_tokens
        Tokens the host-tier cache holds, or ``None``: no host-tier cache.
    pool_capacity_tokens
        Tokens the KV pool shared by the pool's replicas holds, or ``None``:
        no shared pool.
    """

    eviction: str = EVICTION_RULES[0]
    capacity_tokens: int | None = None
    host_capacity_tokens: int | None = None
    pool_capacity_tokens: int | None = None

    def __post_init__(self) -> None:
        check_choice(self.eviction, "prefix_cache", EVICTION_RULES)
        for key in _KEYS:
            check_optional_int(getattr(self, key), f"prefix_cache.{key}", 1)
        given = [key for key in _KEYS if getattr(self, key) is not None]
        if len(given) > 1:
            # a GPU cache with a capacity of its own evicts as admissions insert
            # blocks copied from the host, under later admissions' offers
            raise InputError(
                f"got {' and '.join(given)}; expected at most one of them (a host "
                "tier with a GPU cache of its own capacity is not modelled, and "
                "a pool's shared KV pool takes the place of its host caches)",
                field="prefix_cache",
            )

    @property
    def label(self) -> str:
        """The text form (:func:`parse_prefix_cache` reads it back)."""
        keys = [
            f"{key}={value}"
            for key, value in ((key, getattr(self, key)) for key in _KEYS)
            if value is not None
        ]
        return ":".join([self.eviction, ",".join(keys)]) if keys else self.eviction

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

    def check_host_fits(
        self, memory_bytes: int, kv_bytes_per_token: int, replicas: int, where: str
    ) -> None:
        """Raise :class:`InputError` if the host-tier cache's KV,
        ``host_capacity_tokens * kv_bytes_per_token`` bytes, exceeds the host
        tier's ``memory_bytes``, or the KV pool's exceeds the ``replicas``' host
        memory together (``where``: the replicas' pool)."""
        key, tokens = "host_capacity_tokens", self.host_capacity_tokens
        memory, whose = memory_bytes, "a replica"
        if self.pool_capacity_tokens is not None:
            key, tokens = "pool_capacity_tokens", self.pool_capacity_tokens
            memory, whose = replicas * memory_bytes, f"the {replicas} replica(s)"
        if tokens is not None and tokens * kv_bytes_per_token > memory:
            raise InputError(
                f"got {tokens} tokens ({tokens * kv_bytes_per_token} bytes); "
                f"expected at most the {memory // kv_bytes_per_token} tokens "
                f"that fit in the {memory} bytes of host memory of {whose} "
                f"of {where}",
                field=f"prefix_cache.{key}",
            )


#: The keys of the text form.
_KEYS = ("capacity_tokens", "host_capacity_tokens", "pool_capacity_tokens")


def _token_count(values: dict[str, str], key: str) -> int | None:
    """``values[key]`` as an integer >= 1, or ``None`` if absent."""
    if key not in values:
        return None
    raw = values[key]
    try:
        number = int(raw)
    except ValueError:
        raise InputError(
            f"got {raw!r}; expected an integer >= 1", field=f"prefix_cache.{key}"
        ) from None
    return check_int(number, f"prefix_cache.{key}", 1)


def parse_prefix_cache(text: object) -> PrefixCacheSpec:
    """A spec from its text form ``RULE[:capacity_tokens=N]``,
    ``RULE[:host_capacity_tokens=M]`` or ``RULE[:pool_capacity_tokens=M]``
    (module docstring).

    Raises
    ------
    InputError
        An unknown rule or key, a capacity that is no integer >= 1, or more
        than one capacity.
    """
    if isinstance(text, PrefixCacheSpec):
        return text
    name, values = parse_spec(text, "prefix_cache")
    check_choice(name, "prefix_cache", CACHE_NAMES)
    unknown = sorted(set(values) - set(_KEYS))
    if unknown:
        raise InputError(
            f"unknown key(s) {unknown} in {text!r}; expected some of {list(_KEYS)}",
            field="prefix_cache",
        )
    eviction = EVICTION_RULES[0] if name == "gpu" else name
    return PrefixCacheSpec(eviction, *(_token_count(values, key) for key in _KEYS))


__all__ = ["CACHE_NAMES", "PrefixCacheSpec", "parse_prefix_cache"]
