"""TedRec: text and ID representations fused at sequence level, in the frequency domain.

Reference:
    Xu et al. "Sequence-level Semantic Representation Fusion for Recommender Systems." In
    CIKM 2024.

Item-level fusion (adding a text vector to each ID embedding) mixes the two only position by
position. TedRec turns the sequence of ID embeddings and the sequence of adapted text vectors
into the frequency domain (rFFT along positions) and multiplies them: a circular convolution of
the two sequences, so every position sees the other modality's whole context. A learnable filter
over the ID spectrum and two sigmoid gates weigh the ID-only and the fused sequences. Text
vectors pass a mixture-of-experts adapter (per-position whitening bias, linear projection,
softmax gate with noise in training); scores are cosine similarities over a temperature. Text
vectors are the frozen ``item_text`` stage (all-MiniLM-L6-v2 here; the paper uses BERT).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.config import Config
from recbole.data.dataset import Dataset
from recbole.model.sequential_recommender.sasrec import SASRec
from torch import nn

from cprec_recbole.config import PROPERTIES
from cprec_recbole.text_encoder import dataset_text


def circular_mix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Product of the two sequences' spectra along positions (dim 1), back in positions: their
    circular convolution over L positions divided by sqrt(L) (orthonormal FFTs)."""
    length = a.shape[1]
    spectrum = torch.fft.rfft(a, dim=1, norm="ortho") * torch.fft.rfft(b, dim=1, norm="ortho")
    return torch.fft.irfft(spectrum, n=length, dim=1, norm="ortho")


class TextAdapter(nn.Module):
    """Mixture of experts over text vectors ``[B, L, D] -> [B, L, H]``: expert ``e`` computes
    ``W_e (dropout(x) - b_e[position])``; gates are a softmax of ``x G`` (plus learned-scale
    noise while training, which spreads the load over experts)."""

    def __init__(self, experts: int, dims: tuple[int, int], dropout: float, length: int) -> None:
        super().__init__()
        text_dim, hidden = dims
        self.dropout = nn.Dropout(dropout)
        self.bias = nn.Parameter(torch.zeros(experts, length, text_dim))
        self.project = nn.Parameter(torch.randn(experts, text_dim, hidden) * 0.02)
        self.gate = nn.Parameter(torch.zeros(text_dim, experts))
        self.noise = nn.Parameter(torch.zeros(text_dim, experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = x @ self.gate
        if self.training:
            scale = F.softplus(x @ self.noise) + 1e-2
            logits = logits + torch.randn_like(logits) * scale
        gates = logits.softmax(dim=-1)  # [B, L, E]
        length = x.shape[1]
        centred = self.dropout(x).unsqueeze(2) - self.bias[:, :length].transpose(0, 1)  # [B,L,E,D]
        experts = torch.einsum("bled,edh->bleh", centred, self.project)
        return (gates.unsqueeze(-1) * experts).sum(dim=2)


class TedRec(SASRec):
    """SASRec whose input is the frequency-domain fusion of ID and text sequences."""

    properties = PROPERTIES / "text_encoder.yaml"
    pipeline = ("data", "item_text", "rec_model")  # the item_text stage's folder joins the config

    def __init__(self, config: Config, dataset: Dataset) -> None:
        super().__init__(config, dataset)
        if self.loss_type != "CE":
            raise ValueError("TedRec trains with loss_type CE over cosine scores")
        self.register_buffer("text", torch.from_numpy(dataset_text(config, dataset)))
        self.temperature = float(config["temperature"])
        self.adapter = TextAdapter(
            int(config["n_exps"]),
            (self.text.shape[1], self.hidden_size),
            float(config["adaptor_dropout_prob"]),
            self.max_seq_length,
        )
        bins = self.max_seq_length // 2 + 1
        self.id_filter = nn.Parameter(torch.randn(1, bins, self.hidden_size, 2) * 0.02)
        self.id_gate = nn.Linear(self.hidden_size, 1)
        self.fusion_gate = nn.Linear(self.hidden_size, 1)
        for gate in (self.id_gate, self.fusion_gate):
            nn.init.normal_(gate.weight, std=0.02)
            nn.init.zeros_(gate.bias)

    def fuse(self, ids: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Sequence-level fusion of ``[B, L, H]`` ID and text sequences (circular convolution
        through the spectrum), gated against the filtered ID sequence."""
        length = ids.shape[1]
        id_spectrum = torch.fft.rfft(ids, dim=1, norm="ortho")
        id_only = torch.fft.irfft(
            id_spectrum * torch.view_as_complex(self.id_filter), n=length, dim=1, norm="ortho"
        )
        fused = circular_mix(ids, text)
        return 2 * (
            id_only * torch.sigmoid(self.id_gate(id_only))
            + fused * torch.sigmoid(self.fusion_gate(fused))
        )

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(item_seq.size(1), device=item_seq.device).expand_as(item_seq)
        fused = self.fuse(self.item_embedding(item_seq), self.adapter(self.text[item_seq]))
        hidden = self.dropout(self.LayerNorm(fused + self.position_embedding(positions)))
        mask = self.get_attention_mask(item_seq)
        output = self.trm_encoder(hidden, mask, output_all_encoded_layers=True)[-1]
        return self.gather_indexes(output, item_seq_len - 1)

    def _cosine(self, interaction) -> torch.Tensor:
        seq = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return F.normalize(seq, dim=-1) @ F.normalize(self.item_embedding.weight, dim=-1).T

    def calculate_loss(self, interaction) -> torch.Tensor:
        logits = self._cosine(interaction) / self.temperature
        return self.loss_fct(logits, interaction[self.POS_ITEM_ID])

    def full_sort_predict(self, interaction) -> torch.Tensor:
        return self._cosine(interaction)
