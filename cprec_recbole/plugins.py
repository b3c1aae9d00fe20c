"""Plugin loading: built-ins, installed entry points, then plugin files, all through the same hooks."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
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
    "cprec_recbole.builtin.experiments",
    "cprec_recbole.builtin.text_encoders",
)
#: Like llm's LLM_LOAD_PLUGINS: unset loads every installed plugin, "" none, "a,b" only those.
LOAD_PLUGINS_ENV = "CPREC_RECBOLE_LOAD_PLUGINS"
KINDS = (
    "models",
    "domains",
    "prompt_templates",
    "schedulers",
    "candidate_samplers",
    "evaluators",
    "backbones",
    "mixing_rules",
    "experiments",
    "text_encoders",
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
    """The loaded plugin manager and one registry per kind.

    Pickling or deep-copying reloads the plugins from ``files`` (absolute paths), since the
    manager holds modules: that is how a Ray Tune trial gets them in its worker process.
    """

    manager: pluggy.PluginManager
    registries: dict[str, Registry]
    files: tuple[str, ...] = ()

    def __getattr__(self, kind: str) -> Registry:
        # Read __dict__ directly: while unpickling or copying, ``registries`` may not be set yet.
        registries = self.__dict__.get("registries", {})
        if kind in registries:
            return registries[kind]
        raise AttributeError(kind)

    def __reduce__(self) -> tuple:
        return load_plugins, (self.files,)

    def plugin_names(self) -> list[str]:
        """In load order: built-ins, installed plugins, plugin files."""
        return [name for name, plugin in self.manager.list_name_plugin() if plugin is not None]

    def registered_by(self) -> dict[str, dict[str, list[str]]]:
        """Plugin -> kind -> the names it registered (a plugin that registered nothing: {})."""
        out: dict[str, dict[str, list[str]]] = {name: {} for name in self.plugin_names()}
        for kind, registry in self.registries.items():
            for name in registry.names():
                out.setdefault(registry.owners[name], {}).setdefault(kind, []).append(name)
        return out


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
            f"plugin file {path} raised while being imported: {raised(exc)}; fix the file or "
            "leave it out"
        ) from exc
    return str(path), module


def raised(exc: BaseException) -> str:
    """An exception in one line: its type, message and the file and line it came from."""
    if isinstance(exc, SyntaxError):
        where, first = f"{exc.filename}:{exc.lineno}", exc.msg
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first} (at {where})"


def installed_plugins(only: str | None) -> list[metadata.EntryPoint]:
    """Entry points of group ``cprec_recbole``: all of them when ``only`` is None (the variable
    is unset), none for ``""``, else those whose name or package is in the comma list."""
    found = list(metadata.entry_points(group="cprec_recbole"))
    if only is None:
        return found
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    chosen = [e for e in found if e.name in wanted or (e.dist and e.dist.name in wanted)]
    missing = wanted - {e.name for e in chosen} - {e.dist.name for e in chosen if e.dist}
    if missing:
        names = ", ".join(sorted(e.name for e in found)) or "none"
        raise PluginError(
            f"{LOAD_PLUGINS_ENV} names {', '.join(sorted(missing))}, which no installed package "
            f"provides (installed cprec_recbole plugins: {names})"
        )
    return chosen


def load_plugins(plugin_files: Iterable[str | Path] = ()) -> Plugins:
    """Built-ins first, then entry points of group ``cprec_recbole``, then the given files."""
    pm = pluggy.PluginManager("cprec_recbole")
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    for entry in installed_plugins(os.environ.get(LOAD_PLUGINS_ENV)):
        try:
            pm.register(entry.load(), name=entry.name)
        except Exception as exc:
            raise PluginError(
                f"installed plugin {entry.name!r} (entry point {entry.value}) failed to load: "
                f"{raised(exc)}; {LOAD_PLUGINS_ENV}='' skips installed plugins"
            ) from exc
    paths = list(dict.fromkeys(str(p) for p in plugin_files))
    for path in paths:
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

            try:
                impl.function(register=register)
            except (PluginError, UnknownNameError):
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin {owner}: register_{kind} raised {raised(exc)}; fix the plugin or "
                    "leave it out"
                ) from exc
    return Plugins(pm, registries, tuple(str(Path(p).resolve()) for p in paths))
