"""The front door: ``lsched.simulate``, ``lsched.solve``, ``lsched.bound``,
``lsched.compare``, ... imported on first use, and the README's Python example.

What ``import lsched`` loads is checked in a fresh interpreter, through the
modules it imports (never through how long it takes).
"""

from __future__ import annotations

import contextlib
import io
import json
import pkgutil
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest

import lsched
from lsched.comparison import compare
from lsched.formulations.backends import solve
from lsched.formulations.bounds.suite import bound_report

ROOT = Path(__file__).resolve().parents[1]
#: Solver stacks: loaded only when a backend or a bound runs.
SOLVERS = ("pyomo", "ortools", "highspy")
#: Runs ``import lsched`` and the attribute accesses given, in a fresh
#: interpreter; prints the top-level modules loaded after each step.
PROBE = """
import json, sys
import lsched
steps = {"import lsched": sorted({m.split(".")[0] for m in sys.modules})}
for name in sys.argv[1:]:
    getattr(lsched, name)
    steps[name] = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps(steps))
"""


def _loaded(*names: str) -> dict[str, set[str]]:
    """Top-level modules loaded after ``import lsched`` and after each name."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *names],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,  # a guard against hanging only
    )
    return {step: set(mods) for step, mods in json.loads(done.stdout).items()}


def test_import_lsched_loads_no_numpy_and_no_solver() -> None:
    loaded = _loaded("Instance", "solve")
    assert not loaded["import lsched"] & {*SOLVERS, "numpy", "pandas", "pyarrow"}
    assert not loaded["Instance"] & {*SOLVERS, "pandas"}
    # the registry names its backends' modules; none is imported until one runs
    assert not loaded["solve"] & set(SOLVERS)


def test_every_front_door_name_is_listed_and_resolves() -> None:
    assert set(dir(lsched)) == set(lsched.__all__)
    for name in lsched.__all__:
        assert getattr(lsched, name) is not None, name
    assert lsched.simulate is import_module("lsched.evaluator").simulate
    assert lsched.solve is solve
    assert lsched.bound is bound_report
    assert lsched.compare is compare
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        lsched.nothing  # noqa: B018


def test_no_front_door_name_is_shadowed_by_a_submodule() -> None:
    """Importing ``lsched.X`` binds the module to ``lsched.X``: a front-door name
    that is also a submodule's would turn into that module once it is imported."""
    submodules = {module.name for module in pkgutil.iter_modules(lsched.__path__)}
    assert not submodules & set(lsched.__all__)


def test_the_readme_python_example_prints_what_it_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ROOT)  # the example reads instances/ from the checkout
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.index("## Python")
    start = readme.index("```python", section)
    end = readme.index("```", start + 9)
    code = readme[start + len("```python") : end]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})
    after = " ".join(readme[end : end + 200].split())
    assert f"prints `{printed.getvalue().strip()}`" in after
