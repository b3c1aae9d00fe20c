"""Cached stages: one artifact folder per stage and config, ``<output_dir>/<stage>/<hash>/``.

A stage is done when its ``manifest.json`` exists; the manifest is written last and atomically,
so a stage killed midway has none. It is then redone from an emptied folder, or, for a
``resumable`` stage (LLM training, which checkpoints into its folder), continued from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import resource
import shutil
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from cprec_recbole.io import write_json

logger = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def config_hash(keys: Mapping[str, Any]) -> str:
    blob = json.dumps(keys, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("cprec-recbole", "recbole", "torch", "transformers", "peft", "numpy", "pandas"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (and of CUDA, when used), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        import torch

        if torch.cuda.is_available():
            peak = max(peak, torch.cuda.max_memory_allocated() / 2**20)
    except ImportError:
        pass
    return round(peak, 1)


def stage_dir(output_dir: str | Path, name: str, keys: Mapping[str, Any]) -> Path:
    return Path(output_dir) / name / config_hash(keys)


def read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def run_stage(
    name: str,
    keys: Mapping[str, Any],
    config: Mapping[str, Any],
    build: Callable[[Path], Mapping[str, Any] | None],
    force: bool = False,
    resumable: bool = False,
) -> Path:
    """Return the stage folder under ``config["output_dir"]``, building it with
    ``build(folder)`` unless a manifest exists; the manifest records the whole run config."""
    folder = stage_dir(config["output_dir"], name, keys)
    if not force and (folder / MANIFEST).is_file():
        logger.info("stage %s: reusing %s", name, folder)
        return folder
    if folder.exists() and (force or not resumable):
        shutil.rmtree(folder)
    verb = "continuing" if folder.exists() else "building"
    folder.mkdir(parents=True, exist_ok=True)
    logger.info("stage %s: %s %s", name, verb, folder)
    start = time.time()
    metrics = build(folder) or {}
    write_json(
        folder / MANIFEST,
        {
            "stage": name,
            "config": dict(keys),
            "run_config": dict(config),
            "versions": versions(),
            "metrics": dict(metrics),
            "wall_time_s": round(time.time() - start, 2),
            "peak_memory_mb": peak_memory_mb(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    return folder
