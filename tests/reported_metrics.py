"""Check a run's reported metrics against its per-user ranks, recomputed by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest


def hand_metrics(ranks_file: Path) -> dict[str, float]:
    """HR@k, NDCG@k and, given a ``valid`` column, valid_ratio and HR@1 of valid answers."""
    table = pd.read_csv(ranks_file, sep="\t")
    ranks = table["rank"].tolist()  # -1: invalid answer
    out: dict[str, float] = {"users": len(ranks)}
    for k in (1, 3, 5):
        out[f"hr@{k}"] = sum(0 <= r < k for r in ranks) / len(ranks)
    for k in (3, 5):
        out[f"ndcg@{k}"] = sum(1 / math.log2(r + 2) for r in ranks if 0 <= r < k) / len(ranks)
    if "valid" in table:
        valid = int(table["valid"].sum())
        out["valid_ratio"] = valid / len(ranks)
        out["hr@1_of_valid"] = sum(r == 0 for r in ranks) / valid if valid else 0.0
    return out


def assert_metrics_follow_from_ranks(results: dict) -> pd.DataFrame:
    """Every reported test metric equals its hand computation from ``test_ranks.tsv``, and a
    hit is a first pick at the positive's candidate position."""
    ranks_file = Path(results["folder"]) / "test_ranks.tsv"
    for key, value in hand_metrics(ranks_file).items():
        assert results["test"][key] == pytest.approx(value), key
    table = pd.read_csv(ranks_file, sep="\t")
    hits = table["rank"] == 0
    assert (table.loc[hits, "top1"] == table.loc[hits, "positive"]).all()
    return table
