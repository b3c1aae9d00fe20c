"""Data parallelism over N processes: which rank this is, who writes, and the few collectives
training and evaluation need.

``accelerate launch --multi_gpu --num_processes N`` (which starts torchrun) and ``torchrun
--nproc_per_node N`` both set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
``MASTER_ADDR``/``MASTER_PORT``, so :func:`init_from_env` serves both with ``torch.distributed``
directly. Why not accelerate's ``Accelerator``: its ``prepare`` wraps the model in DDP, which
all-reduces after every ``backward`` (gradient accumulation then needs ``no_sync``) and owns the
data loader's sharding, while our loop has a plan of micro-batches and needs one all-reduce per
optimizer step over the LoRA weights only; its ``save_state`` writes the whole model.
One process (``WORLD_SIZE`` unset or 1) joins no process group: every function here is then a
no-op.

Rank 0 alone writes stage folders, checkpoints and manifests; the others wait at a barrier and
read what it wrote (the ranks share one file system: one machine, or a shared ``output_dir``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any

from cprec_recbole.errors import ConfigError

if TYPE_CHECKING:
    import torch

#: The (global batch, micro-batch) key pairs of the two trainers: N ranks share each optimizer
#: step's micro-batches, so N must divide how many there are.
BATCH_KEYS = (("train_batch_size", "micro_batch_size"), ("cpt_batch_size", "cpt_micro_batch_size"))


def _group() -> ModuleType | None:
    """``torch.distributed`` when this process has joined a group. Read from ``sys.modules``:
    a group needs the module imported, so the stages of a SASRec run need not import torch."""
    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    dist = _group()
    return dist.get_world_size() if dist else 1


def rank() -> int:
    dist = _group()
    return dist.get_rank() if dist else 0


def is_main() -> bool:
    """Whether this process writes (rank 0, or the only process)."""
    return rank() == 0


def barrier() -> None:
    dist = _group()
    if dist:
        dist.barrier()


@contextmanager
def main_first() -> Iterator[bool]:
    """Rank 0 runs the block (yields True), the others skip it (False) and wait until it is
    done; an exception on rank 0 propagates before the barrier, so its peers never read half a
    result (the launcher ends them when rank 0 exits)."""
    yield is_main()
    barrier()


def launched_world_size() -> int:
    """The world size the launcher asked for (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_world_size(config: Mapping[str, Any], world: int) -> None:
    """Refuse a world size that does not divide a trainer's micro-batches per step."""
    if world == 1:
        return
    for batch_key, micro_key in BATCH_KEYS:
        if config.get(batch_key) is None or config.get(micro_key) is None:
            continue
        batch, micro = int(config[batch_key]), int(config[micro_key])
        micros = max(1, -(-batch // micro))
        if micros % world:
            raise ConfigError(
                f"{batch_key}={batch} with {micro_key}={micro} makes {micros} micro-batch(es) "
                f"per step, which {world} processes cannot share equally: make {batch_key} a "
                f"multiple of {micro_key} x {world}, or run on a world size dividing {micros}"
            )


def init_from_env(cuda: bool) -> None:
    """Join the process group the launcher describes (NCCL for CUDA, gloo for CPUs); a no-op
    in one process or when already joined."""
    if launched_world_size() == 1 or _group():
        return
    import torch
    import torch.distributed as dist

    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place (the gloo backend reduces on the CPU)."""
    dist = _group()
    if dist:
        dist.all_reduce(tensor)
    return tensor


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object)."""
    dist = _group()
    if not dist:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    dist = _group()
    if not dist:
        return [value]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def my_share(items: Sequence[Any]) -> list[Any]:
    """This rank's items of a sequence dealt round-robin (item k to rank k mod N)."""
    return list(items[rank() :: world_size()])
