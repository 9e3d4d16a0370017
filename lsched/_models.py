"""Where deployment profiles are found: user folders, then the shipped ones.

The repository's ``models/`` folder is the single source of truth for the shipped
profiles. A source checkout (``./run``, an editable install or ``PYTHONPATH``)
reads it in place; a wheel ships the same files as the data package
``lsched_models`` (``pyproject.toml`` maps ``models/`` to it), found through
:mod:`importlib`. The environment variable :data:`ENV_VAR` adds folders of the
user's own profiles, searched first, so that a user profile of the same name
replaces a shipped one.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from lsched.errors import InputError

#: Environment variable: folders of extra profiles, ``os.pathsep``-separated.
ENV_VAR = "LSCHED_MODELS"
#: The installed package that holds the shipped profiles in a wheel.
DATA_PACKAGE = "lsched_models"


def _checkout_models() -> Path | None:
    """``models/`` of the source checkout this lsched runs from, if it is one."""
    root = Path(__file__).resolve().parents[1]
    folder = root / "models"
    if (root / "pyproject.toml").is_file() and folder.is_dir():
        return folder
    return None


def _installed_models() -> Path | None:
    """The folder of the installed :data:`DATA_PACKAGE`, if there is one."""
    try:
        spec = importlib.util.find_spec(DATA_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def shipped_models_dir() -> Path:
    """The folder of the profiles shipped with lsched.

    Returns
    -------
    Path
        The checkout's ``models/`` when lsched runs from its source tree, else the
        installed ``lsched_models`` package; the checkout's path (absent) when
        neither exists, so that listing it finds nothing.
    """
    return (
        _checkout_models()
        or _installed_models()
        or Path(__file__).resolve().parents[1] / "models"
    )


def user_models_dirs() -> list[Path]:
    """The folders named by :data:`ENV_VAR`, in order (empty entries skipped).

    Raises
    ------
    InputError
        If a named folder does not exist: a typo must not hide the user's
        profiles silently.
    """
    folders = []
    for entry in os.environ.get(ENV_VAR, "").split(os.pathsep):
        if not entry.strip():
            continue
        folder = Path(entry).expanduser()
        if not folder.is_dir():
            raise InputError(
                f"no such folder {entry!r}; expected folders of profile TOML files, "
                f"separated by {os.pathsep!r}",
                field=ENV_VAR,
            )
        folders.append(folder)
    return folders


def models_search_path() -> list[Path]:
    """Every folder searched for profiles by name: user folders, then shipped."""
    return [*user_models_dirs(), shipped_models_dir()]


def profile_files() -> dict[str, Path]:
    """Profile name (file stem) -> its file; the first folder that has it wins.

    Returns
    -------
    dict of str to Path
        One entry per name, sorted by name.
    """
    found: dict[str, Path] = {}
    for folder in models_search_path():
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def find_profile(name: str) -> Path | None:
    """The file of the profile called ``name``, or ``None``."""
    for folder in models_search_path():
        path = folder / f"{name}.toml"
        if path.is_file():
            return path
    return None
