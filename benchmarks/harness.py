"""What the benchmark scripts share: command line -> config, prepared data, the LLM recommender.

Flags are the CLI's (``--model``, ``--dataset``, ``--plugin``, ``--config_files``, any
``--key=value`` override) plus ``--results_dir`` (default benchmarks/results) and the script's own
integer knobs, given with their defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cprec_recbole.cli import split_args
from cprec_recbole.command import build_config
from cprec_recbole.pipeline import pipeline_of, run_pipeline
from cprec_recbole.plugins import load_plugins
from cprec_recbole.run_config import RunConfig


@dataclass
class Bench:
    name: str
    dataset: str
    config: dict
    plugins: object
    recommender: object
    sft: Path | None  # the SFT stage the recommender's fine-tuned weights come from
    results: Path
    knobs: dict[str, int]


def configure(argv: list[str], knobs: dict[str, int], model: str = "LLaRA"):
    """Parse ``argv`` into (model name, dataset, config, plugins, results folder, knob values)."""
    overrides, plugin_files, _, config_files = split_args(argv)
    values = {k: int(overrides.pop(k, default)) for k, default in knobs.items()}
    dataset = str(overrides.pop("dataset", "Game"))
    name = str(overrides.pop("model", model))
    results = Path(overrides.pop("results_dir", Path(__file__).parent / "results"))
    plugins = load_plugins(plugin_files)
    overrides.setdefault("show_progress", False)
    config = build_config(name, dataset, plugins, config_files, overrides)
    return name, dataset, config, plugins, results, values


def setup(argv: list[str], knobs: dict[str, int], before: str = "eval") -> Bench:
    """Parse ``argv``; build the config, run the model's pipeline up to the step ``before``
    (``eval``: every stage the evaluation reads; ``sft``: those SFT starts from) and construct
    the recommender."""
    name, dataset, config, plugins, results, values = configure(argv, knobs)
    steps = pipeline_of(plugins.models.get(name))
    first = min(steps.index(s) for s in (before, "eval") if s in steps)
    run = run_pipeline(name, RunConfig(config), plugins, until=steps[first - 1])
    recommender = run.recommender()
    sft = run.folders.get("sft")
    return Bench(name, dataset, config, plugins, recommender, sft, results, values)
