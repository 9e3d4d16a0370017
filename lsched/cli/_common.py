"""Output helpers shared by the CLI sub-apps: one JSON object, or a rich table."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

JSON_HELP = "Print one JSON object instead of a table."


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    return value


def print_json(obj: Mapping[str, Any]) -> None:
    """Print ``obj`` as one JSON object on stdout (NumPy scalars made plain)."""
    print(json.dumps(_plain(obj), indent=2))


def print_table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Print a rich table with right-aligned numbers."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        # Text, not str: a path with [brackets] must not be read as rich markup
        table.add_row(*(Text(_format(v)) for v in row))
    Console().print(table)


def _format(value: Any) -> str:
    value = _plain(value)
    if isinstance(value, float):
        return f"{value:,.6g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)
