"""RecBole's Trainer, scoring our persisted candidate sets instead of RecBole's own evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from recbole.data.interaction import Interaction
from recbole.trainer import Trainer
from tqdm import tqdm

from cprec_recbole.compat import load_checkpoint, tensorboard_under
from cprec_recbole.evaluation import evaluate_ranks, ranks_from_scores
from cprec_recbole.io import write_atomic


@dataclass
class CandidateEvalData:
    """One split's users as RecBole tensors: padded histories, their lengths, candidate ids."""

    user_ids: np.ndarray
    item_seq: torch.Tensor
    item_seq_len: torch.Tensor
    candidates: torch.Tensor
    target_index: np.ndarray

    def __len__(self) -> int:
        return len(self.user_ids)

    @classmethod
    def build(cls, rows: pd.DataFrame, dataset, max_len: int) -> CandidateEvalData:
        """Map raw ids of ``rows`` (from ``PreparedData.eval_rows``) to RecBole's internal ids."""
        field = dataset.iid_field
        histories = [dataset.token2id(field, list(h[-max_len:])) for h in rows["history"]]
        lengths = np.array([len(h) for h in histories])
        seq = np.zeros((len(rows), max_len), dtype=np.int64)
        mask = np.arange(max_len)[None, :] < lengths[:, None]
        seq[mask] = np.concatenate(histories)
        candidates = np.stack([dataset.token2id(field, list(c)) for c in rows["candidates"]])
        target = np.stack(rows["candidates"].to_numpy()) == rows["target"].to_numpy()[:, None]
        return cls(
            rows["user_id"].to_numpy(),
            torch.from_numpy(seq),
            torch.from_numpy(lengths),
            torch.from_numpy(candidates.astype(np.int64)),
            target.argmax(axis=1),
        )


class CandidateTrainer(Trainer):
    """Fits like RecBole; validates on the fixed valid candidates (early stopping on ``hr@1``)."""

    def __init__(self, config, model, folder: Path, bucket_edges: list[int]):
        with tensorboard_under(folder / "tensorboard"):
            super().__init__(config, model)
        self.saved_model_file = str(folder / "model.pth")
        self.bucket_edges = bucket_edges
        self.last_ranks: np.ndarray | None = None
        self.last_top1: np.ndarray | None = None  # candidate position of each user's top score
        self.last_orders: np.ndarray | None = None  # candidate positions by score, best first

    def _build_optimizer(self, **kwargs):
        """RecBole's optimizer; a model with ``parameter_groups(learning_rate)`` (MoRec end to
        end: the text encoder at its own rate) gets torch's parameter groups."""
        groups = getattr(self.model, "parameter_groups", None)
        if groups is not None and "params" not in kwargs:
            kwargs["params"] = groups(kwargs.get("learning_rate", self.learning_rate))
        return super()._build_optimizer(**kwargs)

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """RecBole's checkpoint, written to a temp file and renamed (never half-written)."""
        target = kwargs.pop("saved_model_file", self.saved_model_file)
        write_atomic(
            target,
            lambda tmp: super(CandidateTrainer, self)._save_checkpoint(
                epoch, verbose=False, saved_model_file=str(tmp), **kwargs
            ),
        )

    @torch.no_grad()
    def scores(self, data: CandidateEvalData, show_progress: bool = False) -> np.ndarray:
        """Model scores of each user's candidates, ``[users, candidates]``."""
        self.model.eval()
        batch = int(self.config["eval_batch_size"])
        out = []
        starts = range(0, len(data), batch)
        for start in tqdm(starts, desc="evaluate", disable=not show_progress, ncols=80):
            part = slice(start, start + batch)
            interaction = Interaction(
                {
                    self.model.ITEM_SEQ: data.item_seq[part],
                    self.model.ITEM_SEQ_LEN: data.item_seq_len[part],
                }
            ).to(self.device)
            full = self.model.full_sort_predict(interaction).view(len(data.item_seq[part]), -1)
            out.append(torch.gather(full, 1, data.candidates[part].to(self.device)).cpu())
        return torch.cat(out).float().numpy()

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if load_best_model:
            checkpoint = load_checkpoint(model_file or self.saved_model_file, self.device)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(checkpoint.get("other_parameter"))
        scores = self.scores(eval_data, show_progress)
        ranks = ranks_from_scores(scores, eval_data.target_index, eval_data.user_ids)
        self.last_ranks = ranks
        self.last_top1 = scores.argmax(axis=1)
        self.last_orders = np.argsort(-scores, axis=1, kind="stable")
        return evaluate_ranks(ranks, eval_data.item_seq_len.numpy(), self.bucket_edges)
