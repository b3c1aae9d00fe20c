"""LLaRA-style supervised fine-tuning: LoRA + projector, curriculum from text to hybrid prompts.

The curriculum probability is ``step / (total_steps - 1)`` over the whole run (optimizer steps),
not per epoch or per DataLoader worker as in LLaRA's code, so it reaches 1.0 at the last step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from cprec_recbole.llm.batching import IGNORE_INDEX, LLMSample, encode_batch
from cprec_recbole.llm.inference import EvalContext, output_metrics
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


def trainable_state(model: nn.Module, projector: nn.Module | None) -> dict:
    """What fine-tuning changed: the LoRA weights and the projector."""
    lora = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    return {"lora": lora, "projector": None if projector is None else projector.state_dict()}


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


def _optimizer(model: nn.Module, projector: nn.Module | None, config: dict):
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": 0.0}]
    if projector is not None:
        groups.append(
            {"params": list(projector.parameters()), "weight_decay": config["projector_decay"]}
        )
    return torch.optim.Adam(groups, lr=float(config["learning_rate"]))


def _valid(model, setup: SFTSetup, config: dict) -> dict:
    out = setup.evaluator(model, setup.tokenizer, setup.valid_samples, setup.ctx)
    return output_metrics(out, setup.valid_samples, config["sparsity_buckets"])


def fine_tune(
    model: nn.Module, projector: nn.Module | None, setup: SFTSetup, config: dict
) -> tuple[dict, dict]:
    """Train, validate each epoch, end on the best state (valid hr@1 x valid_ratio).

    Returns the per-epoch history (loss, valid metrics, wall time, peak memory) and that state.
    """
    epochs = int(config["epochs"])
    batch_size, micro = int(config["train_batch_size"]), int(config["micro_batch_size"])
    accumulate = max(1, math.ceil(batch_size / micro))
    n_samples = len(setup.epoch_samples(0))
    steps_per_epoch = math.ceil(n_samples / (micro * accumulate))
    total = epochs * steps_per_epoch
    optimizer = _optimizer(model, projector, config)
    warmup = int(float(config.get("warmup_ratio", 0.05)) * total)
    scheduler = setup.scheduler_factory(optimizer, {"warmup": warmup, "total": total}, config)
    device = model_device(model)
    generator = torch.Generator().manual_seed(int(config["seed"]))
    best, best_score, patience, step, history = None, -1.0, 0, 0, []
    show = bool(config.get("show_progress", True))
    for epoch in range(epochs):
        model.train()
        samples = list(setup.epoch_samples(epoch))
        order = torch.randperm(len(samples), generator=generator).tolist()
        start, losses = time.time(), []
        bar = tqdm(range(0, len(order), micro), desc=f"sft epoch {epoch}", disable=not show)
        for i, first in enumerate(bar):
            part = [samples[j] for j in order[first : first + micro]]
            p = hybrid_probability(step, total)
            hybrid = torch.rand(len(part), generator=generator) < p
            if setup.text_template is None:
                hybrid = True
            batch = encode_batch(
                setup.tokenizer,
                setup.template,
                part,
                setup.ctx.titles,
                setup.ctx.item_index,
                setup.ctx.noun,
                with_answer=True,
                hybrid=hybrid,
                text_template=setup.text_template,
            ).to(device)
            loss = answer_loss(model, batch, setup.ctx.item_embeddings, projector)
            (loss / accumulate).backward()
            losses.append(loss.item())
            if (i + 1) % accumulate == 0 or first + micro >= len(order):
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
            bar.set_postfix(loss=f"{losses[-1]:.3f}", p_hybrid=f"{p:.2f}")
            if (i + 1) % max(1, len(bar) // 10) == 0:  # the log file shows progress too
                done = min(first + micro, len(order))
                logger.info(
                    "sft epoch %d: %d/%d samples, loss %.4f, %.2f samples/s",
                    epoch,
                    done,
                    len(order),
                    sum(losses) / len(losses),
                    done / (time.time() - start),
                )
        train_time = time.time() - start
        model.eval()
        valid = _valid(model, setup, config)
        score = valid["hr@1"] * valid["valid_ratio"]
        record = {
            "epoch": epoch,
            "train_loss": sum(losses) / max(len(losses), 1),
            "train_time_s": round(train_time, 2),
            "train_samples_per_s": round(len(samples) / max(train_time, 1e-9), 3),
            "valid_time_s": round(time.time() - start - train_time, 2),
            "peak_memory_mb": peak_memory_mb(),
            "valid": valid,
            "hybrid_probability": hybrid_probability(step - 1, total),
        }
        history.append(record)
        logger.info(
            "sft epoch %d: loss %.4f, valid hr@1 %.4f, valid_ratio %.4f",
            epoch,
            record["train_loss"],
            valid["hr@1"],
            valid["valid_ratio"],
        )
        if score > best_score:
            best, best_score, patience = trainable_state(model, projector), score, 0
        else:
            patience += 1
            if patience >= int(config["stopping_step"]):
                logger.info("sft: early stop after epoch %d", epoch)
                break
    load_trainable_state(model, projector, best)
    return {
        "epochs": history,
        "best_valid": history[_best_epoch(history)]["valid"],
        "total_steps": total,
        "steps_done": step,
    }, best


def _best_epoch(history: list[dict]) -> int:
    scores = [h["valid"]["hr@1"] * h["valid"]["valid_ratio"] for h in history]
    return scores.index(max(scores))
