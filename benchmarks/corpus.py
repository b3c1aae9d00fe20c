"""Build time and peak memory of the CPT corpus stage on real data (targets: < 30 s, < 4 GiB).

    python benchmarks/corpus.py --data_path=../shared/data --domains=Electronic,Clothing,Beauty,Toys
    python benchmarks/corpus.py --data_path=../shared/data --replicate=16

Builds into a fresh temporary ``--output_dir`` (so no cached corpus is reused) unless one is
given, with the corpus keys of properties/ (overall, LLMRecommender, cpt); any other --key=value
overrides them (e.g. --mixing_rule=all --cpt_stride=2 --corpus_shards=32). ``--replicate=N``
builds from a temporary copy of the domains in which every user is there N times (ids suffixed
``~1``...), streamed so that making it adds nothing to the peak: N times the data, same items.
Prints sample counts, wall time, the time to read the corpus back (a full pass) and the process's
peak resident memory, and writes benchmarks/results/corpus.json (``corpus-<N>x.json`` with
``--replicate``; ``--results_dir`` moves it). Run it with ``PYTHONPATH`` at a checkout to measure
that checkout's corpus code.
"""

from __future__ import annotations

import json
import os
import re
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
    config = {k: merged.get(k) for k in (*CORPUS_KEYS, "corpus_shards")}
    domains = overrides.pop("domains", DOMAINS)
    config["cpt_domains"] = domains.split(",") if isinstance(domains, str) else list(domains)
    config["data_path"] = str(overrides.pop("data_path", "../shared/data"))
    config["dataset"] = str(overrides.pop("dataset", "Game"))  # the downstream, kept out
    return {**config, **overrides}


def replicate(data_path: Path, domains: list[str], times: int, into: Path) -> Path:
    """A data folder holding ``domains`` with every user ``times`` times (a copy per suffix)."""
    for name in domains:
        folder = into / name
        folder.mkdir(parents=True)
        (folder / f"{name}.item").symlink_to((data_path / name / f"{name}.item").resolve())
        header, body = (data_path / name / f"{name}.inter").read_bytes().split(b"\n", 1)
        body = body if body.endswith(b"\n") else body + b"\n"
        with open(folder / f"{name}.inter", "wb") as out:
            out.write(header + b"\n" + body)
            copies = range(1, times)
            out.writelines(re.sub(rb"(?m)^([^\t\n]+)\t", b"\\1~%d\t" % c, body) for c in copies)
    return into


def read_back(folder: Path) -> int:
    """Open the corpus and read every row once (what CPT's length pass does); its size."""
    corpus = load_corpus(folder)
    for _ in getattr(corpus, "chunks", list)():  # older corpora load whole
        pass
    return len(corpus)


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main(argv: list[str]) -> dict:
    overrides, plugin_files, _, _ = split_args(argv)
    results = Path(overrides.pop("results_dir", Path(__file__).parent / "results"))
    given = overrides.pop("output_dir", None)
    times = int(overrides.pop("replicate", 1))
    output_dir = Path(given) if given else Path(tempfile.mkdtemp(prefix="corpus-bench-"))
    config = {**corpus_config(overrides), "output_dir": str(output_dir)}
    copies = Path(tempfile.mkdtemp(prefix="corpus-bench-data-"))
    plugins = load_plugins(plugin_files)
    try:
        if times > 1:
            source = Path(config["data_path"])
            config["data_path"] = str(replicate(source, config["cpt_domains"], times, copies))
        start = time.perf_counter()
        folder = corpus_stage(config, plugins)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        samples = read_back(folder)
        load_s = time.perf_counter() - start
        metrics = read_manifest(folder)["metrics"]
    finally:
        shutil.rmtree(copies, ignore_errors=True)
        if not given:
            shutil.rmtree(output_dir, ignore_errors=True)
    specific = metrics["domain_specific_samples"]
    out = {
        "domains": config["cpt_domains"],
        "settings": {k: config[k] for k in CORPUS_KEYS if k != "cpt_domains"},
        "replicate": times,
        "interactions": sum(metrics["interactions"].values()),
        "shards": metrics.get("shards", 1),
        "samples": samples,
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
    print(f"{out['interactions']:,} interactions in {out['shards']} shard(s)")
    print(f"built in {out['wall_s']:.1f} s (target < 30 s), read back in {out['load_s']:.2f} s")
    print(f"peak memory {out['peak_rss_mib'] / 1024:.2f} GiB (target < 4 GiB)")
    write_json(results / ("corpus.json" if times == 1 else f"corpus-{times}x.json"), out)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
