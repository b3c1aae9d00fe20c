"""Ray for the commands that spread work: ``--tune=true`` (cprec_recbole/tune.py) and, with
``--ray_address``, any list of independent jobs (:func:`map_tasks`, e.g. corpus shards).

Ray is the optional ``[tune]`` extra (the base install has none), so every entry point calls
:func:`connect` before it writes anything: a missing Ray, or an address where nothing answers,
is one line naming the culprit. ``ray.init`` alone would retry an unreachable address for minutes,
hence the TCP probe with :data:`CONNECT_TIMEOUT_S`. Without an address Ray starts a local instance
(``address="local"``): never a cluster that another ``ray start`` on this machine left running.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from cprec_recbole.errors import ConfigError

#: The command that brings Ray (the ``[tune]`` extra of setup.cfg).
INSTALL = 'pip install -e ".[tune]"'
#: The oldest Ray whose ``ray.tune.RunConfig`` / Train V2 API we use.
MIN_VERSION = (2, 40)
#: How long an address may take to answer before the command stops.
CONNECT_TIMEOUT_S = 30.0


def require_ray(purpose: str) -> ModuleType:
    """The ``ray`` module, or a ConfigError saying which command installs it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"{purpose} needs Ray, which is not installed: run {INSTALL}") from None
    version = tuple(int(part) for part in ray.__version__.split(".")[:2])
    if version < MIN_VERSION:
        wanted = ".".join(map(str, MIN_VERSION))
        raise ConfigError(
            f"{purpose} needs Ray >= {wanted}, found {ray.__version__}: run {INSTALL}"
        )
    return ray


def host_port(address: str) -> tuple[str, int] | None:
    """Host and port of a concrete address (``host:port``, ``ray://host:port``); None for
    ``auto``, which Ray resolves itself from the cluster ``ray start`` left on this machine."""
    if address == "auto":
        return None
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ConfigError(f"ray_address {address!r}: expected host:port, ray://host:port or auto")
    return parts.hostname, port


def probe(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise a ConfigError unless something accepts a connection at ``address`` within
    ``timeout`` seconds."""
    target = host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"ray_address {address}: no answer within {timeout:.0f} s ({reason}); start the "
            "cluster (ray start --head) or fix --ray_address"
        ) from None


def connect(address: str | None, purpose: str = "--tune=true") -> ModuleType:
    """Join the Ray cluster at ``address``, or start a local Ray where it is None; a no-op
    where this process is already connected. Returns the ``ray`` module."""
    ray = require_ray(purpose)
    if ray.is_initialized():
        return ray
    quiet = {"log_to_driver": False, "configure_logging": False}
    if not address:
        ray.init(address="local", include_dashboard=False, **quiet)
        return ray
    probe(address)
    try:
        ray.init(address=address, **quiet)
    except ConnectionError as exc:  # it answers, but as no Ray we may join
        raise ConfigError(
            f"ray_address {address}: {exc} (a cluster with token authentication needs "
            "RAY_AUTH_MODE=token and its token: ray get-auth-token)"
        ) from None
    return ray


def map_tasks(fn: Callable[[Any], Any], items: Iterable[Any], num_cpus: float = 1) -> list:
    """``fn(item)`` for every item, each a Ray task of ``num_cpus`` on the cluster
    :func:`connect` joined; the results in the items' order. ``fn`` must be importable by the
    cluster's workers (a module-level function of an installed package)."""
    ray = require_ray("map_tasks")
    if not ray.is_initialized():
        raise RuntimeError("map_tasks: call ray_cluster.connect(address) first")
    remote = ray.remote(num_cpus=num_cpus)(_call)
    return ray.get([remote.remote(fn, item) for item in items])


def _call(fn: Callable[[Any], Any], item: Any) -> Any:
    """A Ray task's body: ``ray.remote`` takes Python functions, not builtins or callables."""
    return fn(item)
