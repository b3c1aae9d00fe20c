"""Candidate-set metrics shared by every model, ID or LLM.

Every model produces, per user, the 0-based rank of the positive among its candidates, or -1 when
its answer named no candidate (an LLM's invalid answer counts as a miss everywhere).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import pairwise

import numpy as np
import pandas as pd

INVALID = -1
UNRANKED = 1_000_000  # the positive was not among the ranked picks (e.g. iterative generation)


def check_scores(scores: np.ndarray, users: Sequence | None = None) -> None:
    """Refuse NaN scores: every comparison with NaN is false, so a NaN positive would rank as an
    invalid answer and NaN negatives below any positive, and the metrics would look plausible."""
    nan_rows = np.isnan(scores).any(axis=1)
    if nan_rows.any():
        first = int(nan_rows.argmax())
        who = f"user {users[first]!r}" if users is not None else f"row {first}"
        raise ValueError(
            f"{int(nan_rows.sum())} of {len(scores)} users scored together have NaN candidate "
            f"scores (first: {who}); NaN cannot be ranked, so no metric is reported. The model "
            "has likely diverged (check its training loss) or its checkpoint is broken."
        )


def ranks_from_scores(
    scores: np.ndarray, target_index: np.ndarray, users: Sequence | None = None
) -> np.ndarray:
    """Rank of the positive among each row's scores; ties count against it (pessimistic).

    NaN scores raise (:func:`check_scores`, which names the first of ``users`` with one)."""
    check_scores(scores, users)
    positive = np.take_along_axis(scores, target_index[:, None], axis=1)
    ahead = (scores >= positive).sum(axis=1) - 1
    return ahead.astype(np.int64)


def first_pick_positions(
    candidates: Sequence[Sequence[str]], picks: Sequence[Sequence[str]]
) -> np.ndarray:
    """Per user, the candidate-list position of the model's first pick, ``INVALID`` where it
    picked none: what the diagnostics compare with another model's first pick."""
    orders = pick_orders(candidates, [p[:1] for p in picks])
    return np.array([o[0] if o else INVALID for o in orders], dtype=np.int64)


def orders_column(orders: Iterable[Sequence[int]]) -> list[str]:
    """Each user's candidate positions in the model's order, best first, as ``test_ranks.tsv``'s
    ``order`` column writes them (``"8 3 17 ..."``; a generating model lists only its picks):
    what :mod:`cprec_recbole.fusion` combines across models."""
    return [" ".join(str(int(i)) for i in order) for order in orders]


def pick_orders(
    candidates: Sequence[Sequence[str]], picks: Sequence[Sequence[str]]
) -> list[list[int]]:
    """Per user, the candidate-list positions of the model's picks, in pick order."""
    return [[list(c).index(p) for p in ps] for c, ps in zip(candidates, picks, strict=True)]


def rank_metrics(ranks: np.ndarray, ks: tuple[int, ...] = (1, 3, 5)) -> dict[str, float]:
    """HR@k and NDCG@k (k > 1) over all users; invalid answers are misses."""
    ranks = np.asarray(ranks)
    valid = ranks != INVALID
    out: dict[str, float] = {}
    for k in ks:
        hit = valid & (ranks < k)
        out[f"hr@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        if k > 1:
            gain = np.where(hit, 1.0 / np.log2(np.where(valid, ranks, 0) + 2.0), 0.0)
            out[f"ndcg@{k}"] = float(gain.mean()) if len(ranks) else 0.0
    return out


def sparsity_bucket(history_len: np.ndarray, edges: list[int]) -> np.ndarray:
    """Label each user by history length: ``[a,b)`` for consecutive edges, ``[last,..)`` at the end."""
    labels = [f"[{a},{b})" for a, b in pairwise(edges)] + [f"[{edges[-1]},..)"]
    index = np.searchsorted(np.asarray(edges), history_len, side="right") - 1
    return np.where(index >= 0, np.asarray(labels)[np.clip(index, 0, None)], f"<{edges[0]}")


def evaluate_ranks(
    ranks: np.ndarray,
    history_len: np.ndarray,
    edges: list[int],
    valid: np.ndarray | None = None,
    ks: tuple[int, ...] = (1, 3, 5),
) -> dict[str, float]:
    """All metrics, overall and per sparsity bucket.

    ``valid`` marks answers naming exactly one candidate (LLM ``generate``); ``hr@1_of_valid`` is
    LLaRA's correct / valid, reported beside ``hr@1`` = correct / all.
    """
    ranks = np.asarray(ranks)
    valid = np.ones(len(ranks), dtype=bool) if valid is None else np.asarray(valid)
    out = rank_metrics(ranks, ks)
    out["valid_ratio"] = float(valid.mean()) if len(ranks) else 0.0
    correct = (ranks == 0).sum()
    out["hr@1_of_valid"] = float(correct / valid.sum()) if valid.any() else 0.0
    out["users"] = len(ranks)
    buckets = pd.Series(sparsity_bucket(np.asarray(history_len), edges))
    for label, index in buckets.groupby(buckets).groups.items():
        part = rank_metrics(ranks[np.asarray(index)], (1,))
        out[f"hr@1{label}"] = part["hr@1"]
        out[f"users{label}"] = len(index)
    return out
