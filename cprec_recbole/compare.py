"""Paired comparison of two models on the test users both ranked.

    python -m cprec_recbole.compare saved/eval/<A> saved/eval/<B> --k 1 5

Every model folder (baselines' ``saved/rec_model/...`` and LLMs' ``saved/eval/...``) holds
``test_ranks.tsv`` and ``results.json``; the two folders must record the same test
``candidates_sha256``, since ranks among different candidates are not comparable. On the same
candidate sets the fair question is per user: where does A hit and B miss, and the reverse? Per k
this prints both HR@k on the shared users, those counts, the difference with its standard error,
the exact two-sided sign test on the users where they disagree (McNemar's exact test) and the
paired t-test of per-user hits (DESIGN.md), and writes the table as CSV with ``--csv``.
"""

from __future__ import annotations

import argparse
import json
import sys
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


def paired_hits(a: np.ndarray, b: np.ndarray, k: int) -> dict[str, float]:
    """HR@k of two rank arrays over the same users, and how far their difference is from 0."""
    hit_a = (a != INVALID) & (a < k)
    hit_b = (b != INVALID) & (b < k)
    only_a, only_b = int((hit_a & ~hit_b).sum()), int((hit_b & ~hit_a).sum())
    diff = hit_a.astype(float) - hit_b.astype(float)
    n = len(diff)
    return {
        "k": k,
        "users": n,
        "hr_a": float(hit_a.mean()),
        "hr_b": float(hit_b.mean()),
        "only_a": only_a,
        "only_b": only_b,
        "diff": float(diff.mean()),
        "se": float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
        "sign_test_p": binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0,
        "t_test_p": float(ttest_1samp(diff, 0.0).pvalue) if only_a + only_b else 1.0,
    }


def compare(folder_a: Path, folder_b: Path, ks: list[int], split: str = "test") -> pd.DataFrame:
    """One row per k over the users of ``split`` both folders ranked."""
    a, b = read_ranks(folder_a, split), read_ranks(folder_b, split)
    check_same_candidates(folder_a, folder_b, split)
    users = a.index.intersection(b.index)
    if users.empty:
        raise ValueError(f"{folder_a} and {folder_b} ranked no user in common")
    return pd.DataFrame([paired_hits(a[users].to_numpy(), b[users].to_numpy(), k) for k in ks])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cprec_recbole.compare", description=__doc__)
    parser.add_argument("a", type=Path, help="model folder A")
    parser.add_argument("b", type=Path, help="model folder B")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--csv", type=Path, help="also write the table here")
    parser.add_argument(
        "--split",
        choices=["test", "valid"],
        default="test",
        help="valid: the valid users an LLM eval scored with eval_valid_users (choosing arms)",
    )
    args = parser.parse_args(argv)
    try:
        table = compare(args.a, args.b, args.k, args.split)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"A = {args.a}\nB = {args.b}")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    if args.csv:
        write_atomic(args.csv, lambda tmp: table.to_csv(tmp, index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
