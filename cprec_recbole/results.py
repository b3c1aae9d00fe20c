"""Result files: results.json, results.csv, a readable table and the per-user test ranks,
written atomically."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd

from cprec_recbole.io import write_atomic, write_json, write_text

HEADLINE = ("hr@1", "valid_ratio", "hr@1_of_valid", "hr@3", "hr@5", "ndcg@3", "ndcg@5", "users")


def table(results: dict) -> str:
    """A plain-text table of the headline metrics, one row per split."""
    rows = [(split, results[split]) for split in ("valid", "test") if results.get(split)]
    header = ["split", *HEADLINE]
    lines = [header] + [
        [split] + [_fmt(metrics.get(k)) for k in HEADLINE] for split, metrics in rows
    ]
    widths = [max(len(str(r[i])) for r in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).rjust(w) for c, w in zip(r, widths)) for r in lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_results(folder: Path, results: dict) -> None:
    """results.json (everything), results.csv (one row per split and metric), results.txt."""
    write_json(folder / "results.json", results)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["model", "dataset", "split", "metric", "value"])
    for split in ("valid", "test"):
        for metric, value in (results.get(split) or {}).items():
            writer.writerow([results["model"], results["dataset"], split, metric, value])
    write_text(folder / "results.csv", buffer.getvalue())
    write_text(folder / "results.txt", table(results) + "\n")


def ranks_file(split: str) -> str:
    """The per-user ranks of a split: ``test_ranks.tsv``; ``valid_ranks.tsv`` where an LLM eval
    also scored valid users (``eval_valid_users``), what choosing between arms reads."""
    return f"{split}_ranks.tsv"


#: The test split's ranks: what ``compare``, the diagnostics and the fusion read by default.
RANKS_FILE = ranks_file("test")


def write_ranks(folder: Path, ranks: pd.DataFrame, split: str = "test") -> None:
    """test_ranks.tsv, one row per test user (``user_id``, ``rank``...): what ``compare`` pairs;
    ``positive`` and ``top1``, the candidate positions of the positive and of the model's first
    pick, are what the diagnostics read (:mod:`cprec_recbole.diagnostics`)."""
    path = folder / ranks_file(split)
    write_atomic(path, lambda tmp: ranks.to_csv(tmp, sep="\t", index=False))


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A pipe table for report files (no dependency on tabulate)."""
    cells = [
        [f"{v:{floatfmt}}" if isinstance(v, float) else str(v) for v in row]
        for row in frame.itertuples(index=False)
    ]
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])
