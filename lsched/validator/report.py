"""The validator's vocabulary: the log's columns and the rules it can break,
restated so that nothing is shared with the engine, and what a check reports
(:class:`Violation`, :class:`ValidationReport`, the collector that caps them)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

#: The iteration model's arrival tolerance (lsched.policies.base restates it): a
#: request may start at a boundary up to 1 ns before its arrival time.
ARRIVAL_TOLERANCE_S = 1e-9

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
#: A run's features: prefill tokens P, prefill attention Q, decode steps D and the
#: KV its first iteration reads K.
Features = tuple[IntArray, IntArray, IntArray, IntArray]

# The log's columns, restated (lsched.evaluator.result) so that nothing is shared.
RUN_COLUMNS: tuple[str, ...] = (
    "replica",
    "start_s",
    "end_s",
    "iterations",
    "prefill_tokens",
    "prefill_attention",
    "decode_steps",
    "kv_read_tokens",
    "has_prefill",
    "kv_tokens",
)
MEMBER_COLUMNS: tuple[str, ...] = (
    "run",
    "request",
    "kind",
    "tokens",
    "processed_before",
)
PREEMPTION_COLUMNS: tuple[str, ...] = ("run", "request")
SWAP_COLUMNS: tuple[str, ...] = (
    "run",
    "request",
    "direction",
    "tokens",
    "start_s",
    "end_s",
)
#: How swap copies meet the iterations (lsched.tiers restates them).
SWAP_MODES: tuple[str, ...] = ("blocking", "async")
#: The metrics a run that swapped adds (lsched.evaluator.records).
SWAP_METRICS: tuple[str, ...] = (
    "swap_out_bytes",
    "swap_in_bytes",
    "swap_stall_s",
    "recompute_avoided_tokens",
)
REQUEST_COLUMNS: tuple[str, ...] = (
    "replica",
    "admitted_s",
    "first_token_s",
    "completion_s",
    "preemptions",
    "recomputed_tokens",
)
#: The request columns a disaggregated run adds (lsched.evaluator.records).
STAGE_COLUMNS: tuple[str, ...] = (
    "decode_replica",
    "transfer_start_s",
    "transfer_end_s",
    "transferred_bytes",
    "decode_admitted_s",
)

#: The rules a log can break (see the module docstring).
RULES: tuple[str, ...] = (
    "schema",
    "run-order",
    "run-shape",
    "run-features",
    "run-duration",
    "arrival",
    "processed-before",
    "prefill-chunk",
    "prefill-before-decode",
    "kv-capacity",
    "kv-tokens",
    "max-num-seqs",
    "max-num-batched-tokens",
    "token-conservation",
    "single-replica",
    "preemption",
    "request-record",
    "metric",
    "rejection",
    "max-model-len",
    "transfer",
    "link",
    "decode-after-transfer",
    "pull",
    "migration-overlap",
    "migration-tokens",
    "migration-kv",
    "migration-downtime",
    "swap",
    "swap-copy",
    "swap-link",
    "host-capacity",
    "prefix-cache",
    "max-loras",
    "adapter-resident",
    "adapter-load",
    "adapter-memory",
    "merged-batch",
)

#: Violations kept in a report; the rest are only counted.
MAX_VIOLATIONS = 100

_PREFILL, _DECODE = 0, 1


@dataclass(frozen=True)
class Violation:
    """One broken rule.

    Attributes
    ----------
    rule
        One of :data:`RULES`.
    run
        The run id concerned, if any.
    request
        The request (instance position) concerned, if any.
    message
        What was expected and what the log says.
    """

    rule: str
    run: int | None
    request: int | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.run is not None:
            where.append(f"run {self.run}")
        if self.request is not None:
            where.append(f"request {self.request}")
        place = f" ({', '.join(where)})" if where else ""
        return f"[{self.rule}]{place} {self.message}"


@dataclass(frozen=True)
class ValidationReport:
    """What :func:`validate_schedule` found.

    Attributes
    ----------
    violations
        The first :data:`MAX_VIOLATIONS` violations, in the order found.
    metrics
        Every metric, recomputed by the validator (empty if the log failed the
        ``schema`` rule).
    first_token_s, completion_s
        Per request (instance order), as the validator derives them; NaN where
        the log never emits the token.
    requests
        The validator's own per-request records (columns of
        :data:`REQUEST_COLUMNS`, and ``swap_outs`` when a swaps table was given;
        replica -1 for a request that never ran).
    suppressed
        Violations found beyond the first :data:`MAX_VIOLATIONS`.
    """

    violations: tuple[Violation, ...]
    metrics: dict[str, float]
    first_token_s: FloatArray
    completion_s: FloatArray
    requests: pd.DataFrame | None = None
    suppressed: int = 0

    @property
    def ok(self) -> bool:
        """True when the log breaks no rule."""
        return not self.violations and self.suppressed == 0

    @property
    def rules(self) -> frozenset[str]:
        """The rules broken by the violations kept."""
        return frozenset(v.rule for v in self.violations)

    def raise_if_invalid(self, limit: int = 10) -> None:
        """Raise ``AssertionError`` listing the first ``limit`` violations, if any."""
        if self.ok:
            return
        total = len(self.violations) + self.suppressed
        lines = [str(v) for v in self.violations[:limit]]
        if total > len(lines):
            lines.append(f"... and {total - len(lines)} more")
        raise AssertionError(
            f"schedule breaks {total} rule check(s):\n" + "\n".join(lines)
        )


class _Collector:
    """Keeps the first ``cap`` violations and counts the rest."""

    def __init__(self, cap: int = MAX_VIOLATIONS) -> None:
        self.cap = cap
        self.kept: list[Violation] = []
        self.extra = 0

    def add(
        self,
        rule: str,
        message: str,
        *,
        run: int | None = None,
        request: int | None = None,
    ) -> None:
        assert rule in RULES, rule
        if len(self.kept) < self.cap:
            self.kept.append(Violation(rule, run, request, message))
        else:
            self.extra += 1


def _frozen(array: npt.ArrayLike, dtype: Any = np.float64) -> np.ndarray:
    out = np.array(array, dtype=dtype)
    out.flags.writeable = False
    return out


def _close(a: float, b: float, rtol: float, atol: float = 0.0) -> bool:
    """Equal within ``rtol`` (relative to the larger) plus ``atol``; NaN == NaN."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if a == b:  # also inf == inf
        return True
    return abs(a - b) <= rtol * max(abs(a), abs(b)) + atol


def _close_array(
    a: FloatArray, b: FloatArray, rtol: float, atol: npt.ArrayLike = 0.0
) -> npt.NDArray[np.bool_]:
    """:func:`_close`, elementwise."""
    with np.errstate(invalid="ignore"):
        near = np.abs(a - b) <= rtol * np.maximum(np.abs(a), np.abs(b)) + atol
    return (a == b) | near | (np.isnan(a) & np.isnan(b))
