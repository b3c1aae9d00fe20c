"""LLaRA-style supervised fine-tuning: LoRA + projector, curriculum from text to hybrid prompts.

The curriculum probability is ``step / (total_steps - 1)`` over the whole run (optimizer steps),
not per epoch or per DataLoader worker as in LLaRA's code, so it reaches 1.0 at the last step.

``sft_objective`` picks the loss: ``answer`` (LLaRA's causal-LM loss on the answer tokens),
``listwise`` (cross-entropy of the positive among its candidates, scored as ``score`` ranks
them), or ``mix``: ``(1 - sft_objective_mix) * answer + sft_objective_mix * listwise``.
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
from torch.nn.utils.rnn import pad_sequence

from cprec_recbole.llm.batching import IGNORE_INDEX, EncodedBatch, LLMSample, encode_batch
from cprec_recbole.llm.inference import EvalContext, candidate_scores, output_metrics
from cprec_recbole.llm.loop import Plan, TrainLoop, adam, batch_steps
from cprec_recbole.llm.names import SFT_OBJECTIVES
from cprec_recbole.llm.projector import embed_batch, model_device
from cprec_recbole.llm.prompts import PromptTemplate
from cprec_recbole.stages import peak_memory_mb

logger = logging.getLogger(__name__)


def hybrid_probability(step: int, total_steps: int) -> float:
    """Probability that a training sample uses the hybrid prompt at optimizer ``step``."""
    return min(1.0, step / max(total_steps - 1, 1))


def answer_span(labels: torch.Tensor) -> int:
    """How many trailing columns hold answer labels (rows are left padded: answers end rows)."""
    labelled = (labels != IGNORE_INDEX).any(0).nonzero()
    if len(labelled) == 0:
        raise ValueError("the batch has no answer tokens to learn")
    return labels.shape[1] - int(labelled[0])


def answer_loss(
    model: nn.Module, batch, item_embeddings: torch.Tensor | None, projector: nn.Module | None
) -> torch.Tensor:
    """Causal-LM loss on the answer tokens, with item embeddings injected at the placeholders.

    The LM head runs only where it predicts an answer token: over the prompt it cost a tenth of a
    CPU training step (a 49k-way softmax per position) for labels that are all ignored.
    """
    embeds = embed_batch(model, batch, item_embeddings, projector)
    span = answer_span(batch.labels)
    logits = model(
        inputs_embeds=embeds,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,  # as in generation and scoring (left padding)
        logits_to_keep=span + 1,
    ).logits
    return nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(),
        batch.labels[:, -span:].flatten(),
        ignore_index=IGNORE_INDEX,
    )


def listwise_loss(
    model: nn.Module,
    tokenizer,
    samples: Sequence[LLMSample],
    prompts: EncodedBatch,
    ctx: EvalContext,
) -> Tensor:
    """Cross-entropy of each sample's positive among its candidates' scores, computed by
    ``candidate_scores`` with ``ctx``'s score rule: it trains the ranking that ``score`` reads,
    where the answer loss only raises the positive's likelihood, whatever the negatives'."""
    counts = [len(s.candidates) for s in samples]
    scores = candidate_scores(model, tokenizer, samples, ctx, prompts).split(counts)
    rows = pad_sequence(list(scores), batch_first=True, padding_value=-math.inf)
    target = torch.tensor([s.candidates.index(s.target) for s in samples], device=rows.device)
    return nn.functional.cross_entropy(rows, target)


def objective_weights(config: Mapping[str, Any]) -> dict[str, float]:
    """Weight of the answer and listwise terms. A named objective rather than one weight in
    [0, 1]: ``answer`` and ``listwise`` read as what they are in configs and results, and only
    ``mix`` reads ``sft_objective_mix`` (the SFT hash covers it all the same)."""
    objective = config["sft_objective"]
    if objective not in SFT_OBJECTIVES:
        raise ValueError(f"sft_objective: {objective!r} is not one of {', '.join(SFT_OBJECTIVES)}")
    mix = float(config["sft_objective_mix"]) if objective == "mix" else float(objective != "answer")
    return {"answer": 1.0 - mix, "listwise": mix}


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
        ).to(model_device(model))

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
    """Everything the loop needs besides the model."""

    tokenizer: object
    template: PromptTemplate
    text_template: PromptTemplate | None
    ctx: EvalContext
    epoch_samples: Callable[[int], Sequence[LLMSample]]
    valid_samples: Sequence[LLMSample]
    evaluator: Callable
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


def _valid(model, setup: SFTSetup, config: dict) -> dict:
    out = setup.evaluator(model, setup.tokenizer, setup.valid_samples, setup.ctx)
    return output_metrics(out, setup.valid_samples, config["sparsity_buckets"])


def curriculum_choice(seed: int, step: int, first_id: int, n: int, p: float) -> np.ndarray:
    """Which of a micro-batch's ``n`` samples get the hybrid prompt: seeded by the step and the
    micro-batch, so a resumed run draws the same without carrying generator state."""
    return np.random.default_rng([seed, step, first_id]).random(n) < p


def fine_tune(
    model: nn.Module, projector: nn.Module | None, setup: SFTSetup, config: dict, folder: Path
) -> tuple[dict, dict]:
    """Train on the shared loop, validate at each epoch end, end on the best state
    (valid hr@1 x valid_ratio). Resumes from ``folder``'s newest checkpoint.

    Returns the per-epoch history (loss, valid metrics, wall time, peak memory) and that state.
    """
    micro = int(config["micro_batch_size"])
    accumulate = max(1, math.ceil(int(config["train_batch_size"]) / micro))
    seed = int(config["seed"])
    weights = objective_weights(config)  # a bad objective fails before any training
    n = len(setup.epoch_samples(0))
    plan = sft_plan(n, int(config["epochs"]), micro, accumulate, seed)
    total = len(plan.steps)
    optimizer = adam(model, projector, float(config["learning_rate"]), config["projector_decay"])
    warmup = int(float(config.get("warmup_ratio", 0.05)) * total)
    scheduler = setup.scheduler_factory(optimizer, {"warmup": warmup, "total": total}, config)
    validation = Validation()
    loop = TrainLoop(
        model,
        projector,
        optimizer,
        scheduler,
        folder,
        "sft",
        config.get("checkpoint_every"),
        bool(config.get("show_progress", True)),
        validation,
        max_grad_norm=config.get("max_grad_norm"),
        autocast=bool(config["autocast"]),
        compile=bool(config["compile"]),
    )
    cache: dict[int, Sequence[LLMSample]] = {}

    def samples_of(epoch: int) -> Sequence[LLMSample]:
        if epoch not in cache:
            cache.clear()
            cache[epoch] = list(setup.epoch_samples(epoch))
        return cache[epoch]

    def loss_fn(step: int, ids: list[int]) -> torch.Tensor:
        epoch = ids[0] // n
        part = [samples_of(epoch)[i - epoch * n] for i in ids]
        hybrid = True
        if setup.text_template is not None:
            p = hybrid_probability(step, total)
            hybrid = torch.from_numpy(curriculum_choice(seed, step, ids[0], len(part), p))
        return sft_loss(model, setup, part, hybrid, weights)

    def end_of_epoch(name: str, steps_done: int) -> bool:
        epoch = int(name.rsplit("-", 1)[1])
        seen, began = validation.epoch_start
        losses = loop.losses[seen:]
        train_time = loop.train_time - began
        model.eval()
        start = time.time()
        valid = _valid(model, setup, config)
        model.train()
        record = {
            "epoch": epoch,
            "train_loss": sum(losses) / max(len(losses), 1),
            "train_time_s": round(train_time, 2),
            "train_samples_per_s": round(n / max(train_time, 1e-9), 3),
            "valid_time_s": round(time.time() - start, 2),
            "peak_memory_mb": peak_memory_mb(),
            "valid": valid,
            "hybrid_probability": hybrid_probability(steps_done - 1, total),
        }
        logger.info(
            "sft epoch %d: loss %.4f, valid hr@1 %.4f, valid_ratio %.4f",
            epoch,
            record["train_loss"],
            valid["hr@1"],
            valid["valid_ratio"],
        )
        validation.epoch_start = (len(loop.losses), loop.train_time)
        stop = validation.record(record, model, projector, int(config["stopping_step"]))
        if stop:
            logger.info("sft: early stop after epoch %d", epoch)
        return stop

    train = loop.run(plan, loss_fn, end_of_epoch)
    load_trainable_state(model, projector, validation.best)
    history = validation.history
    return {
        "epochs": history,
        "best_valid": history[_best_epoch(history)]["valid"],
        "total_steps": total,
        "steps_done": train["steps_done"],
        "resumed_at_samples": train["resumed_at_samples"],
    }, validation.best


def _best_epoch(history: list[dict]) -> int:
    scores = [h["valid"]["hr@1"] * h["valid"]["valid_ratio"] for h in history]
    return scores.index(max(scores))
