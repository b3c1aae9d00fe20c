"""How much the collaborative model's item embeddings know about each split's targets.

    python -m cprec_recbole.embedding_probe saved/data/<hash> saved/rec_model/<hash> --dataset Game

Each target is scored among uniform random negatives by the dot product of its item embedding
with an exponentially decayed sum of its history's embeddings: no training, the ranking an
LLM's item-token score (``item_token_score``) can learn most easily. SASRec was fit to the very
transitions of the training windows that SFT samples, never to the valid and test targets, so
the probe's HR@1 on training windows against test is how much more a model stacked on the
embeddings (LLaRA's hybrid prompt, item tokens) can trust them while it learns than when it is
tested (issue 26). A SASRec trained without each user's last N training items
(``train_holdout``, what ``sft_holdout`` trains) gets a row for those held-out windows too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from cprec_recbole.data.prepare import PreparedData
from cprec_recbole.data.transforms import leave_one_out
from cprec_recbole.data.windows import sliding_windows
from cprec_recbole.plugins import Plugins, load_plugins
from cprec_recbole.rec_model import item_embedding_table, item_rows
from cprec_recbole.stages import read_manifest

DECAY, SPAN = 0.6, 10  # the last 10 items, each weighted 0.6 times the next one's


def decayed_query(embeddings: np.ndarray, history: np.ndarray) -> np.ndarray:
    """The history's embedding rows summed, the last item's weight 1, each earlier one DECAY
    times the next one's, over the last SPAN items."""
    rows = embeddings[history[::-1][:SPAN]]
    return (rows * DECAY ** np.arange(len(rows))[:, None]).sum(0)


def probe_hits(
    embeddings: np.ndarray, pairs: pd.DataFrame, negatives: int, rng: np.random.Generator
) -> np.ndarray:
    """Per (history, target) row of embedding rows, whether the target outscores ``negatives``
    uniform random rows (never row 0, padding, nor an item of the history or the target);
    ties count against the target."""
    hits = []
    for history, target in zip(pairs["history"], pairs["target"], strict=True):
        banned = {0, int(target), *map(int, history)}
        if len(embeddings) - len(banned) < negatives:
            raise ValueError(f"{len(embeddings)} embedding rows leave no {negatives} negatives")
        drawn: list[int] = []
        while len(drawn) < negatives:
            row = int(rng.integers(1, len(embeddings)))
            if row not in banned:
                banned.add(row)
                drawn.append(row)
        query = decayed_query(embeddings, history)
        scores = embeddings[drawn] @ query
        hits.append(bool((scores < embeddings[target] @ query).all()))
    return np.array(hits)


def split_pairs(sequences: pd.Series, history_len: int, min_history: int, holdout: int = 0) -> dict:
    """The training windows the model saw (valid and test targets and the last ``holdout``
    training targets held out), those it held out, and the valid and test rows."""
    held_out = {}
    if holdout:
        windows = sliding_windows(sequences, history_len, min_history, drop_last=2, last=holdout)
        held_out = {"held-out windows": windows}
    return {
        "train windows": sliding_windows(sequences, history_len, min_history, 2 + holdout),
        **held_out,
        "valid": leave_one_out(sequences, "valid", history_len),
        "test": leave_one_out(sequences, "test", history_len),
    }


def probe(
    sequences: pd.Series,
    rec_folder: Path,
    history_len: int,
    min_history: int,
    limit: int,
    negatives: int = 19,
    seed: int = 0,
    plugins: Plugins | None = None,
) -> pd.DataFrame:
    """HR@1 of the probe per split of ``sequences`` (user -> chronological item ids), on at
    most ``limit`` seeded rows of each, with the item embeddings of the ID model in
    ``rec_folder`` (one of ``plugins``' models; default: the built-ins and installed ones)."""
    embeddings = item_embedding_table(rec_folder, plugins or load_plugins()).numpy()
    row_of = item_rows(rec_folder)
    manifest = read_manifest(rec_folder)
    holdout = int(manifest["config"].get("train_holdout", 0))
    rng = np.random.default_rng(seed)
    out = []
    for split, rows in split_pairs(sequences, history_len, min_history, holdout).items():
        rows = rows.sample(n=min(limit, len(rows)), random_state=seed)
        pairs = pd.DataFrame(
            {
                "history": [np.array([row_of[i] for i in h]) for h in rows["history"]],
                "target": [row_of[t] for t in rows["target"]],
            }
        )
        hits = probe_hits(embeddings, pairs, negatives, rng)
        out.append({"split": split, "rows": len(hits), "hr@1": float(hits.mean())})
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cprec_recbole.embedding_probe", description=__doc__
    )
    parser.add_argument("data", type=Path, help="the data stage's folder (saved/data/<hash>)")
    parser.add_argument("rec_model", type=Path, help="the SASRec folder (saved/rec_model/<hash>)")
    parser.add_argument("--dataset", required=True, help="the dataset's name (Game)")
    parser.add_argument("--rows", type=int, default=3000, help="rows probed per split")
    parser.add_argument("--negatives", type=int, default=19)
    parser.add_argument("--history_len", type=int, default=10)
    parser.add_argument("--min_history", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sequences = PreparedData(args.dataset, args.data, args.history_len).sequences
    table = probe(
        sequences,
        args.rec_model,
        args.history_len,
        args.min_history,
        args.rows,
        args.negatives,
        args.seed,
    )
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
