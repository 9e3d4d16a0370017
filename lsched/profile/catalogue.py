"""The profiles found by name: the shipped ``models/`` and ``$LSCHED_MODELS``.

:func:`load_profile` reads a profile by name (looked up as :mod:`lsched._models`
says) or from a ``.toml`` path, with each error located by file, field and line.
"""

from __future__ import annotations

from pathlib import Path

from lsched._models import find_profile, profile_files, shipped_models_dir
from lsched.checks import check_path
from lsched.errors import InputError
from lsched.profile.deployment import DeploymentProfile
from lsched.profile.toml import _line_of, _profile_from_dict, read_toml


def models_dir() -> Path:
    """The folder of the shipped profiles: the checkout's ``models/`` or, in a
    wheel, the installed ``lsched_models`` package (:mod:`lsched._models`)."""
    return shipped_models_dir()


def list_profiles() -> list[str]:
    """Names of the profiles found by name, each once, sorted.

    The folders of ``$LSCHED_MODELS`` come before the shipped ones; a name in
    several folders is the first folder's profile.
    """
    return list(profile_files())


def load_profile(name_or_path: str | Path) -> DeploymentProfile:
    """Load a profile by name or from a ``.toml`` path.

    A name is looked up in the folders of ``$LSCHED_MODELS``, then in the shipped
    profiles (``models/<name>.toml``); see :mod:`lsched._models`.

    Raises
    ------
    InputError
        For an unknown name (listing the known ones), unreadable TOML (with its
        line) or a bad field (naming the file, the field and its line).
    """
    candidate = check_path(name_or_path, "profile")
    text_name = str(name_or_path)
    if candidate.suffix == ".toml" or candidate.exists():
        path = candidate
        if not path.is_file():
            raise InputError("no such profile file", file=path)
    else:
        found = find_profile(text_name)
        if found is None:
            known = ", ".join(list_profiles()) or "(none)"
            raise InputError(
                f"unknown profile {text_name!r}; known profiles: {known}",
                field="profile",
            )
        path = found
    text, data = read_toml(path)
    try:
        return _profile_from_dict(data, default_name=path.stem, path=str(path))
    except InputError as exc:
        line = _line_of(text, exc.field) if exc.line is None else exc.line
        raise exc.located(file=path, line=line) from None
