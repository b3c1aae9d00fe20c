"""Ray for the commands that spread work: ``--tune=true`` (cprec_recbole/tune.py) and, with
``--ray_address``, the corpus shards and any other independent jobs (cprec_recbole/tasks.py).

Ray is the optional ``[tune]`` extra (the base install has none), so every entry point calls
:func:`connect` before it writes anything: a missing Ray, or an address where nothing answers,
is one line naming the culprit. ``ray.init`` alone would retry an unreachable address for minutes,
hence the TCP probe with :data:`CONNECT_TIMEOUT_S`. Without an address Ray starts a local instance
(``address="local"``): never a cluster that another ``ray start`` on this machine left running.
"""

from __future__ import annotations

import socket
from types import ModuleType
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
    except (ConnectionError, RuntimeError) as exc:  # it answers, but as no Ray we may join
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"ray_address {address}: cannot join that Ray cluster ({first}); it needs the same "
            "Ray version, and RAY_AUTH_MODE=token with its token where it has token "
            "authentication (ray get-auth-token)"
        ) from None
    return ray
