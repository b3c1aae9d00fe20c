"""Command line of ``run_recbole_llm.py``: RecBole's ``--key=value`` style, plus a few of our own."""

from __future__ import annotations

import logging
import sys
import tempfile
import traceback
from pathlib import Path

from cprec_recbole.config import PROPERTIES, parse_overrides, read_yaml
from cprec_recbole.errors import ConfigError, DataError, RunError
from cprec_recbole.plugins import (
    LOAD_PLUGINS_ENV,
    PluginError,
    Plugins,
    UnknownNameError,
    load_plugins,
)

OVERALL = PROPERTIES / "overall.yaml"
PACKAGE = "cprec_recbole"
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
                          last build's wall time) without building anything; with --tune or
                          --experiment the stages the runs share once, then each run's own
  --output_dir=FOLDER     where stages, results and logs go (default: saved/)
  --KEY=VALUE             any other config key, e.g. --epochs=5 --learning_rate=1e-3
  --tune=true             Ray Tune grid over tune_space (default: learning_rate 6e-4, 3e-4, 1e-4)
  --experiment=NAME --dataset=NAME [--seeds=N]
                          run a named experiment (properties/experiments/) and write its report
  --report                with --experiment: build nothing, write the report of the runs already
                          built and name the rest (how far a long experiment has got)
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
    """Run the command; any error ends as one line on stderr and exit code 2 (130: Ctrl-C)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        return command(argv)
    except (ConfigError, DataError, RunError, PluginError, UnknownNameError) as exc:
        message = str(exc)
    except OSError as exc:
        message = os_message(exc)
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept; run it again to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  a bug, not bad input: the traceback goes to a file
        message = internal_message(exc)
    print(f"error: {message}", file=sys.stderr)
    return 2


def os_message(exc: OSError) -> str:
    """A failed read or write: the path, the reason, what to check."""
    if exc.filename is None:
        return f"{exc.strerror or exc}"
    return (
        f"{exc.filename}: {exc.strerror}; check the path (data_path, output_dir, config and "
        "plugin files), its permissions and the free disk space"
    )


def internal_message(exc: BaseException) -> str:
    """An unexpected error: its type, first line and place, and the file holding the traceback
    (the run's log when there is one)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f"{PACKAGE}/" in f.filename.replace("\\", "/")] or frames
    where = f" at {Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else ""
    where += "".join(f" {note}" for note in getattr(exc, "__notes__", []))
    logs = [getattr(h, "baseFilename", "") for h in logging.getLogger().handlers]
    logs = [name for name in logs if name.endswith(".log")]
    if not logs:
        logs = [tempfile.mkstemp(prefix="cprec_recbole-", suffix=".log")[1]]
    with open(logs[0], "a", encoding="utf-8") as handle:
        handle.write("".join(traceback.format_exception(exc)))
    first = (str(exc).strip().splitlines() or [""])[0]
    return (
        f"unexpected {type(exc).__name__}{where}: {first}; not a known bad input, so likely a "
        f"bug (please report it); the traceback is in {logs[0]}"
    )


def command(argv: list[str]) -> int:
    """The command line's work, errors left to :func:`main`."""
    from cprec_recbole.command import setup
    from cprec_recbole.quick_start import plan, run
    from cprec_recbole.stages import groups_table, plan_table

    if {"-h", "--help"} & set(argv) or not argv:
        rest = [a for a in argv if a not in ("-h", "--help")]
        overrides, plugins, _, _ = split_args(rest)
        data_path = overrides.get("data_path") or read_yaml(OVERALL)["data_path"]
        print(help_text(plugins, str(data_path)))
        return 0
    planned = bool({"--plan", "--plan=true"} & set(argv))
    reported = bool({"--report", "--report=true"} & set(argv))
    argv = [a for a in argv if a not in ("--plan", "--plan=true", "--report", "--report=true")]
    overrides, plugins, force, config_files = split_args(argv)
    model = overrides.pop("model", None)
    dataset = overrides.pop("dataset", None)
    experiment = overrides.pop("experiment", None)
    if experiment and dataset:
        from cprec_recbole.command import plugin_paths
        from cprec_recbole.experiments import experiment_runs, run_experiment, run_specs
        from cprec_recbole.pipeline import plan_groups

        loaded = load_plugins(plugin_paths(plugins, config_files, overrides))
        seeds = overrides.pop("seeds", None)
        named, runs = experiment_runs(
            str(experiment), str(dataset), loaded, config_files, overrides, seeds
        )
        if planned:
            print(groups_table(plan_groups(run_specs(runs), loaded)))
            return 0
        folder = run_experiment(named, runs, str(dataset), loaded, build=not reported)
        print(f"report: {folder / 'report.md'}")
        return 0
    if reported:
        raise ConfigError("--report goes with --experiment=NAME (a run's results are its own)")
    if not model or not dataset:
        raise ConfigError("both --model=NAME and --dataset=NAME are required (see --help)")
    if planned:
        config, loaded, _ = setup(str(model), str(dataset), config_files, overrides, plugins)
        groups = plan(config, loaded, config_files, overrides, force)
        print(groups_table(groups) if len(groups) > 1 else plan_table(groups[0][1]))
        return 0
    run(str(model), str(dataset), config_files, overrides, plugins, force)
    return 0
