"""Running the ``lsched`` CLI in-process from tests."""

from __future__ import annotations

import pytest

from lsched.cli import main


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``lsched ARGS``: its exit status, stdout and stderr."""
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err
