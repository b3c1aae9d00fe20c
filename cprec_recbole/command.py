"""A command's inputs made ready: its plugins, and its merged, checked, read-tracked config."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cprec_recbole.config import load_config, read_yaml
from cprec_recbole.config_check import check_config
from cprec_recbole.plugins import Plugins, load_plugins
from cprec_recbole.run_config import RunConfig


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


def setup(
    model: str,
    dataset: str,
    config_files: Iterable[str | Path] = (),
    overrides: Mapping[str, Any] | None = None,
    plugin_files: Iterable[str | Path] = (),
) -> tuple[RunConfig, Plugins, list[str]]:
    """The checked, tracked config, the plugins and the plugin files of a command; checked
    before anything is written, tracked so that each stage may read only what it declares."""
    overrides = dict(overrides or {})
    config_files = list(config_files)
    plugin_files = plugin_paths(plugin_files, config_files, overrides)
    plugins = load_plugins(plugin_files)
    config = build_config(model, dataset, plugins, config_files, overrides)
    check_config(config, plugins, config_files, overrides)
    return RunConfig(config), plugins, plugin_files
