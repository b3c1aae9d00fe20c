"""Paired comparison of two models on the test users both ranked.

    python -m cprec_recbole.compare saved/eval/<A> saved/eval/<B> --k 1 5
    python -m cprec_recbole.compare saved/eval/<A seed 1>,saved/eval/<A seed 2> saved/eval/<B> ...

Every model folder (baselines' ``saved/rec_model/...`` and LLMs' ``saved/eval/...``) holds
``test_ranks.tsv`` and ``results.json``; the two folders must record the same test
``candidates_sha256``, since ranks among different candidates are not comparable. On the same
candidate sets the fair question is per user: where does A hit and B miss, and the reverse? Per k
this prints both HR@k on the shared users, those counts, the difference with its standard error,
the exact two-sided sign test on the users where they disagree (McNemar's exact test) and the
paired t-test of per-user hits (DESIGN.md), and writes the table as CSV with ``--csv``. A side
given as comma-separated folders (one per seed) is each user's hit averaged over them, as an
experiment report compares arms; the sign test then counts the users on which either side's
mean is higher.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest, ttest_1samp

from cprec_recbole.evaluation import INVALID
from cprec_recbole.io import write_atomic
from cprec_recbole.results import ranks_file

RESULTS_FILE = "results.json"


def ranks_table(folder: Path, dtype: dict | None = None, split: str = "test") -> pd.DataFrame:
    """A model folder's ``<split>_ranks.tsv``, user ids as strings (``dtype``: other columns')."""
    path = Path(folder) / ranks_file(split)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: pass a finished model folder (saved/rec_model/<hash> or "
            f"saved/eval/<hash>), the one whose results.json the run printed"
        )
    return pd.read_csv(path, sep="\t", dtype={"user_id": str, **(dtype or {})})


def read_ranks(folder: Path, split: str = "test") -> pd.Series:
    """Rank of the positive per user id (``INVALID`` = -1 for an answer naming no candidate)."""
    return ranks_table(folder, split=split).set_index("user_id")["rank"]


def candidates_sha256_of(folder: Path, split: str = "test") -> str:
    """The sha256 of the ``split`` candidate file the model in ``folder`` was evaluated on."""
    path = Path(folder) / RESULTS_FILE
    results = json.loads(path.read_text()) if path.is_file() else {}
    digest = (results.get("candidates_sha256") or {}).get(split)
    if not digest:
        raise ValueError(
            f"{path} records no candidates_sha256 for the {split} split, so its candidate set "
            f"cannot be checked: rerun that model to write a current results.json"
        )
    return digest


def check_same_candidates(folder_a: Path, folder_b: Path, split: str = "test") -> None:
    """Refuse folders evaluated on different candidates: their ranks are not comparable."""
    a, b = candidates_sha256_of(folder_a, split), candidates_sha256_of(folder_b, split)
    if a != b:
        raise ValueError(
            f"{folder_a} and {folder_b} were evaluated on different {split} candidate sets "
            f"(candidates_sha256 {split}: {a} vs {b}); compare models run on the same prepared "
            f"data (same dataset, data settings and candidate seed)"
        )


def hit_means(ranks: Sequence[pd.Series], k: int) -> pd.Series:
    """Hit@k per user id, averaged over rank series (one per seed; ``INVALID`` misses)."""
    hits = [((r != INVALID) & (r < k)).astype(float) for r in ranks]
    return pd.concat(hits, axis=1).mean(axis=1)


def mean_hits(folders: Sequence[Path], k: int, split: str = "test") -> pd.Series:
    """Hit@k per user id, averaged over the folders (one per seed; same candidates checked)."""
    for other in folders[1:]:
        check_same_candidates(folders[0], other, split)
    return hit_means([read_ranks(f, split) for f in folders], k)


def paired_hits(a: np.ndarray, b: np.ndarray, k: int) -> dict[str, float]:
    """HR@k of two per-user hit arrays over the same users (1/0, or means over seeds), and how
    far their difference is from 0."""
    diff = a - b
    only_a, only_b = int((diff > 0).sum()), int((diff < 0).sum())
    n = len(diff)
    return {
        "k": k,
        "users": n,
        "hr_a": float(a.mean()),
        "hr_b": float(b.mean()),
        "only_a": only_a,
        "only_b": only_b,
        "diff": float(diff.mean()),
        "se": float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
        "sign_test_p": binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0,
        "t_test_p": float(ttest_1samp(diff, 0.0).pvalue) if only_a + only_b else 1.0,
    }


def compare(
    folders_a: Path | Sequence[Path],
    folders_b: Path | Sequence[Path],
    ks: list[int],
    split: str = "test",
) -> pd.DataFrame:
    """One row per k over the users of ``split`` both sides ranked; a side of several folders
    (seeds) is each user's mean hit over them."""
    sides = [
        [Path(f)] if isinstance(f, Path | str) else [Path(x) for x in f]
        for f in (folders_a, folders_b)
    ]
    ranks = [[read_ranks(folder, split) for folder in side] for side in sides]
    for folder in sides[0][1:] + sides[1]:
        check_same_candidates(sides[0][0], folder, split)
    rows = []
    for k in ks:
        a, b = (hit_means(side, k) for side in ranks)
        users = a.index.intersection(b.index)
        if users.empty:
            names = [" + ".join(map(str, side)) for side in sides]
            raise ValueError(f"{names[0]} and {names[1]} ranked no user in common")
        rows.append(paired_hits(a[users].to_numpy(), b[users].to_numpy(), k))
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cprec_recbole.compare", description=__doc__)
    parser.add_argument("a", help="model folder A (or A's seeds, comma-separated)")
    parser.add_argument("b", help="model folder B (or B's seeds, comma-separated)")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--csv", type=Path, help="also write the table here")
    parser.add_argument(
        "--split",
        choices=["test", "valid"],
        default="test",
        help="valid: the valid users an LLM eval scored with eval_valid_users (choosing arms)",
    )
    args = parser.parse_args(argv)
    sides = [[Path(f) for f in side.split(",") if f] for side in (args.a, args.b)]
    try:
        table = compare(sides[0], sides[1], args.k, args.split)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, side in zip("AB", sides, strict=True):
        seeds = f" (per-user hits averaged over {len(side)} seeds)" if len(side) > 1 else ""
        print(f"{name} = {' + '.join(map(str, side))}{seeds}")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    if args.csv:
        write_atomic(args.csv, lambda tmp: table.to_csv(tmp, index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
