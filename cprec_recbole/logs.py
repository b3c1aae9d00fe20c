"""Logging to the console and to a file under the output dir (RecBole would write ./log/)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_dir: Path, name: str) -> Path:
    """Send INFO and above to stderr and to ``log_dir/<name>-<time>.log``; returns the file."""
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_cprec", False):
            root.removeHandler(handler)
    for handler in (logging.StreamHandler(), logging.FileHandler(path)):
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._cprec = True
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    return path


def clock(seconds: float) -> str:
    """``1h05m`` or ``4m07s``: a wall time as a log line or a plan reads best."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
