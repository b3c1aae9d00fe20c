"""Command line of ``run_recbole_llm.py``: RecBole's ``--key=value`` style, plus a few of our own."""

from __future__ import annotations

import sys
from pathlib import Path

from cprec_recbole.config import PROPERTIES, parse_overrides
from cprec_recbole.errors import ConfigError, DataError
from cprec_recbole.plugins import (
    LOAD_PLUGINS_ENV,
    PluginError,
    Plugins,
    UnknownNameError,
    load_plugins,
)

USAGE = """usage: python run_recbole_llm.py --model=NAME --dataset=NAME [--key=value ...]

options:
  --model=NAME            a registered model (below)
  --dataset=NAME          a dataset config in properties/dataset/, a registered domain, or a
                          folder NAME/ under --data_path holding NAME.inter and NAME.item
  --data_path=FOLDER      where datasets live (default: dataset/)
  --config_files=a.yaml,b.yaml
                          extra config files, applied in order after the built-in properties
  --plugin=FILE.py        load a plugin file (repeatable); also the 'plugins:' config key
  --force=STAGE           rebuild one cached stage (data, rec_model, ...); repeatable
  --plan                  print the command's stages (hash, cached / partial / to build, the
                          last build's wall time) without building anything
  --output_dir=FOLDER     where stages, results and logs go (default: saved/)
  --KEY=VALUE             any other config key, e.g. --epochs=5 --learning_rate=1e-3
  --tune=true             Ray Tune grid over tune_space (default: learning_rate 6e-4, 3e-4, 1e-4)
  --experiment=NAME --dataset=NAME [--seeds=N]
                          run a named experiment (properties/experiments/) and write its report
"""


def split_args(argv: list[str]) -> tuple[dict, list[str], list[str], list[str]]:
    """Separate our own flags (--plugin, --force, --config_files) from config overrides."""
    plugins: list[str] = []
    force: list[str] = []
    config_files: list[str] = []
    rest: list[str] = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "--plugin":
            plugins.append(value)
        elif key == "--force":
            force.append(value)
        elif key == "--config_files":
            config_files += [p for p in value.split(",") if p]
        else:
            rest.append(arg)
    return parse_overrides(rest), plugins, force, config_files


def help_text(plugin_files: list[str], data_path: str) -> str:
    plugins = load_plugins(plugin_files)
    datasets = sorted(p.stem for p in (PROPERTIES / "dataset").glob("*.yaml"))
    folder = Path(data_path)
    found = sorted(p.name for p in folder.glob("*") if (p / f"{p.name}.inter").is_file())
    return (
        USAGE
        + f"\nmodels:   {', '.join(plugins.models.names())}"
        + f"\ndatasets: {', '.join(datasets)} (configs); {', '.join(found) or 'none'} "
        f"(atomic files under {folder}); {', '.join(plugins.domains.names()) or 'no'} "
        "registered domains\n\nplugins and what each registers "
        f"(installed ones load unless {LOAD_PLUGINS_ENV}='' or names a list):\n"
        + plugin_listing(plugins)
    )


def plugin_listing(plugins: Plugins) -> str:
    """One line per plugin: its name, then per kind the names it registered."""
    lines = []
    for plugin, kinds in plugins.registered_by().items():
        what = "; ".join(
            f"{kind.replace('_', ' ')}: {', '.join(names)}" for kind, names in kinds.items()
        )
        lines.append(f"  {plugin}: {what or 'nothing'}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from cprec_recbole.quick_start import plan, run
    from cprec_recbole.stages import plan_table

    argv = sys.argv[1:] if argv is None else argv
    try:
        if {"-h", "--help"} & set(argv) or not argv:
            rest = [a for a in argv if a not in ("-h", "--help")]
            overrides, plugins, _, _ = split_args(rest)
            print(help_text(plugins, str(overrides.get("data_path", "dataset"))))
            return 0
        planned = bool({"--plan", "--plan=true"} & set(argv))
        argv = [a for a in argv if a not in ("--plan", "--plan=true")]
        overrides, plugins, force, config_files = split_args(argv)
        model = overrides.pop("model", None)
        dataset = overrides.pop("dataset", None)
        experiment = overrides.pop("experiment", None)
        if experiment and dataset:
            from cprec_recbole.command import plugin_paths
            from cprec_recbole.experiments import run_experiment

            loaded = load_plugins(plugin_paths(plugins, config_files, overrides))
            seeds = overrides.pop("seeds", None)
            folder = run_experiment(
                str(experiment), str(dataset), loaded, config_files, overrides, seeds
            )
            print(f"report: {folder / 'report.md'}")
            return 0
        if not model or not dataset:
            raise ConfigError("both --model=NAME and --dataset=NAME are required (see --help)")
        if planned:
            entries = plan(str(model), str(dataset), config_files, overrides, plugins, force)
            print(plan_table(entries))
            return 0
        run(str(model), str(dataset), config_files, overrides, plugins, force)
    except (ConfigError, DataError, PluginError, UnknownNameError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
