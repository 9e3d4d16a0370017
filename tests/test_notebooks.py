"""The research notebooks run end to end at a small size (CI executes them all).

Each notebook's first code cell, headed ``# parameters``, holds its size
parameters; the test replaces their values and executes the notebook with
nbclient in a real kernel, from the ``notebooks/`` folder.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

#: Small parameter values per notebook (the rest keep their defaults).
SMALL: dict[str, dict[str, str]] = {
    "jaillet_bounds.ipynb": {"SIZE": "6", "SEEDS": "2", "TIME_LIMIT_S": "5.0"},
    "azure_policies.ipynb": {"SIZE": "150"},
    "pang_replicas.ipynb": {"CASES": "2", "SIZE": "40", "TIME_LIMIT_S": "2.0"},
    "disaggregation.ipynb": {"SIZE": "120", "GPUS": "3"},
    "mooncake_routing.ipynb": {"SIZE": "300"},
}


def with_parameters(book: nbformat.NotebookNode, values: dict[str, str]) -> None:
    """Set ``NAME = value`` lines of the ``# parameters`` cell."""
    cell = next(c for c in book.cells if c.cell_type == "code")
    assert cell.source.startswith("# parameters"), "first code cell: # parameters"
    for name, value in values.items():
        pattern = re.compile(rf"^{name} = .*$", re.MULTILINE)
        assert pattern.search(cell.source), f"no parameter {name}"
        cell.source = pattern.sub(f"{name} = {value}", cell.source)


def test_every_notebook_is_listed() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(SMALL)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_notebook_runs(name: str) -> None:
    path = NOTEBOOKS / name
    book = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in book.cells if c.cell_type == "code"), (
        "committed without outputs"
    )
    with_parameters(book, SMALL[name])
    client = NotebookClient(
        book,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()
    errors = [
        o
        for c in book.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]
    assert not errors
    images = [
        o
        for c in book.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert images, "every notebook shows at least one plot"
