"""Prefix caching: KV blocks reused across requests, keyed by block hashes
(:mod:`.cache`), and the cache a pool's replicas run with (:mod:`.spec`)."""

from lsched.prefix.cache import (
    EVICTION_RULES,
    Hits,
    PrefixCache,
    replay,
    skipped_tokens,
)
from lsched.prefix.spec import CACHE_NAMES, PrefixCacheSpec, parse_prefix_cache

__all__ = [
    "CACHE_NAMES",
    "EVICTION_RULES",
    "Hits",
    "PrefixCache",
    "PrefixCacheSpec",
    "parse_prefix_cache",
    "replay",
    "skipped_tokens",
]
