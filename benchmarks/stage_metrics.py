"""Every stage's metrics on the tiny-random backbone, as one JSON to diff across commits.

Issue 23: a refactor must leave every stage's numbers the same, bit for bit. This script builds
its own small fixture (the downstream ``Tiny`` and two CPT domains, as the tests do), runs
SASRec, LLaRA, CPTLLaRA and CPRec through :func:`cprec_recbole.quick_start.run`, each in its own
output folder, and records for every stage folder it finds (``<model>/<stage>/<hash>``) the
manifest's ``metrics`` and, where the stage evaluated, ``results.json`` and the sha256 of
``test_ranks.tsv``. Keys are model and stage name, never the config hash (a refactor may change
it); timing and memory fields are dropped, as they differ from run to run. Run it on both
commits and compare the outputs with ``cmp``::

    python benchmarks/stage_metrics.py --output benchmarks/results/stage-metrics-after.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import cprec_recbole
from cprec_recbole.data.atomic import write_atomic_files
from cprec_recbole.plugins import LOAD_PLUGINS_ENV
from cprec_recbole.quick_start import run

MODELS = ("SASRec", "LLaRA", "CPTLLaRA", "CPRec")
CPT_MODELS = {"CPTLLaRA", "CPRec"}  # these read the CPT keys; the others refuse them
#: Keys of what varies between identical runs: wall times, throughput, memory.
VOLATILE = re.compile(r"time|_s$|per_s|memory|seconds")
SASREC = {"epochs": 2, "train_batch_size": 64, "hidden_size": 16, "inner_size": 32, "n_layers": 1}
#: The tests' CPT budget (tests/test_cpt.py); the tiny profile supplies everything else.
LLM = {
    "llm_backbone": "tiny-random",
    "sft_samples": 32,
    "valid_users": 8,
    "eval_users": 12,
    "micro_batch_size": 8,
    "train_batch_size": 8,
    "checkpoint_every": 16,
    "rec_model_overrides": {"epochs": 1, "hidden_size": 16, "inner_size": 32, "n_layers": 1},
}
CPT = {
    "cpt_samples": 48,
    "cpt_mixed_samples": 16,
    "cpt_batch_size": 8,
    "cpt_micro_batch_size": 4,
    "cpt_checkpoint_samples": [24],
}


def write_domain(root: Path, name: str, sequences: dict[str, list[str]]) -> None:
    """``<root>/<name>/<name>.inter|.item`` from user -> chronological items."""
    inter = pd.DataFrame(
        [(u, i, 1000.0 + t) for u, seq in sequences.items() for t, i in enumerate(seq)],
        columns=["user_id", "item_id", "timestamp"],
    )
    items = sorted(set(inter["item_id"]))
    titles = pd.DataFrame({"item_id": items, "title": [f"Title of {i}" for i in items]})
    write_atomic_files(inter, titles, root, name)


def write_fixture(root: Path) -> Path:
    """Downstream ``Tiny`` (60 users cycling through 30 items) and CPT domains ShopA, ShopB."""
    begin = np.random.default_rng(0).integers(0, 30, 60)
    tiny = {f"u{u:03d}": [f"i{(s + t) % 30:02d}" for t in range(8)] for u, s in enumerate(begin)}
    write_domain(root, "Tiny", tiny)
    for name in ("ShopA", "ShopB"):
        write_domain(
            root, name, {f"s{u}": [f"{name}{(u + t) % 30}" for t in range(7)] for u in range(24)}
        )
    return root


def stable(value: Any) -> Any:
    """``value`` without the keys (at any depth) whose numbers differ between identical runs."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if not VOLATILE.search(str(k))}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def stage_record(folder: Path) -> dict[str, Any]:
    manifest = json.loads((folder / "manifest.json").read_text())
    record: dict[str, Any] = {"stage": manifest["stage"], "metrics": stable(manifest["metrics"])}
    if (folder / "results.json").is_file():
        record["results"] = stable(json.loads((folder / "results.json").read_text())["test"])
    if (folder / "test_ranks.tsv").is_file():
        record["test_ranks_sha256"] = hashlib.sha256(
            (folder / "test_ranks.tsv").read_bytes()
        ).hexdigest()
    return record


def collect(output_dir: Path) -> dict[str, Any]:
    """``{stage: record}`` for the stage folders under ``output_dir`` (a list where several)."""
    out: dict[str, Any] = {}
    for manifest in sorted(output_dir.glob("*/*/manifest.json")):
        out.setdefault(manifest.parent.parent.name, []).append(stage_record(manifest.parent))
    return {stage: records[0] if len(records) == 1 else records for stage, records in out.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).parent / "results" / "stage-metrics.json"
    )
    parser.add_argument(
        "--output_dir", type=Path, help="default: a fresh temporary folder (a kept one is reused)"
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one thread: fixed reduction order, and faster for tiny models
    os.environ[LOAD_PLUGINS_ENV] = ""  # as in the tests: installed plugins change nothing here
    print(f"cprec_recbole from {Path(cprec_recbole.__file__).parent}")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.output_dir or Path(tmp)
        data = write_fixture(root / "data")
        report: dict[str, Any] = {}
        for model in args.models:
            start = time.time()
            overrides = {
                "data_path": str(data),
                "output_dir": str(root / model),
                "show_progress": False,
            }
            overrides.update(SASREC if model == "SASRec" else LLM)
            overrides.update(CPT if model in CPT_MODELS else {})
            run(model, "Tiny", overrides=overrides)
            report[model] = collect(root / model)
            print(f"{model}: {time.time() - start:.0f} s")
    text = json.dumps(report, sort_keys=True, indent=1) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(table(report))
    print(f"wrote {args.output}")
    return report


def table(report: dict[str, Any]) -> str:
    """One line per stage: the digest of all it records (compare it across commits), test scores."""
    lines = [f"{'model':<9} {'stage':<10} {'digest':<12} {'hr@1':>7} {'ndcg@5':>7}"]
    for model, stages in sorted(report.items()):
        for stage, records in sorted(stages.items()):
            for record in records if isinstance(records, list) else [records]:
                canonical = json.dumps(record, sort_keys=True).encode()
                digest = hashlib.sha256(canonical).hexdigest()[:12]
                test = record.get("results", {})
                scores = " ".join(
                    f"{test[k]:>7.4f}" if k in test else f"{'-':>7}" for k in ("hr@1", "ndcg@5")
                )
                lines.append(f"{model:<9} {stage:<10} {digest:<12} {scores}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
