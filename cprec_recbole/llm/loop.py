"""One resumable training loop for SFT and CPT: optimizer steps over a fixed plan of micro-batches.

A :class:`Plan` lists each optimizer step's micro-batches (sample ids). It is a pure function of
the config and seeds, so a resumed run rebuilds the same plan and continues at the saved cursor.
Randomness inside a step (LoRA dropout) is a pure function of (seed, step, micro-batch index):
each micro-batch runs on a forked torch RNG seeded so, so a resumed run, and N data-parallel
ranks that each take every N-th micro-batch of a step, draw the very masks one process draws;
the caller's own per-step draws (SFT's curriculum) are seeded by step too. With N ranks
(:mod:`cprec_recbole.distributed`) each backpropagates its share of a step's micro-batches, the
gradients are summed over the ranks before clipping and the optimizer step, and rank 0 alone
writes checkpoints; a checkpoint records the world size it was written at, and a resume at
another world size is refused. A checkpoint holds everything a resume needs: LoRA adapters in
peft's format, the projector, optimizer, scheduler, RNG states, the cursor and the caller's
state (SFT: validation history and best weights). It is written to a temporary folder and
renamed, so a kill at any moment leaves the previous checkpoint intact.

Why not ``transformers.Trainer`` / accelerate's ``save_state``: both checkpoint the whole model's
state dict (the frozen backbone included: 0.5 GB for SmolLM2, 13 GB for LLaMA-2-7B per
checkpoint) unless special-cased, and our steps need the curriculum, the injected projector
embeddings, the answer-only LM head and phase-ordered data, which would all become callbacks.
The loop is ~150 lines of plain torch; gradient accumulation is a counter.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cprec_recbole import distributed
from cprec_recbole.errors import CheckpointError, ConfigError
from cprec_recbole.io import write_atomic_dir
from cprec_recbole.logs import clock
from cprec_recbole.stages import peak_memory_mb

logger = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"
STATE = "trainer.pt"
CURSOR = "cursor.json"
ROLLING = "rolling-"  # every ``checkpoint_every`` samples; only the newest is kept
ADAPTER = "adapter"


@dataclass
class Plan:
    """``steps[s]`` = the micro-batches (lists of sample ids) of optimizer step ``s``;
    ``checkpoints[n]`` = the names of the checkpoints written once ``n`` steps are done."""

    steps: list[list[list[int]]]
    checkpoints: dict[int, list[str]] = field(default_factory=dict)

    @cached_property
    def samples_per_step(self) -> np.ndarray:
        return np.array([sum(len(m) for m in step) for step in self.steps], dtype=np.int64)

    @cached_property
    def cumulative(self) -> np.ndarray:
        """``cumulative[n]`` = samples done once ``n`` steps are done (``cumulative[0] = 0``)."""
        return np.concatenate([[0], np.cumsum(self.samples_per_step)])

    def samples_done(self, steps: int) -> int:
        return int(self.cumulative[steps])

    def step_after_samples(self, samples: int) -> int:
        """The first step count at which at least ``samples`` samples are done."""
        return int(np.searchsorted(self.cumulative[1:], samples) + 1)


def group_steps(micros: list[list[int]], accumulate: int) -> list[list[list[int]]]:
    """Group micro-batches into optimizer steps of ``accumulate`` of them."""
    return [micros[i : i + accumulate] for i in range(0, len(micros), accumulate)]


def batch_steps(order: Sequence[int], micro: int, accumulate: int) -> list[list[list[int]]]:
    """Cut a sample order into micro-batches of ``micro`` and steps of ``accumulate`` of them."""
    order = list(order)
    return group_steps([order[i : i + micro] for i in range(0, len(order), micro)], accumulate)


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def _rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_adapter(model: nn.Module, folder: Path) -> None:
    """LoRA adapters in peft's own format (``adapter_model.safetensors`` + config), without the
    embedding matrices peft adds once placeholder tokens grew the vocabulary: they are frozen,
    and their new rows are rebuilt identically when the tokens are added again."""
    model.save_pretrained(str(folder), save_embedding_layers=False)


def load_adapter(model: nn.Module, folder: Path) -> None:
    """Load peft-format adapter weights into an already LoRA-wrapped model (any device)."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(Path(folder) / "adapter_model.safetensors"), device="cpu")
    result = set_peft_model_state_dict(model, weights)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"{folder}: adapter weights the model lacks, e.g. {unexpected[0]}")


def checkpoints(folder: Path, rolling: bool = True) -> list[tuple[int, Path]]:
    """(steps done, path) of every whole checkpoint in ``folder`` (temporary copies and folders
    without a cursor are not), the rolling ones only if ``rolling``."""
    out = []
    for path in Path(folder).glob("[!.]*"):
        cursor = path / CURSOR
        if cursor.is_file() and (rolling or not path.name.startswith(ROLLING)):
            try:
                out.append((int(json.loads(cursor.read_text())["steps_done"]), path))
            except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
                raise CheckpointError(
                    f"{cursor} is damaged ({type(exc).__name__}: {exc}); delete {path} to resume "
                    "from the checkpoint before it"
                ) from None
    return out


def frozen_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the frozen (backbone) weights, where they all share one."""
    dtypes = {p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


@contextmanager
def mixed_precision(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Adapter and projector matmuls in the frozen backbone's half dtype, weights kept in fp32.

    peft keeps LoRA weights fp32 and casts every adapter input up to fp32 (and the result back);
    under ``torch.autocast`` with peft's input casting off, inputs stay bf16 and only the small
    weights are cast, while Adam still updates fp32 weights (pure bf16 weights would round away
    updates at annealing rates). 1.3x tokens/s on this CPU (``benchmarks/cpt_throughput.py``). A
    no-op unless ``enabled`` and the backbone is bf16/fp16; the backward pass follows the forward's
    dtypes by itself, so only the forward runs inside.
    """
    dtype = frozen_dtype(model)
    if not enabled or dtype not in (torch.bfloat16, torch.float16):
        yield
        return
    from peft.helpers import disable_input_dtype_casting

    device = next(model.parameters()).device.type
    with ExitStack() as stack:
        stack.enter_context(torch.autocast(device, dtype=dtype))
        stack.enter_context(disable_input_dtype_casting(model))
        yield


def cpu_kernels_sound() -> bool:
    """Whether inductor's CPU kernels train this decoder correctly here: with torch 2.13 its
    256-bit (AVX2) kernels make the LoRA loop's losses NaN (``ATEN_CPU_CAPABILITY=avx2`` on an
    AVX-512 CPU, ``tests/test_cpt.py``; unvectorised kernels are right but slower than eager),
    so below AVX-512 the loop trains eager and says so."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    isa = pick_vec_isa()
    if isa and isa.bit_width() >= 512:
        return True
    logger.warning(
        "compile: true ignored: inductor's %s CPU kernels give NaN losses with torch %s; "
        "training eager (AVX-512 CPUs compile)",
        str(isa) or "scalar",
        torch.__version__,
    )
    return False


class CompiledDecoder:
    """The backbone's decoder layers under ``torch.compile`` (inductor) while :meth:`active`.

    Eager training spends much of a step outside the matmuls: casts, layout copies and
    element-wise ops between them, each a separate pass over memory; inductor fuses them (1.3x
    tokens/s on a 2-core AMD CPU, ``benchmarks/cpt_throughput.py``). Each layer compiles apart
    (one graph each: dynamo specialises on the layer's index), about 90 s for SmolLM2's 30 on 2
    cores, where the decoder as one graph had not compiled after 10 minutes; shapes are dynamic
    (every micro-batch has its own length), so that is paid once per training process. Only the
    training forward is compiled (backward follows its graph): validation and scoring run eager
    and compile nothing. The compiled functions read the layers' own parameters, so weights and
    checkpoints are untouched.
    """

    def __init__(self, model: nn.Module, enabled: bool) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        on_cpu = next(model.parameters()).device.type == "cpu"
        compilers = (os.environ.get("CXX") or "g++", "clang++")
        if enabled and on_cpu and not any(shutil.which(c) for c in compilers):
            raise ConfigError(
                "compile: true needs a C++ compiler for torch.compile's CPU backend and none was "
                "found (g++, clang++ or $CXX): install one (apt-get install g++) or pass "
                "--compile=false"
            )
        if enabled and on_cpu and not cpu_kernels_sound():
            enabled = False
        self.layers = list(base.get_decoder().layers) if enabled else []
        if enabled:  # graphs of an earlier model in this process (an experiment's last arm)
            torch._dynamo.reset()  # would count against the recompile limit
        self.forwards = [torch.compile(layer.forward, dynamic=True) for layer in self.layers]

    @contextmanager
    def active(self) -> Iterator[None]:
        if not self.layers:
            yield
            return
        for layer, forward in zip(self.layers, self.forwards, strict=True):
            layer.forward = forward  # an instance attribute shadows the class's forward
        try:
            with torch._dynamo.config.patch(recompile_limit=len(self.layers) + 8):
                yield
        finally:
            for layer in self.layers:
                del layer.forward


@dataclass(frozen=True)
class LoopArguments:
    """How the loop trains, whatever it trains: one object built from the config in one place
    (as transformers' ``TrainingArguments``), not loose parameters cast by each caller.

    ``seed`` seeds each micro-batch's randomness (with the step and the micro-batch's index);
    ``max_grad_norm`` clips the gradient norm of each step (as HF's Trainer does by default);
    ``checkpoint_every`` writes a rolling checkpoint every that many samples; ``compile`` runs
    the training forward through :class:`CompiledDecoder`; ``autocast`` through
    :func:`mixed_precision`.
    """

    name: str
    checkpoint_every: int | None = None
    show_progress: bool = True
    max_grad_norm: float | None = None
    autocast: bool = False
    compile: bool = False
    seed: int = 0

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any], seed: int) -> LoopArguments:
        every, norm = config.get("checkpoint_every"), config.get("max_grad_norm")
        return cls(
            name,
            seed=seed,
            checkpoint_every=None if every is None else int(every),
            show_progress=bool(config["show_progress"]),
            max_grad_norm=None if norm is None else float(norm),
            autocast=bool(config["autocast"]),
            compile=bool(config["compile"]),
        )


class TrainLoop:
    """Runs a :class:`Plan` with checkpoints under ``<folder>/checkpoints/``.

    ``loss_fn(step, micro_batch_ids)`` returns the mean loss of one micro-batch.
    ``on_checkpoint(name, steps_done)`` runs before a named checkpoint is written (SFT validates
    at epoch ends there) and returns True to stop training early. ``state`` is the caller's own
    state, checkpointed with the loop's.
    """

    def __init__(
        self,
        model: nn.Module,
        projector: nn.Module | None,
        optimizer: torch.optim.Optimizer,
        scheduler,
        folder: Path,
        args: LoopArguments,
        state: Stateful | None = None,
    ):
        self.model, self.projector = model, projector
        self.optimizer, self.scheduler = optimizer, scheduler
        self.folder = Path(folder) / CHECKPOINTS
        self.args, self.state = args, state
        self.compiled = CompiledDecoder(model, args.compile)
        self.steps_done, self.losses, self.stopped = 0, [], False
        self.total_steps = 0  # the plan's, once run() has one (for the cursor: --plan's time left)
        self.logged_losses = 0
        self.train_time = 0.0
        self.logged_at = (0.0, 0)  # (train_time, steps_done) at the last log line or resume

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, name: str) -> Path:
        """Rank 0 writes the checkpoint (every rank holds the same weights and optimizer state);
        the others wait until it is whole."""
        path = self.folder / name
        with distributed.main_first() as main:
            if main:
                write_atomic_dir(path, self._write_checkpoint)
        return path

    def _write_checkpoint(self, tmp: Path) -> None:
        save_adapter(self.model, tmp / ADAPTER)
        torch.save(
            {
                "steps_done": self.steps_done,
                "losses": self.losses,
                "stopped": self.stopped,
                "train_time": self.train_time,
                "projector": None if self.projector is None else self.projector.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": _rng_state(),
                "state": None if self.state is None else self.state.state_dict(),
            },
            tmp / STATE,
        )
        cursor = {
            "steps_done": self.steps_done,
            "total_steps": self.total_steps,
            "train_time_s": round(self.train_time, 1),
            "world_size": distributed.world_size(),
        }
        (tmp / CURSOR).write_text(json.dumps(cursor))

    def latest(self) -> Path | None:
        """The checkpoint furthest into training (by its step count), if any."""
        found = checkpoints(self.folder)
        return max(found)[1] if found else None

    def restore(self, path: Path) -> None:
        written_at = json.loads((path / CURSOR).read_text()).get("world_size", 1)
        if written_at != distributed.world_size():
            raise ConfigError(
                f"{path}: this checkpoint was written by {written_at} process(es) and this run "
                f"has {distributed.world_size()}: resume with {written_at} (torchrun "
                f"--nproc_per_node {written_at}), or rebuild the stage with --force"
            )
        saved = torch.load(path / STATE, map_location="cpu", weights_only=False)
        load_adapter(self.model, path / ADAPTER)
        if self.projector is not None and saved["projector"] is not None:
            self.projector.load_state_dict(saved["projector"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.state is not None and saved["state"] is not None:
            self.state.load_state_dict(saved["state"])
        _set_rng_state(saved["rng"])
        self.steps_done, self.losses = saved["steps_done"], list(saved["losses"])
        self.logged_losses = len(self.losses)
        self.stopped, self.train_time = saved["stopped"], saved["train_time"]
        self.logged_at = (self.train_time, self.steps_done)

    def _drop_rolling(self, keep: Path | None = None) -> None:
        if not distributed.is_main():
            return
        for path in self.folder.glob(f"{ROLLING}*"):
            if path != keep:
                shutil.rmtree(path, ignore_errors=True)

    # ------------------------------------------------------------------ training
    def run(
        self,
        plan: Plan,
        loss_fn: Callable[[int, list[int]], torch.Tensor],
        on_checkpoint: Callable[[str, int], bool] | None = None,
    ) -> dict[str, Any]:
        """Train from the newest checkpoint (or the start) to the end of ``plan``."""
        distributed.barrier()  # checkpoints rank 0 copied in before (a shared prefix) are whole
        self.total_steps = len(plan.steps)
        latest = self.latest()
        if latest is not None:
            self.restore(latest)
            logger.info(
                "%s: resuming from checkpoint %s at step %d/%d (%d samples done)",
                self.args.name,
                latest.name,
                self.steps_done,
                len(plan.steps),
                plan.samples_done(self.steps_done),
            )
        per_step = plan.samples_per_step
        total = int(per_step.sum())
        resumed_at = plan.samples_done(self.steps_done)
        bar = tqdm(
            total=total,
            initial=resumed_at,
            desc=self.args.name,
            unit="sample",
            disable=not self.args.show_progress,
        )
        tenth = max(1, len(plan.steps) // 10)
        start = time.time() - self.train_time
        self.model.train()
        while self.steps_done < len(plan.steps) and not self.stopped:
            step = self.steps_done
            self._backward(step, plan.steps[step], loss_fn)
            if self.args.max_grad_norm:
                params = [p for g in self.optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, self.args.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.steps_done += 1
            self.train_time = time.time() - start
            bar.update(int(per_step[step]))
            bar.set_postfix(
                loss=f"{self.losses[-1]:.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}"
            )
            if self.steps_done % tenth == 0 or self.steps_done == len(plan.steps):
                self._log(plan)
            self._maybe_checkpoint(plan, on_checkpoint)
        bar.close()
        self._drop_rolling()  # the plan's last named checkpoint (or the finished stage) supersedes them
        return {
            "steps_done": self.steps_done,
            "total_steps": len(plan.steps),
            "samples_done": plan.samples_done(self.steps_done),
            "train_loss": float(np.mean(self.losses)) if self.losses else float("nan"),
            "train_time_s": round(self.train_time, 2),
            "train_samples_per_s": round(
                plan.samples_done(self.steps_done) / max(self.train_time, 1e-9), 3
            ),
            "resumed_at_samples": resumed_at,
            "peak_memory_mb": peak_memory_mb(),
        }

    def _backward(self, step: int, micros: list[list[int]], loss_fn) -> None:
        """This rank's share of the step's micro-batches (every N-th), each on an RNG seeded by
        (seed, step, index); gradients and losses then summed over the ranks."""
        losses = torch.zeros(len(micros), dtype=torch.float64)
        for k in range(distributed.rank(), len(micros), distributed.world_size()):
            with micro_batch_rng(self.args.seed, step, k, self.model):
                with mixed_precision(self.model, self.args.autocast), self.compiled.active():
                    loss = loss_fn(step, micros[k])
                (loss / len(micros)).backward()
            losses[k] = float(loss.detach())
        if distributed.world_size() > 1:
            distributed.all_reduce_sum(losses)
            all_reduce_gradients([p for g in self.optimizer.param_groups for p in g["params"]])
        self.losses += losses.tolist()

    def _log(self, plan: Plan) -> None:
        """A line per tenth of training; its rate is over the samples since the last line (or
        the resume), so a run that shares the machine or resumes on another one shows the speed
        it has now, and how long the rest takes at that speed."""
        done, total = plan.samples_done(self.steps_done), plan.samples_done(len(plan.steps))
        recent = self.losses[self.logged_losses :] or self.losses[-1:]  # since the last line
        since_time, since_step = self.logged_at
        rate = (done - plan.samples_done(since_step)) / max(self.train_time - since_time, 1e-9)
        self.logged_losses, self.logged_at = len(self.losses), (self.train_time, self.steps_done)
        logger.info(
            "%s: step %d/%d, %d/%d samples, loss %.4f, lr %.3e, %.2f samples/s, %s left",
            self.args.name,
            self.steps_done,
            len(plan.steps),
            done,
            total,
            float(np.mean(recent)),
            self.scheduler.get_last_lr()[0],
            rate,
            clock((total - done) / max(rate, 1e-9)),
        )

    def _maybe_checkpoint(self, plan: Plan, on_checkpoint) -> None:
        names = plan.checkpoints.get(self.steps_done)
        if names:
            if on_checkpoint is not None:
                self.stopped = bool(on_checkpoint(names[0], self.steps_done))
            for name in names:
                self.checkpoint(name)
            return
        every = self.args.checkpoint_every
        if not every:
            return
        done, before = plan.samples_done(self.steps_done), plan.samples_done(self.steps_done - 1)
        if done // every > before // every:
            self._drop_rolling(self.checkpoint(f"{ROLLING}{self.steps_done:08d}"))


@contextmanager
def micro_batch_rng(seed: int, step: int, index: int, model: nn.Module) -> Iterator[None]:
    """The global torch RNG (LoRA dropout draws from it) seeded by (seed, step, micro-batch
    index) inside the block and restored after it, so no state carries between micro-batches."""
    device = next(model.parameters()).device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(np.random.SeedSequence([seed, step, index]).generate_state(1)[0]))
        yield


def all_reduce_gradients(params: list[nn.Parameter]) -> None:
    """Sum the parameters' gradients over the ranks in one all-reduce; a parameter that no rank
    gave a gradient keeps none (as in one process, where the optimizer then skips it)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flags = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype)
    flat = torch.cat([g.reshape(-1) for g in grads] + [flags.to(grads[0].device)])
    distributed.all_reduce_sum(flat)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    for p, flag in zip(params, flat[offset:].tolist(), strict=True):
        if not flag:
            p.grad = None


def adam(
    model: nn.Module, projector: nn.Module | None, lr: float, projector_decay: float = 0.0
) -> torch.optim.Adam:
    """Adam over the trainable (LoRA) weights, plus the projector with its own weight decay."""
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": 0.0}]
    if projector is not None:
        groups.append(
            {"params": list(projector.parameters()), "weight_decay": float(projector_decay)}
        )
    return torch.optim.Adam(groups, lr=lr)
