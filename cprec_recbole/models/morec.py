"""MoRec: SASRec whose item representations come from the items' text instead of ID embeddings.

Reference:
    Yuan et al. "Where to Go Next for Recommender Systems? ID- vs. Modality-based Recommender
    Models Revisited." In SIGIR 2023.

The paper fine-tunes the text encoder end to end; on a CPU we keep all-MiniLM-L6-v2 frozen (its
item vectors are the cached ``item_text`` stage) and train a projection into SASRec's hidden size
(an MLP, as MoRec's dimension-transformation layer), which the paper reports as the cheaper
variant. Items are scored by the same dot product as SASRec, so the same candidates apply.
"""

from __future__ import annotations

import numpy as np
import torch
from recbole.config import Config
from recbole.data.dataset import Dataset
from recbole.model.sequential_recommender.sasrec import SASRec
from torch import nn

from cprec_recbole.config import PROPERTIES
from cprec_recbole.text_encoder import dataset_text


class TextItemEmbedding(nn.Module):
    """Stands in for ``nn.Embedding``: ``weight`` is every item's projected text vector (SASRec
    scores candidates with ``item_embedding.weight``), ``forward(ids)`` looks rows up."""

    def __init__(self, text: np.ndarray, hidden: int, dropout: float) -> None:
        super().__init__()
        self.register_buffer("text", torch.from_numpy(text))
        self.project = nn.Sequential(
            nn.Linear(text.shape[1], hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
        )

    @property
    def weight(self) -> torch.Tensor:
        return self.project(self.text)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.project(self.text[ids])


class MoRec(SASRec):
    """SASRec over frozen text-encoder item vectors and a trained projection."""

    properties = PROPERTIES / "text_encoder.yaml"
    reads_item_text = True  # the ID pipeline runs the item_text stage and passes its folder

    def __init__(self, config: Config, dataset: Dataset) -> None:
        super().__init__(config, dataset)
        self.item_embedding = TextItemEmbedding(
            dataset_text(config, dataset), self.hidden_size, config["projection_dropout"]
        )
        self.item_embedding.project.apply(self._init_weights)
