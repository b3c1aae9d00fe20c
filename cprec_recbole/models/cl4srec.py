"""CL4SRec: SASRec trained jointly with a contrastive loss between augmented views.

Reference:
    Xie et al. "Contrastive Learning for Sequential Recommendation." In ICDE 2022.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.config import Config
from recbole.data.dataset import Dataset
from recbole.data.interaction import Interaction
from recbole.model.sequential_recommender.sasrec import SASRec
from torch import nn

CROP, MASK, REORDER = 0, 1, 2


class MaskableItemEmbedding(nn.Embedding):
    """Item embedding whose id ``num_embeddings`` looks up an extra learnable mask vector.

    The mask vector is the (n_items+1)-th row of the lookup table, but it lives outside
    ``weight``: SASRec scores candidates with ``item_embedding.weight``, so keeping the
    mask row out of it means the inherited CE loss, ``predict`` and ``full_sort_predict``
    never score the mask token and still return ``n_items`` columns.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int = 0) -> None:
        super().__init__(num_embeddings, embedding_dim, padding_idx=padding_idx)
        self.mask_token_id = num_embeddings
        self.mask_vector = nn.Parameter(torch.zeros(embedding_dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        is_mask = ids == self.mask_token_id
        emb = super().forward(ids.masked_fill(is_mask, self.padding_idx))
        return torch.where(is_mask.unsqueeze(-1), self.mask_vector, emb)


class CL4SRec(SASRec):
    """SASRec whose next-item loss is regularised by InfoNCE between two augmented views."""

    def __init__(self, config: Config, dataset: Dataset) -> None:
        super().__init__(config, dataset)
        self.lmd: float = config["lmd"]
        self.tau: float = config["tau"]
        self.sim: str = config["sim"]
        self.eta: float = config["eta"]
        self.gamma: float = config["gamma"]
        self.beta: float = config["beta"]
        if self.sim not in ("dot", "cos"):
            raise NotImplementedError("Make sure 'sim' in ['dot', 'cos']!")

        # Masked items need their own token id (n_items); see MaskableItemEmbedding.
        self.mask_token_id: int = self.n_items
        self.item_embedding = MaskableItemEmbedding(self.n_items, self.hidden_size, padding_idx=0)
        self.item_embedding.apply(self._init_weights)
        nn.init.normal_(self.item_embedding.mask_vector, std=self.initializer_range)

    # ------------------------------------------------------------------ augmentations
    # All take the end-padded batch ``item_seq`` [B, L] and ``item_seq_len`` [B] and
    # return an augmented (seq, len) pair; padding stays 0 and stays at the end.

    def item_crop(
        self, item_seq: torch.Tensor, item_seq_len: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep a random contiguous window of ``max(1, floor(eta*len))`` items, moved to the front."""
        positions = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0)
        new_len = torch.clamp((self.eta * item_seq_len).floor().long(), min=1)
        start = (
            torch.rand_like(item_seq_len, dtype=torch.float) * (item_seq_len - new_len + 1)
        ).long()
        src = (start.unsqueeze(1) + positions).clamp(max=item_seq.size(1) - 1)
        cropped = item_seq.gather(1, src).masked_fill(positions >= new_len.unsqueeze(1), 0)
        return cropped, new_len

    def item_mask(
        self, item_seq: torch.Tensor, item_seq_len: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace ``floor(gamma*len)`` randomly chosen valid items by the mask token."""
        positions = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0)
        valid = positions < item_seq_len.unsqueeze(1)
        n_mask = (self.gamma * item_seq_len).floor().long()
        # Random ranks over the valid positions only (padding gets the largest keys).
        keys = torch.rand(item_seq.shape, device=item_seq.device).masked_fill(~valid, 2.0)
        ranks = keys.argsort(dim=1).argsort(dim=1)
        masked = item_seq.masked_fill(ranks < n_mask.unsqueeze(1), self.mask_token_id)
        return masked, item_seq_len

    def item_reorder(
        self, item_seq: torch.Tensor, item_seq_len: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Shuffle a random contiguous window of ``floor(beta*len)`` items in place."""
        positions = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0)
        win_len = (self.beta * item_seq_len).floor().long()
        start = (
            torch.rand_like(item_seq_len, dtype=torch.float) * (item_seq_len - win_len + 1)
        ).long()
        start, win_len = start.unsqueeze(1), win_len.unsqueeze(1)
        in_win = (positions >= start) & (positions < start + win_len)
        # Sort keys: a position outside the window keeps its own index; one inside gets a
        # random key in [start, start+win_len), so sorting shuffles only the window.
        noise = torch.rand(item_seq.shape, device=item_seq.device)
        keys = torch.where(in_win, start + noise * win_len, positions.float())
        perm = keys.argsort(dim=1, stable=True)
        return item_seq.gather(1, perm), item_seq_len

    def augment(
        self, item_seq: torch.Tensor, item_seq_len: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply to each sequence one of crop / mask / reorder, chosen uniformly at random."""
        choice = torch.randint(0, 3, item_seq_len.shape, device=item_seq.device)
        seq, seq_len = item_seq, item_seq_len
        for op, fn in (
            (CROP, self.item_crop),
            (MASK, self.item_mask),
            (REORDER, self.item_reorder),
        ):
            aug_seq, aug_len = fn(item_seq, item_seq_len)
            pick = choice == op
            seq = torch.where(pick.unsqueeze(1), aug_seq, seq)
            seq_len = torch.where(pick, aug_len, seq_len)
        return seq, seq_len

    # ------------------------------------------------------------------ losses

    def info_nce(self, z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
        """NT-Xent (SimCLR): each view's positive is its twin; the other 2B-2 views are negatives."""
        batch_size = z_i.size(0)
        z = torch.cat([z_i, z_j], dim=0)  # [2B, H]
        if self.sim == "cos":
            z = F.normalize(z, dim=-1)
        logits = z @ z.T / self.tau  # [2B, 2B]
        eye = torch.eye(2 * batch_size, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(eye, float("-inf"))
        idx = torch.arange(batch_size, device=z.device)
        labels = torch.cat([idx + batch_size, idx])
        return F.cross_entropy(logits, labels)

    def calculate_loss(self, interaction: Interaction) -> torch.Tensor:
        """SASRec's next-item loss plus ``lmd`` times InfoNCE between two random augmentations."""
        rec_loss = super().calculate_loss(interaction)
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        z_i = self.forward(*self.augment(item_seq, item_seq_len))
        z_j = self.forward(*self.augment(item_seq, item_seq_len))
        return rec_loss + self.lmd * self.info_nce(z_i, z_j)
