"""Atomic file output: readers see the old file or the complete new one, never a part.

Every file lsched writes goes to a temporary file in the target's directory first and
is then renamed onto the target with :func:`os.replace`, which is atomic on POSIX
within one file system. An interrupted write leaves the previous file untouched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` on success."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    # O_EXCL: never clobber a stranger's file; mode 0o666 & ~umask like any new
    # file (tempfile.mkstemp would leave the output readable by its owner only)
    os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield temporary
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path`` atomically."""
    with atomic_target(path) as temporary:
        temporary.write_text(text, encoding="utf-8", newline="\n")


def check_output(
    path: str | os.PathLike[str],
    inputs: tuple[str | os.PathLike[str] | None, ...],
    option: str,
) -> None:
    """Raise :class:`~lsched.errors.InputError` if ``path`` is one of ``inputs``
    (an output must never replace the file it was computed from)."""
    from lsched.errors import InputError

    target = Path(path).resolve()
    for source in inputs:
        if source is not None and Path(source).resolve() == target:
            raise InputError(
                f"{path} is also an input of this command; expected a new path, so "
                "that the input is not overwritten",
                field=option,
            )
