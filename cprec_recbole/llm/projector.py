"""LLaRA's projector and the injection of projected item embeddings into the prompt.

The placeholder tokens (``[HistoryEmb]``, ``[CansEmb]``) keep a learned input embedding that is
never used: ``inject`` overwrites those positions with ``Proj(e_i)``, e_i the frozen item
embedding of the collaborative model, so gradients reach the projector (and LoRA), not the table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from cprec_recbole.llm.batching import EncodedBatch


class Projector(nn.Module):
    """Linear(in_dim -> d) GELU Linear(d -> d), as in LLaRA."""

    def __init__(self, in_dim: int, hidden_size: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, item_embeddings: Tensor) -> Tensor:
        return self.net(item_embeddings)


def inject(
    inputs_embeds: Tensor,
    batch: EncodedBatch,
    item_embeddings: Tensor,
    projector: nn.Module,
) -> Tensor:
    """Replace the placeholder positions with projected item embeddings.

    One gather, one projector call, one out-of-place ``index_put``: the embedding layer's output
    is left untouched (autograd may still need it).
    """
    if batch.slot_rows.numel() == 0:
        return inputs_embeds
    dtype = next(projector.parameters()).dtype
    rows = item_embeddings[batch.slot_items.to(item_embeddings.device)]
    values = projector(rows.to(device=inputs_embeds.device, dtype=dtype))
    index = (batch.slot_rows.to(inputs_embeds.device), batch.slot_cols.to(inputs_embeds.device))
    return inputs_embeds.index_put(index, values.to(inputs_embeds.dtype))


def embed_batch(
    model: nn.Module,
    batch: EncodedBatch,
    item_embeddings: Tensor | None = None,
    projector: nn.Module | None = None,
) -> Tensor:
    """Input embeddings of a batch with its item slots filled; text-only batches pass through.

    A batch with slots but no projector is a configuration error (a hybrid template on a
    text-only model), so it raises instead of silently feeding the placeholder embeddings.
    """
    embeds = model.get_input_embeddings()(batch.input_ids)
    if batch.slot_rows.numel() == 0:
        return embeds
    if projector is None or item_embeddings is None:
        raise ValueError(
            "the prompt template has item placeholders but the model has no projector/item "
            "embeddings; use a text-only template (e.g. llara_text) for text-only models"
        )
    return inject(embeds, batch, item_embeddings, projector)


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (inputs are moved there)."""
    return next(model.parameters()).device
