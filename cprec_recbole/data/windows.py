"""Training windows: (history, target) pairs cut from chronological sequences, vectorised.

Used for LLM fine-tuning samples (LLaRA) and for the CPT corpus (CPRec): for each position t of
a sequence, the history is the previous ``history_len`` items and the target is item t.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def sliding_windows(
    sequences: pd.Series,
    history_len: int,
    min_history: int = 3,
    drop_last: int = 0,
    stride: int = 1,
) -> pd.DataFrame:
    """One row per (user, target position) with at least ``min_history`` earlier items.

    ``drop_last`` keeps the last items of each sequence out (2 = the valid and test targets);
    ``stride`` keeps every stride-th target position (counted from each sequence's end).
    """
    lengths = sequences.map(len).to_numpy() - drop_last
    users = np.repeat(sequences.index.to_numpy(), np.clip(lengths, 0, None))
    flat = np.concatenate([s[: max(n, 0)] for s, n in zip(sequences, lengths)] or [np.array([])])
    starts = np.repeat(np.cumsum(lengths.clip(0)) - lengths.clip(0), lengths.clip(0))
    position = np.arange(len(flat)) - starts
    from_end = np.repeat(lengths.clip(0), lengths.clip(0)) - 1 - position
    keep = (position >= min_history) & (from_end % stride == 0)
    targets = np.flatnonzero(keep)
    offsets = np.arange(-history_len, 0)
    index = targets[:, None] + offsets[None, :]
    valid = offsets[None, :] >= -position[targets][:, None]
    histories = [flat[row[mask]] for row, mask in zip(index, valid)]
    return pd.DataFrame({"user_id": users[targets], "history": histories, "target": flat[targets]})
