"""``run(model, dataset, ...)``: resolve the model's stages, run or reuse them, report results."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from cprec_recbole.config import load_config, read_yaml
from cprec_recbole.config_check import check_config, is_recbole_model
from cprec_recbole.data.prepare import prepare
from cprec_recbole.logs import setup_logging
from cprec_recbole.plugins import Plugins, load_plugins
from cprec_recbole.rec_model import train_id_model
from cprec_recbole.results import table
from cprec_recbole.run_config import RunConfig
from cprec_recbole.stages import PlanEntry, planning

logger = logging.getLogger(__name__)


def plugin_paths(
    plugin_files: Iterable[str | Path], config_files: Iterable[str | Path], overrides: Mapping
) -> list[str]:
    """Plugin files named by ``--plugin`` and by the ``plugins:`` key of config files or overrides."""
    paths = [str(p) for p in plugin_files]
    for path in config_files:
        paths += [str(p) for p in read_yaml(Path(path)).get("plugins") or []]
    value = overrides.get("plugins") or []
    return paths + [str(p) for p in ([value] if isinstance(value, str) else value)]


def build_config(
    model: str,
    dataset: str,
    plugins: Plugins,
    config_files: Iterable[str | Path] = (),
    overrides: Mapping[str, Any] | None = None,
) -> dict:
    """The merged config for ``model`` on ``dataset`` (the model name must be registered)."""
    model_cls = plugins.models.get(model)
    return load_config(model, dataset, model_cls, config_files, overrides)


def run(
    model: str,
    dataset: str,
    config_files: Iterable[str | Path] = (),
    overrides: Mapping[str, Any] | None = None,
    plugin_files: Iterable[str | Path] = (),
    force: Iterable[str] = (),
) -> dict:
    """Run ``model`` on ``dataset`` end to end; returns the results dict (valid and test metrics)."""
    config, plugins, plugin_files = _setup(model, dataset, config_files, overrides, plugin_files)
    setup_logging(Path(config["output_dir"]) / "log", f"{model}-{dataset}")
    logger.info(
        "config of this run:\n%s", yaml.safe_dump(config.as_dict(), sort_keys=True).rstrip()
    )
    if config.get("tune"):
        from cprec_recbole.tune import run_tune

        return run_tune(
            model, dataset, config, plugins, config_files, overrides or {}, plugin_files, force
        )
    folder = _stages(model, config, plugins, set(force))
    results = json.loads((folder / "results.json").read_text())
    logger.info("results in %s\n%s", folder, table(results))
    results["folder"] = str(folder)
    return results


def plan(
    model: str,
    dataset: str,
    config_files: Iterable[str | Path] = (),
    overrides: Mapping[str, Any] | None = None,
    plugin_files: Iterable[str | Path] = (),
    force: Iterable[str] = (),
) -> list[PlanEntry]:
    """The stages ``run`` would build or reuse, without building any (``--plan``)."""
    config, plugins, _ = _setup(model, dataset, config_files, overrides, plugin_files)
    with planning() as entries:
        _stages(model, config, plugins, set(force))
    return entries


def _setup(model, dataset, config_files, overrides, plugin_files):
    """The checked, tracked config, the plugins and the plugin files of a command."""
    overrides = dict(overrides or {})
    config_files = list(config_files)
    plugin_files = plugin_paths(plugin_files, config_files, overrides)
    plugins = load_plugins(plugin_files)
    config = build_config(model, dataset, plugins, config_files, overrides)
    check_config(config, plugins, config_files, overrides)  # before anything is written
    return RunConfig(config), plugins, plugin_files  # each stage may read only what it declares


def _stages(model: str, config: RunConfig, plugins: Plugins, force: set[str]) -> Path:
    """Every stage of ``model`` in order; the folder holding its results."""
    data = prepare(config, plugins, force="data" in force)
    model_cls = plugins.models.get(model)
    if is_recbole_model(model_cls):
        return train_id_model(model_cls, config, data, plugins, force)
    return model_cls.run(config, data, plugins, force)
