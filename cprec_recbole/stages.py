"""Cached stages: one artifact folder per stage and config, ``<output_dir>/<stage>/<hash>/``.

A stage is done when its ``manifest.json`` exists; the manifest is written last and atomically,
so a stage killed midway has none. It is then redone from an emptied folder, or, for a
``resumable`` stage (LLM training, which checkpoints into its folder), continued from it.
Processes that ask for the same stage at once (Ray Tune trials, parallel experiments) take turns
on a lock file in the folder: one builds, the others wait and then reuse its result.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import platform
import resource
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from cprec_recbole.io import write_json

logger = logging.getLogger(__name__)
MANIFEST = "manifest.json"
LOCK = ".lock"


def config_hash(keys: Mapping[str, Any]) -> str:
    blob = json.dumps(keys, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


#: The packages whose versions can change a stage's numbers (kernels, tokenization, LoRA).
VERSIONED = (
    "cprec-recbole",
    "recbole",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "tokenizers",
    "safetensors",
    "numpy",
    "scipy",
    "pandas",
)
#: CPU features that decide which matmul kernels run (AMX makes bf16 matmuls ~4x faster).
CPU_FLAGS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in VERSIONED:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out


def machine() -> dict[str, Any]:
    """The CPU (model, cores, kernel-deciding flags), the ISA torch and oneDNN were allowed, and
    any GPU: what a wall time or a learned number depends on beyond the package versions."""
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    first = cpuinfo.read_text().split("\n\n")[0] if cpuinfo.is_file() else ""  # processor 0
    pairs = (line.split(":", 1) for line in first.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in pairs}
    flags = set(fields.get("flags", "").split())
    out = {
        "cpu": fields.get("model name") or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "cpu_flags": [flag for flag in CPU_FLAGS if flag in flags],
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "unset"),
    }
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
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


@contextmanager
def stage_lock(name: str, folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder/.lock`` so one process at a time builds the stage.

    The lock lives inside the folder, which is emptied around it, never removed, so every process
    locks the same file; the kernel releases it when its holder dies, so a killed run never
    blocks the next one.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("stage %s: waiting for another process building %s", name, folder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _reusable(name: str, folder: Path, force: bool) -> bool:
    if force or not (folder / MANIFEST).is_file():
        return False
    logger.info("stage %s: reusing %s", name, folder)
    return True


def _empty(folder: Path) -> None:
    """Remove everything in ``folder`` but the lock file that other processes may be waiting on."""
    for path in folder.iterdir():
        if path.name == LOCK:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


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
    if _reusable(name, folder, force):
        return folder
    with stage_lock(name, folder):
        if not _reusable(name, folder, force):  # else another process built it while we waited
            if force or not resumable:
                _empty(folder)
            _build(name, keys, config, build, folder)
    return folder


def _build(
    name: str,
    keys: Mapping[str, Any],
    config: Mapping[str, Any],
    build: Callable[[Path], Mapping[str, Any] | None],
    folder: Path,
) -> None:
    started = any(path.name != LOCK for path in folder.iterdir())
    logger.info("stage %s: %s %s", name, "continuing" if started else "building", folder)
    start = time.time()
    metrics = build(folder) or {}
    write_json(
        folder / MANIFEST,
        {
            "stage": name,
            "config": dict(keys),
            "run_config": dict(config),
            "versions": versions(),
            "machine": machine(),
            "metrics": dict(metrics),
            "wall_time_s": round(time.time() - start, 2),
            "peak_memory_mb": peak_memory_mb(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
