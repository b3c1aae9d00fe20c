"""Atomic writes: a reader never sees half a file or folder, and a crash never damages the
previous one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temp file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; results are meant to be shared
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_atomic_dir(
    folder: str | Path, fill: Callable[[Path], None], keep_existing: bool = False
) -> Path:
    """Call ``fill(tmp)`` on a temp folder beside ``folder``, then rename it over ``folder``.

    An older ``folder`` is moved aside only once the new one is whole. ``keep_existing``: a
    ``folder`` that is already there (another process built the same thing) stays, ours is dropped.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    old = tmp.with_name(f"{tmp.name}.old")
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private, like mkstemp
        fill(tmp)
        if folder.exists() and not keep_existing:
            os.replace(folder, old)
        try:
            os.replace(tmp, folder)
        except OSError:  # a folder that is not empty cannot be renamed over
            if not (keep_existing and folder.is_dir()):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_text(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
