"""LLaRA-style supervised fine-tuning: LoRA + projector, curriculum from text to hybrid prompts.

The curriculum probability is ``step / (total_steps - 1)`` over the whole run (optimizer steps),
not per epoch or per DataLoader worker as in LLaRA's code, so it reaches 1.0 at the last step.

``sft_objective`` picks the loss: ``answer`` (LLaRA's causal-LM loss on the answer tokens),
``listwise`` (cross-entropy of the positive among its candidates, scored as ``score`` ranks
them), or ``mix``: ``(1 - sft_objective_mix) * answer + sft_objective_mix * listwise``.

``projector_warmup_samples`` > 0 first trains the projector alone, LoRA and backbone frozen, on
hybrid prompts: the only way to lower the loss then is through the item embeddings, which an LLM
that reads titles can otherwise ignore (issue 26's diagnostics).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cprec_recbole.io import write_atomic, write_atomic_dir
from cprec_recbole.llm.batching import EncodedBatch, LLMSample, RenderContext, encode_batch
from cprec_recbole.llm.loop import (
    ADAPTER,
    LoopArguments,
    Plan,
    TrainLoop,
    adam,
    batch_steps,
    load_adapter,
    save_adapter,
)
from cprec_recbole.llm.losses import answer_loss, listwise_loss
from cprec_recbole.llm.names import SFT_OBJECTIVES
from cprec_recbole.llm.projector import model_device
from cprec_recbole.llm.prompts import PromptTemplate
from cprec_recbole.stages import peak_memory_mb

logger = logging.getLogger(__name__)
PROJECTOR = "projector.safetensors"
WARMUP = "projector_warmup"  # the warm-up's checkpoints: <sft folder>/projector_warmup/checkpoints


def hybrid_probability(step: int, total_steps: int) -> float:
    """Probability that a training sample uses the hybrid prompt at optimizer ``step``."""
    return min(1.0, step / max(total_steps - 1, 1))


def objective_weights(config: Mapping[str, Any]) -> dict[str, float]:
    """Weight of the answer and listwise terms. A named objective rather than one weight in
    [0, 1]: ``answer`` and ``listwise`` read as what they are in configs and results, and only
    ``mix`` reads ``sft_objective_mix`` (the SFT hash covers it all the same)."""
    objective = config["sft_objective"]
    if objective not in SFT_OBJECTIVES:
        raise ValueError(f"sft_objective: {objective!r} is not one of {', '.join(SFT_OBJECTIVES)}")
    mix = float(config["sft_objective_mix"]) if objective == "mix" else float(objective != "answer")
    return {"answer": 1.0 - mix, "listwise": mix}


def encode_sft(
    setup: SFTSetup, samples: Sequence[LLMSample], hybrid: Tensor | bool, with_answer: bool
) -> EncodedBatch:
    """SFT prompts of ``samples`` (hybrid where ``hybrid`` says, else the text template's), with
    their answers for the answer loss or without for the listwise one."""
    return encode_batch(
        setup.tokenizer,
        setup.template,
        samples,
        setup.ctx.titles,
        setup.ctx.item_index,
        setup.ctx.noun,
        with_answer=with_answer,
        hybrid=hybrid,
        text_template=setup.text_template,
    )


def sft_loss(
    model: nn.Module,
    setup: SFTSetup,
    samples: Sequence[LLMSample],
    hybrid: Tensor | bool,
    weights: Mapping[str, float],
) -> Tensor:
    """One micro-batch's loss: each term of non-zero weight on its own encoding of the prompts
    (with the answer for ``answer``, without for ``listwise``), so ``answer`` alone computes
    exactly LLaRA's loss."""

    def encoded(with_answer: bool) -> EncodedBatch:
        return encode_sft(setup, samples, hybrid, with_answer).to(model_device(model))

    ctx = setup.ctx
    terms = {
        "answer": lambda: answer_loss(model, encoded(True), ctx.item_embeddings, ctx.projector),
        "listwise": lambda: listwise_loss(model, setup.tokenizer, samples, encoded(False), ctx),
    }
    return sum(w * terms[name]() for name, w in weights.items() if w)


def trainable_state(model: nn.Module, projector: nn.Module | None) -> dict:
    """What fine-tuning changed: the LoRA weights and the projector, copied (not views that later
    steps would overwrite)."""
    lora = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    proj = None
    if projector is not None:
        proj = {k: v.detach().cpu().clone() for k, v in projector.state_dict().items()}
    return {"lora": lora, "projector": proj}


def load_trainable_state(model: nn.Module, projector: nn.Module | None, state: dict) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in state["lora"] if n not in params]
    if missing:
        raise ValueError(f"checkpoint has weights the model lacks, e.g. {missing[0]}")
    with torch.no_grad():
        for name, value in state["lora"].items():
            params[name].copy_(value)
    if projector is not None and state.get("projector") is not None:
        projector.load_state_dict(state["projector"])


@dataclass
class SFTSetup:
    """Everything SFT needs besides the model and the config. ``validate(model)`` returns the
    validation metrics (``hr@1``, ``valid_ratio``...): the caller evaluates, so training does
    not import evaluation."""

    tokenizer: object
    template: PromptTemplate
    text_template: PromptTemplate | None
    ctx: RenderContext
    epoch_samples: Callable[[int], Sequence[LLMSample]]
    validate: Callable[[nn.Module], dict]
    scheduler_factory: Callable


class Validation:
    """SFT's state across epochs (checkpointed with the loop): history, best weights, patience."""

    def __init__(self) -> None:
        self.history: list[dict] = []
        self.best: dict | None = None
        self.best_score, self.patience = -1.0, 0
        self.epoch_start = (0, 0.0)  # (losses seen, train seconds) when the epoch began

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)

    def record(
        self, record: dict, model: nn.Module, projector: nn.Module | None, patience: int
    ) -> bool:
        """Keep the epoch's record and, if it is the best so far, its weights; True = stop."""
        self.history.append(record)
        score = record["valid"]["hr@1"] * record["valid"]["valid_ratio"]
        if score > self.best_score:
            self.best, self.best_score, self.patience = trainable_state(model, projector), score, 0
            return False
        self.patience += 1
        return self.patience >= patience


def sft_plan(n_samples: int, epochs: int, micro: int, accumulate: int, seed: int) -> Plan:
    """Each epoch a seeded permutation of its samples (ids ``epoch * n + i``), cut into steps; a
    named checkpoint (and validation) at every epoch end."""
    steps: list[list[list[int]]] = []
    checkpoints = {}
    for epoch in range(epochs):
        order = torch.randperm(n_samples, generator=torch.Generator().manual_seed(seed + epoch))
        steps += batch_steps((order + epoch * n_samples).tolist(), micro, accumulate)
        checkpoints[len(steps)] = [f"epoch-{epoch}"]
    return Plan(steps, checkpoints)


def warmup_plan(
    n_samples: int, warmup_samples: int, micro: int, accumulate: int, seed: int
) -> Plan:
    """The projector warm-up's sample ids: seeded permutations of epoch 0's ``n_samples``, as
    many as ``warmup_samples`` asks for, cut into steps; one named checkpoint at its end."""
    generator = torch.Generator().manual_seed(seed)
    rounds = math.ceil(warmup_samples / max(n_samples, 1))
    order = torch.cat([torch.randperm(n_samples, generator=generator) for _ in range(rounds)])
    steps = batch_steps(order[:warmup_samples].tolist(), micro, accumulate)
    return Plan(steps, {len(steps): ["done"]})


def curriculum_choice(seed: int, step: int, first_id: int, n: int, p: float) -> np.ndarray:
    """Which of a micro-batch's ``n`` samples get the hybrid prompt: seeded by the step and the
    micro-batch, so a resumed run draws the same without carrying generator state."""
    return np.random.default_rng([seed, step, first_id]).random(n) < p


class SFTTrainer:
    """SFT on the shared loop: validate at each epoch end, end on the best state (valid hr@1 x
    valid_ratio), resume from ``folder``'s newest checkpoint. Building it trains nothing."""

    def __init__(
        self,
        model: nn.Module,
        projector: nn.Module | None,
        setup: SFTSetup,
        config: Mapping[str, Any],
        folder: Path,
    ):
        self.model, self.projector, self.setup = model, projector, setup
        self.weights = objective_weights(config)  # a bad objective fails before any training
        self.seed, self.patience = int(config["seed"]), int(config["stopping_step"])
        micro = int(config["micro_batch_size"])
        accumulate = max(1, math.ceil(int(config["train_batch_size"]) / micro))
        self.n = len(setup.epoch_samples(0))
        self.plan = sft_plan(self.n, int(config["epochs"]), micro, accumulate, self.seed)
        total = len(self.plan.steps)
        optimizer = adam(
            model, projector, float(config["learning_rate"]), config["projector_decay"]
        )
        warmup = int(float(config["warmup_ratio"]) * total)
        scheduler = setup.scheduler_factory(optimizer, {"warmup": warmup, "total": total}, config)
        self.validation = Validation()
        args = LoopArguments.from_config("sft", config, self.seed)
        self.loop = TrainLoop(model, projector, optimizer, scheduler, folder, args, self.validation)
        self._epoch: tuple[int, Sequence[LLMSample]] | None = None
        self.warmup = self._warmup_loop(config, folder, micro, accumulate)

    def _warmup_loop(
        self, config: Mapping[str, Any], folder: Path, micro: int, accumulate: int
    ) -> tuple[TrainLoop, Plan] | None:
        """The projector warm-up's own loop (Adam over the projector alone, the SFT schedule
        over its steps), or None without a projector or warm-up samples."""
        samples = int(config["projector_warmup_samples"])
        if not samples or self.projector is None:
            return None
        plan = warmup_plan(self.n, samples, micro, accumulate, self.seed)
        decay = float(config["projector_decay"])
        optimizer = torch.optim.Adam(
            [{"params": list(self.projector.parameters()), "weight_decay": decay}],
            lr=float(config["learning_rate"]),
        )
        total = len(plan.steps)
        warmup = int(float(config["warmup_ratio"]) * total)
        scheduler = self.setup.scheduler_factory(
            optimizer, {"warmup": warmup, "total": total}, config
        )
        args = LoopArguments.from_config(WARMUP, config, self.seed)
        loop = TrainLoop(self.model, self.projector, optimizer, scheduler, folder / WARMUP, args)
        return loop, plan

    def warm_up(self) -> dict | None:
        """Train the projector alone on hybrid prompts (resumed, or skipped once done); the LoRA
        gradients this computes are dropped, never applied."""
        if self.warmup is None:
            return None
        loop, plan = self.warmup

        def loss(step: int, ids: list[int]) -> Tensor:
            part = [self.samples_of(0)[i] for i in ids]
            return sft_loss(self.model, self.setup, part, True, self.weights)

        out = loop.run(plan, loss)
        self.model.zero_grad(set_to_none=True)
        logger.info("%s: %d samples, loss %.4f", WARMUP, out["samples_done"], out["train_loss"])
        return out

    def samples_of(self, epoch: int) -> Sequence[LLMSample]:
        """The epoch's samples (candidates redrawn every epoch), kept while the epoch lasts."""
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, list(self.setup.epoch_samples(epoch)))
        return self._epoch[1]

    def loss(self, step: int, ids: list[int]) -> Tensor:
        """One micro-batch's loss; sample id ``epoch * n + i`` is sample i of that epoch."""
        epoch = ids[0] // self.n
        part = [self.samples_of(epoch)[i - epoch * self.n] for i in ids]
        hybrid: Tensor | bool = True
        if self.setup.text_template is not None:
            p = hybrid_probability(step, len(self.plan.steps))
            hybrid = torch.from_numpy(curriculum_choice(self.seed, step, ids[0], len(part), p))
        return sft_loss(self.model, self.setup, part, hybrid, self.weights)

    def end_of_epoch(self, name: str, steps_done: int) -> bool:
        """Validate, record the epoch (and the best weights); True = stop early."""
        epoch = int(name.rsplit("-", 1)[1])
        record = self._epoch_record(epoch, steps_done)
        valid = record["valid"]
        logger.info(
            "sft epoch %d: loss %.4f, valid hr@1 %.4f, valid_ratio %.4f",
            epoch,
            record["train_loss"],
            valid["hr@1"],
            valid["valid_ratio"],
        )
        self.validation.epoch_start = (len(self.loop.losses), self.loop.train_time)
        stop = self.validation.record(record, self.model, self.projector, self.patience)
        if stop:
            logger.info("sft: early stop after epoch %d", epoch)
        return stop

    def _epoch_record(self, epoch: int, steps_done: int) -> dict:
        seen, began = self.validation.epoch_start
        losses = self.loop.losses[seen:]
        train_time = self.loop.train_time - began
        self.model.eval()
        start = time.time()
        valid = self.setup.validate(self.model)
        self.model.train()
        return {
            "epoch": epoch,
            "train_loss": sum(losses) / max(len(losses), 1),
            "train_time_s": round(train_time, 2),
            "train_samples_per_s": round(self.n / max(train_time, 1e-9), 3),
            "valid_time_s": round(time.time() - start, 2),
            "peak_memory_mb": peak_memory_mb(),
            "valid": valid,
            "hybrid_probability": hybrid_probability(steps_done - 1, len(self.plan.steps)),
        }

    def train(self) -> dict:
        """Warm the projector up (if asked), run the plan, then load the best epoch's weights;
        returns the per-epoch history (loss, valid metrics, wall time, peak memory), the best
        validation and the warm-up's loss and time."""
        warmup = self.warm_up()
        train = self.loop.run(self.plan, self.loss, self.end_of_epoch)
        load_trainable_state(self.model, self.projector, self.validation.best)
        history = self.validation.history
        return {
            "epochs": history,
            "best_valid": history[_best_epoch(history)]["valid"],
            "total_steps": len(self.plan.steps),
            "steps_done": train["steps_done"],
            "resumed_at_samples": train["resumed_at_samples"],
            **({"projector_warmup": warmup} if warmup else {}),
        }


def save_fine_tuned(folder: Path, model: nn.Module, projector: nn.Module | None) -> None:
    """SFT's artifact: the LoRA adapters in peft's format (``adapter/``, which
    ``PeftModel.from_pretrained(backbone, folder / "adapter")`` loads) and the projector's
    weights (``projector.safetensors``), each written atomically."""
    from safetensors.torch import save_file

    write_atomic_dir(folder / ADAPTER, lambda tmp: save_adapter(model, tmp))
    if projector is not None:
        state = {k: v.detach().cpu().contiguous() for k, v in projector.state_dict().items()}
        write_atomic(folder / PROJECTOR, lambda tmp: save_file(state, str(tmp)))


def load_fine_tuned(folder: Path, model: nn.Module, projector: nn.Module | None) -> None:
    """Load :func:`save_fine_tuned`'s artifact into a LoRA-wrapped model and its projector."""
    from safetensors.torch import load_file

    load_adapter(model, folder / ADAPTER)
    if projector is not None:
        projector.load_state_dict(load_file(str(folder / PROJECTOR)))


def _best_epoch(history: list[dict]) -> int:
    scores = [h["valid"]["hr@1"] * h["valid"]["valid_ratio"] for h in history]
    return scores.index(max(scores))
