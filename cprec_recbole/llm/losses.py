"""The training losses of SFT and CPT, on encoded batches: LLaRA's answer loss and the listwise
cross-entropy over the candidates' scores. Both trainers import them from here, and they read
the render context and scoring, never evaluation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from cprec_recbole.llm.batching import IGNORE_INDEX, EncodedBatch, LLMSample, RenderContext
from cprec_recbole.llm.projector import embed_batch
from cprec_recbole.llm.scoring import candidate_scores


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
    ctx: RenderContext,
) -> Tensor:
    """Cross-entropy of each sample's positive among its candidates' scores, computed by
    ``candidate_scores`` with ``ctx``'s score rule: it trains the ranking that ``score`` reads,
    where the answer loss only raises the positive's likelihood, whatever the negatives'."""
    counts = [len(s.candidates) for s in samples]
    scores = candidate_scores(model, tokenizer, samples, ctx, prompts).split(counts)
    rows = pad_sequence(list(scores), batch_first=True, padding_value=-math.inf)
    target = torch.tensor([s.candidates.index(s.target) for s in samples], device=rows.device)
    return nn.functional.cross_entropy(rows, target)
