"""Atomic writes of files and folders: a reader sees the old artifact or the new one, whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cprec_recbole.io import write_atomic, write_atomic_dir


def _fill(name: str, text: str):
    return lambda folder: (folder / name).write_text(text)


def _killed(folder: Path) -> None:
    (folder / "part.bin").write_text("half")
    raise KeyboardInterrupt  # as if the run were killed mid-write


def test_write_atomic_dir_puts_the_filled_folder_in_place_and_leaves_no_temp(tmp_path):
    target = tmp_path / "cache" / "model"
    assert write_atomic_dir(target, _fill("weights.bin", "new")) == target
    assert [p.name for p in target.parent.iterdir()] == ["model"]
    assert (target / "weights.bin").read_text() == "new"


def test_write_atomic_dir_replaces_an_older_folder_whole(tmp_path):
    target = tmp_path / "checkpoint"
    write_atomic_dir(target, _fill("old.pt", "old"))
    write_atomic_dir(target, _fill("new.pt", "new"))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]
    assert [p.name for p in target.iterdir()] == ["new.pt"]


def test_an_error_in_fill_leaves_neither_a_half_folder_nor_the_temp(tmp_path):
    target = tmp_path / "cache" / "model"
    with pytest.raises(KeyboardInterrupt):
        write_atomic_dir(target, _killed)
    assert list(target.parent.iterdir()) == []


def test_an_error_in_fill_keeps_the_previous_folder_as_it_was(tmp_path):
    target = tmp_path / "checkpoint"
    write_atomic_dir(target, _fill("old.pt", "old"))
    with pytest.raises(KeyboardInterrupt):
        write_atomic_dir(target, _killed)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]
    assert [p.name for p in target.iterdir()] == ["old.pt"]


def test_keep_existing_lets_the_first_finished_copy_win(tmp_path):
    target = tmp_path / "model"
    write_atomic_dir(target, _fill("done.txt", "ok"), keep_existing=True)
    write_atomic_dir(target, _fill("other.txt", "late"), keep_existing=True)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in target.iterdir()] == ["done.txt"]


def test_write_atomic_dir_makes_an_ordinary_folder_not_a_private_temp_one(tmp_path):
    umask = os.umask(0o022)
    try:
        target = write_atomic_dir(tmp_path / "shared", _fill("a.txt", "a"))
    finally:
        os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o755


def test_an_error_in_write_leaves_the_previous_file_and_no_temp(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")

    def killed(tmp: Path) -> None:
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, killed)
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert path.read_text() == "old"
