"""The run's config as a read-tracked mapping: while a stage builds, reading a key the stage did
not declare is an error, so a stage's cache key (its declared keys' values) cannot go stale.

Outside a stage every key may be read. Inside one, :func:`reading` names the keys allowed;
``config.updated(...)`` makes a changed copy that stays tracked (a plain ``{**config}`` copy would
not, so iterating the whole config inside a stage that does not read every key is refused too).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from cprec_recbole.errors import ConfigError


class UndeclaredKeyError(ConfigError):
    """A stage read a config key it does not declare (its hash would miss that key)."""


@dataclass
class _Scope:
    stage: str
    allowed: frozenset[str] | None  # None: the stage reads every key
    read: set[str] = field(default_factory=set)


_SCOPE: ContextVar[_Scope | None] = ContextVar("stage_scope", default=None)


@contextmanager
def reading(stage: str, allowed: Iterable[str] | None) -> Iterator[set[str]]:
    """Within the block, ``stage`` may read only ``allowed`` keys (all with None); yields the
    set of keys it read, filled as it reads them."""
    scope = _Scope(stage, None if allowed is None else frozenset(allowed))
    token = _SCOPE.set(scope)
    try:
        yield scope.read
    finally:
        _SCOPE.reset(token)


class RunConfig(Mapping):
    """A run's merged config; reads are checked against the building stage's declaration."""

    def __init__(self, values: Mapping[str, Any], local: frozenset[str] = frozenset()):
        self._values = dict(values)
        self._local = local  # keys set inside the current stage: derived there, free to read

    def _check(self, key: str) -> None:
        scope = _SCOPE.get()
        if scope is None:
            return
        if scope.allowed is not None and key not in scope.allowed and key not in self._local:
            raise UndeclaredKeyError(
                f"stage {scope.stage!r} read config key {key!r}, which it does not declare: "
                f"add {key!r} to the stage's reads (it changes the result, so it joins the "
                "stage's hash) or to its uses (a path or a display setting)"
            )
        scope.read.add(key)

    def __getitem__(self, key: str) -> Any:
        self._check(key)
        return self._values[key]

    def __contains__(self, key: object) -> bool:
        self._check(str(key))
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        scope = _SCOPE.get()
        if scope is not None and scope.allowed is not None:
            raise UndeclaredKeyError(
                f"stage {scope.stage!r} iterated over the whole config; read its keys by name "
                "and change it with config.updated(...)"
            )
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"RunConfig({len(self._values)} keys)"

    def updated(self, values: Mapping[str, Any] = {}, **more: Any) -> RunConfig:
        """A copy with ``values`` set; keys set while a stage builds may be read by it."""
        changes = {**values, **more}
        local = self._local | frozenset(changes) if _SCOPE.get() is not None else self._local
        return RunConfig({**self._values, **changes}, local)

    def without(self, *keys: str) -> RunConfig:
        return RunConfig({k: v for k, v in self._values.items() if k not in keys}, self._local)

    def as_dict(self) -> dict[str, Any]:
        """A plain copy of every key (reads them all: outside a stage, or in one reading all)."""
        return {key: self[key] for key in self}


def tracked(config: Mapping[str, Any]) -> RunConfig:
    """``config`` as a RunConfig (itself when it is one, so closures over it stay tracked)."""
    return config if isinstance(config, RunConfig) else RunConfig(config)
