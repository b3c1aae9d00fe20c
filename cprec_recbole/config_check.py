"""Checking a run's config before any work starts.

Every key a user gives (command line or config file) must be one the run reads, and every value
must have its key's type and range. Otherwise a typo (``--learnin_rate``) silently changes
nothing, or a bad value (``--learning_rate=abc``) ends in a traceback from deep inside torch after
the data is built. Keys nothing reads on purpose go in ``extra_keys``.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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
from cprec_recbole.llm.names import (
    DTYPE_CHOICES,
    EVAL_ITEM_EMBEDDINGS,
    FP16_REFUSED,
    REC_MODEL,
    SFT_OBJECTIVES,
    VARIANTS,
)
from cprec_recbole.llm.schedulers import schedule_keys
from cprec_recbole.plugins import Plugins

#: Keys RecBole sets or reads at run time that its property files do not list.
RECBOLE_RUNTIME = ("local_rank", "nproc", "world_size", "offset", "ip", "port", "backend", "device")
#: The command line's own keys.
OWN_KEYS = ("model", "dataset")


@dataclass(frozen=True)
class Number:
    """A numeric key's range; ``integer`` also rejects 0.5, ``nullable`` lets null through."""

    lo: float | None = None
    hi: float | None = None
    integer: bool = False
    lo_open: bool = False
    hi_open: bool = False
    nullable: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.lo == 0 and self.lo_open and self.hi is None:
            text = f"a positive {kind.split()[-1]}"
        elif self.hi is None and self.lo is not None:
            text = f"{kind} >= {self.lo:g}"
        elif self.lo is not None:
            text = f"{kind} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}"
            text += ")" if self.hi_open else "]"
        else:
            text = kind
        return text + (" or null" if self.nullable else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not math.isfinite(value) or (self.integer and not float(value).is_integer()):
            return False
        low = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
        high = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        return low and high


@dataclass(frozen=True)
class Choice:
    """A key that takes one of a fixed set of values; ``why`` says why a tempting one is not."""

    options: tuple[Any, ...]
    why: str = ""

    def describe(self) -> str:
        text = "one of " + ", ".join(map(str, self.options))
        return f"{text} ({self.why})" if self.why else text

    def accepts(self, value: Any) -> bool:
        return value in self.options


POSITIVE = Number(0, lo_open=True)
FRACTION = Number(0, 1)
COUNT = Number(1, integer=True)
SIZE = Number(0, integer=True)  # 0 allowed
CAP = Number(0, integer=True, nullable=True)  # null: no cap / all
#: Type and range of the keys whose value a wrong number would silently break.
RULES: dict[str, Number | Choice] = {
    **dict.fromkeys(
        ["learning_rate", "text_encoder_learning_rate", "eta_l", "eta_h", "lora_alpha"], POSITIVE
    ),
    "max_grad_norm": Number(0, lo_open=True, nullable=True),
    "projector_decay": Number(0),
    **dict.fromkeys(["warmup_ratio", "min_lr_ratio"], FRACTION),
    **dict.fromkeys(["cpt_warmup_ratio", "lora_dropout"], Number(0, 1, hi_open=True)),
    "user_sample_ratio": Number(0, 1, lo_open=True, nullable=True),
    **dict.fromkeys(
        [
            "epochs",
            "train_batch_size",
            "micro_batch_size",
            "eval_batch_size",
            "cpt_batch_size",
            "cpt_micro_batch_size",
            "checkpoint_every",
            "history_len",
            "num_negatives",
            "lora_r",
            "cpt_stride",
            "eval_rounds",
            "max_new_tokens",
            "eval_batch_users",
            "text_encoder_chunk",
            "corpus_shards",
        ],
        COUNT,
    ),
    **dict.fromkeys(
        ["max_title_tokens", "score_max_tokens", "valid_score_max_tokens", "lora_layers"],
        Number(1, integer=True, nullable=True),
    ),
    **dict.fromkeys(
        ["sft_samples", "cpt_samples", "cpt_mixed_samples", "eval_users", "valid_users"], CAP
    ),
    "user_sample_num": CAP,
    "text_encoder_trainable_layers": SIZE,
    "tune_cpus_per_trial": Number(1, integer=True, nullable=True),
    "tune_gpus_per_trial": Number(0, nullable=True),
    **dict.fromkeys(
        ["min_history", "stopping_step", "k_core", "seed", "data_seed", "eval_seed", "cpt_seed"],
        SIZE,
    ),
    "dtype": Choice(DTYPE_CHOICES, FP16_REFUSED),
    **dict.fromkeys(["score_rule", "valid_score_rule"], Choice(("mean", "distinct_prefix"))),
    "cpt_variant": Choice(tuple(VARIANTS)),
    "sft_objective": Choice(SFT_OBJECTIVES),
    "sft_objective_mix": FRACTION,
    "eval_item_embeddings": Choice(EVAL_ITEM_EMBEDDINGS),
}
#: Keys whose value names something a plugin registers, and the registry it must be in.
NAMED = {
    "llm_backbone": "backbones",
    "prompt_template": "prompt_templates",
    "text_template": "prompt_templates",
    "cpt_template": "prompt_templates",
    "lr_scheduler": "schedulers",
    "cpt_scheduler": "schedulers",
    "candidate_sampler": "candidate_samplers",
    "inference": "evaluators",
    "valid_inference": "evaluators",
    "mixing_rule": "mixing_rules",
}
#: List-valued keys that also take one string.
LIST_OR_STRING = ("plugins", "lora_target_modules", "cpt_domains", "extra_keys")


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
    SASRec an LLM model uses (``rec_model_keys``), else the models that read it (``readers``)."""
    problems = []
    for key, origin in given.items():
        if key in known or key in extra:
            continue
        hint = _close(key, known)
        users = [name for name, keys in readers.items() if key in keys]
        if not hint and key in rec_model_keys:
            hint = f"; a setting of the SASRec it uses goes in rec_model_overrides: {{{key}: ...}}"
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


def value_problem(key: str, value: Any, defaults: list, plugins: Plugins) -> str | None:
    """What is wrong with ``value`` for ``key``, or None: the rule of ``RULES`` or ``NAMED``, else
    the type of the key's built-in defaults (null passes where a default is null)."""
    if key in RULES:
        rule = RULES[key]
        return None if rule.accepts(value) else f"must be {rule.describe()}, got {value!r}"
    if value is None and None in defaults:
        return None
    if key in NAMED:
        registry = getattr(plugins, NAMED[key])
        if value in registry:
            return None
        return f"names no registered {NAMED[key][:-1].replace('_', ' ')}: {value!r}" + (
            f"; known: {', '.join(registry.names())}"
        )
    wanted = {_type_name(v) for v in defaults if v is not None} - {None}
    if len(wanted) != 1:
        return None
    (want,) = wanted
    if _type_name(value) == want or (
        want == "a list" and key in LIST_OR_STRING and type(value) is str
    ):
        return None
    return f"must be {want}, got {value!r}"


def check_config(
    config: Mapping[str, Any],
    plugins: Plugins,
    config_files: Iterable[str | Path] = (),
    overrides: Mapping[str, Any] | None = None,
) -> None:
    """Raise one ``ConfigError`` listing every unknown key and bad value of ``config``."""
    model, dataset = config["model"], config["dataset"]
    model_cls = plugins.models.get(model)
    # a file key absent from config was routed to other arms of an experiment
    given = {k: v for k, v in origins(config_files, overrides or {}).items() if k in config}
    extra = config.get("extra_keys") or []
    extra = [extra] if isinstance(extra, str) else list(extra)
    known = known_keys(model, dataset, model_cls, plugins, config)
    sasrec = known_keys(REC_MODEL, dataset, plugins.models.get(REC_MODEL), plugins, {})
    unknown = {k: v for k, v in given.items() if k not in known}
    readers = {
        name: known_keys(name, dataset, plugins.models.get(name), plugins, {})
        for name in (plugins.models.names() if unknown else [])
    }
    rec_keys = sasrec if "sasrec" in getattr(model_cls, "pipeline", ()) else set()
    problems = unknown_key_problems(unknown, known, extra, readers, rec_keys)
    defaults = builtin_values(model, dataset, model_cls, config)
    for key in sorted(known & set(config)):
        problem = value_problem(key, config[key], defaults.get(key, []), plugins)
        if problem:
            where = given.get(key) or "the built-in properties"
            problems.append(f"config key {key!r} ({where}) {problem}")
    if not is_recbole_model(model_cls):
        where = given.get("rec_model_overrides", "the built-in properties")
        for key in config.get("rec_model_overrides") or {}:
            if key not in sasrec:
                close = _close(key, sasrec)
                problems.append(
                    f"unknown SASRec key {key!r} in rec_model_overrides ({where}){close}"
                )
    if problems:
        raise ConfigError("; ".join(problems))
