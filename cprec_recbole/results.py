"""Result files: results.json, results.csv and a readable table, written atomically."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from cprec_recbole.io import write_json, write_text

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
