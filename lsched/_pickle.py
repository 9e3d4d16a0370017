"""Pickling the frozen, validated records that hold read-only mappings.

A :class:`types.MappingProxyType` cannot be pickled, and the records that keep one
(a profile's ``sources``, an instance's ``params``) travel to worker processes and
Dask workers. They pickle as their constructor's arguments, the mappings as plain
dicts, and are built (and so validated) again on the other side.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def reduce_record(record: Any) -> tuple[Any, tuple[type, dict[str, Any]]]:
    """``__reduce__`` of a dataclass ``record``: its init fields, read-only
    mappings as dicts."""
    values = {
        f.name: getattr(record, f.name) for f in dataclasses.fields(record) if f.init
    }
    for name, value in values.items():
        if type(value).__name__ == "mappingproxy":
            values[name] = dict(value)
    return _rebuild, (type(record), values)


def _rebuild(cls: type, values: dict[str, Any]) -> Any:
    return cls(**values)
