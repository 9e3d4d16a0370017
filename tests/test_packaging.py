"""lsched as an installed package: a wheel, installed apart from the checkout.

The wheel is built from a copy of the sources (so that the checkout gets no
``build/`` folder), installed with ``--no-deps --target`` into a temporary folder
(the test environment's dependencies are reused, so nothing is downloaded), and
run with that folder as ``PYTHONPATH`` from a folder outside the repository: the
installed copy is what runs, and its profiles are the ones the wheel ships.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What the build reads: the package, the profiles and the metadata files.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "lsched", "models")
#: pip's words for "the build back-end could not be downloaded".
NO_DOWNLOAD = re.compile(
    r"No matching distribution found for setuptools|Could not find a version that "
    r"satisfies the requirement setuptools|Failed to establish a new connection"
)
TRACE = '"arrival_s","prompt_tokens","output_tokens"\n0,1,3\n0,2,2\n1,1,1\n'


def _offline_build_possible() -> bool:
    """Whether the installed setuptools builds wheels without a download: it has
    ``bdist_wheel`` itself (>= 70.1) or the ``wheel`` package supplies it."""
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    major, minor = (int(part) for part in re.findall(r"\d+", version)[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


def _pip(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,  # a guard against hanging only
    )


def _build_wheel(tmp_path: Path) -> Path:
    """Build lsched's wheel from a copy of the sources; skip if pip cannot."""
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not installed in the test environment: cannot build")
    source = tmp_path / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path / "dist"
    if _offline_build_possible():
        done = _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(out), str(source), cwd=tmp_path)  # fmt: skip
    else:  # an old setuptools without bdist_wheel: pip fetches the back-end
        done = _pip("wheel", "--no-deps", "-w", str(out), str(source), cwd=tmp_path)
        if done.returncode != 0 and NO_DOWNLOAD.search(done.stdout + done.stderr):
            pytest.skip(
                "cannot build a wheel: the installed setuptools has no bdist_wheel "
                "(< 70.1, no wheel package) and a newer one cannot be downloaded"
            )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = out.glob("lsched-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding lsched installed from its wheel (no dependencies)."""
    tmp_path = tmp_path_factory.mktemp("packaging")
    wheel = _build_wheel(tmp_path)
    site = tmp_path / "site"
    done = _pip("install", "--no-deps", "--no-index", "--target", str(site),
                str(wheel), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return site


def _run(
    site: Path, cwd: Path, *args: str, user_models: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` with only the installed copy of lsched on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["PYTHONPATH"] = str(site)
    if user_models is not None:
        env["LSCHED_MODELS"] = str(user_models)
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,  # a guard against hanging only
    )


def test_the_installed_copy_runs_not_the_checkout(
    installed: Path, tmp_path: Path
) -> None:
    code = (
        "import json, lsched as a, lsched_models as b; "
        "print(json.dumps([a.__file__, b.__file__]))"
    )
    done = _run(installed, tmp_path, "-c", code)
    assert done.returncode == 0, done.stderr
    for module_file in json.loads(done.stdout):
        assert Path(module_file).is_relative_to(installed)


def test_models_list_shows_the_shipped_profiles(
    installed: Path, tmp_path: Path
) -> None:
    done = _run(installed, tmp_path, "-m", "lsched.cli", "models", "list", "--json")
    assert done.returncode == 0, done.stderr
    profiles = json.loads(done.stdout)["profiles"]
    shipped = sorted(p.stem for p in (ROOT / "models").glob("*.toml"))
    assert [p["name"] for p in profiles] == shipped
    for profile in profiles:
        assert Path(profile["path"]).is_relative_to(installed)


def test_simulate_with_a_shipped_profile(installed: Path, tmp_path: Path) -> None:
    (tmp_path / "trace.csv").write_text(TRACE, encoding="utf-8")
    done = _run(installed, tmp_path, "-m", "lsched.cli", "simulate", "trace.csv",
                "--model", "unit-slot", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout)["policies"]
    assert result["metrics"]["num_completed"] == 3


def test_user_profiles_come_first_in_the_installed_copy(
    installed: Path, tmp_path: Path
) -> None:
    mine = tmp_path / "my-profiles"
    mine.mkdir()
    text = (ROOT / "models" / "unit-slot.toml").read_text(encoding="utf-8")
    (mine / "unit-slot.toml").write_text(text, encoding="utf-8")
    (mine / "my-slot.toml").write_text(text, encoding="utf-8")
    done = _run(installed, tmp_path, "-m", "lsched.cli", "models", "list", "--json",
                user_models=mine)  # fmt: skip
    assert done.returncode == 0, done.stderr
    paths = {p["name"]: Path(p["path"]) for p in json.loads(done.stdout)["profiles"]}
    assert paths["unit-slot"] == mine / "unit-slot.toml"
    assert paths["my-slot"] == mine / "my-slot.toml"
    assert paths["llama2-70b-a100-tp4"].is_relative_to(installed)
