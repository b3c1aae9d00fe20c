"""Cached stages: one artifact folder per stage and config, ``<output_dir>/<stage>/<hash>/``.

A :class:`Stage` is declared: its name, the config keys it reads (its hash covers exactly their
values, its inputs' hashes and its version), the keys it uses without changing its result, the
stages it needs, and its build. While it builds, the config records every key read and refuses an
undeclared one (:mod:`cprec_recbole.run_config`), so a cache key cannot go stale.

A stage is done when its ``manifest.json`` exists; the manifest is written last and atomically,
so a stage killed midway has none. It is then redone from an emptied folder, or, for a
``resumable`` stage (LLM training, which checkpoints into its folder), continued from it.
Processes that ask for the same stage at once (Ray Tune trials, parallel experiments) take turns
on a lock file in the folder: one builds, the others wait and then reuse its result.

Under a data-parallel launch (N ranks, :mod:`cprec_recbole.distributed`) rank 0 alone decides,
locks and writes folders and manifests: a ``distributed`` stage (LLM training, evaluation) is
built by every rank together, any other by rank 0 while the others wait at a barrier and then
read its folder.
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
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from cprec_recbole import distributed
from cprec_recbole.errors import CheckpointError, ConfigError
from cprec_recbole.io import write_json
from cprec_recbole.logs import clock
from cprec_recbole.run_config import RunConfig, reading, tracked

logger = logging.getLogger(__name__)
MANIFEST = "manifest.json"
LOCK = ".lock"
#: ``reads`` of a stage that reads every key but its ``uses`` (a RecBole model's whole config).
EVERY = ("*",)


@dataclass(frozen=True)
class PlanEntry:
    """One stage of ``--plan``: where it is, whether it is built, what its last build took."""

    stage: str
    hash: str
    state: str  # cached, partial (with its furthest checkpoint), to build, damaged (why)
    folder: str
    last_wall_time_s: float | None  # of the latest finished build of this stage kind


_PLAN: ContextVar[list[PlanEntry] | None] = ContextVar("stage_plan", default=None)


@contextmanager
def planning() -> Iterator[list[PlanEntry]]:
    """Within the block ``run_stage`` builds nothing: it records each stage it is asked for
    (once per folder) and returns the folder, so a plan walks the very code a run would."""
    entries: list[PlanEntry] = []
    token = _PLAN.set(entries)
    try:
        yield entries
    finally:
        _PLAN.reset(token)


def _state(folder: Path) -> str:
    try:
        manifest = read_manifest(folder)
    except StageError:
        return "damaged (manifest.json unreadable)"
    if manifest is not None:
        damage = damaged(folder, manifest)
        return f"damaged ({damage})" if damage else "cached"
    if not folder.is_dir() or not any(p.name != LOCK for p in folder.iterdir()):
        return "to build"
    cursors = sorted(folder.glob("checkpoints/*/cursor.json"), key=lambda p: p.stat().st_mtime)
    if cursors:
        try:
            done = progress(json.loads(cursors[-1].read_text()))
        except (ValueError, KeyError, TypeError):  # not JSON, not an object, no steps_done
            done = "its cursor.json is unreadable"
        return f"partial (checkpoint {cursors[-1].parent.name}: {done})"
    return "partial (no checkpoint: rebuilt from scratch)"


def progress(cursor: Mapping[str, Any]) -> str:
    """How far a checkpoint's cursor says training got and, where it records the plan's steps
    and the time trained (checkpoints since session 27), how long the rest takes at that rate."""
    done = int(cursor["steps_done"])
    total, seconds = cursor.get("total_steps"), cursor.get("train_time_s")
    if not (total and seconds and done):
        return f"{done} steps done"
    left = seconds * (total - done) / done
    return f"{done}/{total} steps done in {clock(seconds)}, ~{clock(left)} left at that rate"


def _readable_manifest(folder: Path) -> dict | None:
    try:
        return read_manifest(folder)
    except StageError:
        return None


def _last_wall_time(kind: Path) -> float | None:
    manifests = (_readable_manifest(p) for p in kind.glob("*")) if kind.is_dir() else ()
    finished = [m for m in manifests if m]
    latest = max(finished, key=lambda m: m.get("finished_at", ""), default=None)
    return latest.get("wall_time_s") if latest else None


def _plan(name: str, folder: Path, entries: list[PlanEntry], force: bool) -> None:
    if any(entry.folder == str(folder) for entry in entries):
        return
    state = "to build (forced)" if force else _state(folder)
    entries.append(PlanEntry(name, folder.name, state, str(folder), _last_wall_time(folder.parent)))


def plan_table(entries: list[PlanEntry]) -> str:
    """The plan as aligned text, a stage per line."""
    rows = [asdict(e) for e in entries]
    for row in rows:
        wall = row["last_wall_time_s"]
        row["last_wall_time_s"] = "-" if wall is None else f"{wall:.1f}"
    heads = ["stage", "hash", "state", "last_wall_time_s", "folder"]
    widths = {h: max(len(h), *(len(str(r[h])) for r in rows)) for h in heads}
    lines = ["  ".join(h.ljust(widths[h]) for h in heads)]
    lines += ["  ".join(str(r[h]).ljust(widths[h]) for h in heads) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def groups_table(groups: Iterable[tuple[str, list[PlanEntry]]]) -> str:
    """Several runs' plans (a search's or an experiment's): a titled table per group."""
    parts = [
        f"{title}:\n{plan_table(rows) if rows else '(every stage shared)'}"
        for title, rows in groups
    ]
    return "\n\n".join(parts)


class StageError(ConfigError):
    """A cached stage cannot be used as it is (missing or changed files)."""


@dataclass(frozen=True)
class Stage:
    """A cached step of a pipeline.

    ``build(folder, config, **context)`` fills ``folder`` and returns its metrics. ``reads`` are
    the keys whose values decide the result (hashed), ``uses`` keys it reads that do not (where
    things live, progress bars, checkpoint cadence); ``needs`` the stages whose folders it reads,
    whose hashes join its own. Bump ``version`` when the build's code changes what it computes.
    ``added`` maps keys of ``reads`` added after the stage's folders existed to the value that
    builds what those folders hold: such a key is hashed only when set to another value, so an
    opt-in feature does not move every cached folder.
    ``distributed``: every rank of a data-parallel launch runs the build (each its share).
    """

    name: str
    reads: tuple[str, ...]
    build: Callable[..., Mapping[str, Any] | None]
    needs: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()
    version: int = 1
    resumable: bool = False
    distributed: bool = False
    added: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        stray = set(self.added) - set(self.reads)
        if stray:
            raise TypeError(f"stage {self.name}: added keys {sorted(stray)} are not in reads")

    def allowed(self, extra: Iterable[str] = ()) -> frozenset[str] | None:
        """The keys its build may read (None: all)."""
        if self.reads == EVERY:
            return None
        return frozenset((*self.reads, *self.uses, *extra))

    def keys(
        self,
        config: Mapping[str, Any],
        inputs: Mapping[str, Path | None],
        derived: Mapping[str, Any],
        extra: Iterable[str] = (),
    ) -> dict[str, Any]:
        """What the hash covers, flat: the declared keys' values, the values the names stand for,
        the inputs' hashes as ``<name>_stage`` (None: a stage this model does not use), the
        version."""
        if set(inputs) != set(self.needs):
            raise TypeError(f"stage {self.name} needs {self.needs}, was given {tuple(inputs)}")
        if self.reads == EVERY:
            values = {k: config[k] for k in sorted(config) if k not in self.uses}
        else:
            values = {
                k: config.get(k)
                for k in (*self.reads, *extra)
                if k not in self.added or config.get(k) != self.added[k]
            }
        hashes = {f"{k}_stage": (v.name if v is not None else None) for k, v in inputs.items()}
        return {**values, **derived, **hashes, "stage_version": self.version}


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
    """The manifest of a finished stage (None: not finished); an unreadable one is an error
    that says how to rebuild the stage."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        manifest = exc
    if not isinstance(manifest, dict):
        raise StageError(
            f"{path} is damaged (not a JSON object: {manifest}); rebuild the stage with "
            f"--force={folder.parent.name}"
        )
    return manifest


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
    if force:
        return False
    manifest = read_manifest(folder)
    if manifest is None:
        return False
    damage = damaged(folder, manifest)
    if damage:
        raise StageError(
            f"stage {name}: the cached {folder} is damaged ({damage}); rebuild it with "
            f"--force={name}"
        )
    logger.info("stage %s: reusing %s", name, folder)
    return True


def file_digests(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file of a stage folder but its manifest and lock."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in (MANIFEST, LOCK):
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        out[rel] = {"size": path.stat().st_size, "sha256": digest.hexdigest()}
    return out


def damaged(folder: Path, manifest: Mapping[str, Any]) -> str | None:
    """What is wrong with a finished stage's files against its manifest (None: nothing)."""
    recorded = manifest.get("files") or {}
    for rel, want in recorded.items():
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        size = path.stat().st_size
        if size != want["size"]:
            return f"{rel} has {size} bytes, {want['size']} when built"
    found = file_digests(folder)
    for rel, want in recorded.items():
        if found[rel]["sha256"] != want["sha256"]:
            return f"{rel} changed since it was built"
    return None


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
    stage: Stage,
    config: RunConfig,
    inputs: Mapping[str, Path | None] | None = None,
    derived: Mapping[str, Any] | None = None,
    force: bool = False,
    extra_reads: Iterable[str] = (),
    **context: Any,
) -> Path:
    """Return the stage folder under ``config["output_dir"]``, building it with
    ``stage.build(folder, config, **context)`` unless a manifest exists. ``derived`` are hashed
    values that config names stand for (a template's text, a domain's files); ``extra_reads``
    declared keys that depend on a plugin the config picks (a scheduler's own keys)."""
    config, extra = tracked(config), tuple(extra_reads)
    keys = stage.keys(config, dict(inputs or {}), dict(derived or {}), extra)
    folder = stage_dir(config["output_dir"], stage.name, keys)
    entries = _PLAN.get()
    if entries is not None:
        _plan(stage.name, folder, entries, force)
        return folder
    if distributed.world_size() > 1 and stage.distributed:
        if distributed.broadcast(
            distributed.is_main() and not _reusable(stage.name, folder, force)
        ):
            with distributed.main_first() as main:  # no lock: the ranks are one run
                if main:
                    folder.mkdir(parents=True, exist_ok=True)
                    if force or not stage.resumable:
                        _empty(folder)
            _build(stage, keys, config, folder, extra, context)
            distributed.barrier()
        return folder
    with distributed.main_first() as main:  # one process: main, and no barrier
        if main and not _reusable(stage.name, folder, force):
            with stage_lock(stage.name, folder):
                if not _reusable(stage.name, folder, force):  # else another process built it
                    if force or not stage.resumable:
                        _empty(folder)
                    _build(stage, keys, config, folder, extra, context)
    return folder


def stage_folder(
    stage: Stage,
    config: RunConfig,
    inputs: Mapping[str, Path | None] | None = None,
    derived: Mapping[str, Any] | None = None,
    extra_reads: Iterable[str] = (),
) -> Path:
    """Where ``run_stage`` with these arguments keeps the stage, without building anything."""
    keys = stage.keys(config, dict(inputs or {}), dict(derived or {}), tuple(extra_reads))
    return stage_dir(config["output_dir"], stage.name, keys)


def _build(
    stage: Stage,
    keys: Mapping[str, Any],
    config: RunConfig,
    folder: Path,
    extra: tuple[str, ...],
    context: Mapping[str, Any],
) -> None:
    started = any(path.name != LOCK for path in folder.iterdir())
    logger.info("stage %s: %s %s", stage.name, "continuing" if started else "building", folder)
    start = time.time()
    with reading(stage.name, stage.allowed(extra)) as read:
        try:
            metrics = stage.build(folder, config, **context) or {}
        except CheckpointError as exc:
            message = f"stage {stage.name}: {exc}, or rebuild it with --force={stage.name}"
            raise StageError(message) from None
        except Exception as exc:
            exc.add_note(f"(building stage {stage.name} in {folder})")
            raise
    if distributed.is_main():  # the others wait for it where they wait for the build
        _write_manifest(stage, keys, config, folder, read, metrics, start)


def _write_manifest(stage, keys, config, folder, read, metrics, start) -> None:
    write_json(
        folder / MANIFEST,
        {
            "stage": stage.name,
            "config": dict(keys),
            "read": sorted(read),
            "run_config": config.as_dict(),
            "versions": versions(),
            "machine": machine(),
            "world_size": distributed.world_size(),
            "metrics": dict(metrics),
            "files": file_digests(folder),
            "wall_time_s": round(time.time() - start, 2),
            "peak_memory_mb": peak_memory_mb(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
