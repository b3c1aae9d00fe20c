"""Errors for bad input: each message names the file, line or key and says what to do."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class DataError(ValueError):
    """A data file is missing or malformed."""


class ConfigError(ValueError):
    """A configuration file or key is invalid."""


class CheckpointError(ConfigError):
    """A training checkpoint of a partial stage cannot be read; the stage adds its ``--force``."""


class RunError(RuntimeError):
    """Part of a run failed elsewhere (a search's trial); the message says where its details are."""


@contextmanager
def within(where: str) -> Iterator[None]:
    """Bad-input errors raised in the block name ``where`` first (an experiment's run, a
    search's point), so the one line the user sees says which of many runs failed."""
    try:
        yield
    except (ConfigError, DataError) as exc:
        raise type(exc)(f"{where}: {exc}") from None
