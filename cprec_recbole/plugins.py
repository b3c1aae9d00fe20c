"""Plugin loading: built-ins, installed entry points, then plugin files, all through the same hooks."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from cprec_recbole import hookspecs

BUILTIN_PLUGINS = (
    "cprec_recbole.builtin.recbole_models",
    "cprec_recbole.builtin.domains",
    "cprec_recbole.builtin.candidate_samplers",
    "cprec_recbole.builtin.backbones",
    "cprec_recbole.builtin.prompt_templates",
    "cprec_recbole.builtin.evaluators",
    "cprec_recbole.builtin.schedulers",
    "cprec_recbole.builtin.llm_models",
    "cprec_recbole.builtin.mixing_rules",
)
KINDS = (
    "models",
    "domains",
    "prompt_templates",
    "schedulers",
    "candidate_samplers",
    "evaluators",
    "backbones",
    "mixing_rules",
)


class PluginError(Exception):
    """A plugin could not be loaded, or two plugins claim the same name."""


class UnknownNameError(KeyError):
    """A model, dataset, template... name that nothing registered; the message suggests close ones."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


def unknown_name(kind: str, name: str, known: Iterable[str], hint: str = "") -> UnknownNameError:
    """Build the error for an unknown name, with close matches and the list of known ones."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    close_lower = [k for k in known if k.lower() == name.lower()]
    suggestions = list(dict.fromkeys(close_lower + close))
    msg = f"unknown {kind} {name!r}."
    if suggestions:
        msg += f" Did you mean: {', '.join(suggestions)}?"
    msg += f" Known {kind}s: {', '.join(known) or '(none)'}."
    return UnknownNameError(msg + (" " + hint if hint else ""))


@dataclass
class Registry:
    """Names -> objects of one kind, remembering which plugin registered each."""

    kind: str
    entries: dict[str, Any] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, obj: Any, owner: str) -> None:
        if name in self.entries:
            raise PluginError(
                f"{self.kind} {name!r} is registered twice: by plugin {self.owners[name]!r} "
                f"and by plugin {owner!r}. Rename one of them or remove one plugin."
            )
        self.entries[name] = obj
        self.owners[name] = owner

    def get(self, name: str) -> Any:
        if name not in self.entries:
            raise unknown_name(self.kind.rstrip("s").replace("_", " "), name, self.entries)
        return self.entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return sorted(self.entries)


@dataclass
class Plugins:
    """The loaded plugin manager and one registry per kind."""

    manager: pluggy.PluginManager
    registries: dict[str, Registry]

    def __getattr__(self, kind: str) -> Registry:
        try:
            return self.registries[kind]
        except KeyError:
            raise AttributeError(kind) from None

    def plugin_names(self) -> list[str]:
        return [self.manager.get_name(p) for p in self.manager.get_plugins()]


def _load_file(path: str | Path) -> tuple[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PluginError(f"plugin file {path} does not exist (from --plugin or the 'plugins' key)")
    name = f"cprec_recbole_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise PluginError(
            f"plugin file {path} raised while being imported:\n{traceback.format_exc()}"
        ) from exc
    return str(path), module


def load_plugins(plugin_files: Iterable[str | Path] = ()) -> Plugins:
    """Built-ins first, then entry points of group ``cprec_recbole``, then the given files."""
    pm = pluggy.PluginManager("cprec_recbole")
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    try:
        pm.load_setuptools_entrypoints("cprec_recbole")
    except Exception as exc:
        raise PluginError(
            f"an installed plugin (entry point group 'cprec_recbole') failed to load:\n"
            f"{traceback.format_exc()}"
        ) from exc
    for path in dict.fromkeys(str(p) for p in plugin_files):
        name, module = _load_file(path)
        if pm.get_plugin(name) is None:
            pm.register(module, name=name)
    registries = {kind: Registry(kind) for kind in KINDS}
    for kind, registry in registries.items():
        hook = getattr(pm.hook, f"register_{kind}")
        for impl in hook.get_hookimpls():
            owner = impl.plugin_name

            def register(name: str, obj: Any, _owner: str = owner, _reg: Registry = registry):
                _reg.add(name, obj, _owner)

            impl.function(register=register)
    return Plugins(pm, registries)
