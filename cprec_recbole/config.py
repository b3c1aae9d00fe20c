"""Layered configuration, RecBole's way: overall -> model -> dataset -> files -> command line."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from cprec_recbole.errors import ConfigError

PROPERTIES = Path(__file__).resolve().parent.parent / "properties"


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (plain YAML 1.1 wants ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    ),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """Read one ``--key=value`` value as YAML: numbers, booleans, lists and dicts work."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def read_yaml(path: Path) -> dict:
    """Read a YAML mapping; errors name the file and line."""
    try:
        data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_Loader)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(
            f"config file {path} cannot be read ({reason}); name a YAML file"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def dataset_properties(dataset: str) -> Path:
    return PROPERTIES / "dataset" / f"{dataset}.yaml"


def model_properties(model: str, cls: type | None = None) -> list[Path]:
    """Model defaults, base classes first: a subclass of SASRec starts from SASRec's YAML.

    Looks in our ``properties/model/`` and RecBole's own; ``cls.properties`` names a file too.
    """
    import recbole

    roots = [Path(recbole.__file__).parent / "properties" / "model", PROPERTIES / "model"]
    names = [c.__name__ for c in reversed(cls.__mro__)] if isinstance(cls, type) else []
    paths = [root / f"{name}.yaml" for name in dict.fromkeys([*names, model]) for root in roots]
    own = getattr(cls, "properties", None)
    return paths + ([Path(own)] if own else [])


def builtin_layers(model: str, dataset: str, model_cls: type | None = None) -> list[Path]:
    """The property files that exist for ``model`` on ``dataset``, in merge order (no profile)."""
    layers = [PROPERTIES / "overall.yaml", *model_properties(model, model_cls)]
    return [p for p in [*layers, dataset_properties(dataset)] if p.is_file()]


def key_lines(path: Path) -> dict[str, int]:
    """The line (from 1) of each top-level key of a YAML mapping file, for error messages."""
    node = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=_Loader)
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {key.value: key.start_mark.line + 1 for key, _ in node.value}


def load_config(
    model: str,
    dataset: str,
    model_cls: type | None = None,
    config_files: Iterable[str | Path] = (),
    overrides: Mapping[str, Any] | None = None,
) -> dict:
    """Merge the layers into one flat dict; later layers win."""
    layers = builtin_layers(model, dataset, model_cls)
    files = [Path(p) for p in config_files]
    config = _merge(layers + files, overrides)
    profile = profile_properties(config)
    if profile is not None:
        config = _merge(layers + [profile] + files, overrides)
    config["model"] = model
    config["dataset"] = dataset
    return config


def _merge(paths: list[Path], overrides: Mapping[str, Any] | None) -> dict:
    config: dict[str, Any] = {}
    for path in paths:
        config.update(read_yaml(path))
    config.update(overrides or {})
    return config


def profile_properties(config: Mapping[str, Any]) -> Path | None:
    """The budget profile of an LLM model: ``properties/profile/<name>.yaml``.

    ``auto`` picks ``tiny`` for the tiny-random backbone and ``cpu`` on a machine without CUDA;
    ``none`` keeps the paper's settings; ``gpu`` (asked for by name) adds the paper's backbone. It sits after the dataset layer, so files and the command
    line still override it.
    """
    name = config.get("profile")
    if "llm_backbone" not in config or name in (None, "none"):
        return None
    if name == "auto":
        import torch

        if config.get("llm_backbone") == "tiny-random":
            name = "tiny"
        elif not torch.cuda.is_available():
            name = "cpu"
        else:
            return None
    path = PROPERTIES / "profile" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"profile {name!r}: no {path}; known profiles: {', '.join(known)}, none")
    return path


def parse_overrides(args: Iterable[str]) -> dict[str, Any]:
    """``--key=value`` pairs into a dict; anything else is an error naming the argument."""
    out: dict[str, Any] = {}
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"cannot read argument {arg!r}: expected --key=value")
        key, value = arg[2:].split("=", 1)
        out[key] = parse_value(value)
    return out
