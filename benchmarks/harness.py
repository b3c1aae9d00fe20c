"""What the benchmark scripts share: command line -> config, prepared data, the LLM recommender.

Flags are the CLI's (``--model``, ``--dataset``, ``--plugin``, ``--config_files``, any
``--key=value`` override) plus ``--results_dir`` (default benchmarks/results) and the script's own
integer knobs, given with their defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cprec_recbole.cli import split_args
from cprec_recbole.data.prepare import prepare
from cprec_recbole.plugins import load_plugins
from cprec_recbole.quick_start import build_config


@dataclass
class Bench:
    name: str
    dataset: str
    config: dict
    plugins: object
    recommender: object
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


def setup(argv: list[str], knobs: dict[str, int]) -> Bench:
    """Parse ``argv``; build the config, prepare the data and construct the recommender."""
    name, dataset, config, plugins, results, values = configure(argv, knobs)
    data = prepare(config, plugins)
    recommender = plugins.models.get(name)(config, data, plugins, set())
    return Bench(name, dataset, config, plugins, recommender, results, values)
