"""Request traces: read foreign and native formats, transform, write, summarise.

>>> instance, report = read_trace("azure_code_2023.csv", limit=1000)  # doctest: +SKIP
>>> write_trace(instance, "azure_1k.parquet")  # doctest: +SKIP

Modules: :mod:`~lsched.traces.formats` (one spec per foreign format),
:mod:`~lsched.traces.native` (lsched's lossless CSV and Parquet),
:mod:`~lsched.traces.detect` (format detection), :mod:`~lsched.traces.transform`
(window, limit, rate scale, clipping), :mod:`~lsched.traces.summary`
(statistics), :mod:`~lsched.traces.validate` (vectorised, located checks).
"""

from lsched.traces.detect import FORMATS, WRITE_FORMATS, detect_format
from lsched.traces.io import ReadReport, read_trace, write_trace
from lsched.traces.summary import trace_summary
from lsched.traces.transform import (
    TransformCounts,
    apply_transforms,
    clip_lengths,
    limit,
    scale_rate,
    window,
)

__all__ = [
    "FORMATS",
    "WRITE_FORMATS",
    "ReadReport",
    "TransformCounts",
    "apply_transforms",
    "clip_lengths",
    "detect_format",
    "limit",
    "read_trace",
    "scale_rate",
    "trace_summary",
    "window",
    "write_trace",
]
