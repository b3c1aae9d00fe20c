"""How many evaluation users hold two candidates an LLM cannot tell apart by title.

    python benchmarks/title_collisions.py --dataset=Game --data_path=../shared/data

Titles as prompts show them: cut to ``max_title_tokens`` (the profile's; ``--max_title_tokens=``
overrides), compared lower-cased as answers are matched, without and with ``distinct_titles``.
Prints, per split, the users whose candidates share a title and those whose positive shares its
title with a negative, and writes benchmarks/results/title-collisions-<dataset>.json.
"""

from __future__ import annotations

import sys

import pandas as pd

from cprec_recbole.data.prepare import prepare
from cprec_recbole.io import write_json
from cprec_recbole.llm.backbone import load_backbone
from cprec_recbole.llm.batching import prompt_titles

from harness import configure


def collisions(rows, titles: dict) -> dict[str, int]:
    """Users with two candidates of one title, and users whose positive is one of them."""
    shared = positive = 0
    for target, candidates in zip(rows["target"], rows["candidates"], strict=True):
        names = [titles[c].lower() for c in candidates]
        shared += len(set(names)) < len(names)
        positive += names.count(titles[target].lower()) > 1
    return {"users": len(rows), "shared_title": shared, "positive_shared": positive}


def main(argv: list[str]) -> dict:
    _, dataset, config, plugins, results, _ = configure(argv, {})
    data = prepare(config, plugins)
    titles = dict(zip(data.items["item_id"], data.items["title"], strict=True))
    _, tokenizer = load_backbone(config, plugins, list(titles.values()))
    out = {"dataset": dataset, "items": len(titles), "max_title_tokens": config["max_title_tokens"]}
    for distinct in (False, True):
        shown = prompt_titles(tokenizer, titles, {**config, "distinct_titles": distinct})
        lower = pd.Series([t.lower() for t in shown.values()])
        row = {"items_sharing_a_title": int(lower.duplicated(keep=False).sum())}
        for split in ("valid", "test"):
            row[split] = collisions(data.eval_rows(split), shown)
        out["distinct_titles" if distinct else "as_cut"] = row
        print(f"distinct_titles={distinct}: {row}")
    write_json(results / f"title-collisions-{dataset}.json", out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
