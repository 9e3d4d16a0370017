"""Running the ``lsched`` CLI in-process from tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lsched.cli import main


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``lsched ARGS``: its exit status, stdout and stderr."""
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def assert_refused(code: int, out: str, err: str, *needles: str) -> None:
    """Exit 2 with one line on stderr that names every needle; nothing on stdout."""
    assert code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0]
    assert ".tmp" not in err  # the user's path, never a hidden temporary file


def assert_router_refused(
    router: str,
    needles: list[str],
    capsys: pytest.CaptureFixture[str],
    model: str = "llama2-70b-a100-tp4",
) -> None:
    """``router`` is refused by :func:`lsched.routers.parse_router`, and by
    ``lsched simulate --router`` on the sample trace: exit 2, one line with
    every needle."""
    from lsched.errors import InputError
    from lsched.routers import parse_router

    with pytest.raises(InputError):
        parse_router(router)
    trace = str(Path(__file__).parent / "data" / "traces" / "azure_sample.csv")
    args = ["simulate", trace, "--model", model, "--router", router]
    assert_refused(*run(args, capsys), *needles)


def must_not_run(*args: object, **kwargs: object) -> None:
    """Stands in for the first piece of work of a command that must refuse first."""
    raise AssertionError("the command started working before checking its output")


def shared_prefix_trace(
    folder: Path, requests: int = 3, gap_ms: int = 1000, output_tokens: int = 4
) -> Path:
    """``folder/shared.jsonl``: ``requests`` Mooncake rows ``gap_ms`` apart
    (timestamps in ms) of ``output_tokens`` tokens whose 600-token prompts share
    their first 512-token hash block, so every row after the first finds it
    cached."""
    rows = [
        {"timestamp": gap_ms * k, "input_length": 600,
         "output_length": output_tokens, "hash_ids": [0, 1 + k]}
        for k in range(requests)
    ]  # fmt: skip
    trace = folder / "shared.jsonl"
    trace.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return trace
