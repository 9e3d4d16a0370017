"""Fixtures shared by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run: several count what their
# random cases covered (rejections, truncations, swaps), and a count that a
# random seed may miss would make the suite fail by chance.
settings.register_profile("lsched", derandomize=True, database=None)
settings.load_profile("lsched")


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """Two requests (arrival 0, prompt 1, output 3), in lsched's plain CSV layout."""
    path = tmp_path / "tiny.csv"
    path.write_text(
        '"arrival_s","prompt_tokens","output_tokens"\n0,1,3\n0,1,3\n', encoding="utf-8"
    )
    return path


@pytest.fixture(autouse=True)
def _no_user_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see the shipped profiles only, whatever ``$LSCHED_MODELS`` says."""
    monkeypatch.delenv("LSCHED_MODELS", raising=False)
