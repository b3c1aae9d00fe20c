"""Fixed candidate sets: 1 positive + N negatives per user, drawn once, persisted, shared by all models.

RecBole's ``uni19`` for sequential models may draw the user's own history as negatives and redraws
at every evaluation; ours exclude every item the user ever interacted with and are read from disk.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from cprec_recbole.errors import DataError
from cprec_recbole.io import write_atomic


def unique_per_row(draws: np.ndarray) -> np.ndarray:
    """Mask of first occurrences within each row."""
    order = np.argsort(draws, axis=1, kind="stable")
    ranked = np.take_along_axis(draws, order, axis=1)
    first = np.ones_like(draws, dtype=bool)
    first_sorted = np.concatenate(
        [np.ones((len(draws), 1), dtype=bool), ranked[:, 1:] != ranked[:, :-1]], axis=1
    )
    np.put_along_axis(first, order, first_sorted, axis=1)
    return first


def uniform_negatives(
    inter: pd.DataFrame, users: np.ndarray, num_negatives: int, rng: np.random.Generator
) -> np.ndarray:
    """Item ids drawn uniformly, without replacement, from the items each user never touched."""
    items = np.sort(inter["item_id"].unique())
    n_items = len(items)
    user_codes = pd.Index(np.sort(inter["user_id"].unique())).get_indexer(users)
    if (user_codes < 0).any():
        raise DataError("candidate sampling asked for users that have no interactions")
    seen = np.unique(
        pd.Index(np.sort(inter["user_id"].unique())).get_indexer(inter["user_id"]).astype(np.int64)
        * n_items
        + np.searchsorted(items, inter["item_id"].to_numpy())
    )
    seen_per_user = np.bincount(seen // n_items, minlength=user_codes.max() + 1)[user_codes]
    short = seen_per_user > n_items - num_negatives
    if short.any():
        raise DataError(
            f"user {users[short][0]!r} has interacted with {seen_per_user[short][0]} of "
            f"{n_items} items, leaving fewer than {num_negatives} negatives to draw"
        )
    out = np.full((len(users), num_negatives), -1, dtype=np.int64)
    todo = np.arange(len(users))
    while len(todo):
        draws = rng.integers(0, n_items, size=(len(todo), 2 * num_negatives + 8))
        keys = user_codes[todo, None].astype(np.int64) * n_items + draws
        ok = ~np.isin(keys, seen) & unique_per_row(draws)
        enough = ok.sum(axis=1) >= num_negatives
        rows = todo[enough]
        picked = np.argsort(~ok[enough], axis=1, kind="stable")[:, :num_negatives]
        out[rows] = np.take_along_axis(draws[enough], picked, axis=1)
        todo = todo[~enough]
    return items[out]


def draw_candidate_sets(
    inter: pd.DataFrame,
    rows: pd.DataFrame,
    num_negatives: int,
    seed: int,
    sampler=uniform_negatives,
) -> pd.DataFrame:
    """Add a ``candidates`` column: the target and its negatives in a seeded shuffled order."""
    rng = np.random.default_rng(seed)
    negatives = sampler(inter, rows["user_id"].to_numpy(), num_negatives, rng)
    pool = np.concatenate([rows["target"].to_numpy()[:, None], negatives], axis=1)
    order = np.argsort(rng.random(pool.shape), axis=1)
    shuffled = np.take_along_axis(pool, order, axis=1)
    return rows.assign(candidates=list(shuffled))


def save_candidate_sets(path: Path, rows: pd.DataFrame) -> Path:
    """Write ``user_id, target, candidates`` (space-separated ids) as TSV, atomically."""
    table = pd.DataFrame(
        {
            "user_id": rows["user_id"],
            "target": rows["target"],
            "candidates": [" ".join(c) for c in rows["candidates"]],
        }
    )
    return write_atomic(
        path,
        lambda tmp: table.to_csv(tmp, sep="\t", index=False, quoting=csv.QUOTE_NONE),
    )


def load_candidate_sets(path: Path) -> pd.DataFrame:
    """Read a persisted candidate file; candidates come back as arrays of item ids."""
    table = pd.read_csv(path, sep="\t", dtype=str, quoting=csv.QUOTE_NONE, keep_default_na=False)
    return table.assign(candidates=table["candidates"].str.split(" ").map(np.array))
