"""Why a recommender ranks as it does, read from its per-user test ranks (``test_ranks.tsv``).

An experiment with ``report: diagnostics`` (issue 26) adds to its report HR@1 by the positive's
position in the candidate list, the positions each arm picks first (a model that prefers a slot
shows it there, whatever the positive), and how often each arm's first pick is the reference
arm's (SASRec's): an LLM that reads the SASRec embeddings in its prompt should agree with SASRec
more than chance, 1 / candidates. Seeds are pooled (every seed's users counted once each).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cprec_recbole.evaluation import INVALID
from cprec_recbole.results import RANKS_FILE, markdown_table

#: Candidate positions per row of the position tables (20 candidates: 5 rows).
POSITION_WIDTH = 4
COLUMNS = ("rank", "positive", "top1")


def read_positions(folder: Path) -> pd.DataFrame | None:
    """``rank``, ``positive`` and ``top1`` per user id of a model folder; None where its
    ``test_ranks.tsv`` predates the two position columns."""
    frame = pd.read_csv(Path(folder) / RANKS_FILE, sep="\t", dtype={"user_id": str})
    if not set(COLUMNS) <= set(frame.columns):
        return None
    return frame.set_index("user_id")[list(COLUMNS)]


def position_bucket(position: pd.Series, width: int = POSITION_WIDTH) -> pd.Series:
    """1-based labels of 0-based candidate positions, ``width`` to a bucket: '1-4', '5-8'..."""
    start = position // width * width + 1
    if width == 1:
        return start.astype(str)
    return start.astype(str) + "-" + (start + width - 1).astype(str)


def shared_users(frames: Mapping[str, Sequence[pd.DataFrame]]) -> pd.Index:
    """The users every frame ranked (``--eval_users`` samples the LLM arms' users)."""
    indexes = [frame.index for arm in frames.values() for frame in arm]
    shared = indexes[0]
    for index in indexes[1:]:
        shared = shared.intersection(index)
    return shared.unique().sort_values()


def _pooled(seeds: Sequence[pd.DataFrame], users: pd.Index) -> pd.DataFrame:
    return pd.concat([frame.loc[frame.index.isin(users)] for frame in seeds])


def position_tables(
    frames: Mapping[str, Sequence[pd.DataFrame]], width: int = POSITION_WIDTH
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """On the shared users, per position bucket: each arm's HR@1 where the positive sits there,
    and each arm's share of first picks that land there (invalid answers pick nothing)."""
    users = shared_users(frames)
    hr1, picks = {}, {}
    for arm, seeds in frames.items():
        pooled = _pooled(seeds, users)
        hit = pooled["rank"] == 0
        hr1[arm] = hit.groupby(position_bucket(pooled["positive"], width)).mean()
        picked = pooled.loc[pooled["top1"] != INVALID, "top1"]
        picks[arm] = position_bucket(picked, width).value_counts() / len(pooled)
    first = _pooled(next(iter(frames.values())), users)
    positives = position_bucket(first["positive"], width).value_counts().sort_index(key=_order)
    order = positives.index
    hr1_table = pd.DataFrame(hr1).reindex(order)
    hr1_table.insert(0, "positives", positives / len(first))
    return hr1_table, pd.DataFrame(picks).reindex(order).fillna(0.0)


def _order(labels: pd.Index) -> pd.Index:
    return labels.map(lambda label: int(label.split("-")[0]))


def top1_agreement(arm: Sequence[pd.DataFrame], reference: Sequence[pd.DataFrame]) -> pd.Series:
    """Share of the users both ranked where both first picks are the same candidate (an invalid
    answer agrees with nothing), and of those where the reference hits that the arm hits too;
    over every pair of the two arms' seeds."""
    same, hits_too, users = [], [], []
    for a in arm:
        for r in reference:
            shared = a.index.intersection(r.index)
            a_top, r_top = a.loc[shared, "top1"], r.loc[shared, "top1"]
            same.append(((a_top == r_top) & (a_top != INVALID)).mean())
            r_hits = r.loc[shared, "rank"] == 0
            hits_too.append((a.loc[shared, "rank"] == 0)[r_hits].mean())
            users.append(len(shared))
    return pd.Series(
        {"users": min(users), "same top-1": np.mean(same), "hits where it hits": np.mean(hits_too)}
    )


def agreement_table(frames: Mapping[str, Sequence[pd.DataFrame]], reference: str) -> pd.DataFrame:
    """``top1_agreement`` of every arm but the reference with the reference."""
    rows = {
        arm: top1_agreement(seeds, frames[reference])
        for arm, seeds in frames.items()
        if arm != reference
    }
    return pd.DataFrame(rows).T


def diagnostics_section(
    folders: Mapping[str, Sequence[Path]], reference: str, width: int = POSITION_WIDTH
) -> list[str]:
    """The report's diagnostics, as markdown lines; arms whose ranks predate the position
    columns are named, with the command that rewrites them, and left out of the tables."""
    read = {arm: [read_positions(f) for f in seeds] for arm, seeds in folders.items()}
    stale = [arm for arm, frames in read.items() if any(f is None for f in frames)]
    frames = {arm: seeds for arm, seeds in read.items() if arm not in stale}
    lines = [""]
    if stale:
        lines += [
            (
                f"Left out of the diagnostics: {', '.join(stale)}, whose test_ranks.tsv predates the "
                "`positive` and `top1` columns; rerun the arm with `--force=eval` (an LLM) or "
                "`--force=rec_model` (an ID model) to rewrite its ranks."
            ),
            "",
        ]
    if not frames:
        return lines
    hr1, picks = position_tables(frames, width)
    users = len(shared_users(frames))
    lines += [
        (
            f"Test HR@1 by the positive's position in the candidate list ({users} users every arm "
            "ranked; `positives`: share of users whose positive sits there):"
        ),
        "",
        markdown_table(hr1.rename_axis("position").reset_index(), ".4f"),
        "",
        "Share of each arm's first picks at each position (uniform: the `positives` column):",
        "",
        markdown_table(picks.rename_axis("position").reset_index(), ".4f"),
    ]
    if reference in frames:
        agree = agreement_table(frames, reference)
        agree["users"] = agree["users"].astype(int)
        lines += [
            "",
            (
                f"Agreement with {reference}'s first pick (same top-1: both name the same candidate; "
                f"hits where it hits: HR@1 on the users {reference} hits):"
            ),
            "",
            markdown_table(agree.rename_axis("arm").reset_index(), ".4f"),
        ]
    return lines
