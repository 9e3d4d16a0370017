"""`lsched.atomic`: errors name the user's path, output checks before any work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lsched.atomic import atomic_target, check_output
from lsched.errors import InputError


def test_missing_folder_error_names_the_target(tmp_path: Path) -> None:
    target = tmp_path / "nowhere" / "x.csv"
    with pytest.raises(FileNotFoundError) as info, atomic_target(target):
        pass
    assert info.value.filename == str(target)


def test_folder_in_the_way_names_the_target_and_leaves_no_temporary(
    tmp_path: Path,
) -> None:
    target = tmp_path / "folder"
    target.mkdir()
    with pytest.raises(OSError) as info, atomic_target(target) as temporary:
        temporary.write_text("x")
    assert info.value.filename == str(target)
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]


def test_library_message_about_the_temporary_names_the_target(tmp_path: Path) -> None:
    target = tmp_path / "x.parquet"
    with pytest.raises(OSError) as info, atomic_target(target) as temporary:
        raise OSError(f"Failed to open local file '{temporary}'")
    assert str(target) in str(info.value) and ".tmp" not in str(info.value)


def test_check_output_sees_links_and_folders(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("data")
    link = tmp_path / "link.csv"
    link.symlink_to(source)
    with pytest.raises(InputError, match="also an input"):
        check_output(link, (source,), "--out")
    with pytest.raises(InputError, match="is a folder"):
        check_output(tmp_path, (source,), "--out")
    with pytest.raises(InputError, match="no such folder"):
        check_output(tmp_path / "a" / "b.csv", (source,), "--out")
    check_output(tmp_path / "new.csv", (source, None), "--out")  # fine


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere"
)
def test_check_output_sees_a_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(InputError, match="not writable"):
            check_output(folder / "x.csv", (), "--out")
    finally:
        folder.chmod(0o700)
