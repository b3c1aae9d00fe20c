"""Build time and peak memory of the CPT corpus stage on real data (targets: < 30 s, < 4 GiB).

    python benchmarks/corpus.py --data_path=../shared/data --domains=Electronic,Clothing,Beauty,Toys

Builds into a fresh temporary ``--output_dir`` (so no cached corpus is reused) unless one is
given, with the corpus keys of properties/ (overall, LLMRecommender, cpt); any other --key=value
overrides them (e.g. --mixing_rule=all --cpt_stride=2). Prints sample counts, wall time, the time
to load the corpus back and the process's peak resident memory, and writes
benchmarks/results/corpus.json (``--results_dir`` moves it).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from cprec_recbole.cli import split_args
from cprec_recbole.config import PROPERTIES, read_yaml
from cprec_recbole.data.corpus import CORPUS_KEYS, corpus_stage, load_corpus
from cprec_recbole.io import write_json
from cprec_recbole.plugins import load_plugins
from cprec_recbole.stages import read_manifest

DOMAINS = ["Electronic", "Clothing", "Beauty", "Toys"]
DEFAULTS = ("overall.yaml", "model/LLMRecommender.yaml", "cpt.yaml")


def corpus_config(overrides: dict) -> dict:
    """The corpus keys as a run reads them from properties/, then the command line's."""
    merged: dict = {}
    for name in DEFAULTS:
        if (PROPERTIES / name).is_file():
            merged.update(read_yaml(PROPERTIES / name))
    config = {k: merged.get(k) for k in CORPUS_KEYS}
    domains = overrides.pop("domains", DOMAINS)
    config["cpt_domains"] = domains.split(",") if isinstance(domains, str) else list(domains)
    config["data_path"] = str(overrides.pop("data_path", "../shared/data"))
    config["dataset"] = str(overrides.pop("dataset", "Game"))  # the downstream, kept out
    return {**config, **overrides}


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main(argv: list[str]) -> dict:
    overrides, plugin_files, _, _ = split_args(argv)
    results = Path(overrides.pop("results_dir", Path(__file__).parent / "results"))
    given = overrides.pop("output_dir", None)
    output_dir = Path(given) if given else Path(tempfile.mkdtemp(prefix="corpus-bench-"))
    config = {**corpus_config(overrides), "output_dir": str(output_dir)}
    plugins = load_plugins(plugin_files)
    try:
        start = time.perf_counter()
        folder = corpus_stage(config, plugins)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        corpus = load_corpus(folder)
        load_s = time.perf_counter() - start
        metrics = read_manifest(folder)["metrics"]
    finally:
        if not given:
            shutil.rmtree(output_dir, ignore_errors=True)
    specific = metrics["domain_specific_samples"]
    out = {
        "domains": config["cpt_domains"],
        "settings": {k: config[k] for k in CORPUS_KEYS if k != "cpt_domains"},
        "samples": len(corpus),
        "domain_specific_samples": sum(specific.values()),
        "domain_specific_per_domain": specific,
        "mixed_samples": metrics["mixed_samples"],
        "mixed_per_domain": metrics["mixed_samples_per_domain"],
        "mixed_users": metrics["mixed_users"],
        "title_words": metrics["title_words"],
        "wall_s": round(build_s, 2),
        "load_s": round(load_s, 2),
        "peak_rss_mib": peak_rss_mib(),
        "cpus": os.cpu_count(),
    }
    print(
        f"{out['samples']:,} samples: {out['domain_specific_samples']:,} domain-specific, "
        f"{out['mixed_samples']:,} mixed ({out['mixed_users']:,} users)"
    )
    print(f"built in {out['wall_s']:.1f} s (target < 30 s), loaded back in {out['load_s']:.2f} s")
    print(f"peak memory {out['peak_rss_mib'] / 1024:.2f} GiB (target < 4 GiB)")
    write_json(results / "corpus.json", out)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
