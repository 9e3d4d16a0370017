"""Prefix caching: KV blocks reused across requests, keyed by block hashes
(:mod:`.cache`)."""

from lsched.prefix.cache import (
    EVICTION_RULES,
    Hits,
    PrefixCache,
    replay,
    skipped_tokens,
)

__all__ = ["EVICTION_RULES", "Hits", "PrefixCache", "replay", "skipped_tokens"]
