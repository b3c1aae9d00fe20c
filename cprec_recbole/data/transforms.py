"""Protocol transforms: pure, vectorised functions over interaction frames.

Frames have columns ``user_id, item_id, timestamp`` and are ordered by user, then time (stable),
which is the chronological order every split below relies on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cprec_recbole.errors import DataError


def k_core(inter: pd.DataFrame, k: int, name: str = "dataset") -> pd.DataFrame:
    """Keep users and items with at least ``k`` interactions, iterated until both hold."""
    while True:
        user_ok = inter.groupby("user_id")["item_id"].transform("size") >= k
        item_ok = inter.groupby("item_id")["user_id"].transform("size") >= k
        keep = user_ok & item_ok
        if keep.all():
            break
        inter = inter[keep]
    if inter.empty:
        raise DataError(
            f"{name}: no interactions left after the {k}-core filter; lower k_core, "
            "raise user_sample_num/user_sample_ratio, or use a larger dataset"
        )
    return inter.reset_index(drop=True)


def sample_users(
    inter: pd.DataFrame,
    num: int | None = None,
    ratio: float | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Keep a seeded uniform sample of users (by count or ratio); deterministic for a seed."""
    if num is None and ratio is None:
        return inter
    users = np.sort(inter["user_id"].unique())
    size = int(num) if num is not None else round(float(ratio) * len(users))
    if size >= len(users):
        return inter
    chosen = np.random.default_rng(seed).choice(users, size=size, replace=False)
    return inter[inter["user_id"].isin(chosen)].reset_index(drop=True)


def user_sequences(inter: pd.DataFrame) -> pd.Series:
    """User -> chronological item array (the frame is already chronological)."""
    return inter.groupby("user_id", sort=True)["item_id"].agg(lambda s: s.to_numpy())


def leave_one_out(sequences: pd.Series, split: str, history_len: int) -> pd.DataFrame:
    """One row per user: the last ``history_len`` items before the target.

    ``test`` targets the last item, ``valid`` the penultimate; training uses the rest.
    """
    offset = {"valid": 2, "test": 1}[split]
    rows = sequences[sequences.map(len) > offset]
    targets = rows.map(lambda s: s[-offset])
    histories = rows.map(lambda s: s[:-offset][-history_len:])
    return pd.DataFrame(
        {"user_id": rows.index, "history": histories.to_numpy(), "target": targets.to_numpy()}
    )
