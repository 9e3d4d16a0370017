"""Atomic file output: readers see the old file or the complete new one, never a part.

Every file lsched writes goes to a temporary file in the target's directory first and
is then renamed onto the target with :func:`os.replace`, which is atomic on POSIX
within one file system. An interrupted write leaves the previous file untouched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` on success.

    An :class:`OSError` about the hidden temporary file (no such folder, no
    permission, a folder in the way, a full disk) is raised again naming ``path``,
    the user's name for the file.
    """
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    # O_EXCL: never clobber a stranger's file; mode 0o666 & ~umask like any new
    # file (tempfile.mkstemp would leave the output readable by its owner only)
    try:
        os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except OSError as exc:
        raise _naming_target(exc, temporary, target) from None
    try:
        yield temporary
        os.replace(temporary, target)
    except BaseException as exc:
        temporary.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _naming_target(exc, temporary, target) from None
        raise


def _naming_target(exc: OSError, temporary: Path, target: Path) -> OSError:
    """``exc`` with the temporary file's name replaced by the target's."""
    hidden = str(temporary)
    named = hidden in (str(exc.filename), str(exc.filename2))
    if not named and hidden not in str(exc):
        return exc
    if exc.errno is None or exc.strerror is None:  # e.g. a library's own message
        return OSError(str(exc).replace(hidden, str(target)))
    return OSError(exc.errno, exc.strerror, str(target))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path`` atomically."""
    with atomic_target(path) as temporary:
        temporary.write_text(text, encoding="utf-8", newline="\n")


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def check_output(
    path: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str] | None],
    option: str,
) -> None:
    """Check, before any work, that ``path`` can take a command's output.

    Parameters
    ----------
    path
        The output file, as the user wrote it.
    inputs
        Every file the command reads (``None`` entries are skipped).
    option
        The option or argument that names ``path``, for the message.

    Raises
    ------
    InputError
        Naming ``path`` as written: if it is one of ``inputs`` (another spelling
        or a link to it included: an output must never replace the file it was
        computed from), an existing folder, or in a folder that does not exist or
        cannot be written.
    """
    from lsched.errors import InputError

    target = Path(path)
    for source in inputs:
        if source is not None and _same_file(Path(source), target):
            raise InputError(
                f"{path} is also an input of this command; expected a new path, so "
                "that the input is not overwritten",
                field=option,
            )
    folder = target.parent
    if target.is_dir():
        raise InputError(f"{path} is a folder; expected a file path", field=option)
    if not folder.is_dir():
        raise InputError(
            f"cannot write {path}: no such folder {str(folder)!r}", field=option
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(
            f"cannot write {path}: folder {str(folder)!r} is not writable",
            field=option,
        )
