"""Training windows: (history, target) pairs cut from chronological sequences, vectorised.

Used for LLM fine-tuning samples (LLaRA) and for the CPT corpus (CPRec): for each position t of
a sequence, the history is the previous ``history_len`` items and the target is item t.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PAD = -1


def window_matrix(
    lengths: np.ndarray,
    flat_codes: np.ndarray,
    history_len: int,
    min_history: int = 3,
    drop_last: int = 0,
    stride: int = 1,
    last: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every window of the sequences laid end to end in ``flat_codes`` (``lengths`` each).

    Returns ``(sequence_index [n], history [n, history_len], target [n])``; histories are
    left-padded with -1 so the most recent item is always the last column. A target position
    needs ``min_history`` earlier items; ``drop_last`` keeps each sequence's last items out;
    ``stride`` keeps every stride-th target position, counted from the (shortened) end;
    ``last`` keeps only the target positions among the last ``last`` of the shortened sequence.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    flat_codes = np.asarray(flat_codes)
    starts = np.cumsum(lengths) - lengths
    usable = np.clip(lengths - drop_last, 0, None)
    sequence = np.repeat(np.arange(len(lengths)), usable)
    position = np.arange(usable.sum()) - np.repeat(np.cumsum(usable) - usable, usable)
    from_end = usable[sequence] - 1 - position
    keep = (position >= min_history) & (from_end % stride == 0)
    if last is not None:
        keep &= from_end < last
    sequence, position = sequence[keep], position[keep]
    at = starts[sequence] + position
    offsets = np.arange(-history_len, 0)
    valid = offsets[None, :] >= -position[:, None]
    gathered = flat_codes[np.where(valid, at[:, None] + offsets[None, :], 0)]
    history = np.where(valid, gathered, np.asarray(PAD, dtype=flat_codes.dtype))
    return sequence, history, flat_codes[at]


def sliding_windows(
    sequences: pd.Series,
    history_len: int,
    min_history: int = 3,
    drop_last: int = 0,
    stride: int = 1,
    last: int | None = None,
) -> pd.DataFrame:
    """One row per (user, target position) with at least ``min_history`` earlier items.

    ``drop_last`` keeps the last items of each sequence out (2 = the valid and test targets);
    ``stride`` keeps every stride-th target position (counted from each sequence's end);
    ``last`` only targets among the last ``last`` positions left (the items a model held out).
    """
    lengths = sequences.map(len).to_numpy()
    flat = np.concatenate([np.asarray(s) for s in sequences] or [np.array([])])
    # Windows over positions into ``flat``, so ids of any type come back unchanged.
    sequence, history, target = window_matrix(
        lengths, np.arange(len(flat)), history_len, min_history, drop_last, stride, last
    )
    histories = [flat[row[row != PAD]] for row in history]
    return pd.DataFrame(
        {
            "user_id": sequences.index.to_numpy()[sequence],
            "history": histories,
            "target": flat[target],
        }
    )
