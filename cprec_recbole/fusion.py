"""Reciprocal-rank fusion of two models' candidate orders, on the test users both ranked.

    python -m cprec_recbole.fusion saved/rec_model/<SASRec> saved/eval/<LLaRA> --out saved/fusion/x

Each candidate scores ``1 / (k + r_A) + 1 / (k + r_B)``, ``r`` its 1-based place in each model's
order (a candidate a generating model did not pick is placed after its picks); ties go to model
A's order. ``k = 60`` is Cormack et al.'s constant (SIGIR 2009), not tuned, so the fused arm
selects nothing on the test split. It asks whether an LLM's ranking carries what the ID model's
misses: the LLM arms here lose to SASRec alone, yet are right on other users (issue 26). The
folder it writes holds ``test_ranks.tsv`` and ``results.json`` as a model's does, so
:mod:`cprec_recbole.compare` pairs it with either input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cprec_recbole.compare import RESULTS_FILE, check_same_candidates, ranks_table
from cprec_recbole.evaluation import orders_column, rank_metrics
from cprec_recbole.io import write_json, write_text
from cprec_recbole.results import RANKS_FILE, markdown_table, write_ranks

RRF_K = 60


def parse_order(text: str) -> list[int]:
    return [int(x) for x in str(text).split()]


def places(order: Sequence[int], n: int) -> np.ndarray:
    """1-based place of each of ``n`` candidates in ``order``; unlisted ones after the listed."""
    out = np.full(n, len(order) + 1, dtype=np.float64)
    out[list(order)] = np.arange(1, len(order) + 1)
    return out


def fuse_orders(order_a: Sequence[int], order_b: Sequence[int], n: int, k: int) -> list[int]:
    """The candidates (positions) by reciprocal-rank fusion, best first, ties by A's order."""
    place_a, place_b = places(order_a, n), places(order_b, n)
    score = 1.0 / (k + place_a) + 1.0 / (k + place_b)
    return np.lexsort((place_a, -score)).tolist()


def read_orders(folder: Path) -> pd.DataFrame:
    """``positive`` and ``order`` per user id; refuses folders written before the orders were."""
    frame = ranks_table(folder, {"order": str})
    if "order" not in frame or frame["order"].isna().any():
        path = Path(folder) / RANKS_FILE
        stage = "rec_model" if Path(folder).parent.name == "rec_model" else "eval"
        raise ValueError(
            f"{path} has no candidate orders (written before they were): rerun that model "
            f"with --force={stage} to write them"
        )
    return frame.set_index("user_id")[["positive", "order"]]


def fuse(folder_a: Path, folder_b: Path, k: int = RRF_K) -> pd.DataFrame:
    """Per shared user: the positive's position, the fused order and the positive's rank. The
    candidate count is the longest order's (a model that scores all lists every candidate)."""
    check_same_candidates(folder_a, folder_b)
    a, b = read_orders(folder_a), read_orders(folder_b)
    users = a.index.intersection(b.index)
    if users.empty:
        raise ValueError(f"{folder_a} and {folder_b} ranked no user in common")
    if not (a.loc[users, "positive"] == b.loc[users, "positive"]).all():
        raise ValueError(f"{folder_a} and {folder_b} place the positive differently")
    pairs = [(parse_order(a.at[u, "order"]), parse_order(b.at[u, "order"])) for u in users]
    n = max(len(o) for pair in pairs for o in pair)
    orders = [fuse_orders(order_a, order_b, n, k) for order_a, order_b in pairs]
    positive = a.loc[users, "positive"].to_numpy()
    return pd.DataFrame(
        {
            "user_id": users,
            "rank": [o.index(p) for o, p in zip(orders, positive, strict=True)],
            "positive": positive,
            "top1": [o[0] for o in orders],
            "order": orders_column(orders),
        }
    )


def write_fusion(out: Path, folder_a: Path, folder_b: Path, ranks: pd.DataFrame, k: int) -> dict:
    """The fused arm's folder: ``test_ranks.tsv``, ``results.json`` and a readable table."""
    out.mkdir(parents=True, exist_ok=True)
    write_ranks(out, ranks)
    digests = json.loads((Path(folder_a) / RESULTS_FILE).read_text())["candidates_sha256"]
    results = {
        "model": "RRF",
        "inputs": [str(folder_a), str(folder_b)],
        "k": k,
        "test": {**rank_metrics(ranks["rank"].to_numpy()), "users": len(ranks)},
        "candidates_sha256": digests,
    }
    write_json(out / RESULTS_FILE, results)
    table = pd.DataFrame([{"arm": f"RRF(k={k})", **results["test"]}])
    write_text(out / "results.md", markdown_table(table) + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cprec_recbole.fusion", description=__doc__)
    parser.add_argument("a", type=Path, help="model folder A (its order breaks ties)")
    parser.add_argument("b", type=Path, help="model folder B")
    parser.add_argument("--out", type=Path, required=True, help="folder for the fused arm")
    parser.add_argument("--k", type=int, default=RRF_K)
    args = parser.parse_args(argv)
    try:
        ranks = fuse(args.a, args.b, args.k)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = write_fusion(args.out, args.a, args.b, ranks, args.k)
    print(pd.Series(results["test"]).to_string(float_format=lambda x: f"{x:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
