"""Checking a run's config before any work starts.

Every key a user gives (command line or config file) must be one the run reads, and every value
must pass its key's check, declared beside its default in ``properties/`` (:mod:`cprec_recbole.keys`).
Otherwise a typo (``--learnin_rate``) silently changes nothing, or a bad value
(``--learning_rate=abc``) ends in a traceback from deep inside torch after the data is built.
Keys nothing reads on purpose go in ``extra_keys``.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from recbole.model.abstract_recommender import SequentialRecommender

from cprec_recbole.config import (
    builtin_layers,
    key_lines,
    profile_properties,
    read_yaml,
)
from cprec_recbole.errors import ConfigError
from cprec_recbole.keys import Registered, Rule, declarations, rules
from cprec_recbole.llm.schedulers import schedule_keys
from cprec_recbole.plugins import Plugins

#: Keys RecBole sets or reads at run time that its property files do not list.
RECBOLE_RUNTIME = ("local_rank", "nproc", "world_size", "offset", "ip", "port", "backend", "device")
#: The command line's own keys.
OWN_KEYS = ("model", "dataset")
#: A dataset name: it names folders and files, so it may not climb out of them.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][\w.+-]*")


def is_recbole_model(model_cls: Any) -> bool:
    """A RecBole sequential model, trained and scored by the shared ID-model pipeline."""
    return isinstance(model_cls, type) and issubclass(model_cls, SequentialRecommender)


@functools.cache
def recbole_keys() -> frozenset[str]:
    """Every key of RecBole's own property files (overall, dataset, quick-start presets)."""
    import recbole

    root = Path(recbole.__file__).parent / "properties"
    paths = [root / "overall.yaml", *sorted((root / "dataset").glob("*.yaml"))]
    paths += sorted((root / "quick_start_config").glob("*.yaml"))
    return frozenset({key for path in paths for key in read_yaml(path)} | set(RECBOLE_RUNTIME))


def builtin_values(model: str, dataset: str, model_cls: Any, config: Mapping) -> dict[str, list]:
    """Each key's values in this run's built-in layers, the profile included."""
    paths = builtin_layers(model, dataset, model_cls)
    profile = profile_properties(config)
    out: dict[str, list] = {}
    for path in paths + ([profile] if profile else []):
        for key, value in read_yaml(path).items():
            out.setdefault(key, []).append(value)
    return out


def known_keys(model: str, dataset: str, model_cls: Any, plugins: Plugins, config: Mapping) -> set:
    """The keys this run reads: its property files (not the profile, which sets keys for every
    LLM model), RecBole's for a RecBole model, and the keys its schedules declare."""
    keys = set(OWN_KEYS)
    for path in builtin_layers(model, dataset, model_cls):
        keys |= set(read_yaml(path))
    if is_recbole_model(model_cls):
        keys |= recbole_keys()
    for name_key in ("lr_scheduler", "cpt_scheduler"):
        if name_key in keys and config.get(name_key) in plugins.schedulers:
            keys |= set(schedule_keys(plugins.schedulers.get(config[name_key])))
    return keys


def embedding_model_keys(
    config: Mapping[str, Any], dataset: str, plugins: Plugins
) -> tuple[str | None, Any, set[str]]:
    """An LLM model's ``embedding_model``: its name, class and keys (empty where it names no
    RecBole model, or the model has no hybrid prompt)."""
    name = config.get("embedding_model")
    cls = plugins.models.get(name) if isinstance(name, str) and name in plugins.models else None
    keys = known_keys(name, dataset, cls, plugins, {}) if is_recbole_model(cls) else set()
    return name, cls, keys


def origins(config_files: Iterable[str | Path], overrides: Mapping[str, Any]) -> dict[str, str]:
    """Where each user-given key came from: ``--key`` or ``file:line`` (the last one wins)."""
    out: dict[str, str] = {}
    for path in config_files:
        out.update({key: f"{path}:{line}" for key, line in key_lines(Path(path)).items()})
    out.update({key: f"--{key}" for key in overrides})
    return out


def _close(key: str, known: Iterable[str]) -> str:
    matches = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.75)
    return f"; did you mean {' or '.join(matches)}?" if matches else ""


def unknown_key_problems(
    given: Mapping[str, str],
    known: set[str],
    extra: Iterable[str],
    readers: Mapping[str, set],
    rec_model_keys: set[str],
) -> list[str]:
    """One message per given key (key -> origin) that the run does not read, with the close
    matches or, failing those, where the key belongs: ``rec_model_overrides`` for a key of the
    ID model an LLM model uses (``rec_model_keys``), else the models that read it (``readers``)."""
    problems = []
    for key, origin in given.items():
        if key in known or key in extra:
            continue
        hint = _close(key, known)
        users = [name for name, keys in readers.items() if key in keys]
        if not hint and key in rec_model_keys:
            hint = (
                "; a setting of the ID model it uses (embedding_model) goes in "
                f"rec_model_overrides: {{{key}: ...}}"
            )
        elif not hint and users:
            hint = f"; only {', '.join(users)} read it"
        problems.append(f"unknown config key {key!r} ({origin}){hint}")
    return problems


def _type_name(value: Any) -> str | None:
    """The type a default value asks for; None where defaults do not constrain it."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return None


def own_rules(model_cls: Any) -> dict[str, Rule]:
    """The checks a plugin model declares in its own properties file (``cls.properties``), in
    the same ``# (check) comment`` style, for keys the package does not declare."""
    own = getattr(model_cls, "properties", None)
    if not own or not Path(own).is_file():
        return {}
    declared = rules()
    lines = declarations(Path(own))
    return {x.key: x.rule for x in lines if x.rule is not None and x.key not in declared}


def value_problem(
    key: str, value: Any, defaults: list, plugins: Plugins, extra_rules: Mapping | None = None
) -> str | None:
    """What is wrong with ``value`` for ``key``, or None: the check declared in ``properties/``
    or in a plugin model's own file (``extra_rules``); for a key declared nowhere (RecBole's),
    the type of its built-in defaults (null passes where a default is null)."""
    rule = rules().get(key) or (extra_rules or {}).get(key)
    if isinstance(rule, Registered):
        registry = getattr(plugins, rule.registry)
        if value in registry or (value is None and rule.nullable):
            return None
        kind = rule.registry[:-1].replace("_", " ")
        return f"names no registered {kind}: {value!r}; known: {', '.join(registry.names())}"
    if rule is not None:
        return None if rule.accepts(value) else f"must be {rule.describe()}, got {value!r}"
    if value is None and None in defaults:
        return None
    wanted = {_type_name(v) for v in defaults if v is not None} - {None}
    if len(wanted) != 1 or _type_name(value) in wanted:
        return None
    return f"must be {wanted.pop()}, got {value!r}"


def check_config(
    config: Mapping[str, Any],
    plugins: Plugins,
    config_files: Iterable[str | Path] = (),
    overrides: Mapping[str, Any] | None = None,
) -> None:
    """Raise one ``ConfigError`` listing every unknown key and bad value of ``config``."""
    model, dataset = config["model"], config["dataset"]
    if not PLAIN_NAME.fullmatch(str(dataset)) or ".." in str(dataset):
        raise ConfigError(
            f"dataset name {dataset!r} must be a plain name (letters, digits, . _ + -), not a "
            "path: put the dataset's folder under data_path and pass its name"
        )
    model_cls = plugins.models.get(model)
    # a file key absent from config was routed to other arms of an experiment
    given = {k: v for k, v in origins(config_files, overrides or {}).items() if k in config}
    extra = config["extra_keys"]  # checked below; a wrong type reads as no extra keys
    extra = [extra] if isinstance(extra, str) else extra if isinstance(extra, list) else []
    known = known_keys(model, dataset, model_cls, plugins, config)
    rec_name, rec_cls, rec_keys = embedding_model_keys(config, dataset, plugins)
    unknown = {k: v for k, v in given.items() if k not in known}
    readers = {
        name: known_keys(name, dataset, plugins.models.get(name), plugins, {})
        for name in (plugins.models.names() if unknown else [])
    }
    uses_rec = "sasrec" in getattr(model_cls, "pipeline", ())
    problems = unknown_key_problems(unknown, known, extra, readers, rec_keys if uses_rec else set())
    if rec_cls is not None and not is_recbole_model(rec_cls):
        where = given.get("embedding_model", "the built-in properties")
        problems.append(
            f"config key 'embedding_model' ({where}) names {rec_name!r}, not an ID model: "
            "hybrid prompts read a RecBole sequential model's item embeddings (SASRec, "
            "GRU4Rec, CL4SRec, MoRec)"
        )
    defaults = builtin_values(model, dataset, model_cls, config)
    model_rules = own_rules(model_cls)
    for key in sorted(known & set(config)):
        problem = value_problem(key, config[key], defaults.get(key, []), plugins, model_rules)
        if problem:
            where = given.get(key) or "the built-in properties"
            problems.append(f"config key {key!r} ({where}) {problem}")
    if not is_recbole_model(model_cls) and isinstance(config["rec_model_overrides"], dict):
        where = given.get("rec_model_overrides", "the built-in properties")
        for key in config["rec_model_overrides"] if rec_keys else ():
            if key not in rec_keys:
                close = _close(key, rec_keys)
                problems.append(
                    f"unknown {rec_name} key {key!r} in rec_model_overrides ({where}){close}"
                )
    if problems:
        raise ConfigError("; ".join(problems))
