"""MoRec: SASRec whose item representations come from the items' text instead of ID embeddings.

Reference:
    Yuan et al. "Where to Go Next for Recommender Systems? ID- vs. Modality-based Recommender
    Models Revisited." In SIGIR 2023.

Two settings, by ``text_encoder_trainable_layers``:

- ``0`` (the CPU default): the encoder (all-MiniLM-L6-v2) stays frozen, its item vectors are the
  cached ``item_text`` stage, and only a projection into SASRec's hidden size trains (an MLP, as
  MoRec's dimension-transformation layer); the paper reports it as the cheaper variant.
- ``N > 0`` (end to end, for GPU users): every training step encodes all items' titles with the
  encoder, whose top N transformer blocks train with the recommender; the paper finds fine-tuning
  the top blocks as good as the whole encoder at a fraction of the memory. The frozen blocks keep
  no activations for backward.

Items are scored by the same dot product as SASRec, so the same candidates apply.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from recbole.config import Config
from recbole.data.dataset import Dataset
from recbole.model.sequential_recommender.sasrec import SASRec
from torch import nn

from cprec_recbole.config import PROPERTIES
from cprec_recbole.data.prepare import read_items
from cprec_recbole.errors import ConfigError
from cprec_recbole.text_encoder import TEXT_KEYS, dataset_text, sentence_vectors, tokenize

#: A transformer block's parameters: ``encoder.layer.3.attention...`` (BERT, RoBERTa, MiniLM),
#: ``transformer.layer.3.`` (DistilBERT), ``layers.3.`` (most decoders).
BLOCK = re.compile(r"(?:^|\.)layers?\.(\d+)\.")


def projection(text_dim: int, hidden: int, dropout: float) -> nn.Module:
    """MoRec's dimension-transformation layer: text vector -> SASRec's hidden size."""
    return nn.Sequential(
        nn.Linear(text_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden)
    )


class TextItemEmbedding(nn.Module):
    """Stands in for ``nn.Embedding``: ``weight`` is every item's projected text vector (SASRec
    scores candidates with ``item_embedding.weight``), ``forward(ids)`` looks rows up."""

    def __init__(self, text: np.ndarray, hidden: int, dropout: float) -> None:
        super().__init__()
        self.register_buffer("text", torch.from_numpy(text))
        self.project = projection(text.shape[1], hidden, dropout)

    @property
    def weight(self) -> torch.Tensor:
        return self.project(self.text)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.project(self.text[ids])


def train_top_blocks(encoder: nn.Module, count: int) -> int:
    """Freeze ``encoder`` except its last ``count`` transformer blocks; returns how many it has."""
    blocks = sorted(
        {int(m.group(1)) for name, _ in encoder.named_parameters() if (m := BLOCK.search(name))}
    )
    if not 0 < count <= len(blocks):
        raise ConfigError(
            f"text_encoder_trainable_layers: {count}, but the text encoder has {len(blocks)} "
            "transformer blocks (found by parameter names like 'layer.3.'); use 1 to "
            f"{len(blocks)}, or 0 for the frozen encoder"
        )
    top = set(blocks[-count:])
    for name, param in encoder.named_parameters():
        match = BLOCK.search(name)
        param.requires_grad = bool(match) and int(match.group(1)) in top
    return len(blocks)


class EncoderItemEmbedding(nn.Module):
    """Item vectors from the text encoder itself, recomputed whenever asked, in chunks of
    ``chunk`` titles each cut to its longest row. ``shared_table`` computes the table once for
    a loss or scoring call, in which SASRec reads it twice (history rows and all items)."""

    def __init__(self, encoder, enc: dict, hidden: int, dropout: float, chunk: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("input_ids", enc["input_ids"])
        self.register_buffer("attention_mask", enc["attention_mask"])
        self.project = projection(encoder.config.hidden_size, hidden, dropout)
        self.chunk = chunk
        self._table: torch.Tensor | None = None

    def _encode(self) -> torch.Tensor:
        parts = []
        for start in range(0, len(self.input_ids), self.chunk):
            mask = self.attention_mask[start : start + self.chunk]
            width = int(mask.sum(1).max())
            enc = {"input_ids": self.input_ids[start : start + self.chunk, :width]}
            parts.append(sentence_vectors(self.encoder, {**enc, "attention_mask": mask[:, :width]}))
        return self.project(torch.cat(parts))

    @contextmanager
    def shared_table(self) -> Iterator[None]:
        self._table = self._encode()
        try:
            yield
        finally:
            self._table = None

    @property
    def weight(self) -> torch.Tensor:
        return self._encode() if self._table is None else self._table

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids]


def encoder_embedding(config: Config, dataset: Dataset, hidden: int) -> EncoderItemEmbedding:
    """The end-to-end item embedding: the configured text encoder (through the plugins named in
    the config), its top blocks trainable, over the titles of the data stage (the parent of
    RecBole's ``data_path``, which RecBole joins with the dataset name) in RecBole's internal item
    order; padding and unknown items get ""."""
    from cprec_recbole.plugins import load_plugins

    text_config = {k: config[k] for k in TEXT_KEYS}
    encoder, tokenizer = load_plugins(config["plugins"]).text_encoders.get(config["text_encoder"])(
        text_config
    )
    train_top_blocks(encoder, int(config["text_encoder_trainable_layers"]))
    items = read_items(Path(config["data_path"]).parent)
    titles = dict(zip(items["item_id"], items["title"], strict=True))
    tokens = dataset.field2id_token[dataset.iid_field]
    enc = tokenize(tokenizer, [titles.get(t, "") for t in tokens], int(config["text_max_tokens"]))
    return EncoderItemEmbedding(
        encoder.train(), enc, hidden, config["projection_dropout"], config["text_encoder_chunk"]
    )


class MoRec(SASRec):
    """SASRec over text-encoder item vectors: frozen with a trained projection, or end to end."""

    properties = PROPERTIES / "text_encoder.yaml"
    pipeline = ("data", "item_text", "rec_model")  # the item_text stage's folder joins the config

    def __init__(self, config: Config, dataset: Dataset) -> None:
        super().__init__(config, dataset)
        self.encoder_learning_rate = float(config["text_encoder_learning_rate"])
        if config["text_encoder_trainable_layers"]:
            self.item_embedding = encoder_embedding(config, dataset, self.hidden_size)
        else:
            self.item_embedding = TextItemEmbedding(
                dataset_text(config, dataset), self.hidden_size, config["projection_dropout"]
            )
        self.item_embedding.project.apply(self._init_weights)

    @staticmethod
    def item_table(state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Every item's vector as MoRec scores it (no dropout), from a frozen-encoder checkpoint:
        what a hybrid prompt reads when ``embedding_model`` is MoRec."""
        if "item_embedding.text" not in state:
            raise ConfigError(
                "MoRec trained end to end (text_encoder_trainable_layers > 0) keeps no item "
                "vectors in its checkpoint; hybrid prompts read the frozen-encoder MoRec: "
                "rec_model_overrides: {text_encoder_trainable_layers: 0}"
            )
        text = state["item_embedding.text"]
        prefix = "item_embedding.project."
        project = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        table = TextItemEmbedding(text.numpy(), project["3.weight"].shape[0], dropout=0.0)
        table.project.load_state_dict(project)
        with torch.no_grad():
            return table.eval().weight

    def parameter_groups(self, learning_rate: float) -> list[dict]:
        """The trainable encoder blocks at ``text_encoder_learning_rate``, the rest at the
        recommender's rate: fine-tuned at 1e-3, one MiniLM block maps every title to nearly the
        same vector within a few epochs on a toy (test HR@1 0.0 to 0.68 by seed), as pretrained
        encoders are fine-tuned at ~1e-4 elsewhere (MoRec, BERT)."""
        encoder = getattr(self.item_embedding, "encoder", None)
        if encoder is None:
            return [{"params": list(self.parameters())}]
        ids = {id(p) for p in encoder.parameters()}
        rest = [p for p in self.parameters() if id(p) not in ids]
        blocks = [p for p in encoder.parameters() if p.requires_grad]
        return [{"params": rest}, {"params": blocks, "lr": self.encoder_learning_rate}]

    def _one_table(self):
        embedding = self.item_embedding
        return embedding.shared_table() if hasattr(embedding, "shared_table") else nullcontext()

    def calculate_loss(self, interaction):
        with self._one_table():
            return super().calculate_loss(interaction)

    def predict(self, interaction):
        with self._one_table():
            return super().predict(interaction)

    def full_sort_predict(self, interaction):
        with self._one_table():
            return super().full_sort_predict(interaction)
