"""Descriptive statistics of a trace, for ``lsched trace info`` and notebooks.

Definitions (n requests, arrivals a_0 <= ... <= a_{n-1}):

* ``span_s = a_{n-1} - a_0``;
* ``rate_per_s = (n - 1) / span_s``: arrivals per second over the span (n - 1
  gaps fit in it); ``None`` when ``span_s = 0``;
* ``interarrival_cv``: standard deviation / mean of the gaps ``a_{i+1} - a_i``
  (1 for a Poisson process, > 1 for bursty traffic); ``None`` when undefined;
* percentiles use NumPy's default linear interpolation (``numpy.percentile``);
* ``max_total_tokens = max(s_i + o_i)``: the context length the trace needs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lsched.instance import Instance

PERCENTILES = (50, 90, 99)


def _stats(prefix: str, values: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {
        f"{prefix}_sum": int(values.sum()),
        f"{prefix}_mean": float(values.mean()),
        f"{prefix}_min": int(values.min()),
    }
    for q, value in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True):
        out[f"{prefix}_p{q}"] = float(value)
    out[f"{prefix}_max"] = int(values.max())
    return out


def trace_summary(instance: Instance) -> dict[str, Any]:
    """Counts, token statistics and arrival statistics of ``instance``.

    Returns
    -------
    dict
        Plain Python values: ``name``, ``num_requests``, ``prompt_tokens_sum``,
        ``output_tokens_sum`` (and ``_mean``, ``_min``, ``_p50``, ``_p90``,
        ``_p99``, ``_max`` for both), ``max_total_tokens``, ``first_arrival_s``,
        ``span_s``, ``rate_per_s``, ``interarrival_cv``, ``optional_columns``,
        ``has_prefix_hashes``.
    """
    n = len(instance)
    a = instance.arrival_s
    span_s = float(a[-1] - a[0])
    gaps = np.diff(a)
    mean_gap = float(gaps.mean()) if n > 1 else 0.0
    summary: dict[str, Any] = {
        "name": instance.name,
        "num_requests": n,
        **_stats("prompt_tokens", instance.prompt_tokens),
        **_stats("output_tokens", instance.output_tokens),
        "max_total_tokens": int(
            (instance.prompt_tokens + instance.output_tokens).max()
        ),
        "first_arrival_s": float(a[0]),
        "span_s": span_s,
        "rate_per_s": (n - 1) / span_s if span_s > 0 else None,
        "interarrival_cv": float(gaps.std() / mean_gap) if mean_gap > 0 else None,
        "optional_columns": sorted(
            set(instance.columns()) - {"arrival_s", "prompt_tokens", "output_tokens"}
        ),
        "has_prefix_hashes": instance.prefix_hash_offsets is not None,
    }
    return summary
