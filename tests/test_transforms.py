"""Protocol transforms: k-core, user sampling, leave-one-out, and training windows beside it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cprec_recbole.data.transforms import k_core, leave_one_out, sample_users, user_sequences
from cprec_recbole.data.windows import sliding_windows


def frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_k_core_iterates_until_users_and_items_both_hold():
    # i9 has 3 users; dropping rare item x from u3 leaves u3 with 2 items -> u3 goes,
    # which drops i9 to 2 users -> i9 goes too.
    rows = [("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u1", "i9", 4)]
    rows += [("u2", "a", 1), ("u2", "b", 2), ("u2", "c", 3), ("u2", "i9", 4)]
    rows += [("u4", "a", 1), ("u4", "b", 2), ("u4", "c", 3)]
    rows += [("u3", "x", 1), ("u3", "i9", 2), ("u3", "c", 3)]
    out = k_core(frame(rows), 3)
    assert set(out["user_id"]) == {"u1", "u2", "u4"}
    assert set(out["item_id"]) == {"a", "b", "c"}
    assert (out.groupby("user_id").size() >= 3).all() and (out.groupby("item_id").size() >= 3).all()


def test_user_sampling_is_deterministic_for_a_seed_and_differs_across_seeds():
    inter = frame([(f"u{u}", f"i{t}", t) for u in range(100) for t in range(3)])
    a = sample_users(inter, num=10, seed=1)
    b = sample_users(inter, num=10, seed=1)
    c = sample_users(inter, num=10, seed=2)
    assert a.equals(b) and a["user_id"].nunique() == 10
    assert set(a["user_id"]) != set(c["user_id"])
    assert sample_users(inter, ratio=0.25, seed=1)["user_id"].nunique() == 25


def test_leave_one_out_holds_out_last_for_test_and_penultimate_for_valid():
    inter = frame([("u1", f"i{t}", t) for t in range(15)])
    sequences = user_sequences(inter)
    test = leave_one_out(sequences, "test", history_len=10).iloc[0]
    valid = leave_one_out(sequences, "valid", history_len=10).iloc[0]
    assert test["target"] == "i14" and list(test["history"]) == [f"i{t}" for t in range(4, 14)]
    assert valid["target"] == "i13" and list(valid["history"]) == [f"i{t}" for t in range(3, 13)]
    assert isinstance(test["history"], np.ndarray)


def test_training_windows_never_target_or_show_a_valid_or_test_item():
    """``drop_last=2``, as SFT cuts its windows, keeps what leave-one-out holds out unseen."""
    sequences = pd.Series(
        {f"u{n}": np.array([f"u{n}@{t}" for t in range(n)], dtype=object) for n in range(1, 9)}
    )
    windows = sliding_windows(sequences, history_len=3, min_history=1, drop_last=2)
    held_out = {
        target
        for split in ("valid", "test")
        for target in leave_one_out(sequences, split, 3).target
    }
    assert len(held_out) == 7 + 6  # a test target from length 2 on, a valid one from length 3
    shown = set(windows["target"]) | {item for history in windows["history"] for item in history}
    assert not shown & held_out
    # Every other position with a history is a training target, once.
    assert windows["target"].tolist() == [f"u{n}@{t}" for n in range(4, 9) for t in range(1, n - 2)]
