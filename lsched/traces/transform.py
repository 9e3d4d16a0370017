"""Trace transformations: time window, first N, rate scaling, length clipping.

Each works on any :class:`~lsched.instance.Instance` and returns a new one.
:func:`apply_transforms` chains them in one fixed order, the order in which a user
reads a command line such as ``--start-s 600 --end-s 1200 --limit 500
--rate-scale 2 --max-model-len 4096``:

1. **window** ``[start_s, end_s)``, in seconds *relative to the first arrival*
   ``a_0`` of the trace: keep requests with ``a_0 + start_s <= a_i < a_0 + end_s``.
   With a ``start_s`` the kept arrivals are rebased to the window start,
   ``a_i' = a_i - (a_0 + start_s)``, so a window reads like a trace of its own;
   with only ``end_s`` arrivals are unchanged.
2. **limit** ``N``: the first ``N`` requests *of the window* ("the first 500
   requests after minute 10"). Applying the limit first and then windowing would
   make the window select from an arbitrary prefix, which nobody means.
3. **rate scale** ``r > 0``: ``a_i' = a_i / r``, so ``r = 2`` doubles the arrival
   rate (halves every inter-arrival gap). Window bounds are in the *original*
   trace's seconds, because the window is applied first.
4. **clip** to ``max_model_len = L`` (``L >= 2``): a request must fit
   ``s_i + o_i <= L``. The output is clipped first, ``o_i' = min(o_i, L - s_i)``;
   if the prompt alone has ``s_i >= L``, it becomes ``s_i' = L - 1`` and
   ``o_i' = 1``. This mirrors a serving engine that truncates the prompt and caps
   ``max_tokens`` at the context length (vLLM's ``max_model_len``). A predicted
   output length is capped the same way (``min(pred, L - s_i')``), since a
   predictor knows the cap; prefix block hashes beyond the clipped prompt are
   dropped when the block size is known (``params["prefix_block_tokens"]``).

Every transformation that changes something is recorded in
``params["transforms"]`` (a list, appended to), so a written instance says how it
was derived.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lsched.errors import InputError
from lsched.instance import Instance
from lsched.traces.validate import IntArray


@dataclass(frozen=True)
class TransformCounts:
    """What the transformations removed or changed."""

    dropped_window: int = 0
    dropped_limit: int = 0
    clipped: int = 0


def check_options(
    *,
    limit: int | None = None,
    start_s: float | None = None,
    end_s: float | None = None,
    rate_scale: float = 1.0,
    max_model_len: int | None = None,
) -> None:
    """Validate transformation options before any file is read.

    Raises
    ------
    InputError
        Naming the option, the value found and the range expected.
    """
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
    ):
        raise InputError(f"got {limit!r}; expected an integer >= 1", field="limit")
    for name, value in (("start_s", start_s), ("end_s", end_s)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise InputError(f"got {value!r}; expected seconds >= 0", field=name)
    if start_s is not None and end_s is not None and not end_s > start_s:
        raise InputError(
            f"got end_s={end_s!r} <= start_s={start_s!r}; expected end_s > start_s",
            field="end_s",
        )
    if not (math.isfinite(rate_scale) and rate_scale > 0):
        raise InputError(
            f"got {rate_scale!r}; expected a finite number > 0", field="rate_scale"
        )
    if max_model_len is not None and (
        isinstance(max_model_len, bool)
        or not isinstance(max_model_len, int)
        or max_model_len < 2
    ):
        raise InputError(
            f"got {max_model_len!r}; expected an integer >= 2 (a prompt token and "
            "an output token)",
            field="max_model_len",
        )


def _record(instance: Instance, **step: Any) -> dict[str, Any]:
    params = dict(instance.params)
    prior = params.get("transforms")
    history = (
        list(prior) if isinstance(prior, list) else ([] if prior is None else [prior])
    )
    params["transforms"] = [*history, step]
    return params


def window(
    instance: Instance, start_s: float | None = None, end_s: float | None = None
) -> tuple[Instance, int]:
    """Keep ``a_0 + start_s <= a_i < a_0 + end_s`` (see the module docstring).

    Returns
    -------
    (instance, number of requests dropped)

    Raises
    ------
    InputError
        If no request falls in the window.
    """
    check_options(start_s=start_s, end_s=end_s)
    if start_s is None and end_s is None:
        return instance, 0
    a = instance.arrival_s
    low = a[0] + (start_s if start_s is not None else 0.0)
    high = a[0] + end_s if end_s is not None else np.inf
    keep = (a >= low) & (a < high)
    kept = int(keep.sum())
    if kept == 0:
        raise InputError(
            f"no request in the window [{start_s}, {end_s}) s; the trace spans "
            f"{a[-1] - a[0]:.6g} s after its first arrival",
            field="start_s" if start_s is not None else "end_s",
        )
    result = instance if kept == len(instance) else instance.subset(keep)
    changes: dict[str, Any] = {
        "params": _record(instance, op="window", start_s=start_s, end_s=end_s)
    }
    if start_s is not None:
        # a_i >= low, so a_i - low >= 0 exactly in floating point
        changes["arrival_s"] = result.arrival_s - low
    return result.replace(**changes), len(instance) - kept


def limit(instance: Instance, n: int) -> tuple[Instance, int]:
    """Keep the first ``n`` requests; return ``(instance, number dropped)``."""
    check_options(limit=n)
    if n >= len(instance):
        return instance, 0
    result = instance.subset(np.arange(n))
    return result.replace(params=_record(instance, op="limit", n=n)), len(instance) - n


def scale_rate(instance: Instance, rate_scale: float) -> Instance:
    """Divide every arrival time by ``rate_scale`` (``2`` doubles the rate)."""
    check_options(rate_scale=rate_scale)
    if rate_scale == 1.0:
        return instance
    return instance.replace(
        arrival_s=instance.arrival_s / rate_scale,
        params=_record(instance, op="rate_scale", rate_scale=rate_scale),
    )


def _truncate_csr(
    offsets: IntArray, values: IntArray, max_lengths: IntArray
) -> tuple[IntArray, IntArray]:
    starts = offsets[:-1]
    lengths = np.minimum(np.diff(offsets), max_lengths)
    new_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    within = np.arange(new_offsets[-1], dtype=np.int64) - np.repeat(
        new_offsets[:-1], lengths
    )
    return new_offsets, values[np.repeat(starts, lengths) + within]


def clip_lengths(instance: Instance, max_model_len: int) -> tuple[Instance, int]:
    """Clip prompt + output to ``max_model_len`` (rule in the module docstring).

    Returns
    -------
    (instance, number of requests whose prompt or output was clipped)
    """
    check_options(max_model_len=max_model_len)
    s, o = instance.prompt_tokens, instance.output_tokens
    prompt = np.minimum(s, max_model_len - 1)
    output = np.minimum(o, max_model_len - prompt)
    changed = (prompt != s) | (output != o)
    clipped = int(changed.sum())
    if clipped == 0:
        return instance, 0
    changes: dict[str, Any] = {
        "prompt_tokens": prompt,
        "output_tokens": output,
        "params": _record(
            instance, op="clip", max_model_len=max_model_len, clipped=clipped
        ),
    }
    if instance.predicted_output_tokens is not None:
        changes["predicted_output_tokens"] = np.minimum(
            instance.predicted_output_tokens, max_model_len - prompt
        )
    block = instance.params.get("prefix_block_tokens")
    if (
        instance.prefix_hash_offsets is not None
        and instance.prefix_hash_values is not None
        and isinstance(block, int)
        and block >= 1
    ):
        blocks = -(-prompt // block)  # ceil: a partial last block still has a hash
        offsets, values = _truncate_csr(
            instance.prefix_hash_offsets, instance.prefix_hash_values, blocks
        )
        changes["prefix_hash_offsets"] = offsets
        changes["prefix_hash_values"] = values
    return instance.replace(**changes), clipped


def apply_transforms(
    instance: Instance,
    *,
    limit: int | None = None,
    start_s: float | None = None,
    end_s: float | None = None,
    rate_scale: float = 1.0,
    max_model_len: int | None = None,
) -> tuple[Instance, TransformCounts]:
    """Window, then limit, then rate scale, then clip (see the module docstring)."""
    check_options(
        limit=limit,
        start_s=start_s,
        end_s=end_s,
        rate_scale=rate_scale,
        max_model_len=max_model_len,
    )
    result, dropped_window = window(instance, start_s, end_s)
    dropped_limit = 0
    if limit is not None:
        result, dropped_limit = _limit(result, limit)
    result = scale_rate(result, rate_scale)
    clipped = 0
    if max_model_len is not None:
        result, clipped = clip_lengths(result, max_model_len)
    return result, TransformCounts(dropped_window, dropped_limit, clipped)


_limit = limit  # apply_transforms' keyword ``limit`` shadows the function
